use super::*;
use crate::hash::sip13;

const T: Timeouts = Timeouts {
    tcp_syn_sent: 120,
    tcp_syn_sent_under_pressure: 5,
    tcp_syn_recv: 60,
    tcp_established: 86400,
    tcp_fin_wait: 120,
    tcp_close_wait: 60,
    tcp_time_wait: 120,
    tcp_close: 10,
    udp: 30,
    udp_stream: 120,
};

/// Second `secs` of the table's clock.
fn at(secs: u32) -> Millis {
    Millis(u64::from(secs) * 1000)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn flow(client_port: u16, source_port: u16) -> Flow {
    Flow {
        client: ip(100),
        service_ip: ip(1),
        endpoint: ip(11),
        source: ip(1),
        client_port,
        service_port: 30080,
        endpoint_port: 3000,
        source_port,
        proto: 6,
        state: State::SynSent,
        ..Flow::EMPTY
    }
}

type Small = Storage<8, { buckets_for(8) }>;

const fn segment(syn: bool, ack: bool, fin: bool, rst: bool, seq: u32, len: u32) -> tcp::Segment {
    tcp::Segment { flags: tcp::Flags { syn, ack, fin, rst }, seq, len }
}

/// A handshake: the client starts at 100, the endpoint at 900.
const SYN: tcp::Segment = segment(true, false, false, false, 100, 1);
const SYN_ACK: tcp::Segment = segment(true, true, false, false, 900, 1);
const ACK: tcp::Segment = segment(false, true, false, false, 101, 0);
/// The endpoint's RST at its exact sequence.
const RST: tcp::Segment = segment(false, false, false, true, 901, 0);

/// Takes the flow in `slot` through its handshake's answer and last ACK.
fn establish(t: &mut Table, slot: usize, now: u32) {
    t.seen(slot, Direction::Reply, Some(SYN_ACK), at(now));
    t.seen(slot, Direction::Original, Some(ACK), at(now));
}

/// Adds an unreplied flow for each client port in `ports`.
fn insert_syns(t: &mut Table, ports: core::ops::Range<u16>) {
    for p in ports {
        t.insert(flow(p, p), at(0)).unwrap();
    }
}

#[test]
fn finds_a_flow_from_both_directions() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    let f = flow(40000, 40000);
    let slot = t.insert(f, at(0)).unwrap();
    assert_eq!(t.lookup(&f.original(), 1).live(), Some((slot, Direction::Original)));
    assert_eq!(t.lookup(&f.reply(), 1).live(), Some((slot, Direction::Reply)));
    let other = Tuple { src_port: 40001, ..f.original() };
    assert_eq!(t.lookup(&other, 1).live(), None);
}

#[test]
fn expired_flows_are_not_found_and_a_claim_on_their_tuples_takes_them_out() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    let f = flow(40000, 40000);
    t.insert(f, at(0)).unwrap();
    assert!(t.lookup(&f.original(), T.tcp_syn_sent - 1).live().is_some());
    assert_eq!(t.lookup(&f.original(), T.tcp_syn_sent), Lookup::Expired(0));
    assert!(t.lookup(&f.reply(), T.tcp_syn_sent).live().is_none());
    assert_eq!(t.len(), 1, "a query leaves the table as it is");
    // Claiming its tuples takes it out; a new flow on them leaves one entry of each in the index.
    assert!(t.claim(&f.original(), T.tcp_syn_sent) && t.claim(&f.reply(), T.tcp_syn_sent));
    assert!(t.is_empty());
    let later = Millis(u64::from(T.tcp_syn_sent) * 1000);
    let slot = t.insert(f, later).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&f.original(), T.tcp_syn_sent).live(), Some((slot, Direction::Original)));
    assert_eq!(t.buckets.iter().filter(|&&b| b != 0).count(), 2);
    // The sweep takes out what nobody asks for again.
    assert_eq!(t.sweep(2 * T.tcp_syn_sent, 4, |_| true).expired, 1);
    assert!(t.is_empty());
}

