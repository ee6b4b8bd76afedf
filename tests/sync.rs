//! Flow sync between the engines of two gateways: what the active one sends reaches the
//! standby's table as the same flow (SNAT port, endpoint, TCP state, pins), so that the standby
//! carries it on after a takeover; forged, replayed and stray messages change nothing; two
//! actives at once keep their own flows.

mod support;

use etherparse::PacketBuilder;
use nodegate::config;
use nodegate::conntrack::Flow;
use nodegate::engine::{Engine, Role, Verdict};
use nodegate::sync::wire::Key;
use nodegate::sync::{Destination, SyncDrop};
use nodegate::time::Millis;
use std::net::Ipv4Addr;
use support::{CLIENT, CLIENT_MAC, EP, EP_MAC, Room};

const VIP: [u8; 4] = [10, 77, 0, 50];
const SNAT: [u8; 4] = [10, 77, 0, 5];
const MAC: [[u8; 6]; 2] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]];
const ADDRESS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)];
const KEY: &[u8] = b"a sync key both gateways hold 32";

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] },
            { "name": "edge-2", "tap": "ng0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"] }],
  "highAvailability": { "snatAddress": "10.77.0.5", "sync": { "keyFile": "/etc/nodegate/sync.key" } },
  "services": [{ "name": "web", "externalIPs": ["10.77.0.50"], "externalTrafficPolicy": "Cluster",
                 "sessionAffinity": "ClientIP",
                 "ports": [{ "port": 80, "targetPort": 3000 }],
                 "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }]
}"#;

/// Gateway `n` (0 or 1) of `config` in the run `seed` names, holding `key`: sync started,
/// its endpoint's MAC known.
fn run_of<'a>(room: &'a mut Room, n: usize, seed: u64, key: &[u8], config: &str) -> Engine<'a> {
    let cfg = config::parse(config.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut e = room.engine_seeded(&cfg, Some(["edge-1", "edge-2"][n]), seed);
    e.start_sync(&cfg, Key::new(key).unwrap()).unwrap();
    let mut learn = support::arp(2, EP_MAC, EP, ADDRESS[n].octets());
    learn[..6].copy_from_slice(&MAC[n]);
    learn[32..38].copy_from_slice(&MAC[n]);
    assert_eq!(e.process(&mut learn, Millis(0), &mut [0; 1514]), Verdict::Stack);
    e
}

/// The messages gateway `n` sends at `now`, each with where it goes.
fn sent(e: &mut Engine, now: u64) -> Vec<(Destination, Vec<u8>)> {
    let mut out = [0u8; 1514];
    let mut all = Vec::new();
    while let Some((to, len)) = e.sync_output(Millis(now), &mut out) {
        all.push((to, out[..len].to_vec()));
    }
    all
}

/// Delivers what gateway `from` sends at `now` to gateway `to`; returns the messages.
fn deliver(from: (usize, &mut Engine), to: &mut Engine, now: u64) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    for (dest, bytes) in sent(from.1, now) {
        if matches!(dest, Destination::Peers) || dest == Destination::Peer(ADDRESS[1 - from.0]) {
            to.sync_receive(ADDRESS[from.0], &bytes, Millis(now));
            messages.push(bytes);
        }
    }
    messages
}

/// Both gateways started, each has answered the other's table request.
fn pair<'a>(a: &'a mut Room, b: &'a mut Room) -> (Engine<'a>, Engine<'a>) {
    pair_of(a, b, CONFIG)
}

fn pair_of<'a>(a: &'a mut Room, b: &'a mut Room, config: &str) -> (Engine<'a>, Engine<'a>) {
    let (mut g0, mut g1) = (run_of(a, 0, 42, KEY, config), run_of(b, 1, 42, KEY, config));
    for now in [0, 1] {
        deliver((0, &mut g0), &mut g1, now);
        deliver((1, &mut g1), &mut g0, now);
    }
    assert_eq!((g0.sync_state().unwrap().peers_in_sync(), g1.sync_state().unwrap().peers_in_sync()), (1, 1));
    (g0, g1)
}

fn tcp(n: usize, client_port: u16, seq: u32, flags: &str) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(CLIENT_MAC, MAC[n]).ipv4(CLIENT, VIP, 64).tcp(client_port, 80, seq, 1000);
    match flags {
        "S" => built!(b.syn(), b""),
        "A" => built!(b.ack(7001), b"data"),
        _ => built!(b.fin().ack(7001), b""),
    }
}

