//! The engine, frame in → frame out + verdict. Frames are built and checked with etherparse, an
//! implementation independent of ours, so a checksum or field we get wrong cannot agree with
//! itself.

mod support;

use etherparse::{Icmpv4Type, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use nodegate::config;
use nodegate::engine::{DropReason, Engine, Offload, Verdict};
use nodegate::time::Millis;
use support::{CLIENT, CLIENT_MAC, EP, EP_MAC, GATEWAY_MAC, NODE, NODE_MAC, Room};

const REMOTE: [u8; 4] = [192, 0, 2, 7];

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01",
              "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" }],
  "services": [
    { "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
      "endpoints": [{ "ip": "10.77.0.11" }] },
    { "name": "dns", "ports": [{ "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
      "endpoints": [{ "ip": "10.77.0.11" }] },
    { "name": "empty", "ports": [{ "name": "t", "port": 1, "nodePort": 30090 }, { "name": "u", "protocol": "UDP", "port": 1, "nodePort": 30090 }],
      "endpoints": [] },
    { "name": "local", "externalTrafficPolicy": "Local", "ports": [{ "port": 81, "targetPort": 3001, "nodePort": 30081 }],
      "endpoints": [{ "ip": "10.77.0.11", "nodeName": "edge-1" }] }
  ]
}"#;

/// A room for 64 flows.
fn small() -> Room {
    Room::new(64)
}

fn engine(room: &mut Room) -> Engine<'_> {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let mut e = room.engine(&cfg, None);
    // The endpoint and the gateway answered ARP earlier.
    for (ip, mac) in [(EP, EP_MAC), ([10, 77, 0, 254], GATEWAY_MAC)] {
        let mut arp = arp_reply(mac, ip);
        assert_eq!(e.process(&mut arp, Millis(0), &mut [0; 1514]), Verdict::Stack);
    }
    e
}

fn arp_reply(mac: [u8; 6], ip: [u8; 4]) -> Vec<u8> {
    support::arp(2, mac, ip, NODE)
}

#[derive(Clone, Copy)]
enum L4 {
    Syn { seq: u32 },
    SynAck { seq: u32, ack: u32 },
    Ack { seq: u32, ack: u32 },
    Fin { seq: u32, ack: u32 },
    Udp,
}

fn frame(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.0, dst.0, ttl);
    let mut out = Vec::new();
    match l4 {
        L4::Syn { seq } => ip.tcp(src.1, dst.1, seq, 64240).syn().write(&mut out, payload),
        L4::SynAck { seq, ack } => ip.tcp(src.1, dst.1, seq, 64240).syn().ack(ack).write(&mut out, payload),
        L4::Ack { seq, ack } => ip.tcp(src.1, dst.1, seq, 64240).ack(ack).write(&mut out, payload),
        L4::Fin { seq, ack } => ip.tcp(src.1, dst.1, seq, 64240).fin().ack(ack).write(&mut out, payload),
        L4::Udp => ip.udp(src.1, dst.1).write(&mut out, payload),
    }
    .unwrap();
    out
}

/// What an output frame must be, checked field by field with every checksum recomputed.
struct Want {
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
}

fn check_frame(out: &[u8], want: &Want, payload: &[u8], what: &str) {
    let h = PacketHeaders::from_ethernet_slice(out).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    let eth = h.link.clone().and_then(|l| l.ethernet2()).unwrap();
    assert_eq!((eth.source, eth.destination), want.macs, "{what}: MACs");
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!("{what}: not IPv4") };
    assert_eq!((ip.source, ip.destination, ip.time_to_live), (want.src.0, want.dst.0, want.ttl), "{what}: IP");
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{what}: IP checksum");
    let body = h.payload.slice();
    assert_eq!(body, payload, "{what}: payload");
    match h.transport.as_ref().unwrap() {
        TransportHeader::Tcp(t) => {
            assert_eq!((t.source_port, t.destination_port), (want.src.1, want.dst.1), "{what}: ports");
            assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, body).unwrap(), "{what}: TCP checksum");
        }
        TransportHeader::Udp(u) => {
            assert_eq!((u.source_port, u.destination_port), (want.src.1, want.dst.1), "{what}: ports");
            assert_eq!(u.checksum, u.calc_checksum_ipv4(ip, body).unwrap(), "{what}: UDP checksum");
        }
        other => panic!("{what}: unexpected {other:?}"),
    }
}

struct Row {
    what: &'static str,
    input: Vec<u8>,
    verdict: Verdict,
    /// For `Forward`, the rewritten frame; for `Reply`, checked by `reply`.
    want: Option<Want>,
    payload: &'static [u8],
}

fn run(e: &mut Engine, rows: Vec<Row>) {
    for mut row in rows {
        let mut out = [0u8; 1514];
        let verdict = e.process(&mut row.input, Millis(1000), &mut out);
        assert_eq!(verdict, row.verdict, "{}", row.what);
        if let Some(want) = &row.want {
            check_frame(&row.input, want, row.payload, row.what);
        }
    }
}

const SVC: ([u8; 4], u16) = (NODE, 30080);
const CLI: ([u8; 4], u16) = (CLIENT, 40000);
const BACKEND: ([u8; 4], u16) = (EP, 3000);
/// The client's port is free at the endpoint, so SNAT keeps it.
const SNAT: ([u8; 4], u16) = (NODE, 40000);

#[test]
fn tcp_flow_is_dnated_snated_and_translated_back() {
    let mut s = small();
    let mut e = engine(&mut s);
    let to_node = (CLIENT_MAC, NODE_MAC);
    let to_ep = (NODE_MAC, EP_MAC);
    let from_ep = (EP_MAC, NODE_MAC);
    let to_client = (NODE_MAC, CLIENT_MAC);
    run(
        &mut e,
        vec![
            Row {
                what: "SYN to NodeIP:nodePort → DNAT to the endpoint, SNAT to the node, TTL - 1",
                input: frame(to_node, CLI, SVC, 64, L4::Syn { seq: 100 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: to_ep, src: SNAT, dst: BACKEND, ttl: 63 }),
                payload: b"",
            },
            Row {
                what: "SYN-ACK from the endpoint → back to the client from NodeIP:nodePort",
                input: frame(from_ep, BACKEND, SNAT, 64, L4::SynAck { seq: 900, ack: 101 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: to_client, src: SVC, dst: CLI, ttl: 63 }),
                payload: b"",
            },
            Row {
                what: "data from the client follows the flow",
                input: frame(to_node, CLI, SVC, 64, L4::Ack { seq: 101, ack: 901 }, b"GET / HTTP/1.0\r\n\r\n"),
                verdict: Verdict::Forward,
                want: Some(Want { macs: to_ep, src: SNAT, dst: BACKEND, ttl: 63 }),
                payload: b"GET / HTTP/1.0\r\n\r\n",
            },
            Row {
                what: "odd-length data from the endpoint (checksum padding)",
                input: frame(from_ep, BACKEND, SNAT, 64, L4::Ack { seq: 901, ack: 119 }, b"hello"),
                verdict: Verdict::Forward,
                want: Some(Want { macs: to_client, src: SVC, dst: CLI, ttl: 63 }),
                payload: b"hello",
            },
            Row {
                what: "a mid-stream segment of no tracked flow is dropped",
                input: frame(to_node, (CLIENT, 40001), SVC, 64, L4::Ack { seq: 1, ack: 1 }, b""),
                verdict: Verdict::Drop(DropReason::TcpNoFlow),
                want: None,
                payload: b"",
            },
            Row {
                what: "a reply to a port nothing tracks goes to the node's own stack",
                input: frame(from_ep, BACKEND, (NODE, 40002), 64, L4::Ack { seq: 1, ack: 1 }, b""),
                verdict: Verdict::Stack,
                want: None,
                payload: b"",
            },
        ],
    );
    assert_eq!(e.counters().new_flows, 1);
    assert_eq!(e.conntrack().flows().next().unwrap().state.as_str(), "ESTABLISHED");
}

