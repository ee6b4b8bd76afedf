//! BFD in the engine, frame in and frame out: the router's control packets bring a session up
//! and are answered from the node address (port 49152 and up, TTL 255); hostile packets are
//! dropped and counted by reason; the session goes AdminDown while no service can serve and
//! when the gateway leaves. And what makes several gateways one next hop: they choose the same
//! endpoint for every flow, and take up a flow ECMP moved to them.

mod support;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use nodegate::bfd::wire::Control;
use nodegate::bfd::{BfdDrop, State};
use nodegate::config;
use nodegate::engine::{DropReason, Engine, Verdict};
use nodegate::time::Millis;
use support::{CLIENT, CLIENT_MAC, NODE, NODE_MAC, ROUTER, ROUTER_MAC, Room, bfd_from_router, metrics_of};

const VIP: [u8; 4] = [10, 96, 0, 10];

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" },
            { "name": "edge-2", "tap": "ng0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"], "gateway": "10.77.0.254" }],
  "bfd": { "sessions": [{ "peer": "10.77.0.254" }] },
  "services": [{ "name": "web", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "Cluster",
                 "ports": [{ "port": 80, "targetPort": 30080 }],
                 "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }]
}"#;

fn engine<'a>(room: &'a mut Room, node: &str, seed: u64) -> Engine<'a> {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    room.engine_seeded(&cfg, Some(node), seed)
}

/// What the router sends: a control packet in `state` to the node, with `ttl`.
fn control(c: &Control, ttl: u8) -> Vec<u8> {
    let mut payload = [0u8; 24];
    c.emit(&mut payload);
    built!(PacketBuilder::ethernet2(ROUTER_MAC, NODE_MAC).ipv4(ROUTER, NODE, ttl).udp(49200, 3784), &payload)
}

/// The BFD packet in an answer or output frame: checks its headers, returns its control.
fn answer(frame: &[u8]) -> Control {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    assert_eq!((ip.header().source(), ip.header().destination(), ip.header().ttl()), (NODE, ROUTER, 255));
    let Some(TransportSlice::Udp(udp)) = &p.transport else { panic!("not UDP") };
    assert_eq!((udp.source_port(), udp.destination_port()), (49152, 3784));
    assert_eq!(udp.checksum(), udp.to_header().calc_checksum_ipv4(&ip.header().to_header(), udp.payload()).unwrap());
    assert_eq!(&frame[..6], &ROUTER_MAC);
    Control::parse(udp.payload()).unwrap()
}

fn send(e: &mut Engine, mut frame: Vec<u8>, now: u64) -> (Verdict, Vec<u8>) {
    let mut out = [0u8; 1514];
    let v = e.process(&mut frame, Millis(now), &mut out);
    let len = match v {
        Verdict::Reply { len, .. } => len,
        _ => 0,
    };
    (v, out[..len].to_vec())
}

/// The packets the engine sends on its own at `now`.
fn output(e: &mut Engine, now: u64) -> Vec<Control> {
    e.housekeeping(Millis(now));
    let mut out = [0u8; 1514];
    let mut all = Vec::new();
    while let Some(len) = e.next_output(Millis(now), &mut out) {
        // ARP requests for the endpoints go out too.
        if out[12..14] == [0x08, 0x00] {
            all.push(answer(&out[..len]));
        }
    }
    all
}

/// Up by the three-way handshake; returns the session's discriminator.
fn bring_up(e: &mut Engine, now: u64) -> u32 {
    let (v, out) = send(e, control(&bfd_from_router(State::Down, 0), 255), now);
    assert!(matches!(v, Verdict::Reply { dropped: None, .. }), "{v:?}");
    let init = answer(&out);
    assert_eq!((init.state, init.your_disc), (State::Init, 0x5151));
    let (_, out) = send(e, control(&bfd_from_router(State::Up, init.my_disc), 255), now);
    assert_eq!(answer(&out).state, State::Up);
    assert_eq!(e.bfd_sessions()[0].state, State::Up);
    init.my_disc
}

