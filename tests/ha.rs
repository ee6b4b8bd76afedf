//! High availability in the engine: the standby role leaves service traffic to the active
//! gateway, the active one answers for the virtual IPs and floating addresses, announces them
//! by gratuitous ARP when it takes over, and SNATs to the floating address.

mod support;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders};
use nodegate::board;
use nodegate::config;
use nodegate::engine::{DropReason, Engine, Role, Verdict};
use nodegate::time::Millis;
use support::{CLIENT, CLIENT_MAC, EP, EP_MAC, NODE, NODE_MAC, Room, arp};

const SNAT: [u8; 4] = [10, 77, 0, 5];
const ENDPOINT_GATEWAY: [u8; 4] = [10, 77, 0, 6];
const VIP: [u8; 4] = [10, 77, 0, 50];

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] },
            { "name": "edge-2", "tap": "ng0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"] }],
  "highAvailability": { "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6" },
  "services": [{ "name": "web", "externalIPs": ["10.77.0.50"],
                 "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                 "endpoints": [{ "ip": "10.77.0.11" }] }]
}"#;

fn engine(room: &mut Room) -> Engine<'_> {
    let cfg = config::parse(CONFIG.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut e = room.engine(&cfg, Some("edge-1"));
    assert_eq!(e.process(&mut arp(2, EP_MAC, EP, NODE), Millis(0), &mut [0; 1514]), Verdict::Stack);
    e
}

fn syn(dst: [u8; 4], port: u16) -> Vec<u8> {
    built!(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, dst, 64).tcp(40000, port, 1, 1000).syn(), b"")
}

fn send(e: &mut Engine, mut frame: Vec<u8>, now: u64) -> (Verdict, Vec<u8>) {
    let mut out = [0u8; 1514];
    let verdict = e.process(&mut frame, Millis(now), &mut out);
    match verdict {
        Verdict::Reply { len, .. } => (verdict, out[..len].to_vec()),
        _ => (verdict, frame),
    }
}

/// The gratuitous ARPs among the frames the engine sends on its own at `now`: the address each
/// announces.
fn announced(e: &mut Engine, now: u64) -> Vec<[u8; 4]> {
    let mut out = [0u8; 1514];
    let mut seen = Vec::new();
    while let Some(len) = e.next_output(Millis(now), &mut out) {
        let f = &out[..len];
        let (sender, target) = ([f[28], f[29], f[30], f[31]], [f[38], f[39], f[40], f[41]]);
        if f[12..14] == [8, 6] && sender == target {
            assert_eq!(
                (&f[0..6], &f[6..12], &f[20..22], &f[22..28]),
                (&[0xff; 6][..], &NODE_MAC[..], &[0, 1][..], &NODE_MAC[..])
            );
            seen.push(sender);
        }
    }
    seen
}

#[test]
fn a_gateway_with_high_availability_starts_standby_and_leaves_service_traffic_alone() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room);
    assert_eq!(e.role(), Role::Standby);
    for (what, frame) in [("the external IP", syn(VIP, 80)), ("the nodePort", syn(NODE, 30080))] {
        assert_eq!(send(&mut e, frame, 0).0, Verdict::Drop(DropReason::Standby), "{what}");
    }
    // It answers ARP for none of the addresses that move with the role (smoltcp gets the request,
    // and answers only for the node's own address).
    for ip in [VIP, SNAT, ENDPOINT_GATEWAY] {
        assert_eq!(send(&mut e, arp(1, CLIENT_MAC, CLIENT, ip), 0).0, Verdict::Stack, "ARP for {ip:?}");
    }
    assert!(announced(&mut e, 0).is_empty());
    assert_eq!(e.counters().dropped(DropReason::Standby), 2);
    assert!(e.conntrack().is_empty());
}