#[test]
fn removal_keeps_every_other_flow_reachable() {
    // Removing from the middle moves the last flow and shifts probe runs: every survivor must
    // still be found from both directions, under many keys (so many probe layouts).
    for key in 0..200u64 {
        let mut s = Small::new();
        let mut t = Table::from_storage(&mut s, [key, key * 7], T);
        let flows: [Flow; 8] = core::array::from_fn(|i| flow(1000 + i as u16, 2000 + i as u16));
        for f in flows {
            t.insert(f, at(0)).unwrap();
        }
        let gone = [3usize, 0, 7];
        for g in gone {
            let (slot, _) = t.lookup(&flows[g].original(), 1).live().unwrap();
            t.remove(slot);
        }
        for (i, f) in flows.iter().enumerate() {
            let found_o = t.lookup(&f.original(), 1).live().map(|(s, _)| t.flow(s));
            let found_r = t.lookup(&f.reply(), 1).live().map(|(s, _)| t.flow(s));
            if gone.contains(&i) {
                assert_eq!((found_o, found_r), (None, None), "key {key} flow {i}");
            } else {
                assert_eq!(found_o.map(|x| x.client_port), Some(f.client_port), "key {key} flow {i}");
                assert_eq!(found_r.map(|x| x.client_port), Some(f.client_port), "key {key} flow {i}");
            }
        }
        assert_eq!(t.len(), 5);
    }
}

#[test]
fn sweep_removes_only_expired_flows_within_its_budget() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    for i in 0..6 {
        let slot = t.insert(flow(1000 + i, 1000 + i), at(0)).unwrap();
        if i % 2 == 0 {
            establish(&mut t, slot, 0);
        }
    }
    let now = T.tcp_syn_sent + 1;
    assert_eq!(t.sweep(now, 2, |_| true).expired, 1, "two slots looked at: one expired, one established");
    for _ in 0..10 {
        assert!(t.sweep(now, 2, |_| true).expired <= 2);
    }
    assert_eq!(t.len(), 3);
    assert!(t.flows().all(|f| f.state == State::Established));
}

#[test]
fn full_table_evicts_unreplied_then_handshaking_then_closing_never_live() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    for i in 0..8u16 {
        let slot = t.insert(flow(1000 + i, 1000 + i), at(0)).unwrap();
        establish(&mut t, slot, 0);
    }
    assert_eq!(t.insert(flow(2000, 2000), at(0)), Err(Full), "every flow is established");
    // A flow answered by its endpoint but never acknowledged by its client (a spoofed SYN).
    let (slot, _) = t.lookup(&flow(1005, 1005).original(), 0).live().unwrap();
    t.remove(slot);
    let half_open = t.insert(flow(1005, 1005), at(0)).unwrap();
    t.seen(half_open, Direction::Reply, Some(SYN_ACK), at(0));
    t.insert(flow(3000, 3000), at(0)).expect("the half-open flow makes room");
    assert!(t.lookup(&flow(1005, 1005).original(), 0).live().is_none());
    assert_eq!(t.evictions(), 1);
    let (slot, _) = t.lookup(&flow(3000, 3000).original(), 0).live().unwrap();
    establish(&mut t, slot, 0);
    let (slot, _) = t.lookup(&flow(1003, 1003).original(), 0).live().unwrap();
    t.seen(slot, Direction::Reply, Some(RST), at(0));
    t.insert(flow(2000, 2000), at(0)).expect("the reset flow makes room");
    assert_eq!(t.evictions(), 2);
    assert!(t.lookup(&flow(1003, 1003).original(), 0).live().is_none());
    assert!(t.insert(flow(2001, 2001), at(0)).is_ok(), "the unreplied new flow is evicted");
    assert!(t.lookup(&flow(2000, 2000).original(), 0).live().is_none());
    assert_eq!(t.flows().filter(|f| f.state == State::Established).count(), 7);
}