#[test]
fn the_routers_packets_bring_a_session_up_and_keep_it_up() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room, "edge-1", 1);
    assert!(output(&mut e, 0).is_empty(), "passive: silent until the router speaks");
    let disc = bring_up(&mut e, 0);
    // Up, the session sends at 100 ms (75-100 % jittered) and polls until the router's final.
    let mut sent = Vec::new();
    for now in (0..=1000).step_by(10) {
        sent.extend(output(&mut e, now));
        if now % 100 == 0 {
            let from_router = Control { final_: now == 200, ..bfd_from_router(State::Up, disc) };
            assert_eq!(send(&mut e, control(&from_router, 255), now).0, Verdict::Consumed);
        }
    }
    assert!((10..=14).contains(&sent.len()), "{} packets in 1 s", sent.len());
    assert!(sent.iter().all(|c| c.state == State::Up && c.desired_min_tx_us == 100_000));
    assert!(sent.first().unwrap().poll && !sent.last().unwrap().poll);
    assert_eq!(e.counters().dropped(DropReason::Bfd), 0);
    // The router goes silent: down after 3 x 100 ms.
    output(&mut e, 1299);
    assert_eq!(e.bfd_sessions()[0].state, State::Up);
    output(&mut e, 1301);
    assert_eq!(e.bfd_sessions()[0].state, State::Down);
}

#[test]
fn hostile_packets_are_dropped_and_counted_by_reason() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room, "edge-1", 1);
    let disc = bring_up(&mut e, 0);
    let mut c = bfd_from_router(State::Up, disc);
    let cases: Vec<(Vec<u8>, BfdDrop)> = vec![
        (control(&c, 254), BfdDrop::BadTtl),
        (control(&Control { detect_mult: 0, ..c }, 255), BfdDrop::BadField),
        (control(&Control { your_disc: disc ^ 1, ..c }, 255), BfdDrop::BadDiscriminator),
        (control(&Control { your_disc: 0, ..c }, 255), BfdDrop::BadDiscriminator),
        (
            built!(
                PacketBuilder::ethernet2(ROUTER_MAC, NODE_MAC).ipv4(ROUTER, NODE, 255).udp(49200, 3784),
                &[0x20; 10]
            ),
            BfdDrop::BadLength,
        ),
        (
            {
                let mut f = control(&c, 255);
                f[42] = 0x40; // version 2
                fix_udp_checksum(f)
            },
            BfdDrop::BadVersion,
        ),
        (
            {
                let mut f = control(&c, 255);
                f[50] ^= 1; // a bit of the packet flipped, the checksum left
                f
            },
            BfdDrop::BadChecksum,
        ),
        (
            built!(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, NODE, 255).udp(49200, 3784), &{
                let mut p = [0u8; 24];
                Control { your_disc: 0, state: State::Down, ..c }.emit(&mut p);
                p
            }),
            BfdDrop::UnknownPeer,
        ),
        (
            built!(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, NODE, 255).udp(49200, 3784), &{
                let mut p = [0u8; 24];
                c.emit(&mut p);
                p
            }),
            BfdDrop::BadDiscriminator,
        ),
    ];
    for (frame, reason) in &cases {
        let before = e.bfd_dropped(*reason);
        assert_eq!(send(&mut e, frame.clone(), 10).0, Verdict::Drop(DropReason::Bfd), "{reason:?}");
        assert_eq!(e.bfd_dropped(*reason), before + 1, "{reason:?}");
    }
    assert_eq!(e.counters().dropped(DropReason::Bfd), cases.len() as u64);
    let metrics = metrics_of(&e);
    for series in [
        r#"nodegate_bfd_session_state{peer="10.77.0.254"} 3"#,
        r#"nodegate_bfd_packets_received_total{peer="10.77.0.254"} 2"#,
        r#"nodegate_bfd_session_up_total{peer="10.77.0.254"} 1"#,
        r#"nodegate_bfd_dropped_total{reason="bad_ttl"} 1"#,
        r#"nodegate_bfd_dropped_total{reason="bad_discriminator"} 3"#,
        r#"nodegate_drops_total{reason="bfd"} 9"#,
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} in:\n{metrics}");
    }
    let s = &e.bfd_sessions()[0];
    assert_eq!((s.state, s.counters.received), (State::Up, 2), "nothing hostile reached the session");
    c.final_ = true;
    assert_eq!(send(&mut e, control(&c, 255), 20).0, Verdict::Consumed);
}