fn reply(n: usize, snat_port: u16, flags: &str) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(EP_MAC, MAC[n]).ipv4(EP, SNAT, 64).tcp(3000, snat_port, 7000, 1000);
    match flags {
        "SA" => built!(b.syn().ack(1001), b""),
        _ => built!(b.ack(1005), b""),
    }
}

fn process(e: &mut Engine, mut frame: Vec<u8>, now: u64) -> (Verdict, Vec<u8>) {
    let v = e.process(&mut frame, Millis(now), &mut [0; 1514]);
    (v, frame)
}

/// The flows of a table, as comparable values.
fn flows(e: &Engine) -> Vec<Flow> {
    let mut all: Vec<Flow> = e.conntrack().flows().collect();
    all.sort_by_key(|f| (f.client_port, f.source_port));
    all
}

/// An established connection through gateway 0 from client port 40000: its SNAT port.
fn establish(g0: &mut Engine, now: u64) -> u16 {
    let (v, out) = process(g0, tcp(0, 40000, 1000, "S"), now);
    assert_eq!(v, Verdict::Forward);
    let snat_port = u16::from_be_bytes([out[34], out[35]]);
    assert_eq!(process(g0, reply(0, snat_port, "SA"), now).0, Verdict::Forward);
    assert_eq!(process(g0, tcp(0, 40000, 1001, "A"), now).0, Verdict::Forward);
    snat_port
}

#[test]
fn the_standby_holds_the_active_gateways_flow_and_carries_it_on_after_a_takeover() {
    let (mut a, mut b) = (Room::new(64), Room::new(64));
    let (mut g0, mut g1) = pair(&mut a, &mut b);
    g0.set_role(Role::Active, Millis(10));
    let snat_port = establish(&mut g0, 10);
    // The batch waits its board time for more records, then goes.
    assert!(deliver((0, &mut g0), &mut g1, 10).is_empty());
    assert!(!deliver((0, &mut g0), &mut g1, 10 + nodegate::board::SYNC_BATCH_MILLIS).is_empty());
    let (mine, theirs) = (flows(&g0), flows(&g1));
    assert_eq!(theirs.len(), 1);
    let (f, copy) = (mine[0], theirs[0]);
    assert_eq!(
        (copy.original(), copy.reply(), copy.state, copy.endpoint_index, copy.client_mac),
        (f.original(), f.reply(), f.state, f.endpoint_index, f.client_mac)
    );
    assert_eq!(copy.state.as_str(), "ESTABLISHED");
    let counters = g1.sync_counters().unwrap();
    assert_eq!((counters.flows_installed, counters.pins_installed), (3, 1), "new, established, replied; a pin");
    // The takeover: gateway 1 forwards the next segment with the same translation, taking
    // nothing up, and the endpoint's answer goes back.
    g0.set_role(Role::Standby, Millis(20));
    g1.set_role(Role::Active, Millis(20));
    // The flow went on for megabytes on gateway 0 after its last record: the segments gateway 1
    // sees are far from any sequence number a record could have carried.
    let far_on = 1005 + 50_000_000;
    let (v, out) = process(&mut g1, tcp(1, 40000, far_on, "A"), 20);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), snat_port, "the same SNAT port");
    assert_eq!(&out[30..34], &EP[..]);
    assert_eq!(g1.counters().flows_picked_up, 0, "synced, not taken up");
    assert_eq!(process(&mut g1, reply(1, snat_port, "A"), 20).0, Verdict::Forward);
    assert_eq!(process(&mut g1, tcp(1, 40000, far_on + 4, "FA"), 20).0, Verdict::Forward, "the FIN passes");
    // A new connection from the same client follows its pin to the same endpoint.
    let (v, out) = process(&mut g1, tcp(1, 40100, 1, "S"), 20);
    assert_eq!((v, &out[30..34]), (Verdict::Forward, &EP[..]));
}

