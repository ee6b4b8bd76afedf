//! The packet engine: a pure state machine over `(frame, now)`.
//!
//! [`Engine::process`] looks at one Ethernet frame and decides: rewrite it and send it on (DNAT,
//! SNAT, or the reverse for a reply), answer it (RST, ICMP error), hold it until its next hop
//! answers ARP, hand it to the node's own stack, or drop it with a counted reason. It reads no
//! clock, does no I/O and allocates nothing, so every behaviour is a "frame in, frame out" test.
//!
//! One concern a file, each an `impl Engine` block: [`dispatch`] (what a frame is and where it
//! goes), [`services`] (the services, their listeners, endpoints, health and counters), [`nat`]
//! (a new flow: endpoint, source, tracking), [`icmp`] (errors received, answers made up),
//! [`egress`] (next hops, fragments, frames waiting for ARP), [`sync`] (flow sync's records in
//! and out) and [`bfd`] (BFD packets in and out, AdminDown).

mod bfd;
pub mod checksum;
pub mod counters;
mod dispatch;
mod egress;
mod fragments;
mod icmp;
mod nat;
pub mod packet;
mod parked;
mod rate_limit;
pub mod reply;
mod services;
mod sync;

use crate::affinity::Affinity;
use crate::bfd::BfdDrop;
use crate::board;
use crate::config::{Config, ConfigError, Node};
use crate::conntrack::Table;
use crate::neighbor::Neighbors;
use crate::random::Rng;
use crate::sync::Sync;
use crate::time::Millis;
pub use counters::{Counters, DropReason};
use egress::PARK_MAX_MS;
use fragments::Fragments;
pub use packet::Offload;
use parked::Parked;
use rate_limit::RateLimit;
use services::Services;
pub use services::{PortTraffic, Reload, ServiceCounters};

/// A gateway's part in a high-availability pair (keepalived decides which): only the active one
/// answers for the virtual IPs and floating addresses and carries service traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// What to do with a frame after [`Engine::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was translated in place: send it.
    Forward,
    /// The frame was answered: send `out[..len]`. `dropped`: the frame itself was dropped for
    /// this reason and the answer tells its sender (an RST, an ICMP error, or the ARP request of
    /// a frame that could not wait); `None`: the answer is what it asked for (ARP for a VIP).
    Reply { len: usize, dropped: Option<DropReason> },
    /// The frame is for the node itself: hand it to the stack.
    Stack,
    /// The frame was for the node and the engine took it (a BFD control packet).
    Consumed,
    /// The frame waits for its next hop's MAC; send `out[..len]` (an ARP request) if `len > 0`.
    Parked(usize),
    /// The frame was dropped, for this reason.
    Drop(DropReason),
}

/// The engine's large tables (the services with their Maglev tables, the affinity pins),
/// placed by the caller as embassy-net's `StackResources` are: a `static` on a microcontroller,
/// one allocation at start on Linux, a `Box` in a test. The engine borrows them, so that it is
/// small enough to build on any stack.
pub struct Resources {
    services: Services,
    affinity: Affinity<{ board::AFFINITY_CAPACITY }>,
}

impl Resources {
    pub fn new() -> Self {
        Resources { services: Services::new(), affinity: Affinity::new([0, 0]) }
    }
}

impl Default for Resources {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Engine<'a> {
    services: &'a mut Services,
    conntrack: Table<'a>,
    affinity: &'a mut Affinity<{ board::AFFINITY_CAPACITY }>,
    neighbors: Neighbors<{ board::NEIGHBOR_CAPACITY }>,
    parked: Parked<{ board::PARKED_FRAMES }>,
    fragments: Fragments<{ board::FRAGMENT_TRACKS }>,
    counters: Counters,
    /// The RSTs and ICMP errors the engine makes up.
    replies: RateLimit,
    /// SNAT ports: unpredictable to a client.
    rng: Rng,
    role: Role,
    /// Flow sync with the other gateways of the pair, once [`Engine::start_sync`] started it.
    sync: Option<Sync>,
    /// BFD sessions with the routers in front, and the packets they refused, by reason.
    bfd: bfd::Sessions,
    bfd_dropped: [u64; BfdDrop::ALL.len()],
    /// The gateway is stopping ([`Engine::bfd_leave`]).
    leaving: bool,
    /// Gratuitous ARP after becoming active: rounds left, when the next one goes, and the
    /// address it is at.
    announce: (u8, Millis, usize),
    /// (service, endpoint) the periodic ARP refresh looks at next.
    resolve_cursor: (usize, usize),
    last_resolve: Option<Millis>,
}