#[test]
fn a_full_table_of_unreplied_flows_evicts_the_oldest_first() {
    // A SYN flood keeps the table full of flows that never see a reply. A real client's flow
    // among them must live as long as any: evicting the newest would drop it before its
    // endpoint can answer.
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    insert_syns(&mut t, 1000..1008);
    let real = flow(5000, 5000);
    t.insert(real, at(0)).unwrap();
    for i in 0..7u16 {
        t.insert(flow(2000 + i, 2000 + i), at(0)).unwrap();
        assert!(t.lookup(&real.reply(), 0).live().is_some(), "the real flow survives flood flow {i}");
    }
    assert!((0..7).all(|i| t.lookup(&flow(2000 + i, 2000 + i).original(), 0).live().is_some()));
    assert!((0..8).all(|i| t.lookup(&flow(1000 + i, 1000 + i).original(), 0).live().is_none()), "the oldest went");
    t.insert(flow(3000, 3000), at(0)).unwrap();
    assert!(t.lookup(&real.reply(), 0).live().is_none(), "now the real flow is the oldest");
    assert_eq!(t.evictions(), 9);
}

#[test]
fn a_search_that_finds_nothing_to_evict_moves_on() {
    // The search looks at a window of flows from its cursor; when the window holds only
    // established flows, the next search must look elsewhere, not at the same window again.
    let mut s = Storage::<128, { buckets_for(128) }>::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    for i in 0..128u16 {
        let slot = t.insert(flow(1000 + i, 1000 + i), at(0)).unwrap();
        if i != 100 {
            establish(&mut t, slot, 0);
        }
    }
    assert_eq!(t.insert(flow(2000, 2000), at(0)), Err(Full), "the first window holds only established flows");
    t.insert(flow(2001, 2001), at(0)).expect("the next window holds the unreplied flow");
    assert!(t.lookup(&flow(1100, 1100).original(), 0).live().is_none());
    assert_eq!(t.flows().filter(|f| f.state == State::Established).count(), 127);
}

#[test]
fn the_index_matches_the_flows_through_any_sequence_of_changes() {
    // Random inserts (evicting when full), answers, detaches, removals, sweeps, renumberings
    // and lookups of expired flows: after each, the index holds exactly the live flows' tuples,
    // each pointing at its flow's slot, the SNAT count is the live SNAT flows', each pool counts
    // the flows numbered for it, and the flows left to renumber are counted right.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut evictions = 0;
    for key in 0..20u64 {
        let mut s = Small::new();
        let mut t = Table::from_storage(&mut s, [key, !key], T);
        let mut now = 0;
        for step in 0..2_000 {
            let pick = |t: &Table, r: u64| (r as usize) % t.len().max(1);
            match next(10) {
                0..=2 => {
                    let mut f = flow(1000 + next(40) as u16, 2000 + next(40) as u16);
                    f.source = if next(2) == 0 { f.client } else { ip(1) };
                    (f.service_index, f.endpoint_index) = (next(3) as u8, next(3) as u8);
                    if t.claim(&f.original(), now) && t.claim(&f.reply(), now) {
                        let _ = t.insert(f, at(now));
                    }
                }
                3 if !t.is_empty() => {
                    let slot = pick(&t, next(64));
                    establish(&mut t, slot, now);
                }
                4 if !t.is_empty() => t.detach_original(pick(&t, next(64))),
                5 if !t.is_empty() => t.remove(pick(&t, next(64))),
                6 => {
                    t.sweep(now, 1 + next(8) as usize, |f| f.client_port % 7 != 0);
                }
                7 => {
                    let mut map = Renumbering::new();
                    for s in 0..3 {
                        map.service(s, next(4) as usize);
                        map.port(s, 0, 0);
                        for e in 0..3 {
                            map.endpoint(s, e, next(4) as usize);
                        }
                    }
                    t.renumber(map);
                }
                8 => {
                    t.renumber_some(1 + next(8) as usize);
                }
                _ => now += next(3) as u32 * T.tcp_syn_sent_under_pressure,
            }
            let indexed: usize = t.flows().map(|f| 1 + usize::from(f.marks.has(Marks::ORIGINAL_INDEXED))).sum();
            assert_eq!(t.buckets.iter().filter(|&&b| b != 0).count(), indexed, "key {key} step {step}");
            for (slot, f) in t.flows().enumerate() {
                assert_eq!(t.find(&f.reply()).map(|(_, s, d)| (s, d)), Some((slot, Direction::Reply)));
                if f.marks.has(Marks::ORIGINAL_INDEXED) {
                    assert_eq!(t.find(&f.original()).map(|(_, s, d)| (s, d)), Some((slot, Direction::Original)));
                }
            }
            assert_eq!(t.snat_ports_in_use(), t.flows().filter(|f| f.is_snat()).count());
            let raw = &t.flows[..t.len];
            assert_eq!(t.stale(), raw.iter().filter(|f| t.is_stale(f)).count(), "key {key} step {step}");
            for f in raw {
                let p = f.pool().map_or(0, |p| usize::from(t.pool_use[p]));
                assert_eq!(p, raw.iter().filter(|g| g.pool().is_some() && g.pool() == f.pool()).count());
            }
        }
        evictions += t.evictions();
    }
    assert!(evictions > 100, "the sequences must fill the table and evict: {evictions}");
}