#[test]
fn forged_replayed_and_stray_messages_change_nothing_and_are_counted() {
    let (mut a, mut b) = (Room::new(64), Room::new(64));
    let (mut g0, mut g1) = pair(&mut a, &mut b);
    g0.set_role(Role::Active, Millis(10));
    establish(&mut g0, 10);
    let messages = deliver((0, &mut g0), &mut g1, 100);
    assert_eq!(messages.len(), 1);
    let before = flows(&g1);
    let received = g1.sync_counters().unwrap().messages_received;
    let drops = |e: &Engine, r| e.sync_counters().unwrap().dropped(r);
    // Replayed: the same message again, and again later.
    for now in [100, 60_000] {
        g1.sync_receive(ADDRESS[0], &messages[0], Millis(now));
    }
    assert_eq!(drops(&g1, SyncDrop::Replayed), 2);
    // Forged: the same records under a key the pair does not hold, and one flipped bit.
    let mut forger_room = Room::new(64);
    let mut forger = run_of(&mut forger_room, 0, 9, b"not the key of this pair at all!", CONFIG);
    forger.set_role(Role::Active, Millis(0));
    establish(&mut forger, 0);
    for (_, bytes) in sent(&mut forger, 100) {
        g1.sync_receive(ADDRESS[0], &bytes, Millis(100));
    }
    let mut flipped = messages[0].clone();
    flipped[40] ^= 0x80;
    g1.sync_receive(ADDRESS[0], &flipped, Millis(100));
    assert!(drops(&g1, SyncDrop::BadMac) >= 2);
    // Stray: an authentic message from an address that is not a peer; garbage; a truncation.
    g1.sync_receive(Ipv4Addr::new(10, 77, 0, 99), &messages[0], Millis(100));
    g1.sync_receive(ADDRESS[0], b"NGSY", Millis(100));
    g1.sync_receive(ADDRESS[0], &messages[0][..messages[0].len() - 1], Millis(100));
    assert_eq!(drops(&g1, SyncDrop::UnknownPeer), 1);
    assert_eq!(drops(&g1, SyncDrop::Malformed), 1);
    assert_eq!(flows(&g1), before, "the table did not change");
    let c = g1.sync_counters().unwrap();
    assert!(c.messages_received > received);
    assert_eq!(c.flows_installed, 3);
}

#[test]
fn a_restarted_peers_messages_count_only_after_it_answers_a_table_request() {
    let (mut a, mut b) = (Room::new(64), Room::new(64));
    let (_, mut g1) = pair(&mut a, &mut b);
    // Gateway 0 restarts: a new run, which gateway 1 has not taken.
    let mut a2 = Room::new(64);
    let mut g0 = run_of(&mut a2, 0, 7, KEY, CONFIG);
    g0.set_role(Role::Active, Millis(0));
    // It holds an established flow already (taken up), whose record reaches gateway 1 before
    // its table request does.
    assert_eq!(process(&mut g0, tcp(0, 40000, 1001, "A"), 0).0, Verdict::Forward);
    let batch: Vec<Vec<u8>> =
        sent(&mut g0, 100).into_iter().filter(|(to, _)| *to == Destination::Peers).map(|(_, bytes)| bytes).collect();
    assert_eq!(batch.len(), 1);
    g1.sync_receive(ADDRESS[0], &batch[0], Millis(100));
    assert_eq!(g1.sync_counters().unwrap().dropped(SyncDrop::UnknownSession), 1);
    assert!(g1.conntrack().is_empty());
    // Gateway 1 asks it for its table; the answer brings the flow.
    deliver((1, &mut g1), &mut g0, 200);
    deliver((0, &mut g0), &mut g1, 200);
    assert_eq!(g1.conntrack().len(), 1);
    assert_eq!(g1.sync_state().unwrap().peers_in_sync(), 1);
}