impl<'a> Engine<'a> {
    /// An engine for node `node_name` of `config`, tracking flows in `conntrack`, its tables in
    /// `resources`. `seed` seeds the SNAT port choice; draw it from a random source.
    pub fn new(
        config: &Config,
        node_name: Option<&str>,
        conntrack: Table<'a>,
        resources: &'a mut Resources,
        seed: u64,
    ) -> Result<Self, ConfigError> {
        resources.services.build(config, node_name)?;
        // With high availability a gateway starts standby, until keepalived makes it active.
        let role = if config.high_availability.is_some() { Role::Standby } else { Role::Active };
        resources.affinity.reset([seed, seed.rotate_left(32)]);
        let mut rng = Rng::new(seed);
        let bfd = bfd::sessions(config, &resources.services.node, &mut rng);
        Ok(Engine {
            services: &mut resources.services,
            conntrack,
            affinity: &mut resources.affinity,
            neighbors: Neighbors::new(board::NEIGHBOR_SECONDS as u64 * 1000, board::ARP_RETRY_MILLIS),
            parked: Parked::new(),
            fragments: Fragments::new(),
            counters: Counters::default(),
            replies: RateLimit::new(board::REPLIES_PER_SECOND, board::REPLY_BURST),
            rng,
            role,
            sync: None,
            bfd,
            bfd_dropped: [0; BfdDrop::ALL.len()],
            leaving: false,
            announce: (0, Millis(0), 0),
            resolve_cursor: (0, 0),
            last_resolve: None,
        })
    }

    pub fn node(&self) -> &Node {
        &self.services.node
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Takes `role`. Becoming active, the gateway announces every virtual IP and floating
    /// address by gratuitous ARP, the board's count of rounds, spaced; becoming standby, it stops
    /// answering for them. Returns the role it had.
    pub fn set_role(&mut self, role: Role, now: Millis) -> Role {
        let was = self.role;
        self.role = role;
        self.announce = match (was, role) {
            (Role::Standby, Role::Active) => (board::GRATUITOUS_ARP_COUNT, now, 0),
            (_, Role::Standby) => (0, now, 0),
            (Role::Active, Role::Active) => self.announce,
        };
        was
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// ClientIP pins pushed out of a full affinity set by newer ones.
    pub fn affinity_evictions(&self) -> u64 {
        self.affinity.evictions()
    }

    /// Frames waiting for their next hop's MAC.
    pub fn frames_waiting(&self) -> usize {
        self.parked.len()
    }

    pub fn conntrack(&self) -> &Table<'a> {
        &self.conntrack
    }

    /// Counts a frame the host could not send.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.drop(reason);
    }

    /// Decides what happens to `frame`, rewriting it in place or writing an answer into `out`
    /// (which must hold a full frame).
    pub fn process(&mut self, frame: &mut [u8], now: Millis, out: &mut [u8]) -> Verdict {
        self.process_offloaded(frame, Offload::NONE, now, out)
    }

    /// [`Engine::process`] for a frame the kernel left work on (see [`Offload`]); a forwarded
    /// frame leaves with the same offload.
    pub fn process_offloaded(&mut self, frame: &mut [u8], offload: Offload, now: Millis, out: &mut [u8]) -> Verdict {
        self.counters.received += 1;
        let verdict = self.classify(frame, offload, now, out);
        // Every frame's fate is counted here, but a parked frame's: it is counted when it
        // leaves (next_output), forwarded or dropped.
        match verdict {
            Verdict::Forward => self.counters.forwarded += 1,
            Verdict::Stack | Verdict::Consumed => self.counters.to_stack += 1,
            Verdict::Drop(reason) | Verdict::Reply { dropped: Some(reason), .. } => self.counters.drop(reason),
            Verdict::Reply { dropped: None, .. } => self.counters.answered += 1,
            Verdict::Parked(_) => {}
        }
        verdict
    }

    /// Work that is not per frame, a bounded slice each call (the runner calls it every few
    /// milliseconds): renumbers flows after a reload, expires flows, flushes UDP flows whose
    /// endpoint stopped serving, and walks the flows flow sync refreshes on the peers.
    pub fn housekeeping(&mut self, now: Millis) {
        self.conntrack.renumber_some(board::CONNTRACK_RENUMBER_PER_TURN);
        let services = &self.services;
        let swept = self.conntrack.sweep(now.secs(), board::CONNTRACK_SWEEP_PER_TURN, |f| services.keeps(f));
        self.counters.udp_flows_flushed += swept.flushed as u64;
        self.sync_refresh(now);
        self.bfd_housekeeping(now);
    }

    /// Flows still to renumber after a reload (0 once every flow is numbered for it).
    pub fn flows_to_renumber(&self) -> usize {
        self.conntrack.stale()
    }

    /// A frame the engine wants to send on its own (a parked frame whose next hop answered, an
    /// ARP request to refresh a next hop), written to `out`. Call until `None`.
    pub fn next_output(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        loop {
            let neighbors = &self.neighbors;
            match self.parked.take_ready(now, PARK_MAX_MS, |ip| neighbors.lookup(ip, now), out) {
                Some(Ok((len, mac))) => {
                    packet::set_macs(out, self.services.node.mac.0, mac);
                    self.counters.forwarded += 1;
                    return Some(len);
                }
                Some(Err(())) => self.counters.drop(DropReason::NeighborMissing),
                None => {
                    return self
                        .announce(now, out)
                        .or_else(|| self.bfd_output(now, out))
                        .or_else(|| self.refresh_next_hop(now, out));
                }
            }
        }
    }
}
