//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs`, which replays the corpus in CI.
#![allow(dead_code)] // each fuzz target uses one of these functions

#[path = "../tests/support/mod.rs"]
mod support;

use nodegate::config;
use nodegate::engine::{Engine, Offload, Role};
use nodegate::sync::wire::{self, Header, Key, Kind};
use nodegate::time::Millis;
use std::net::Ipv4Addr;

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" }],
  "bfd": { "sessions": [{ "peer": "10.77.0.254" }] },
  "services": [
    { "name": "web", "sessionAffinity": "ClientIP", "clusterIP": "10.96.0.10", "loadBalancerSourceRanges": ["10.0.0.0/8"],
      "ports": [{ "name": "t", "port": 80, "targetPort": 3000, "nodePort": 30080 },
                { "name": "u", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
      "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "192.0.2.1" }] },
    { "name": "empty", "ports": [{ "port": 1, "nodePort": 30090 }], "endpoints": [] }
  ]
}"#;

/// Arbitrary bytes as a sequence of frames, each `[length: u16 big-endian][bytes]`, through one
/// engine with a small table, with time moving on and the engine's own output drained. The two
/// top bits of a length give the frame an offload: a partial checksum, a super-frame.
pub fn engine_frames(data: &[u8]) {
    thread_local! {
        // Made once: an engine starts afresh in it (an empty table, services built anew, pins
        // cleared), and allocating its tables for every input would be most of the run.
        static ROOM: std::cell::RefCell<support::Room> = std::cell::RefCell::new(support::Room::new(16));
    }
    ROOM.with(|room| run_frames(&mut room.borrow_mut(), data));
}

fn run_frames(room: &mut support::Room, data: &[u8]) {
    let cfg = config::parse(CONFIG.as_bytes()).expect("the harness config is valid");
    let mut engine = room.engine(&cfg, None);
    let (mut buf, mut out) = ([0u8; 4096], [0u8; 1514]);
    let mut rest = data;
    let mut now = 0u64;
    while rest.len() >= 2 {
        let head = u16::from_be_bytes([rest[0], rest[1]]);
        let offload =
            Offload { partial_checksum: head & 0x8000 != 0, segment_size: if head & 0x4000 != 0 { 536 } else { 0 } };
        let len = ((head & 0x3fff) as usize).min(rest.len() - 2).min(buf.len());
        buf[..len].copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        now += 700;
        let _ = engine.process_offloaded(&mut buf[..len], offload, Millis(now), &mut out);
        engine.housekeeping(Millis(now));
        for _ in 0..64 {
            if engine.next_output(Millis(now), &mut out).is_none() {
                break;
            }
        }
    }
}

/// Arbitrary bytes as a config file.
pub fn config_parse(data: &[u8]) {
    if let Ok(cfg) = config::parse(data) {
        let _ = cfg.node(None);
    }
}

const PAIR: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] },
            { "name": "edge-2", "tap": "ng0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"] }],
  "highAvailability": { "snatAddress": "10.77.0.5", "sync": { "keyFile": "/etc/nodegate/sync.key" } },
  "services": [{ "name": "web", "externalIPs": ["10.77.0.50"], "externalTrafficPolicy": "Cluster",
                 "sessionAffinity": "ClientIP",
                 "ports": [{ "name": "t", "port": 80, "targetPort": 3000 }, { "name": "u", "protocol": "UDP", "port": 53, "targetPort": 5353 }],
                 "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }]
}"#;
/// The key both gateways of [`PAIR`] hold; the corpus's messages are sealed with it.
pub const SYNC_KEY: &[u8] = b"a sync key both gateways hold 32";
/// The run of edge-1 whose messages the harness seals.
pub const SYNC_EPOCH: u64 = 0x5eed;
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const STRAY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 9);