#[test]
fn two_actives_at_once_keep_their_own_flows_and_the_one_that_stays_active_wins() {
    let (mut a, mut b) = (Room::new(64), Room::new(64));
    // One endpoint, so that both flows go to it whatever Maglev's table on this board.
    let one_endpoint = CONFIG.replace(r#", { "ip": "10.77.0.12" }"#, "");
    let (mut g0, mut g1) = pair_of(&mut a, &mut b, &one_endpoint);
    // A partition: both active, each opens a flow from client port 40000 of a client of its own;
    // both take the client's port as the SNAT port, so their reply tuples are the same.
    g0.set_role(Role::Active, Millis(0));
    g1.set_role(Role::Active, Millis(0));
    let p0 = establish(&mut g0, 0);
    let mut syn = tcp(1, 40000, 1000, "S");
    syn[29] = 101; // another client, 10.77.0.101
    syn[24..26].copy_from_slice(&[0, 0]);
    let (v, out) = process(&mut g1, fix_checksum(syn), 0);
    assert_eq!(v, Verdict::Forward);
    assert_eq!(u16::from_be_bytes([out[34], out[35]]), p0, "the same SNAT port on both");
    let (own0, own1) = (flows(&g0), flows(&g1));
    deliver((0, &mut g0), &mut g1, 100);
    deliver((1, &mut g1), &mut g0, 100);
    assert_eq!((flows(&g0), flows(&g1)), (own0.clone(), own1), "each keeps its own");
    assert!(g0.sync_counters().unwrap().dropped(SyncDrop::Conflict) > 0);
    assert!(g1.sync_counters().unwrap().dropped(SyncDrop::Conflict) > 0);
    // The partition heals, gateway 1 goes standby: gateway 0's flows stand, and the refresh
    // walk brings them to gateway 1 in place of its own.
    g1.set_role(Role::Standby, Millis(200));
    let later = 200 + 1000 * u64::from(nodegate::board::SYNC_REFRESH_SECONDS);
    for now in [100, 200, later, later + 1000] {
        g0.housekeeping(Millis(now));
        deliver((0, &mut g0), &mut g1, now + 50);
        deliver((1, &mut g1), &mut g0, now + 50);
    }
    assert_eq!(flows(&g0), own0, "the active gateway's table is untouched");
    let theirs = flows(&g1);
    assert_eq!(
        theirs.iter().map(|f| (f.original(), f.reply())).collect::<Vec<_>>(),
        own0.iter().map(|f| (f.original(), f.reply())).collect::<Vec<_>>()
    );
}

/// `frame` with its IPv4 header checksum computed again.
fn fix_checksum(mut frame: Vec<u8>) -> Vec<u8> {
    let mut sum = 0u32;
    for i in (14..34).step_by(2) {
        sum += u32::from(u16::from_be_bytes([frame[i], frame[i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    frame
}

#[test]
fn the_sync_section_names_an_absolute_key_file_and_a_free_port() {
    let with = |sync: &str| CONFIG.replace(r#""sync": { "keyFile": "/etc/nodegate/sync.key" }"#, sync);
    let udp_node_port = CONFIG.replace(
        r#""ports": [{ "port": 80, "targetPort": 3000 }]"#,
        r#""type": "NodePort", "ports": [{ "port": 53, "targetPort": 53, "protocol": "UDP", "nodePort": 30053 }]"#,
    );
    let clash = udp_node_port.replace(r#""keyFile": "/etc/nodegate/sync.key""#, r#""keyFile": "/k", "port": 30053"#);
    for (text, error) in [
        (with(r#""sync": {}"#), "highAvailability.sync.keyFile: is required"),
        (
            with(r#""sync": { "keyFile": "sync.key" }"#),
            "highAvailability.sync.keyFile: \"sync.key\" is not an absolute path",
        ),
        (with(r#""sync": { "keyFile": "/k", "port": 70000 }"#), "highAvailability.sync.port: 70000 is outside 1-65535"),
        (clash, "highAvailability.sync.port: 30053 is the UDP nodePort of service \"web\""),
    ] {
        assert_eq!(config::parse(text.as_bytes()).unwrap_err().to_string(), error);
    }
    let cfg = config::parse(CONFIG.as_bytes()).unwrap();
    let sync = cfg.high_availability.unwrap().sync.unwrap();
    assert_eq!((sync.port, sync.key_file.as_str()), (8848, "/etc/nodegate/sync.key"));
}

#[test]
fn a_reload_cannot_change_flow_sync() {
    let running = config::parse(CONFIG.as_bytes()).unwrap();
    let next = CONFIG.replace(r#""keyFile": "/etc/nodegate/sync.key""#, r#""keyFile": "/etc/nodegate/other.key""#);
    let mut reload = Box::<nodegate::engine::Reload>::default();
    let err = reload.prepare(&running, &config::parse(next.as_bytes()).unwrap(), Some("edge-1")).unwrap_err();
    assert_eq!(err.to_string(), "highAvailability.sync: changed: restart nodegate to apply that");
    assert!(reload.prepare(&running, &running, Some("edge-1")).is_ok());
}