#[test]
fn udp_both_ways() {
    let mut s = small();
    let mut e = engine(&mut s);
    let cli = (CLIENT, 50000);
    run(
        &mut e,
        vec![
            Row {
                what: "UDP to the nodePort → endpoint:targetPort, from the node",
                input: frame((CLIENT_MAC, NODE_MAC), cli, (NODE, 30053), 64, L4::Udp, b"query"),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, EP_MAC), src: (NODE, 50000), dst: (EP, 5353), ttl: 63 }),
                payload: b"query",
            },
            Row {
                what: "the answer goes back from NodeIP:nodePort",
                input: frame((EP_MAC, NODE_MAC), (EP, 5353), (NODE, 50000), 64, L4::Udp, b"answer!"),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, CLIENT_MAC), src: (NODE, 30053), dst: cli, ttl: 63 }),
                payload: b"answer!",
            },
        ],
    );
    assert!(e.conntrack().flows().next().unwrap().replied());
}

#[test]
fn udp_without_checksum_stays_without() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut f = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"q");
    f[14 + 20 + 6] = 0;
    f[14 + 20 + 7] = 0;
    assert_eq!(e.process(&mut f, Millis(0), &mut [0; 1514]), Verdict::Forward);
    assert_eq!(&f[14 + 20 + 6..14 + 20 + 8], &[0, 0]);
}

#[test]
fn local_policy_keeps_the_client_address() {
    let mut s = small();
    let mut e = engine(&mut s);
    run(
        &mut e,
        vec![
            Row {
                what: "Local: DNAT only, the endpoint sees the client",
                input: frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 30081), 64, L4::Syn { seq: 1 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, EP_MAC), src: CLI, dst: (EP, 3001), ttl: 63 }),
                payload: b"",
            },
            Row {
                what: "Local: the reply, routed via the node, goes back from NodeIP:nodePort",
                input: frame((EP_MAC, NODE_MAC), (EP, 3001), CLI, 64, L4::SynAck { seq: 5, ack: 2 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, CLIENT_MAC), src: (NODE, 30081), dst: CLI, ttl: 63 }),
                payload: b"",
            },
        ],
    );
}

#[test]
fn local_policy_hairpin_is_snated_to_the_node() {
    let mut s = small();
    let mut e = engine(&mut s);
    let me = (EP, 45000);
    run(
        &mut e,
        vec![
            Row {
                what: "the endpoint is its own service's client: it sees the node, not itself",
                input: frame((EP_MAC, NODE_MAC), me, (NODE, 30081), 64, L4::Syn { seq: 1 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, EP_MAC), src: (NODE, 45000), dst: (EP, 3001), ttl: 63 }),
                payload: b"",
            },
            Row {
                what: "its answer to the node goes back to it from NodeIP:nodePort",
                input: frame((EP_MAC, NODE_MAC), (EP, 3001), (NODE, 45000), 64, L4::SynAck { seq: 5, ack: 2 }, b""),
                verdict: Verdict::Forward,
                want: Some(Want { macs: (NODE_MAC, EP_MAC), src: (NODE, 30081), dst: me, ttl: 63 }),
                payload: b"",
            },
        ],
    );
}

#[test]
fn no_endpoint_answers_rst_for_tcp_and_port_unreachable_for_udp() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];

    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 30090), 64, L4::Syn { seq: 1000 }, b"");
    let Verdict::Reply { len, .. } = e.process(&mut syn, Millis(0), &mut out) else { panic!("TCP: no reply") };
    let h = PacketHeaders::from_ethernet_slice(&out[..len]).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!() };
    let Some(TransportHeader::Tcp(t)) = &h.transport else { panic!() };
    assert_eq!((ip.source, ip.destination), (NODE, CLIENT));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!((t.source_port, t.destination_port), (30090, 40000));
    assert!(t.rst && t.ack && !t.syn);
    assert_eq!(t.acknowledgment_number, 1001, "RST acknowledges the SYN");
    assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, &[]).unwrap());
    assert_eq!(h.link.unwrap().ethernet2().unwrap().destination, CLIENT_MAC);

    let mut dgram = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30090), 64, L4::Udp, b"hello?");
    let Verdict::Reply { len, .. } = e.process(&mut dgram, Millis(0), &mut out) else { panic!("UDP: no reply") };
    let h = PacketHeaders::from_ethernet_slice(&out[..len]).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!() };
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else { panic!() };
    assert_eq!((ip.source, ip.destination), (NODE, CLIENT));
    assert!(matches!(
        icmp.icmp_type,
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
    ));
    let quoted = h.payload.slice();
    assert_eq!(quoted, &dgram[14..14 + 28], "quotes the IP header and 8 bytes of the datagram");
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(quoted));
    assert_eq!(e.counters().dropped(DropReason::NoEndpoint), 2);
    assert!(e.conntrack().is_empty());
}

#[test]
fn ttl_expiry_drops_and_answers_time_exceeded() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 1, L4::Syn { seq: 1 }, b"");
    let Verdict::Reply { len, .. } = e.process(&mut syn, Millis(0), &mut out) else { panic!("no reply") };
    let h = PacketHeaders::from_ethernet_slice(&out[..len]).unwrap();
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else { panic!() };
    assert!(matches!(icmp.icmp_type, Icmpv4Type::TimeExceeded(_)));
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(h.payload.slice()));
    assert_eq!(e.counters().dropped(DropReason::TtlExceeded), 1);
    assert!(e.conntrack().is_empty(), "no flow for a packet that never left");

    // On a tracked flow, both ways: dropped and answered, not counted as the flow's traffic.
    assert_eq!(
        e.process(&mut frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b""), Millis(0), &mut out),
        Verdict::Forward
    );
    let rows = [
        frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 1, L4::Ack { seq: 2, ack: 1 }, b"x"),
        frame((EP_MAC, NODE_MAC), BACKEND, SNAT, 1, L4::SynAck { seq: 1, ack: 2 }, b""),
    ];
    for mut f in rows {
        assert!(matches!(e.process(&mut f, Millis(0), &mut out), Verdict::Reply { .. }));
    }
    assert_eq!(e.counters().dropped(DropReason::TtlExceeded), 3);
    assert_eq!(e.service_counters(0).ports[0].packets, [1, 0], "only the SYN went through");
}

