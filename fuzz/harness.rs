//! What the fuzz targets run, shared with `tests/fuzz_corpus.rs`, which replays the corpus in CI.
#![allow(dead_code)] // each fuzz target uses one of these functions

#[path = "../tests/support/mod.rs"]
mod support;

use nodegate::config;
use nodegate::engine::Offload;
use nodegate::time::Millis;

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" }],
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