#[test]
fn becoming_active_announces_every_moving_address_by_gratuitous_arp_in_spaced_rounds() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room);
    assert_eq!(e.set_role(Role::Active, Millis(5000)), Role::Standby);
    let round = vec![SNAT, ENDPOINT_GATEWAY, VIP];
    assert_eq!(announced(&mut e, 5000), round);
    for r in 1..board::GRATUITOUS_ARP_COUNT as u64 {
        let at = 5000 + r * board::GRATUITOUS_ARP_INTERVAL_MILLIS;
        assert!(announced(&mut e, at - 1).is_empty(), "round {r} waits for its time");
        assert_eq!(announced(&mut e, at), round, "round {r}");
    }
    assert!(announced(&mut e, 5000 + 100 * board::GRATUITOUS_ARP_INTERVAL_MILLIS).is_empty(), "then no more");
    // Taking the role it has changes nothing and announces nothing.
    assert_eq!(e.set_role(Role::Active, Millis(9000)), Role::Active);
    assert!(announced(&mut e, 9000).is_empty());
}

#[test]
fn the_active_gateway_answers_for_the_floating_addresses_and_snats_to_one() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room);
    e.set_role(Role::Active, Millis(0));
    for ip in [VIP, SNAT, ENDPOINT_GATEWAY] {
        let (verdict, answer) = send(&mut e, arp(1, CLIENT_MAC, CLIENT, ip), 0);
        assert_eq!(verdict, Verdict::Reply { len: answer.len(), dropped: None }, "ARP for {ip:?}");
        assert_eq!((&answer[28..32], &answer[22..28]), (&ip[..], &NODE_MAC[..]), "{ip:?} is at the node's MAC");
    }
    let (verdict, out) = send(&mut e, syn(VIP, 80), 0);
    assert_eq!(verdict, Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&out).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = h.net else { panic!() };
    assert_eq!((ip.source, ip.destination), (SNAT, EP), "the endpoint sees the floating SNAT address");
    let port = u16::from_be_bytes([out[34], out[35]]);
    let reply = built!(
        PacketBuilder::ethernet2(EP_MAC, NODE_MAC).ipv4(EP, SNAT, 64).tcp(3000, port, 9, 1000).syn().ack(2),
        b""
    );
    let (verdict, back) = send(&mut e, reply, 0);
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!((&back[26..30], &back[30..34]), (&VIP[..], &CLIENT[..]), "the reply goes back from the VIP");
}

#[test]
fn going_standby_keeps_the_flows_and_stops_their_traffic_until_active_again() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room);
    e.set_role(Role::Active, Millis(0));
    assert_eq!(send(&mut e, syn(VIP, 80), 0).0, Verdict::Forward);
    let again = || {
        built!(PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, VIP, 64).tcp(40000, 80, 1, 1000).syn(), b"")
    };
    e.set_role(Role::Standby, Millis(10));
    assert_eq!(send(&mut e, again(), 10).0, Verdict::Drop(DropReason::Standby));
    assert_eq!(e.conntrack().len(), 1, "the flow is kept");
    e.set_role(Role::Active, Millis(20));
    assert_eq!(send(&mut e, again(), 20).0, Verdict::Forward, "the same flow goes on");
    assert_eq!(e.conntrack().len(), 1);
}