#[test]
fn detached_original_keeps_reply_reserved() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    let old = flow(40000, 40000);
    let slot = t.insert(old, at(0)).unwrap();
    t.detach_original(slot);
    assert!(t.lookup(&old.original(), 1).live().is_none());
    assert!(t.lookup(&old.reply(), 1).live().is_some());
    let new = flow(40000, 51000);
    let new_slot = t.insert(new, at(1)).unwrap();
    assert_eq!(t.lookup(&old.original(), 1).live(), Some((new_slot, Direction::Original)));
    t.remove(slot);
    assert_eq!(t.lookup(&new.original(), 1).live().map(|(s, _)| t.flow(s).source_port), Some(51000));
    assert!(t.lookup(&old.reply(), 1).live().is_none());
}

#[test]
fn a_renumbering_reads_at_once_and_moves_a_slice_at_a_time() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    for i in 0..6u16 {
        let mut f = flow(1000 + i, 1000 + i);
        (f.service_index, f.port_index, f.endpoint_index) = (0, 0, (i % 2) as u8);
        t.insert(f, at(0)).unwrap();
    }
    let snat = |t: &Table, s, e, p| t.pool_use(s, e, p);
    assert_eq!((snat(&t, 0, 0, 0), snat(&t, 0, 1, 0)), (3, 3));
    // Service 0 became service 7, its port 0 port 2; endpoint 1 left, endpoint 0 is now 5.
    let mut map = Renumbering::new();
    map.service(0, 7);
    map.port(0, 0, 2);
    map.endpoint(0, 0, 5);
    t.renumber(map);
    assert_eq!(t.stale(), 6);
    let read: heapless::Vec<Owner, 8> = t.flows().map(|f| f.owner()).collect();
    assert!(
        read.iter().all(|o| o.service_index == 7 && o.port_index == 2),
        "read renumbered before any moves: {read:?}"
    );
    assert_eq!(read.iter().filter(|o| o.endpoint_index == 5).count(), 3);
    assert_eq!(read.iter().filter(|o| o.endpoint_index == Renumbering::GONE).count(), 3);
    assert_eq!(t.renumber_some(4), 2, "four slots a turn");
    // A flow removed before its turn is one less to renumber.
    let last = t.len() - 1;
    t.remove(last);
    assert_eq!(t.renumber_some(4), 0);
    assert_eq!(t.stale(), 0);
    assert_eq!(t.flows().map(|f| f.owner()).collect::<heapless::Vec<Owner, 8>>(), read[..5]);
    // The SNAT ports moved to the new pools; the endpoint that left has none.
    assert_eq!(snat(&t, 7, 5, 2) + snat(&t, 0, 0, 0) + snat(&t, 0, 1, 0), 3);
    assert_eq!(snat(&t, 7, 5, 2), 3);
    // Every tuple is still found, at its slot.
    for (slot, f) in t.flows().enumerate() {
        assert_eq!(t.lookup(&f.reply(), 0).live(), Some((slot, Direction::Reply)));
    }
    // A flow added meanwhile is numbered for the new config already: the next renumbering
    // takes it like the others.
    let mut map = Renumbering::new();
    map.service(7, 1);
    t.renumber(map);
    assert!(t.flows().all(|f| f.service_index == 1 && f.port_index == Renumbering::GONE));
}