#[test]
fn syn_reusing_a_time_wait_tuple_gets_a_fresh_snat_port() {
    let mut s = small();
    let mut e = engine(&mut s);
    let to_node = (CLIENT_MAC, NODE_MAC);
    let from_ep = (EP_MAC, NODE_MAC);
    let mut out = [0u8; 1514];
    let steps = [
        frame(to_node, CLI, SVC, 64, L4::Syn { seq: 1 }, b""),
        frame(from_ep, BACKEND, SNAT, 64, L4::SynAck { seq: 9, ack: 2 }, b""),
        frame(to_node, CLI, SVC, 64, L4::Ack { seq: 2, ack: 10 }, b""),
        frame(to_node, CLI, SVC, 64, L4::Fin { seq: 2, ack: 10 }, b""),
        frame(from_ep, BACKEND, SNAT, 64, L4::Fin { seq: 10, ack: 3 }, b""),
        frame(to_node, CLI, SVC, 64, L4::Ack { seq: 3, ack: 11 }, b""),
    ];
    for mut f in steps {
        assert_eq!(e.process(&mut f, Millis(0), &mut out), Verdict::Forward);
    }
    assert_eq!(e.conntrack().flows().next().unwrap().state.as_str(), "TIME_WAIT");

    let mut again = frame(to_node, CLI, SVC, 64, L4::Syn { seq: 5000 }, b"");
    assert_eq!(e.process(&mut again, Millis(1000), &mut out), Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&again).unwrap();
    let Some(TransportHeader::Tcp(t)) = &h.transport else { panic!() };
    assert_ne!(t.source_port, 40000, "the old tuple is still reserved at the endpoint");
    assert!(nodegate::config::PortRange::SNAT.contains(t.source_port));
    assert_eq!(e.conntrack().len(), 2, "the TIME_WAIT flow stays until it expires");
    let web = e.service_counters(0);
    assert_eq!((e.counters().new_flows, web.ports[0].connections), (2, 2));
    assert_eq!(web.ports[0].packets, [5, 2], "each packet counted once, the reopening SYN included");

    // A late segment of the old connection still reaches the client through the old flow.
    let mut late = frame(from_ep, BACKEND, SNAT, 64, L4::Ack { seq: 11, ack: 3 }, b"");
    assert_eq!(e.process(&mut late, Millis(1000), &mut out), Verdict::Forward);
    // The new connection's reply comes back on its own port.
    let new_port = t.source_port;
    let mut synack = frame(from_ep, BACKEND, (NODE, new_port), 64, L4::SynAck { seq: 1, ack: 5001 }, b"");
    assert_eq!(e.process(&mut synack, Millis(1000), &mut out), Verdict::Forward);
    check_frame(
        &synack,
        &Want { macs: (NODE_MAC, CLIENT_MAC), src: SVC, dst: CLI, ttl: 63 },
        b"",
        "new flow's SYN-ACK",
    );
}

/// Takes `cli` through a three-way handshake with the endpoint (client at 101, endpoint at 901).
fn handshake(
    e: &mut Engine,
    cli: ([u8; 4], u16),
    svc: ([u8; 4], u16),
    seen_as: ([u8; 4], u16),
    backend: ([u8; 4], u16),
) {
    let steps = [
        frame((CLIENT_MAC, NODE_MAC), cli, svc, 64, L4::Syn { seq: 100 }, b""),
        frame((EP_MAC, NODE_MAC), backend, seen_as, 64, L4::SynAck { seq: 900, ack: 101 }, b""),
        frame((CLIENT_MAC, NODE_MAC), cli, svc, 64, L4::Ack { seq: 101, ack: 901 }, b""),
    ];
    for mut f in steps {
        assert_eq!(e.process(&mut f, Millis(0), &mut [0; 1514]), Verdict::Forward);
    }
}

/// A TCP segment with flags `RST`, `RST_ACK`, `SYN` or `FIN_ACK` (acknowledging 901) at `seq`.
fn tcp_with(src: ([u8; 4], u16), dst: ([u8; 4], u16), macs: ([u8; 6], [u8; 6]), seq: u32, flags: u8) -> Vec<u8> {
    let tcp = PacketBuilder::ethernet2(macs.0, macs.1).ipv4(src.0, dst.0, 64).tcp(src.1, dst.1, seq, 64240);
    let tcp = match flags {
        RST => tcp.rst(),
        RST_ACK => tcp.rst().ack(901),
        SYN => tcp.syn(),
        _ => tcp.fin().ack(901),
    };
    let mut out = Vec::new();
    tcp.write(&mut out, b"").unwrap();
    out
}

const RST: u8 = 0x04;
const RST_ACK: u8 = 0x14;
const FIN_ACK: u8 = 0x11;
const SYN: u8 = 0x02;

#[test]
fn blind_resets_and_fins_do_not_end_an_established_flow() {
    let mut s = small();
    let mut e = engine(&mut s);
    handshake(&mut e, CLI, SVC, SNAT, BACKEND);
    let to_node = (CLIENT_MAC, NODE_MAC);
    let from_ep = (EP_MAC, NODE_MAC);
    let state = |e: &Engine| e.conntrack().flows().next().unwrap().state.as_str();
    let mut out = [0u8; 1514];
    let rows: &[(&str, Vec<u8>, Verdict)] = &[
        (
            "an RST far from the client's sequence",
            tcp_with(CLI, SVC, to_node, 0x8000_0000, RST),
            Verdict::Drop(DropReason::TcpOutOfWindow),
        ),
        (
            "an RST+ACK far from the endpoint's",
            tcp_with(BACKEND, SNAT, from_ep, 901 + (1 << 21), RST_ACK),
            Verdict::Drop(DropReason::TcpOutOfWindow),
        ),
        (
            "a FIN far ahead of the client's",
            tcp_with(CLI, SVC, to_node, 101 + (1 << 21), FIN_ACK),
            Verdict::Drop(DropReason::TcpOutOfWindow),
        ),
        (
            "a FIN behind what the endpoint sent",
            tcp_with(BACKEND, SNAT, from_ep, 500, FIN_ACK),
            Verdict::Drop(DropReason::TcpOutOfWindow),
        ),
        (
            "an RST near the client's sequence: passed on for a challenge ACK",
            tcp_with(CLI, SVC, to_node, 101 + 5000, RST),
            Verdict::Forward,
        ),
        (
            "a blind SYN on the flow's tuple: passed on for a challenge ACK, the sequence kept",
            tcp_with(BACKEND, SNAT, from_ep, 0x7000_0000, SYN),
            Verdict::Forward,
        ),
    ];
    for (what, f, verdict) in rows {
        let mut f = f.clone();
        assert_eq!(e.process(&mut f, Millis(1000), &mut out), *verdict, "{what}");
        assert_eq!(state(&e), "ESTABLISHED", "{what}");
    }
    assert_eq!(e.counters().dropped(DropReason::TcpOutOfWindow), 4);
    assert_eq!(e.counters().resets_not_exact, 1);
    assert_eq!(e.service_counters(0).ports[0].packets, [3, 2], "refused segments are not the flow's traffic");
    // The endpoint's own RST, at its exact sequence, ends the flow.
    let mut rst = tcp_with(BACKEND, SNAT, from_ep, 901, RST);
    assert_eq!(e.process(&mut rst, Millis(1000), &mut out), Verdict::Forward);
    assert_eq!(state(&e), "CLOSE");
}