/// Arbitrary bytes as what reaches edge-2 of [`PAIR`], whose table request edge-1's run
/// [`SYNC_EPOCH`] has answered: chunks `[control][length: u16 big-endian][bytes]`. The two low
/// bits of `control` say what a chunk is:
/// - 0: a frame for the engine, with time moving on 700 ms;
/// - 1: a sync message as it is, from edge-1 (bit 2 set: from a stray address);
/// - 2: a sync message sealed with [`SYNC_KEY`], so that what follows the tag check is reached:
///   `bytes` = `[kind: bit 0 a table request][records: u8]` then, with bit 2 of `control`, the
///   epoch and seq (8 bytes each; else the run's and its next seq), then the records;
/// - 3: a role (bit 2 set: active).
///
/// Returns the flows installed, so that the corpus can show it reaches the table.
pub fn sync_messages(data: &[u8]) -> u64 {
    thread_local! {
        static ROOM: std::cell::RefCell<support::Room> = std::cell::RefCell::new(support::Room::new(16));
    }
    ROOM.with(|room| run_sync(&mut room.borrow_mut(), data))
}

fn run_sync(room: &mut support::Room, data: &[u8]) -> u64 {
    let cfg = config::parse(PAIR.as_bytes()).expect("the harness config is valid");
    let key = Key::new(SYNC_KEY).expect("the harness key is long enough");
    let mut engine = room.engine(&cfg, Some("edge-2"));
    engine.start_sync(&cfg, key.clone()).expect("the harness config has a sync section");
    let (mut buf, mut out) = ([0u8; 4096], [0u8; 1514]);
    let mut seq = 1;
    // The table request edge-2 sends at start, answered by an empty table: the run is taken.
    engine.sync_output(Millis(0), &mut out).expect("a standby asks for the table at start");
    assert_eq!(out[5], 2, "the first message is a table request");
    let echo = u64::from_be_bytes(out[24..32].try_into().expect("8 bytes"));
    let answer =
        wire::seal(&mut buf, wire::HEADER_LEN, 0, &Header { kind: Kind::Update, epoch: SYNC_EPOCH, seq, echo }, &key);
    engine.sync_receive(PEER, &buf[..answer], Millis(0));
    let mut rest = data;
    let mut now = 0u64;
    while rest.len() >= 3 {
        let control = rest[0];
        let len = (u16::from_be_bytes([rest[1], rest[2]]) as usize).min(rest.len() - 3).min(1024);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        now += 50;
        match control & 3 {
            0 => {
                buf[..len].copy_from_slice(bytes);
                now += 650;
                let _ = engine.process(&mut buf[..len], Millis(now), &mut out);
            }
            1 => engine.sync_receive(if control & 4 != 0 { STRAY } else { PEER }, bytes, Millis(now)),
            2 => {
                let Some(len) = sealed(&mut buf, bytes, control & 4 != 0, &mut seq, &key) else { continue };
                engine.sync_receive(PEER, &buf[..len], Millis(now));
            }
            _ => {
                engine.set_role(if control & 4 != 0 { Role::Active } else { Role::Standby }, Millis(now));
            }
        }
        drain(&mut engine, Millis(now), &mut out);
    }
    engine.sync_counters().map_or(0, |c| c.flows_installed)
}

/// The message chunk `bytes` of [`sync_messages`] describes, sealed in `buf`; its length.
fn sealed(buf: &mut [u8], bytes: &[u8], numbered: bool, seq: &mut u64, key: &Key) -> Option<usize> {
    let (&[kind, records], rest) = bytes.split_first_chunk::<2>()?;
    let kind = if kind & 1 != 0 { Kind::TableRequest } else { Kind::Update };
    let (epoch, this, body) = if numbered {
        let (numbers, body) = rest.split_first_chunk::<16>()?;
        let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        (be64(&numbers[..8]), be64(&numbers[8..]), body)
    } else {
        *seq += 1;
        (SYNC_EPOCH, *seq, rest)
    };
    let end = wire::HEADER_LEN + body.len();
    buf[wire::HEADER_LEN..end].copy_from_slice(body);
    Some(wire::seal(buf, end, records.into(), &Header { kind, epoch, seq: this, echo: 0 }, key))
}

fn drain(engine: &mut Engine, now: Millis, out: &mut [u8]) {
    engine.housekeeping(now);
    for _ in 0..64 {
        if engine.next_output(now, out).is_none() {
            break;
        }
    }
    while engine.sync_output(now, out).is_some() {}
}