#[test]
fn a_sweep_flushes_what_the_caller_no_longer_keeps() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    for i in 0..6u16 {
        t.insert(flow(1000 + i, 1000 + i), at(0)).unwrap();
    }
    let swept = t.sweep(1, 64, |f| f.client_port % 2 == 0);
    assert_eq!(swept, Swept { expired: 0, flushed: 3 });
    assert!(t.flows().all(|f| f.client_port % 2 == 0));
}

#[test]
fn flows_in_their_handshake_expire_quickly_once_the_table_is_half_full() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    insert_syns(&mut t, 1000..1004);
    let deadlines = |t: &Table| (0..t.len()).map(|slot| t.expires(slot)).collect::<heapless::Vec<u32, 8>>();
    assert!(deadlines(&t).iter().all(|&d| d == T.tcp_syn_sent), "half full: the normal timeout");
    let late = t.insert(flow(2000, 2000), at(0)).unwrap();
    assert!(deadlines(&t).iter().all(|&d| d == T.tcp_syn_sent_under_pressure), "more than half full: all of them");
    // A packet moves the deadline on from when it was seen; the handshake's end, to established.
    t.seen(late, Direction::Original, Some(SYN), at(1));
    assert_eq!(t.expires(late), 1 + T.tcp_syn_sent_under_pressure);
    t.seen(late, Direction::Reply, Some(SYN_ACK), at(1));
    assert_eq!(t.expires(late), 1 + T.tcp_syn_sent_under_pressure, "still in the handshake");
    t.seen(late, Direction::Original, Some(ACK), at(1));
    assert_eq!(t.expires(late), 1 + T.tcp_established, "established");
    // The older SYNs are past the short timeout too: they go until the table is half full.
    assert_eq!(t.sweep(T.tcp_syn_sent_under_pressure + 1, 8, |_| true).expired, 1);
    assert_eq!(t.len(), 4);
    assert!(deadlines(&t).iter().all(|&d| d >= T.tcp_syn_sent), "no pressure: the normal timeouts again");
}

#[test]
fn keyed_hashing_defeats_crafted_collisions() {
    // Tuples crafted to share one index slot under a hash the attacker knows (key 0, 0).
    let known = [0u64, 0];
    let mask = buckets_for(64) - 1;
    let home = |key: [u64; 2], t: &Tuple| {
        let ips = (u32::from(t.src) as u64) << 32 | u32::from(t.dst) as u64;
        let rest = (t.src_port as u64) << 32 | (t.dst_port as u64) << 16 | t.proto as u64;
        sip13(key, ips, rest) as usize & mask
    };
    let target = home(known, &flow(1, 1).original());
    let crafted: heapless::Vec<Flow, 32> = (1u32..)
        .map(|i| {
            let mut f = flow((i & 0xffff) as u16, 7000 + (i % 1000) as u16);
            f.client = Ipv4Addr::from(0x0a00_0000 | (i >> 16));
            f
        })
        .filter(|f| home(known, &f.original()) == target)
        .take(32)
        .collect();
    let longest = |key: [u64; 2]| {
        let mut s = Storage::<64, { buckets_for(64) }>::new();
        let mut t = Table::from_storage(&mut s, key, T);
        for f in &crafted {
            t.insert(*f, at(0)).unwrap();
        }
        crafted.iter().map(|f| t.probe_length(&f.original())).max().unwrap()
    };
    let unkeyed = longest(known);
    let keyed = longest([0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321]);
    extern crate std;
    std::println!("32 crafted tuples: longest probe {unkeyed} slots under the known key, {keyed} under a secret one");
    assert!(unkeyed >= 32, "{unkeyed}");
    assert!(keyed <= 8, "{keyed}");
}