fn fix_udp_checksum(mut f: Vec<u8>) -> Vec<u8> {
    let c = {
        let p = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!() };
        let Some(TransportSlice::Udp(udp)) = &p.transport else { panic!() };
        udp.to_header().calc_checksum_ipv4(&ip.header().to_header(), udp.payload()).unwrap()
    };
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

#[test]
fn a_gateway_that_cannot_serve_or_is_leaving_says_admin_down() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room, "edge-1", 1);
    let disc = bring_up(&mut e, 0);
    for ep in 0..3 {
        e.set_endpoint_health(0, ep, false);
    }
    let sent = output(&mut e, 10);
    assert_eq!(sent.iter().map(|c| (c.state, c.diag)).collect::<Vec<_>>(), [(State::AdminDown, 7)], "at once");
    assert_eq!(send(&mut e, control(&bfd_from_router(State::Up, disc), 255), 20).0, Verdict::Consumed);
    assert_eq!(e.bfd_sessions()[0].state, State::AdminDown, "the router's Up changes nothing");
    // An endpoint back: the session starts again from Down and comes up with the router.
    e.set_endpoint_health(0, 1, true);
    assert_eq!(output(&mut e, 30)[0].state, State::Down);
    let (_, out) = send(&mut e, control(&bfd_from_router(State::Down, disc), 255), 40);
    assert_eq!(answer(&out).state, State::Init);
    send(&mut e, control(&bfd_from_router(State::Up, disc), 255), 50);
    assert_eq!(e.bfd_sessions()[0].state, State::Up);
    // Leaving: AdminDown at once, and the gateway still forwards while the router moves away.
    e.bfd_leave(Millis(60));
    let mut out = [0u8; 1514];
    let len = e.next_output(Millis(60), &mut out).unwrap();
    assert_eq!(answer(&out[..len]).state, State::AdminDown);
    let mut syn =
        built!(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, VIP, 64).tcp(40000, 80, 1, 1000).syn(), b"");
    assert!(matches!(e.process(&mut syn, Millis(60), &mut out), Verdict::Parked(_) | Verdict::Forward));
}

#[test]
fn gateways_with_other_addresses_macs_and_keys_choose_the_same_endpoint_for_every_flow() {
    let (mut a, mut b) = (Room::new(1 << 17), Room::new(1 << 17));
    let (mut g1, mut g2) = (engine(&mut a, "edge-1", 1), engine(&mut b, "edge-2", 0xdead_beef));
    let mut out = [0u8; 1514];
    for (n, g) in [&mut g1, &mut g2].into_iter().enumerate() {
        for ep in 11..=13 {
            let mut learn = support::arp(2, [2, 0, 0, 0, 0, ep], [10, 77, 0, ep], [10, 77, 0, 1 + n as u8]);
            learn[..6].copy_from_slice(&[NODE_MAC, [2, 0, 0, 0, 0, 2]][n]);
            learn[32..38].copy_from_slice(&[NODE_MAC, [2, 0, 0, 0, 0, 2]][n]);
            g.process(&mut learn, Millis(0), &mut out);
        }
    }
    let mut agree = 0;
    for i in 0..100_000u32 {
        let client = [172, 16, (i >> 8) as u8, i as u8];
        let port = 1024 + (i.wrapping_mul(2_654_435_761) >> 16) as u16 % 60000;
        let mut picks = [[0u8; 4]; 2];
        for (n, g) in [&mut g1, &mut g2].into_iter().enumerate() {
            let mac = [NODE_MAC, [2, 0, 0, 0, 0, 2]][n];
            let mut syn = built!(
                PacketBuilder::ethernet2(CLIENT_MAC, mac).ipv4(client, VIP, 64).tcp(port, 80, 1, 1000).syn(),
                b""
            );
            // Within the ARP entries' lifetime: every SYN goes straight to its endpoint.
            let now = Millis(u64::from(i / 100));
            assert_eq!(g.process(&mut syn, now, &mut out), Verdict::Forward);
            picks[n].copy_from_slice(&syn[30..34]);
        }
        agree += u32::from(picks[0] == picks[1]);
    }
    assert_eq!(agree, 100_000);
}