#[test]
fn a_syn_reopening_a_closed_local_flow_passes_the_new_flow_checks() {
    let mut s = small();
    let mut e = engine(&mut s);
    let local = (NODE, 30081);
    let backend = (EP, 3001);
    handshake(&mut e, CLI, local, CLI, backend);
    let mut rst = tcp_with(CLI, local, (CLIENT_MAC, NODE_MAC), 101, RST);
    assert_eq!(e.process(&mut rst, Millis(0), &mut [0; 1514]), Verdict::Forward);
    assert_eq!(e.conntrack().flows().next().unwrap().state.as_str(), "CLOSE");
    // The service's only local endpoint goes down: a new SYN on the old tuple has nowhere to go.
    e.set_endpoint_health(3, 0, false);
    let mut again = frame((CLIENT_MAC, NODE_MAC), CLI, local, 64, L4::Syn { seq: 7000 }, b"");
    assert_eq!(e.process(&mut again, Millis(1000), &mut [0; 1514]), Verdict::Drop(DropReason::NoLocalEndpoint));
    assert!(e.conntrack().is_empty(), "the closed flow is gone, no new one");
    // Back up: the SYN makes a new flow, tracked from its own sequence.
    e.set_endpoint_health(3, 0, true);
    let mut again = frame((CLIENT_MAC, NODE_MAC), CLI, local, 64, L4::Syn { seq: 7000 }, b"");
    assert_eq!(e.process(&mut again, Millis(1000), &mut [0; 1514]), Verdict::Forward);
    assert_eq!(e.conntrack().flows().next().unwrap().state.as_str(), "SYN_SENT");
    assert_eq!(e.service_counters(3).ports[0].connections, 2);
}

#[test]
fn unresolved_endpoint_parks_the_frame_and_asks_arp() {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let mut s = small();
    let mut e = s.engine(&cfg, None);
    let mut out = [0u8; 1514];
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
    let Verdict::Parked(len) = e.process(&mut syn, Millis(0), &mut out) else { panic!("not parked") };
    let h = PacketHeaders::from_ethernet_slice(&out[..len]).unwrap();
    let Some(NetHeaders::Arp(arp)) = &h.net else { panic!("no ARP request") };
    assert_eq!((arp.sender_protocol_addr(), arp.target_protocol_addr()), (&NODE[..], &EP[..]));
    assert_eq!(h.link.unwrap().ethernet2().unwrap().destination, [0xff; 6]);

    assert_eq!(e.process(&mut arp_reply(EP_MAC, EP), Millis(10), &mut out), Verdict::Stack);
    let len = e.next_output(Millis(10), &mut out).expect("the parked frame goes out");
    check_frame(
        &out[..len],
        &Want { macs: (NODE_MAC, EP_MAC), src: SNAT, dst: BACKEND, ttl: 63 },
        b"",
        "released frame",
    );
}

