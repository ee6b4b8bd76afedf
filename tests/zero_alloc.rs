//! After start-up the datapath allocates nothing: 100,000 frames of mixed traffic through the
//! engine, counted by a global allocator that records every allocation made on this thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

mod support;

use etherparse::PacketBuilder;
use nodegate::bfd::State;
use nodegate::bfd::wire::Control;
use nodegate::config;
use nodegate::time::Millis;
use support::{CLIENT_MAC, EP_MAC, NODE_MAC, Room};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-locals may be gone while a thread exits.
        let _ = COUNTING.try_with(|on| {
            if on.get() {
                let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        });
        // SAFETY: forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }],
  "bfd": { "sessions": [{ "peer": "10.77.0.254" }] },
  "services": [
    { "name": "web", "sessionAffinity": "ClientIP", "clusterIP": "10.96.0.10",
      "ports": [{ "name": "http", "port": 80, "targetPort": 3000, "nodePort": 30080 },
                { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
      "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] },
    { "name": "empty", "ports": [{ "port": 1, "nodePort": 30090 }], "endpoints": [] }
  ]
}"#;

/// The frames of one round: new flows, replies, data, rejects, ARP, junk, and the router's BFD
/// packet (Down in the first round, then Up to the session `disc`).
fn frames(round: u16, disc: u32) -> Vec<Vec<u8>> {
    let client = [10, 77, (round >> 8) as u8 % 200, (round & 0xff) as u8 % 250 + 2];
    let port = 1024 + round % 60000;
    let from_client = || PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let node = [10, 77, 0, 1];
    let mut out = vec![
        built!(from_client().ipv4(client, node, 64).tcp(port, 30080, 1, 1000).syn(), b""),
        built!(
            PacketBuilder::ethernet2(EP_MAC, NODE_MAC)
                .ipv4([10, 77, 0, 11], node, 64)
                .tcp(3000, port, 9, 1000)
                .syn()
                .ack(2),
            b""
        ),
        built!(from_client().ipv4(client, node, 64).tcp(port, 30080, 2, 1000).ack(10), b"GET / HTTP/1.1\r\n\r\n"),
        built!(from_client().ipv4(client, node, 64).udp(port, 30053), b"query"),
        built!(from_client().ipv4(client, [10, 96, 0, 10], 64).tcp(port, 80, 1, 1000).syn(), b""),
        built!(from_client().ipv4(client, node, 64).tcp(port, 30090, 1, 1000).syn(), b""),
        built!(from_client().ipv4(client, node, 1).udp(port, 30053), b"ttl"),
    ];
    let (state, your_disc) = if round == 0 { (State::Down, 0) } else { (State::Up, disc) };
    let mut bfd = [0u8; 24];
    Control { poll: round % 100 == 1, ..support::bfd_from_router(state, your_disc) }.emit(&mut bfd);
    out.push(built!(
        PacketBuilder::ethernet2(support::ROUTER_MAC, NODE_MAC).ipv4(support::ROUTER, node, 255).udp(49200, 3784),
        &bfd
    ));
    out.push(vec![0xff; 9]);
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&client);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 96, 0, 10]);
    out.push(arp);
    out
}

#[test]
fn the_datapath_allocates_nothing_after_start_up() {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let mut room = Room::new(4096);
    let mut engine = room.engine(&cfg, None);
    // Every frame is built before counting starts; the engine gets copies in a reused buffer.
    let disc = engine.bfd_sessions()[0].local_disc;
    let rounds: Vec<Vec<Vec<u8>>> = (0..100_000u32.div_ceil(10) as u16).map(|r| frames(r, disc)).collect();
    let mut buf = [0u8; 1514];
    let mut out = [0u8; 1514];
    let mut sent = 0u64;

    COUNTING.with(|c| c.set(true));
    'all: for (r, round) in rounds.iter().enumerate() {
        for frame in round {
            buf[..frame.len()].copy_from_slice(frame);
            let now = Millis(r as u64 * 10);
            let _ = engine.process(&mut buf[..frame.len()], now, &mut out);
            engine.housekeeping(now);
            while engine.next_output(now, &mut out).is_some() {}
            sent += 1;
            if sent == 100_000 {
                break 'all;
            }
        }
    }
    COUNTING.with(|c| c.set(false));

    let allocations = ALLOCATIONS.with(|n| n.get());
    println!("{sent} frames, {} forwarded, {allocations} allocations", engine.counters().forwarded);
    assert_eq!(sent, 100_000);
    assert!(engine.counters().forwarded > 10_000, "the frames were really forwarded");
    let bfd = &engine.bfd_sessions()[0];
    assert_eq!(bfd.state, State::Up, "the BFD session came up and stayed up");
    println!("BFD: {:?}", bfd.counters);
    assert!(bfd.counters.sent > 500, "and sent at its rate for the 100 s: {:?}", bfd.counters);
    assert_eq!(allocations, 0);
}