#[test]
fn behind_ecmp_a_mid_stream_segment_is_taken_up_as_an_established_flow() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room, "edge-1", 1);
    let mut out = [0u8; 1514];
    for ep in 11..=13 {
        e.process(&mut support::arp(2, [2, 0, 0, 0, 0, ep], [10, 77, 0, ep], NODE), Millis(0), &mut out);
    }
    // An ACK with data of a connection another gateway opened: ECMP moved it here.
    let mut moved = built!(
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, VIP, 64).tcp(40000, 80, 5000, 1000).ack(9000),
        b"more"
    );
    assert_eq!(e.process(&mut moved, Millis(10), &mut out), Verdict::Forward);
    assert_eq!(e.counters().flows_picked_up, 1);
    let flow = e.conntrack().flows().next().unwrap();
    assert_eq!(flow.state.as_str(), "ESTABLISHED");
    // Without BFD (or high availability) the same segment has no flow to belong to.
    let plain = CONFIG.replace(r#""bfd": { "sessions": [{ "peer": "10.77.0.254" }] },"#, "");
    let cfg = config::parse(plain.as_bytes()).unwrap();
    let mut room = Room::new(64);
    let mut e = room.engine(&cfg, Some("edge-1"));
    let mut moved = built!(
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, VIP, 64).tcp(40000, 80, 5000, 1000).ack(9000),
        b"more"
    );
    assert_eq!(e.process(&mut moved, Millis(10), &mut out), Verdict::Drop(DropReason::TcpNoFlow));
}