#[test]
fn endpoint_off_link_goes_via_the_gateway() {
    let json = CONFIG.replace(
        r#""endpoints": [{ "ip": "10.77.0.11" }] },
    { "name": "dns""#,
        r#""endpoints": [{ "ip": "192.0.2.7" }] },
    { "name": "dns""#,
    );
    let cfg = config::parse(json.as_bytes()).unwrap();
    let mut s = small();
    let mut e = s.engine(&cfg, None);
    e.process(&mut arp_reply(GATEWAY_MAC, [10, 77, 0, 254]), Millis(0), &mut [0; 1514]);
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
    assert_eq!(e.process(&mut syn, Millis(0), &mut [0; 1514]), Verdict::Forward);
    check_frame(
        &syn,
        &Want { macs: (NODE_MAC, GATEWAY_MAC), src: SNAT, dst: (REMOTE, 3000), ttl: 63 },
        b"",
        "via gateway",
    );
}

#[test]
fn a_full_snat_pool_takes_ports_back_from_unanswered_flows_never_from_answered_ones() {
    use nodegate::board::{SNAT_PORT_MAX, SNAT_PORT_MIN};
    let mut s = Room::new(65536);
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    // Every SNAT port towards 10.77.0.11:5353: each client port is free, so each is kept.
    for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
        let mut f = frame((CLIENT_MAC, NODE_MAC), (CLIENT, port), (NODE, 30053), 64, L4::Udp, b"q");
        assert_eq!(e.process(&mut f, Millis(0), &mut out), Verdict::Forward, "client port {port}");
    }
    let span = (SNAT_PORT_MAX - SNAT_PORT_MIN) as usize + 1;
    assert_eq!(e.conntrack().snat_ports_in_use(), span);
    assert_eq!(e.conntrack().pool_use(1, 0, 0), span);
    // Another client: none is free, so an unanswered flow gives its port up, counted.
    let mut f = frame((CLIENT_MAC, NODE_MAC), ([10, 77, 0, 101], 40000), (NODE, 30053), 64, L4::Udp, b"q");
    assert_eq!(e.process(&mut f, Millis(1000), &mut out), Verdict::Forward);
    let port = u16::from_be_bytes([f[14 + 20], f[14 + 21]]);
    assert_eq!((e.conntrack().len(), e.conntrack().port_evictions()), (span, 1));
    let holders = e.conntrack().flows().filter(|f| f.source_port == port && f.proto == 17).count();
    assert_eq!(holders, 1, "port {port} is held by the new flow alone");
    // Every flow is answered: now nothing gives way, and no port is taken twice.
    for port in SNAT_PORT_MIN..=SNAT_PORT_MAX {
        let mut f = frame((EP_MAC, NODE_MAC), (EP, 5353), (NODE, port), 64, L4::Udp, b"a");
        assert_eq!(e.process(&mut f, Millis(1000), &mut out), Verdict::Forward, "answer to {port}");
    }
    let mut f = frame((CLIENT_MAC, NODE_MAC), ([10, 77, 0, 102], 40000), (NODE, 30053), 64, L4::Udp, b"q");
    assert_eq!(e.process(&mut f, Millis(1000), &mut out), Verdict::Drop(DropReason::SnatExhausted));
    assert_eq!((e.conntrack().len(), e.conntrack().port_evictions()), (span, 1));
    // Another endpoint port has its own pool: TCP to 10.77.0.11:3000 still gets one.
    let mut syn = frame((CLIENT_MAC, NODE_MAC), ([10, 77, 0, 101], 40000), SVC, 64, L4::Syn { seq: 1 }, b"");
    assert_eq!(e.process(&mut syn, Millis(1000), &mut out), Verdict::Forward);
}

#[test]
fn a_snat_pool_more_than_half_used_shortens_the_handshake_timeout() {
    use nodegate::board::{SNAT_PORT_MIN, TIMEOUTS};
    use nodegate::conntrack::POOL_PORTS;
    // A table four times the pool: it stays below half full while the pool passes half.
    let mut s = Room::new(4 * POOL_PORTS);
    let mut e = engine(&mut s);
    let syn = |port: u16| frame((CLIENT_MAC, NODE_MAC), (CLIENT, port), SVC, 64, L4::Syn { seq: 1 }, b"");
    let expires_of_last = |e: &Engine| e.conntrack().expires(e.conntrack().len() - 1);
    assert_eq!(e.process(&mut syn(SNAT_PORT_MIN), Millis(0), &mut [0; 1514]), Verdict::Forward);
    assert_eq!(expires_of_last(&e), TIMEOUTS.tcp_syn_sent);
    for port in SNAT_PORT_MIN + 1..SNAT_PORT_MIN + (POOL_PORTS / 2) as u16 + 1 {
        assert_eq!(e.process(&mut syn(port), Millis(0), &mut [0; 1514]), Verdict::Forward);
    }
    assert!(e.conntrack().len() * 2 < e.conntrack().capacity());
    assert_eq!(expires_of_last(&e), TIMEOUTS.tcp_syn_sent_under_pressure);
    assert_eq!(e.conntrack().expires(0), TIMEOUTS.tcp_syn_sent_under_pressure, "the first flow too, at once");
}

#[test]
fn malformed_odd_and_foreign_frames_are_dropped_each_with_its_reason() {
    let mut s = small();
    let mut e = engine(&mut s);
    let tcp_flags = |flags: u8| {
        let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
        f[14 + 20 + 13] = flags;
        f
    };
    let rows: Vec<(&str, Vec<u8>, Verdict)> = vec![
        ("SYN+FIN", tcp_flags(0x03), Verdict::Drop(DropReason::BadTcpFlags)),
        ("SYN+RST", tcp_flags(0x06), Verdict::Drop(DropReason::BadTcpFlags)),
        ("no flags (null scan)", tcp_flags(0x00), Verdict::Drop(DropReason::BadTcpFlags)),
        ("FIN+PSH+URG (Christmas tree)", tcp_flags(0x29), Verdict::Drop(DropReason::BadTcpFlags)),
        ("FIN without ACK", tcp_flags(0x01), Verdict::Drop(DropReason::BadTcpFlags)),
        ("RST without ACK, for no flow", tcp_flags(0x04), Verdict::Drop(DropReason::TcpNoFlow)),
        ("SYN with PSH and ECE, a new flow", tcp_flags(0x4a), Verdict::Forward),
        (
            "UDP from port 0",
            frame((CLIENT_MAC, NODE_MAC), (CLIENT, 0), (NODE, 30053), 64, L4::Udp, b"x"),
            Verdict::Drop(DropReason::ZeroPort),
        ),
        (
            "an IPv4 packet of 1504 bytes",
            frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, &[7; 1504 - 28]),
            Verdict::Drop(DropReason::Oversized),
        ),
        (
            "TCP to port 0",
            frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 0), 64, L4::Syn { seq: 1 }, b""),
            Verdict::Drop(DropReason::ZeroPort),
        ),
        (
            "unicast to another MAC",
            frame((CLIENT_MAC, EP_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b""),
            Verdict::Drop(DropReason::OtherMac),
        ),
        (
            "to another IP",
            frame((CLIENT_MAC, NODE_MAC), CLI, (EP, 30080), 64, L4::Syn { seq: 1 }, b""),
            Verdict::Drop(DropReason::OtherAddress),
        ),
        (
            "to a node port that is no service",
            frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 22), 64, L4::Syn { seq: 1 }, b""),
            Verdict::Stack,
        ),
        ("truncated Ethernet", vec![0; 10], Verdict::Drop(DropReason::Truncated)),
        (
            "IPv6",
            {
                let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Udp, b"");
                f[12] = 0x86;
                f[13] = 0xdd;
                f
            },
            Verdict::Drop(DropReason::UnsupportedEthertype),
        ),
        (
            "bad IP header checksum",
            {
                let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
                f[24] ^= 0xff;
                f
            },
            Verdict::Drop(DropReason::BadChecksum),
        ),
        (
            "IHL below 5",
            {
                let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
                f[14] = 0x44;
                f
            },
            Verdict::Drop(DropReason::Malformed),
        ),
        (
            "total length past the frame",
            {
                let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
                f[16] = 0x05;
                f
            },
            Verdict::Drop(DropReason::Malformed),
        ),
        (
            "cut TCP header",
            {
                let f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
                let mut g = f[..14 + 20 + 10].to_vec();
                g[16..18].copy_from_slice(&30u16.to_be_bytes());
                fix_ip_checksum(&mut g);
                g
            },
            Verdict::Drop(DropReason::Truncated),
        ),
        (
            "multicast source MAC",
            frame(([1, 0, 0x5e, 0, 0, 1], NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b""),
            Verdict::Drop(DropReason::MartianSource),
        ),
        (
            "broadcast source IP",
            frame((CLIENT_MAC, NODE_MAC), ([255; 4], 1), SVC, 64, L4::Syn { seq: 1 }, b""),
            Verdict::Drop(DropReason::MartianSource),
        ),
        (
            "a later fragment whose first fragment never passed",
            {
                let mut f = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"x");
                f[21] = 0x10;
                fix_ip_checksum(&mut f);
                f
            },
            Verdict::Drop(DropReason::Fragment),
        ),
    ];
    let count = rows.len() as u64;
    for (what, mut f, want) in rows {
        assert_eq!(e.process(&mut f, Millis(0), &mut [0; 1514]), want, "{what}");
    }
    assert_eq!(e.counters().dropped(DropReason::OtherMac), 1);
    assert_every_frame_accounted(&e, 2 + count);
}

