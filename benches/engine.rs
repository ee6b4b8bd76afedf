//! Per-packet engine cost as the connection table fills: an established flow's packet and a new
//! flow's SYN, with the host board's table 1 %, 50 % and 90 % full. The cost should stay flat:
//! the index is hashed and at most half full whatever the fill.
//!
//! `cargo bench --bench engine`

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use etherparse::PacketBuilder;
use nodegate::board;
use nodegate::config;
use nodegate::engine::{Engine, Verdict};
use nodegate::time::Millis;
use support::{CLIENT_MAC, EP_MAC, NODE, NODE_MAC, Room};
const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }],
  "services": [{ "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                 "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }, { "ip": "10.77.0.14" },
                               { "ip": "10.77.0.15" }, { "ip": "10.77.0.16" }, { "ip": "10.77.0.17" }, { "ip": "10.77.0.18" },
                               { "ip": "10.77.0.19" }, { "ip": "10.77.0.20" }, { "ip": "10.77.0.21" }, { "ip": "10.77.0.22" },
                               { "ip": "10.77.0.23" }, { "ip": "10.77.0.24" }, { "ip": "10.77.0.25" }, { "ip": "10.77.0.26" }] }]
}"#;

/// Client `i`: an address and port of its own.
fn client(i: u32) -> ([u8; 4], u16) {
    ([10, 100 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8], 1024 + (i & 0xff) as u16 * 200)
}

fn tcp(macs: ([u8; 6], [u8; 6]), src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: &str, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, 1, 64000);
    let b = match flags {
        "S" => b.syn(),
        "SA" => b.syn().ack(2),
        _ => b.ack(2),
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

fn run(engine: &mut Engine, frame: &[u8], buf: &mut [u8; 1514], out: &mut [u8; 1514], now: Millis) -> Verdict {
    buf[..frame.len()].copy_from_slice(frame);
    engine.process(&mut buf[..frame.len()], now, out)
}

fn bench(c: &mut Criterion) {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let mut group = c.benchmark_group("engine");
    group.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for percent in [1usize, 50, 90] {
        let mut room = Room::board();
        let mut engine = room.engine(&cfg, None);
        let (mut buf, mut out) = ([0u8; 1514], [0u8; 1514]);
        for last in 11..=26 {
            run(&mut engine, &support::arp(2, EP_MAC, [10, 77, 0, last], NODE), &mut buf, &mut out, Millis(0));
        }
        // Established flows: SYN, SYN-ACK, ACK each. Sixteen endpoints, because one endpoint port
        // seen from one SNAT address holds at most the SNAT range (28,232 flows).
        let filled = board::CONNTRACK_CAPACITY * percent / 100;
        for i in 0..filled as u32 {
            let c = client(i);
            run(&mut engine, &tcp((CLIENT_MAC, NODE_MAC), c, (NODE, 30080), "S", b""), &mut buf, &mut out, Millis(0));
            // Where the SYN went: endpoint address and SNAT port, from the rewritten frame.
            let endpoint = [buf[30], buf[31], buf[32], buf[33]];
            let snat_port = u16::from_be_bytes([buf[34], buf[35]]);
            run(
                &mut engine,
                &tcp((EP_MAC, NODE_MAC), (endpoint, 3000), (NODE, snat_port), "SA", b""),
                &mut buf,
                &mut out,
                Millis(0),
            );
            run(&mut engine, &tcp((CLIENT_MAC, NODE_MAC), c, (NODE, 30080), "A", b""), &mut buf, &mut out, Millis(0));
        }
        assert_eq!(engine.conntrack().len(), filled);
        // Packets of 4096 established flows spread over the table.
        let data: Vec<Vec<u8>> = (0..4096u32)
            .map(|k| {
                tcp(
                    (CLIENT_MAC, NODE_MAC),
                    client(k * (filled as u32 / 4096).max(1) % filled as u32),
                    (NODE, 30080),
                    "A",
                    &[0u8; 64],
                )
            })
            .collect();
        let mut k = 0;
        group.bench_function(BenchmarkId::new("established", format!("{percent}%")), |b| {
            b.iter(|| {
                k = (k + 1) % data.len();
                black_box(run(&mut engine, &data[k], &mut buf, &mut out, Millis(1000)))
            })
        });

        // New flows, in chunks; between chunks (untimed) time jumps past the SYN timeout and the
        // sweep takes the new, unanswered flows out, so the fill stays where it is.
        let mut now = Millis(2000);
        let mut next = filled as u32;
        group.bench_function(BenchmarkId::new("new_flow", format!("{percent}%")), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let chunk = left.min(1000);
                    let syns: Vec<Vec<u8>> = (0..chunk as u32)
                        .map(|j| tcp((CLIENT_MAC, NODE_MAC), client(next + j), (NODE, 30080), "S", b""))
                        .collect();
                    next = next.wrapping_add(chunk as u32) % 0x00ff_ffff;
                    let start = Instant::now();
                    for syn in &syns {
                        black_box(run(&mut engine, syn, &mut buf, &mut out, now));
                    }
                    spent += start.elapsed();
                    left -= chunk;
                    now = Millis(now.0 + (board::TIMEOUTS.tcp_syn_sent as u64 + 1) * 1000);
                    while engine.conntrack().len() > filled {
                        engine.housekeeping(now);
                    }
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