/// Behind ECMP with Local policy the router sends an endpoint's reply through any gateway, and
/// after a gateway's loss through another: a gateway takes up the reply of a flow it never saw
/// when its own Maglev sends that client's tuple to that endpoint, and only then.
#[test]
fn behind_ecmp_a_reply_of_a_flow_another_gateway_opened_is_taken_up_with_local_policy() {
    let local = CONFIG.replace("Cluster", "Local");
    let cfg = config::parse(local.as_bytes()).unwrap();
    let (mut a, mut b) = (Room::new(64), Room::new(64));
    let (mut opener, mut other) = (a.engine(&cfg, Some("edge-2")), b.engine(&cfg, Some("edge-1")));
    let mut out = [0u8; 1514];
    for ep in 11..=13 {
        // Broadcast requests: edge-2 learns from them too (replies are addressed to edge-1).
        opener.process(
            &mut support::arp(1, [2, 0, 0, 0, 0, ep], [10, 77, 0, ep], [10, 77, 0, 99]),
            Millis(0),
            &mut out,
        );
    }
    other.process(&mut support::arp(2, ROUTER_MAC, ROUTER, NODE), Millis(0), &mut out);
    // A client behind the router opens a connection through edge-2; the endpoints have no
    // node, so Local sends to them from every gateway, and keeps the client's address.
    let client = [172, 16, 0, 5];
    let mut syn = built!(
        PacketBuilder::ethernet2(ROUTER_MAC, [2, 0, 0, 0, 0, 2]).ipv4(client, VIP, 64).tcp(40000, 80, 1, 1000).syn(),
        b""
    );
    assert_eq!(opener.process(&mut syn, Millis(10), &mut out), Verdict::Forward);
    assert_eq!(&syn[26..30], &client, "Local keeps the client's address");
    let chosen: [u8; 4] = syn[30..34].try_into().unwrap();
    let reply = |from: [u8; 4], syn: bool, rst: bool, payload: &[u8]| {
        let tcp = PacketBuilder::ethernet2(ROUTER_MAC, NODE_MAC).ipv4(from, client, 64).tcp(30080, 40000, 7000, 1000);
        let tcp = if syn { tcp.syn() } else { tcp };
        let tcp = if rst { tcp.rst() } else { tcp };
        built!(tcp.ack(2), payload)
    };
    // Its SYN-ACK comes back through edge-1 (the router hashes the reply's tuple on its own).
    let mut syn_ack = reply(chosen, true, false, b"");
    assert_eq!(other.process(&mut syn_ack, Millis(20), &mut out), Verdict::Forward);
    let p = SlicedPacket::from_ethernet(&syn_ack).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else { panic!("not TCP") };
    assert_eq!((ip.header().source(), ip.header().destination(), ip.header().ttl()), (VIP, client, 63));
    assert_eq!((tcp.source_port(), tcp.destination_port()), (80, 40000));
    assert_eq!(tcp.checksum(), tcp.to_header().calc_checksum_ipv4(&ip.header().to_header(), tcp.payload()).unwrap());
    assert_eq!(ip.header().header_checksum(), ip.header().to_header().calc_header_checksum());
    assert_eq!((&syn_ack[..6], &syn_ack[6..12]), (&ROUTER_MAC[..], &NODE_MAC[..]), "to the router, from the node");
    assert_eq!(other.counters().flows_picked_up, 1);
    let flow = other.conntrack().flows().next().unwrap();
    assert_eq!(flow.state.as_str(), "ESTABLISHED");
    // The flow's next replies are tracked ones.
    assert_eq!(other.process(&mut reply(chosen, false, false, b"data"), Millis(30), &mut out), Verdict::Forward);
    assert_eq!((other.counters().flows_picked_up, other.conntrack().flows().count()), (1, 1));
    // Another endpoint's "reply" on that tuple is not the flow's (Maglev sends it elsewhere),
    // and an RST or a bare SYN opens nothing.
    let elsewhere = [10, 77, 0, if chosen[3] == 11 { 12 } else { 11 }];
    let mut fresh = Room::new(64);
    let mut fresh = fresh.engine(&cfg, Some("edge-1"));
    fresh.process(&mut support::arp(2, ROUTER_MAC, ROUTER, NODE), Millis(0), &mut out);
    for (what, mut frame) in
        [("another endpoint", reply(elsewhere, false, false, b"data")), ("an RST", reply(chosen, false, true, b""))]
    {
        assert_eq!(fresh.process(&mut frame, Millis(30), &mut out), Verdict::Drop(DropReason::OtherAddress), "{what}");
    }
    let mut bare_syn = built!(
        PacketBuilder::ethernet2(ROUTER_MAC, NODE_MAC).ipv4(chosen, client, 64).tcp(30080, 40000, 7000, 1000).syn(),
        b""
    );
    assert_eq!(fresh.process(&mut bare_syn, Millis(30), &mut out), Verdict::Drop(DropReason::OtherAddress));
    assert_eq!(fresh.conntrack().flows().count(), 0);
    // Before the router's MAC is known the reply is not held (a held frame would leave
    // untranslated): the router is asked, the reply dropped, and its next copy taken up.
    let mut unresolved = Room::new(64);
    let mut unresolved = unresolved.engine(&cfg, Some("edge-1"));
    let v = unresolved.process(&mut reply(chosen, false, false, b"data"), Millis(30), &mut out);
    assert!(matches!(v, Verdict::Reply { len, dropped: Some(DropReason::NeighborMissing) } if len > 0), "{v:?}");
    assert_eq!(unresolved.conntrack().flows().count(), 0);
    // With Cluster policy the endpoints answer the gateway's own address, never a client: a
    // reply to a client is no flow's. Nor without BFD or high availability.
    for site in [CONFIG.to_string(), local.replace(r#""bfd": { "sessions": [{ "peer": "10.77.0.254" }] },"#, "")] {
        let cfg = config::parse(site.as_bytes()).unwrap();
        let mut room = Room::new(64);
        let mut e = room.engine(&cfg, Some("edge-1"));
        e.process(&mut support::arp(2, ROUTER_MAC, ROUTER, NODE), Millis(0), &mut out);
        let mut frame = reply(chosen, false, false, b"data");
        assert_eq!(e.process(&mut frame, Millis(30), &mut out), Verdict::Drop(DropReason::OtherAddress));
    }
}