fn fix_ip_checksum(f: &mut [u8]) {
    f[24] = 0;
    f[25] = 0;
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap().to_header();
    f[24..26].copy_from_slice(&ip.calc_header_checksum().to_be_bytes());
}

#[test]
fn random_frames_never_panic() {
    let mut s = small();
    let mut e = engine(&mut s);
    let base = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"payload");
    let mut seed = 1u64;
    for i in 0..50_000u64 {
        let mut f = base.clone();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for k in 0..(seed % 4) {
            let at = ((seed >> (8 * k)) as usize) % f.len();
            f[at] = (seed >> (16 + k)) as u8;
        }
        f.truncate(((seed >> 40) as usize % (f.len() + 1)).max(if i % 3 == 0 { f.len() } else { 0 }));
        let mut out = [0u8; 1514];
        let _ = e.process(&mut f, Millis(i), &mut out);
    }
    assert_every_frame_accounted(&e, 2 + 50_000);
}

/// Every frame the engine received (`received`: the fixture's two ARP replies included) is
/// forwarded, handed to the stack, answered, dropped with a reason, or still waiting for ARP.
fn assert_every_frame_accounted(e: &Engine, received: u64) {
    let c = e.counters();
    let drops: u64 = c.drops.iter().sum::<u64>() - c.dropped(DropReason::TxBusy);
    assert_eq!(c.received, received);
    assert_eq!(c.forwarded + c.to_stack + c.answered + drops + e.frames_waiting() as u64, received, "{c:?}");
}

/// An ICMP error from `from` (at `mac`) to `to`, quoting `quoted` (an IP packet: header and at
/// least 8 bytes of its payload).
fn icmp_error(mac: [u8; 6], from: [u8; 4], to: [u8; 4], kind: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, NODE_MAC).ipv4(from, to, 64).icmpv4(kind).write(&mut out, quoted).unwrap();
    out
}

/// The quoted packet of an ICMP error frame: (IP header, transport header).
fn quoted_headers(frame: &[u8]) -> (etherparse::Ipv4Header, Vec<u8>) {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else { panic!("not ICMP") };
    let body = h.payload.slice();
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(body), "ICMP checksum");
    let (ip, rest) = etherparse::Ipv4Header::from_slice(body).unwrap();
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "quoted IP checksum");
    (ip, rest.to_vec())
}

#[test]
fn icmp_errors_about_tracked_flows_are_translated_both_ways() {
    use etherparse::icmpv4::DestUnreachableHeader;
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    for mut f in [
        frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b""),
        frame((EP_MAC, NODE_MAC), BACKEND, SNAT, 64, L4::SynAck { seq: 9, ack: 2 }, b""),
        frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"query"),
    ] {
        assert_eq!(e.process(&mut f, Millis(0), &mut out), Verdict::Forward);
    }

    // A router on the client's side cannot pass a large reply: fragmentation needed, to the
    // node, quoting the reply as the node sent it. The endpoint must hear it, about its own packet.
    let reply_as_sent = frame((NODE_MAC, CLIENT_MAC), SVC, CLI, 63, L4::Ack { seq: 10, ack: 2 }, &[0u8; 1400]);
    let too_big = DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 };
    let mut err = icmp_error(
        GATEWAY_MAC,
        REMOTE,
        NODE,
        Icmpv4Type::DestinationUnreachable(too_big.clone()),
        &reply_as_sent[14..14 + 28],
    );
    assert_eq!(e.process(&mut err, Millis(0), &mut out), Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&err).unwrap();
    let Some(NetHeaders::Ipv4(outer, _)) = &h.net else { panic!() };
    assert_eq!((outer.source, outer.destination, outer.time_to_live), (NODE, EP, 63), "to the endpoint, from the node");
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    assert_eq!(h.link.clone().unwrap().ethernet2().unwrap().destination, EP_MAC);
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else { panic!() };
    assert_eq!(icmp.icmp_type, Icmpv4Type::DestinationUnreachable(too_big), "the MTU stays");
    let (inner, l4) = quoted_headers(&err);
    assert_eq!((inner.source, inner.destination), (EP, NODE), "the packet as the endpoint sent it");
    assert_eq!((u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])), (3000, 40000));

    // The endpoint's UDP port is closed: port unreachable, quoting the datagram as the node
    // forwarded it. The client must hear it, about its own datagram, with its checksum intact.
    let forwarded = frame((NODE_MAC, EP_MAC), (NODE, 50000), (EP, 5353), 63, L4::Udp, b"query");
    let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let mut err = icmp_error(EP_MAC, EP, NODE, unreachable.clone(), &forwarded[14..14 + 28]);
    assert_eq!(e.process(&mut err, Millis(0), &mut out), Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&err).unwrap();
    let Some(NetHeaders::Ipv4(outer, _)) = &h.net else { panic!() };
    assert_eq!((outer.source, outer.destination), (NODE, CLIENT), "to the client, from the node");
    assert_eq!(h.link.clone().unwrap().ethernet2().unwrap().destination, CLIENT_MAC);
    let (inner, l4) = quoted_headers(&err);
    assert_eq!((inner.source, inner.destination), (CLIENT, NODE));
    let as_sent = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"query");
    assert_eq!(&l4[..8], &as_sent[14 + 20..14 + 28], "ports, length and checksum as the client sent them");

    // An error about nothing we track goes to the node itself.
    let stranger = frame((NODE_MAC, CLIENT_MAC), (NODE, 1234), CLI, 63, L4::Udp, b"x");
    let mut err = icmp_error(GATEWAY_MAC, REMOTE, NODE, unreachable, &stranger[14..14 + 28]);
    assert_eq!(e.process(&mut err, Millis(0), &mut out), Verdict::Stack);
}

#[test]
fn icmp_errors_are_checked_before_they_are_translated_and_never_answered() {
    use etherparse::icmpv4::DestUnreachableHeader;
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    let mut udp = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"query");
    assert_eq!(e.process(&mut udp, Millis(0), &mut out), Verdict::Forward);
    let forwarded = frame((NODE_MAC, EP_MAC), (NODE, 50000), (EP, 5353), 63, L4::Udp, b"query");
    let unreachable = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let error = |to: [u8; 4], ttl: u8| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(EP_MAC, NODE_MAC)
            .ipv4(EP, to, ttl)
            .icmpv4(unreachable.clone())
            .write(&mut f, &forwarded[14..14 + 28])
            .unwrap();
        f
    };
    // To another host than the quoted packet's sender (the node).
    let mut elsewhere = error([10, 77, 0, 2], 64);
    assert_eq!(e.process(&mut elsewhere, Millis(0), &mut out), Verdict::Drop(DropReason::BadIcmpError));
    // Corrupted in flight: one quoted byte flipped, the ICMP checksum left as it was.
    let mut corrupt = error(NODE, 64);
    corrupt[14 + 20 + 8 + 20 + 6] ^= 0x40;
    assert_eq!(e.process(&mut corrupt, Millis(0), &mut out), Verdict::Drop(DropReason::BadIcmpError));
    // Its TTL runs out here: dropped, and not answered with an error about an error.
    let mut last_hop = error(NODE, 1);
    assert_eq!(e.process(&mut last_hop, Millis(0), &mut out), Verdict::Drop(DropReason::TtlExceeded));
    assert_eq!(e.counters().replies_suppressed, 0);
    // Intact and addressed right, it passes.
    let mut good = error(NODE, 64);
    assert_eq!(e.process(&mut good, Millis(0), &mut out), Verdict::Forward);
}