#[test]
fn only_a_reset_at_the_senders_sequence_ends_an_established_flow() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    let slot = t.insert(flow(40000, 40000), at(0)).unwrap();
    t.seen(slot, Direction::Original, Some(SYN), at(0));
    establish(&mut t, slot, 0);
    let data = segment(false, true, false, false, 901, 500);
    assert_eq!(t.seen(slot, Direction::Reply, Some(data), at(1)), Check::InWindow);
    let blind = segment(false, false, false, true, 901, 0);
    assert_eq!(t.seen(slot, Direction::Reply, Some(blind), at(2)), Check::ResetNotExact, "behind the data sent");
    let far = segment(false, false, false, true, 901 + 2 * tcp::WINDOW, 0);
    assert_eq!(t.seen(slot, Direction::Reply, Some(far), at(2)), Check::OutOfWindow);
    let far_fin = segment(false, true, true, false, 0x8000_0000, 1);
    assert_eq!(t.seen(slot, Direction::Original, Some(far_fin), at(2)), Check::OutOfWindow);
    assert_eq!(t.flow(slot).state, State::Established);
    assert_eq!(t.expires(slot), 1 + T.tcp_established, "refused segments do not move the deadline");
    let exact = segment(false, false, false, true, 1401, 0);
    assert_eq!(t.seen(slot, Direction::Reply, Some(exact), at(3)), Check::InWindow);
    assert_eq!(t.flow(slot).state, State::Close);
}

#[test]
fn a_full_pool_takes_back_the_oldest_port_that_is_not_established() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    let reply = |port: u16| Tuple { src: ip(11), dst: ip(1), src_port: 3000, dst_port: port, proto: 6 };
    // Ports 1..=4, opened a quarter of a second apart; port 2 established, port 1 the oldest.
    for (k, port) in (1..=4u16).enumerate() {
        let slot = t.insert(flow(40000 + port, port), Millis(250 * k as u64)).unwrap();
        t.seen(slot, Direction::Original, Some(SYN), Millis(250 * k as u64));
        t.seen(slot, Direction::Reply, Some(SYN_ACK), Millis(250 * k as u64));
        if port == 2 {
            t.seen(slot, Direction::Original, Some(ACK), Millis(250 * k as u64));
        }
    }
    assert_eq!(t.take_port(&[2, 3, 4], reply, 1), Some(3), "the oldest of those in their handshake");
    assert!(t.lookup(&reply(3), 1).live().is_none() && t.lookup(&reply(2), 1).live().is_some());
    assert_eq!(t.take_port(&[2], reply, 1), None, "an established flow keeps its port");
    assert_eq!(t.take_port(&[4, 1], reply, 1), Some(1));
    assert_eq!((t.port_evictions(), t.len()), (2, 2));
}

#[test]
fn a_full_table_takes_the_slot_of_an_expired_flow_before_it_evicts() {
    let mut s = Small::new();
    let mut t = Table::from_storage(&mut s, [1, 2], T);
    // A full table of established flows, all idle past their timeout, none swept yet.
    for i in 0..t.capacity() as u16 {
        let slot = t.insert(flow(1000 + i, 1000 + i), at(0)).unwrap();
        establish(&mut t, slot, 0);
    }
    let later = T.tcp_established + 1;
    assert_eq!(t.len(), t.capacity());
    let slot = t.insert(flow(9000, 9000), at(later)).expect("an expired flow gives way");
    assert_eq!(t.lookup(&flow(9000, 9000).original(), later).live(), Some((slot, Direction::Original)));
    assert_eq!((t.len(), t.evictions()), (t.capacity(), 0), "taking an expired flow's slot is no eviction");
}