const PAIR: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] },
            { "name": "edge-2", "tap": "ng0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"] }],
  "highAvailability": { "snatAddress": "10.77.0.5", "sync": { "keyFile": "/etc/nodegate/sync.key" } },
  "services": [{ "name": "web", "externalIPs": ["10.77.0.50"], "sessionAffinity": "ClientIP",
                 "ports": [{ "name": "http", "port": 80, "targetPort": 3000 },
                           { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353 }],
                 "endpoints": [{ "ip": "10.77.0.11" }] }]
}"#;

#[test]
fn flow_sync_allocates_nothing_after_start_up() {
    use nodegate::engine::Role;
    use nodegate::sync::wire::Key;
    let cfg = config::parse(PAIR.as_bytes()).unwrap();
    let key = || Key::new(b"a key of the pair, 32 bytes long").unwrap();
    let (mut a, mut b) = (Room::new(4096), Room::new(4096));
    let mut active = a.engine_seeded(&cfg, Some("edge-1"), 1);
    let mut standby = b.engine_seeded(&cfg, Some("edge-2"), 2);
    active.start_sync(&cfg, key()).unwrap();
    standby.start_sync(&cfg, key()).unwrap();
    active.set_role(Role::Active, Millis(0));
    let mut learn = support::arp(2, EP_MAC, support::EP, support::NODE);
    assert_eq!(active.process(&mut learn, Millis(0), &mut [0; 1514]), nodegate::engine::Verdict::Stack);
    let vip = [10, 77, 0, 50];
    let frames: Vec<Vec<u8>> = (0..20_000u32)
        .flat_map(|i| {
            let client = [10, 77, 1 + (i >> 8) as u8 % 200, (i & 0xff) as u8];
            let port = 1024 + (i % 30_000) as u16;
            let from_client = || PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
            [
                built!(from_client().ipv4(client, vip, 64).tcp(port, 80, 1, 1000).syn(), b""),
                built!(from_client().ipv4(client, vip, 64).udp(port, 53), b"query"),
            ]
        })
        .collect();
    let (mut buf, mut out, mut message) = ([0u8; 1514], [0u8; 1514], [0u8; 1514]);
    let mut messages = 0u64;

    COUNTING.with(|c| c.set(true));
    for (i, frame) in frames.iter().enumerate() {
        let now = Millis(i as u64);
        buf[..frame.len()].copy_from_slice(frame);
        let _ = active.process(&mut buf[..frame.len()], now, &mut out);
        active.housekeeping(now);
        standby.housekeeping(now);
        while let Some((_, len)) = active.sync_output(now, &mut message) {
            standby.sync_receive([10, 77, 0, 1].into(), &message[..len], now);
            messages += 1;
        }
        while let Some((_, len)) = standby.sync_output(now, &mut message) {
            active.sync_receive([10, 77, 0, 2].into(), &message[..len], now);
            messages += 1;
        }
    }
    COUNTING.with(|c| c.set(false));

    let allocations = ALLOCATIONS.with(|n| n.get());
    let installed = standby.sync_counters().unwrap().flows_installed;
    println!(
        "{} frames, {messages} sync messages, {installed} flows installed, {allocations} allocations",
        frames.len()
    );
    assert!(installed > 10_000, "the flows really went across");
    assert_eq!(allocations, 0);
}