#[test]
fn made_up_answers_are_rate_limited() {
    use nodegate::board::{REPLIES_PER_SECOND, REPLY_BURST};
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    let burst = REPLY_BURST as u64;
    let mut answered = 0;
    for port in 0..2 * burst {
        let mut syn =
            frame((CLIENT_MAC, NODE_MAC), (CLIENT, 40000 + port as u16), (NODE, 30090), 64, L4::Syn { seq: 1 }, b"");
        match e.process(&mut syn, Millis(5000), &mut out) {
            Verdict::Reply { .. } => answered += 1,
            v => assert_eq!(v, Verdict::Drop(DropReason::NoEndpoint)),
        }
        let mut ttl = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 40000 + port as u16), SVC, 1, L4::Syn { seq: 1 }, b"");
        match e.process(&mut ttl, Millis(5000), &mut out) {
            Verdict::Reply { .. } => answered += 1,
            v => assert_eq!(v, Verdict::Drop(DropReason::TtlExceeded)),
        }
    }
    assert_eq!(answered, burst, "one bucket for RSTs and ICMP errors");
    assert_eq!(e.counters().replies_suppressed, 3 * burst);
    assert_eq!(e.counters().dropped(DropReason::NoEndpoint) + e.counters().dropped(DropReason::TtlExceeded), 4 * burst);
    // The bucket fills at the board's rate.
    let later = Millis(5000 + 1000 * burst / REPLIES_PER_SECOND as u64 + 1);
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 30090), 64, L4::Syn { seq: 1 }, b"");
    assert!(matches!(e.process(&mut syn, later, &mut out), Verdict::Reply { .. }));
}

/// `datagram` (an IPv4 packet) cut into fragments of at most `mtu` bytes, as Ethernet frames.
fn fragments(macs: ([u8; 6], [u8; 6]), datagram: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let (header, payload) = datagram.split_at(20);
    let step = (mtu - 20) / 8 * 8;
    payload
        .chunks(step)
        .enumerate()
        .map(|(i, part)| {
            let mut ip = etherparse::Ipv4Header::from_slice(header).unwrap().0;
            ip.more_fragments = (i + 1) * step < payload.len();
            ip.fragment_offset = etherparse::IpFragOffset::try_new((i * step / 8) as u16).unwrap();
            ip.set_payload_len(part.len()).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            let mut f = Vec::new();
            etherparse::Ethernet2Header {
                source: macs.0,
                destination: macs.1,
                ether_type: etherparse::EtherType::IPV4,
            }
            .write(&mut f)
            .unwrap();
            ip.write(&mut f).unwrap();
            f.extend_from_slice(part);
            f
        })
        .collect()
}

/// Reassembles translated fragments (in order) and checks the datagram: addresses, ports, and
/// the TCP or UDP checksum over the whole datagram.
fn reassembled(frames: &[Vec<u8>], src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut payload = Vec::new();
    for f in frames {
        let (ip, rest) = etherparse::Ipv4Header::from_slice(&f[14..]).unwrap();
        assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "fragment IP checksum");
        assert_eq!((ip.source, ip.destination), (src.0, dst.0), "fragment addresses");
        assert_eq!(ip.fragment_offset.byte_offset() as usize, payload.len(), "fragment order");
        payload.extend_from_slice(&rest[..ip.payload_len().unwrap() as usize]);
    }
    let first = etherparse::Ipv4Header::from_slice(&frames[0][14..]).unwrap().0;
    if first.protocol == etherparse::IpNumber::TCP {
        let (tcp, data) = etherparse::TcpHeader::from_slice(&payload).unwrap();
        assert_eq!((tcp.source_port, tcp.destination_port), (src.1, dst.1));
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4_raw(src.0, dst.0, data).unwrap(), "TCP checksum");
        return data.to_vec();
    }
    let (udp, data) = etherparse::UdpHeader::from_slice(&payload).unwrap();
    assert_eq!((udp.source_port, udp.destination_port), (src.1, dst.1));
    assert_eq!(
        udp.checksum,
        udp.calc_checksum_ipv4_raw(src.0, dst.0, data).unwrap(),
        "UDP checksum of the whole datagram"
    );
    data.to_vec()
}

/// Passes `frames` through the engine, each to be forwarded; returns them as translated.
fn forwarded(e: &mut Engine, frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out = [0u8; 1514];
    frames
        .into_iter()
        .map(|mut f| {
            assert_eq!(e.process(&mut f, Millis(0), &mut out), Verdict::Forward);
            f
        })
        .collect()
}

#[test]
fn fragmented_udp_is_translated_both_ways() {
    let mut s = small();
    let mut e = engine(&mut s);
    let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
    let cli = (CLIENT, 50000);
    let request = frame((CLIENT_MAC, NODE_MAC), cli, (NODE, 30053), 64, L4::Udp, &data);
    let sent = forwarded(&mut e, fragments((CLIENT_MAC, NODE_MAC), &request[14..], 1500));
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|f| f[0..6] == EP_MAC));
    assert_eq!(reassembled(&sent, (NODE, 50000), (EP, 5353)), data, "the endpoint gets the whole datagram");

    let answer = frame((EP_MAC, NODE_MAC), (EP, 5353), (NODE, 50000), 64, L4::Udp, &data);
    let back = forwarded(&mut e, fragments((EP_MAC, NODE_MAC), &answer[14..], 1500));
    assert!(back.iter().all(|f| f[0..6] == CLIENT_MAC));
    assert_eq!(reassembled(&back, (NODE, 30053), cli), data, "the client gets the whole answer");
    assert_eq!(e.counters().dropped(DropReason::Fragment), 0);
}