#[test]
fn floating_addresses_are_checked_against_every_node_and_the_site() {
    let with =
        |ha: &str| CONFIG.replace(r#"{ "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6" }"#, ha);
    for (ha, error) in [
        (
            r#"{ "snatAddress": "10.78.0.5" }"#,
            "highAvailability.snatAddress: 10.78.0.5 is on none of node edge-1's subnets",
        ),
        (r#"{ "snatAddress": "10.77.0.2" }"#, "highAvailability.snatAddress: 10.77.0.2 is a node address or gateway"),
        (
            r#"{ "snatAddress": "10.77.0.11" }"#,
            "highAvailability.snatAddress: 10.77.0.11 is a virtual IP or an endpoint of service \"web\"",
        ),
        (r#"{ "endpointGatewayAddress": "10.77.0.6" }"#, "highAvailability.snatAddress: is required"),
        (
            r#"{ "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.5" }"#,
            "highAvailability.endpointGatewayAddress: 10.77.0.5 is the snatAddress too",
        ),
    ] {
        let err = config::parse(with(ha).as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), error);
    }
    // Without the section a gateway is active from the start.
    let plain = CONFIG
        .replace(r#""highAvailability": { "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6" },"#, "");
    let cfg = config::parse(plain.as_bytes()).unwrap();
    let mut room = Room::new(16);
    assert_eq!(room.engine(&cfg, Some("edge-1")).role(), Role::Active);
}

/// A mid-stream segment from the client: an ACK with data, as after a failover.
fn mid_stream(flags: &str, client_port: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(CLIENT, VIP, 64).tcp(client_port, 80, 5000, 1000);
    match flags {
        "A" => built!(b.ack(7000), b"more data"),
        "FA" => built!(b.fin().ack(7000), b""),
        _ => built!(b.rst().ack(7000), b""),
    }
}

#[test]
fn the_active_gateway_takes_up_a_mid_stream_flow_as_established() {
    let mut room = Room::new(64);
    let mut e = engine(&mut room);
    e.set_role(Role::Active, Millis(0));
    let (verdict, out) = send(&mut e, mid_stream("A", 40001), 0);
    assert_eq!(verdict, Verdict::Forward, "taken up");
    assert_eq!((&out[26..30], &out[30..34]), (&SNAT[..], &EP[..]));
    let flow = e.conntrack().flows().next().unwrap();
    assert_eq!((flow.state.as_str(), e.counters().flows_picked_up), ("ESTABLISHED", 1));
    // The endpoint's answer goes back to the client as from the VIP.
    let port = u16::from_be_bytes([out[34], out[35]]);
    let ack = built!(
        PacketBuilder::ethernet2(EP_MAC, NODE_MAC).ipv4(EP, SNAT, 64).tcp(3000, port, 7000, 1000).ack(5009),
        b""
    );
    let (verdict, back) = send(&mut e, ack, 0);
    assert_eq!(verdict, Verdict::Forward);
    assert_eq!((&back[26..30], &back[30..34]), (&VIP[..], &CLIENT[..]));
    // A FIN or an RST of an untracked tuple is not a flow to take up.
    for (flags, port) in [("FA", 40002), ("RA", 40003)] {
        assert_eq!(send(&mut e, mid_stream(flags, port), 0).0, Verdict::Drop(DropReason::TcpNoFlow), "{flags}");
    }
    assert_eq!(e.counters().flows_picked_up, 1);
}

#[test]
fn without_high_availability_a_mid_stream_segment_opens_nothing() {
    let plain = CONFIG
        .replace(r#""highAvailability": { "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6" },"#, "");
    let cfg = config::parse(plain.as_bytes()).unwrap();
    let mut room = Room::new(16);
    let mut e = room.engine(&cfg, Some("edge-1"));
    assert_eq!(send(&mut e, mid_stream("A", 40001), 0).0, Verdict::Drop(DropReason::TcpNoFlow));
    assert!(e.conntrack().is_empty());
}

#[test]
fn a_reload_that_drops_high_availability_leaves_no_standby() {
    let mut room = Room::new(16);
    let mut e = engine(&mut room);
    assert_eq!(e.role(), Role::Standby);
    let running = config::parse(CONFIG.as_bytes()).unwrap();
    let plain = CONFIG
        .replace(r#""highAvailability": { "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6" },"#, "");
    let mut reload = Box::<nodegate::engine::Reload>::default();
    reload.prepare(&running, &config::parse(plain.as_bytes()).unwrap(), Some("edge-1")).unwrap();
    e.apply(&mut reload);
    assert_eq!(e.role(), Role::Active);
    assert_eq!(send(&mut e, syn(VIP, 80), 0).0, Verdict::Forward);
}
