//! How long a reload holds the packet loop: a full host table (every flow of the last of 62
//! services, 61 ahead of it), then reloads that add an endpoint to the first service and take
//! it out again. Prints the longest single step the loop takes for them.
//! `cargo bench --bench reload`

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use etherparse::PacketBuilder;
use nodegate::board;
use nodegate::config::{self, Config};
use nodegate::engine::Reload;
use nodegate::time::Millis;
use support::{CLIENT_MAC, NODE_MAC, Room};

const SERVICES: usize = 62;

fn site(extra_endpoint: bool) -> Config {
    let mut services = Vec::new();
    for s in 0..SERVICES {
        // The same sixteen nodes behind every service, as in a cluster.
        let mut endpoints: Vec<String> = (0..16).map(|e| format!(r#"{{ "ip": "10.77.0.{}" }}"#, 11 + e)).collect();
        if extra_endpoint && s == 0 {
            endpoints.push(r#"{ "ip": "10.77.0.99" }"#.into());
        }
        services.push(format!(
            r#"{{ "name": "svc-{s}", "ports": [{{ "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": {} }}], "endpoints": [{}] }}"#,
            30000 + s,
            endpoints.join(", ")
        ));
    }
    let text = format!(
        r#"{{ "nodes": [{{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }}], "services": [{}] }}"#,
        services.join(", ")
    );
    config::parse(text.as_bytes()).unwrap()
}

fn udp(i: u32, port: u16) -> Vec<u8> {
    let src = [10, 100 + (i >> 24) as u8, (i >> 16) as u8, (i >> 8) as u8];
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, [10, 77, 0, 1], 64)
        .udp(1024 + (i & 0xff) as u16 * 200, port);
    let mut out = Vec::new();
    b.write(&mut out, b"q").unwrap();
    out
}

/// This thread's CPU time: a step's wall time minus the time it was not running.
fn cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn main() {
    let before = site(false);
    let after = site(true);
    let mut room = Room::board();
    let mut engine = room.engine(&before, None);
    let (mut buf, mut out) = ([0u8; 1514], [0u8; 1514]);
    let last_port = 30000 + SERVICES as u16 - 1;
    for i in 0..board::CONNTRACK_CAPACITY as u32 {
        let f = udp(i, last_port);
        buf[..f.len()].copy_from_slice(&f);
        engine.process(&mut buf[..f.len()], Millis(0), &mut out);
    }
    println!("table: {} of {} flows, {SERVICES} services", engine.conntrack().len(), board::CONNTRACK_CAPACITY);
    // A reload in the runner's order: prepared on the control thread (timed, but off the
    // loop), swapped in between two frames, then the loop's housekeeping every 10 ms until every
    // flow is renumbered, a full sweep pass included.
    let mut longest = Duration::ZERO;
    let mut now = Millis(1000);
    for round in 0..5 {
        let (running, next) = if round % 2 == 0 { (&before, &after) } else { (&after, &before) };
        let start = Instant::now();
        let mut reload = Box::<Reload>::default();
        reload.prepare(running, next, None).unwrap();
        let prepared = start.elapsed();
        let start = Instant::now();
        engine.apply(&mut reload);
        let applied = start.elapsed();
        let (mut turns, mut slowest, mut slowest_cpu) = (0, Duration::ZERO, Duration::ZERO);
        while engine.flows_to_renumber() > 0 {
            now = Millis(now.0 + 10);
            let (start, cpu) = (Instant::now(), cpu_time());
            engine.housekeeping(now);
            slowest = slowest.max(start.elapsed());
            slowest_cpu = slowest_cpu.max(cpu_time() - cpu);
            turns += 1;
        }
        longest = longest.max(applied).max(slowest);
        println!(
            "reload {round}: prepared off the loop in {:.2} ms; the loop: swap {:.3} ms, then {turns} turns of renumbering, the longest {:.3} ms ({:.3} ms on the CPU)",
            prepared.as_secs_f64() * 1e3,
            applied.as_secs_f64() * 1e3,
            slowest.as_secs_f64() * 1e3,
            slowest_cpu.as_secs_f64() * 1e3,
        );
    }
    println!("longest step of the loop: {:.3} ms", longest.as_secs_f64() * 1e3);

    // Two reloads back to back: the second finds the first's renumbering under way and finishes
    // it in one step (the one case that still walks the whole table in a turn).
    let mut first = Box::<Reload>::default();
    first.prepare(&before, &after, None).unwrap();
    engine.apply(&mut first);
    let mut second = Box::<Reload>::default();
    second.prepare(&after, &before, None).unwrap();
    let start = Instant::now();
    engine.apply(&mut second);
    println!(
        "a reload while {} flows are still to renumber: the swap takes {:.2} ms",
        board::CONNTRACK_CAPACITY,
        start.elapsed().as_secs_f64() * 1e3
    );
}
