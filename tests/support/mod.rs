//! What the engine tests, the benchmarks and the fuzz harness share: the addresses and MACs of
//! the engine's small world, the room an engine runs in, and the frames every one of them sends.
//! Included with `mod support;` (`#[path]` from `benches/` and `fuzz/`).
#![allow(dead_code)] // each user takes what it needs

use nodegate::board;
use nodegate::config::Config;
use nodegate::conntrack::{Flow, Table, buckets_for};
use nodegate::engine::{Engine, Resources};

pub const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x64];
pub const EP_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
pub const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
pub const NODE: [u8; 4] = [10, 77, 0, 1];
pub const CLIENT: [u8; 4] = [10, 77, 0, 100];
pub const EP: [u8; 4] = [10, 77, 0, 11];
pub const ROUTER: [u8; 4] = [10, 77, 0, 254];
pub const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];

/// What an engine runs in, on the heap: a connection table of `capacity` flows and the engine's
/// own tables ([`Resources`]), so that no test needs a big stack.
pub struct Room {
    flows: Vec<Flow>,
    buckets: Vec<u32>,
    resources: Box<Resources>,
}

impl Room {
    pub fn new(capacity: usize) -> Self {
        Room {
            flows: vec![Flow::EMPTY; capacity],
            buckets: vec![0; buckets_for(capacity)],
            resources: Box::new(Resources::new()),
        }
    }

    /// A room with the board's full connection table.
    pub fn board() -> Self {
        Self::new(board::CONNTRACK_CAPACITY)
    }

    /// An engine for `node` of `config` here, with a fixed table key and seed, so that every
    /// run takes the same SNAT ports.
    pub fn engine(&mut self, config: &Config, node: Option<&str>) -> Engine<'_> {
        self.engine_seeded(config, node, 42)
    }

    /// [`Room::engine`] with another seed: another run of the gateway.
    pub fn engine_seeded(&mut self, config: &Config, node: Option<&str>, seed: u64) -> Engine<'_> {
        let table = Table::new(&mut self.flows, &mut self.buckets, [3, 4], board::TIMEOUTS);
        Engine::new(config, node, table, &mut self.resources, seed).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A BFD control packet from the router in `state` (BIRD's timers: 100 ms, multiplier 3),
/// addressed to the session `your_disc` (0: not known yet).
pub fn bfd_from_router(state: nodegate::bfd::State, your_disc: u32) -> nodegate::bfd::wire::Control {
    nodegate::bfd::wire::Control {
        diag: 0,
        state,
        poll: false,
        final_: false,
        demand: false,
        detect_mult: 3,
        my_disc: 0x5151,
        your_disc,
        desired_min_tx_us: 100_000,
        required_min_rx_us: 100_000,
    }
}

/// The engine's metrics page, as the node serves it.
pub fn metrics_of(e: &nodegate::engine::Engine) -> String {
    let mut buf = vec![0u8; nodegate::metrics::MAX_TEXT];
    let mut w = nodegate::text::SliceWriter::new(&mut buf);
    nodegate::metrics::render(e, &nodegate::time::Turns::default(), &mut w).unwrap();
    let len = w.len();
    String::from_utf8(buf[..len].to_vec()).unwrap()
}

/// An ARP frame from `mac` at `ip` about `target`: a broadcast request (`op` 1) or a reply
/// to the node (`op` 2).
pub fn arp(op: u8, mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(if op == 1 { &[0xff; 6] } else { &NODE_MAC });
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, op]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(if op == 1 { &[0; 6] } else { &NODE_MAC });
    f.extend_from_slice(&target);
    f
}

/// The frame an etherparse builder writes with `payload` (the builder types share no trait).
#[macro_export]
macro_rules! built {
    ($builder:expr, $payload:expr) => {{
        let mut f = Vec::new();
        $builder.write(&mut f, $payload).unwrap();
        f
    }};
}