#[test]
fn fragmented_tcp_is_translated_both_ways() {
    let mut s = small();
    let mut e = engine(&mut s);
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    // A SYN with data, cut in three: rare, but legal.
    let syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, &data);
    let sent = forwarded(&mut e, fragments((CLIENT_MAC, NODE_MAC), &syn[14..], 1100));
    assert_eq!(sent.len(), 3);
    let snat = (NODE, CLI.1);
    assert_eq!(reassembled(&sent, snat, (EP, 3000)), data, "the endpoint gets the whole segment");

    let answer = frame((EP_MAC, NODE_MAC), (EP, 3000), snat, 64, L4::SynAck { seq: 9, ack: 3002 }, &data);
    let back = forwarded(&mut e, fragments((EP_MAC, NODE_MAC), &answer[14..], 1500));
    assert_eq!(reassembled(&back, SVC, CLI), data, "the client gets the whole answer");
    assert_eq!(e.counters().dropped(DropReason::Fragment), 0);
}

/// The TCP/UDP checksum field of `f` and the span it covers, from the IPv4 header.
fn transport(f: &[u8]) -> (usize, std::ops::Range<usize>) {
    let l4 = 14 + (f[14] & 0x0f) as usize * 4;
    let end = 14 + u16::from_be_bytes([f[16], f[17]]) as usize;
    (l4 + if f[23] == 6 { 16 } else { 6 }, l4..end)
}

/// One's-complement sum of 16-bit words, folded.
fn fold(words: impl Iterator<Item = u16>) -> u16 {
    let mut acc: u32 = words.map(u32::from).sum();
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn words(b: &[u8]) -> impl Iterator<Item = u16> + '_ {
    b.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
}

/// Leaves the transport checksum of `f` as a local sender with checksum offload does: the sum of
/// the pseudo-header only, not complemented.
fn make_partial(f: &mut [u8]) {
    let (at, span) = transport(f);
    let pseudo = [&f[26..34], &[0, f[23]], &(span.len() as u16).to_be_bytes()].concat();
    f[at..at + 2].copy_from_slice(&fold(words(&pseudo)).to_be_bytes());
}

/// Finishes a partial checksum as the kernel does when the frame leaves: the segment summed
/// over the field that holds the pseudo-header's sum.
fn finish_partial(f: &mut [u8]) {
    let (at, span) = transport(f);
    let check = !fold(words(&f[span]));
    f[at..at + 2].copy_from_slice(&check.to_be_bytes());
}

const PARTIAL: Offload = Offload { partial_checksum: true, segment_size: 0 };

#[test]
fn partial_checksums_follow_the_addresses_both_ways() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    let rows = [
        (
            "TCP SYN to the nodePort",
            frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"hello"),
            Want { macs: (NODE_MAC, EP_MAC), src: SNAT, dst: BACKEND, ttl: 63 },
        ),
        (
            "its SYN-ACK back",
            frame((EP_MAC, NODE_MAC), BACKEND, SNAT, 64, L4::SynAck { seq: 9, ack: 7 }, b"hello"),
            Want { macs: (NODE_MAC, CLIENT_MAC), src: SVC, dst: CLI, ttl: 63 },
        ),
        (
            "UDP to the nodePort",
            frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, b"hello"),
            Want { macs: (NODE_MAC, EP_MAC), src: (NODE, 50000), dst: (EP, 5353), ttl: 63 },
        ),
    ];
    for (what, mut f, want) in rows {
        make_partial(&mut f);
        assert_eq!(e.process_offloaded(&mut f, PARTIAL, Millis(0), &mut out), Verdict::Forward, "{what}");
        finish_partial(&mut f);
        check_frame(&f, &want, b"hello", what);
    }
}

#[test]
fn super_frames_pass_whole_when_their_segments_fit_the_mtu() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"");
    assert_eq!(e.process(&mut syn, Millis(0), &mut out), Verdict::Forward);
    let data = vec![7u8; 10_000];
    let data_frame = || {
        let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Ack { seq: 2, ack: 10 }, &data);
        make_partial(&mut f);
        f
    };
    let gso = |segment_size| Offload { partial_checksum: true, segment_size };

    let mut f = data_frame();
    assert_eq!(e.process_offloaded(&mut f, gso(1448), Millis(0), &mut out), Verdict::Forward);
    finish_partial(&mut f);
    check_frame(&f, &Want { macs: (NODE_MAC, EP_MAC), src: SNAT, dst: BACKEND, ttl: 63 }, &data, "super-frame");
    assert_eq!(e.service_counters(0).ports[0].packets[0], 1 + 7, "the SYN, then 10,000 bytes in 7 segments");

    let rows = [
        ("the same frame without offload", Offload::NONE, DropReason::Oversized),
        ("segments of 1461 bytes: 1501-byte packets", gso(1461), DropReason::Oversized),
    ];
    for (what, offload, reason) in rows {
        assert_eq!(
            e.process_offloaded(&mut data_frame(), offload, Millis(0), &mut out),
            Verdict::Drop(reason),
            "{what}"
        );
    }
    let mut udp = frame((CLIENT_MAC, NODE_MAC), (CLIENT, 50000), (NODE, 30053), 64, L4::Udp, &data);
    let udp_segmented = e.process_offloaded(&mut udp, gso(1400), Millis(0), &mut out);
    assert_eq!(udp_segmented, Verdict::Drop(DropReason::Malformed), "the TAP offers TCP segmentation only");
}

#[test]
fn frames_that_leave_without_their_offload_get_a_whole_checksum() {
    let mut s = small();
    let mut e = engine(&mut s);
    let mut out = [0u8; 1514];
    // For the node's own stack (smoltcp checks checksums and takes MTU-sized packets).
    let mut f = frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 22), 64, L4::Syn { seq: 1 }, b"hello");
    let whole = f.clone();
    make_partial(&mut f);
    assert_eq!(e.process_offloaded(&mut f, PARTIAL, Millis(0), &mut out), Verdict::Stack);
    assert_eq!(f, whole, "the node's stack gets the finished checksum");
    let mut big = frame((CLIENT_MAC, NODE_MAC), CLI, (NODE, 22), 64, L4::Ack { seq: 2, ack: 1 }, &[1; 5000]);
    let offload = Offload { partial_checksum: true, segment_size: 1448 };
    assert_eq!(e.process_offloaded(&mut big, offload, Millis(0), &mut out), Verdict::Drop(DropReason::Oversized));

    // Parked for ARP: it leaves later with an empty virtio-net header.
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let mut s = small();
    let mut e = s.engine(&cfg, None);
    let mut syn = frame((CLIENT_MAC, NODE_MAC), CLI, SVC, 64, L4::Syn { seq: 1 }, b"hello");
    make_partial(&mut syn);
    assert!(matches!(e.process_offloaded(&mut syn, PARTIAL, Millis(0), &mut out), Verdict::Parked(_)));
    assert_eq!(e.process(&mut arp_reply(EP_MAC, EP), Millis(10), &mut out), Verdict::Stack);
    let len = e.next_output(Millis(10), &mut out).expect("the parked frame goes out");
    let want = Want { macs: (NODE_MAC, EP_MAC), src: SNAT, dst: BACKEND, ttl: 63 };
    check_frame(&out[..len], &want, b"hello", "released frame");
}
