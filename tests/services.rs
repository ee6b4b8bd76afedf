//! Kubernetes Service semantics in the engine: affinity, source ranges, virtual IPs, endpoint
//! state and health, frame in → frame out (frames built with etherparse).

mod support;

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use nodegate::config::{self, Config};
use nodegate::engine::{DropReason, Engine, Reload, Verdict};
use nodegate::time::Millis;
use support::{CLIENT_MAC, NODE, NODE_MAC, Room, arp, metrics_of};

/// A room for 256 flows.
fn small() -> Room {
    Room::new(256)
}

fn engine<'a>(json: &str, room: &'a mut Room) -> Engine<'a> {
    let cfg = config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut e = room.engine(&cfg, Some("edge-1"));
    for last in 11..=14u8 {
        let mut arp = arp(2, [2, 0, 0, 0, 0, last], [10, 77, 0, last], NODE);
        e.process(&mut arp, Millis(0), &mut [0; 1514]);
    }
    e
}

/// Applies `next` over `running` as the runner does: prepared, swapped in, then housekeeping
/// until every flow is renumbered and the sweep has been round the table. Returns the UDP flows
/// flushed.
fn reload(e: &mut Engine, running: &str, next: &Config) -> Result<u64, String> {
    let running = config::parse(running.as_bytes()).unwrap();
    let mut prepared = Box::<Reload>::default();
    prepared.prepare(&running, next, Some("edge-1")).map_err(|e| e.to_string())?;
    e.apply(&mut prepared);
    Ok(settle(e))
}

/// Runs housekeeping until the sweep has been round the table; returns the UDP flows flushed.
fn settle(e: &mut Engine) -> u64 {
    let before = e.counters().udp_flows_flushed;
    for _ in 0..=e.conntrack().capacity() / nodegate::board::CONNTRACK_SWEEP_PER_TURN {
        e.housekeeping(Millis(0));
    }
    assert_eq!(e.flows_to_renumber(), 0);
    e.counters().udp_flows_flushed - before
}

fn syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 1000)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC).ipv4(src, dst, 64).udp(sport, dport).write(&mut out, b"q").unwrap();
    out
}

/// Sends `frame`; returns the destination address and port it was forwarded to, or the verdict.
fn send(e: &mut Engine, mut frame: Vec<u8>, now: u64) -> Result<([u8; 4], u16), Verdict> {
    match e.process(&mut frame, Millis(now), &mut [0; 1514]) {
        Verdict::Forward => {
            let h = PacketHeaders::from_ethernet_slice(&frame).unwrap();
            let Some(NetHeaders::Ipv4(ip, _)) = h.net else { panic!() };
            let port = match h.transport.unwrap() {
                TransportHeader::Tcp(t) => t.destination_port,
                TransportHeader::Udp(u) => u.destination_port,
                other => panic!("{other:?}"),
            };
            Ok((ip.destination, port))
        }
        other => Err(other),
    }
}

fn service(extra: &str, endpoints: &str) -> String {
    format!(
        r#"{{"nodes":[{{"name":"edge-1","tap":"ng0","mac":"02:00:00:00:00:01","addresses":["10.77.0.1/24"]}},
                      {{"name":"edge-2","tap":"ng0","addresses":["10.77.0.2/24"]}}],
            "services":[{{"name":"web",{extra}"ports":[{{"name":"t","port":80,"targetPort":3000,"nodePort":30080}},
                                                     {{"name":"u","protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053}}],
                          "endpoints":[{endpoints}]}}]}}"#
    )
}

const THREE: &str = r#"{"ip":"10.77.0.11"},{"ip":"10.77.0.12"},{"ip":"10.77.0.13"}"#;
const CLIENT_A: [u8; 4] = [10, 77, 0, 100];
const CLIENT_B: [u8; 4] = [10, 77, 0, 101];

#[test]
fn client_ip_affinity_pins_each_client_until_the_timeout() {
    let mut s = small();
    let mut e = engine(
        &service(r#""sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":5}},"#, THREE),
        &mut s,
    );
    let first_a = send(&mut e, syn(CLIENT_A, 40000, NODE, 30080), 0).unwrap().0;
    let first_b = send(&mut e, syn(CLIENT_B, 40000, NODE, 30080), 0).unwrap().0;
    for port in 40001..40030 {
        assert_eq!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 1000).unwrap().0, first_a, "client A, port {port}");
        assert_eq!(send(&mut e, syn(CLIENT_B, port, NODE, 30080), 1000).unwrap().0, first_b, "client B, port {port}");
    }
    // Each new connection refreshed the pin at t=1 s: at t=5.9 s it holds, and after 5 s
    // without a new connection the next one is chosen afresh by Maglev.
    assert_eq!(send(&mut e, syn(CLIENT_A, 41000, NODE, 30080), 5900).unwrap().0, first_a);
    let mut other = None;
    for (i, port) in (42000..42100).enumerate() {
        let now = 11_000 + 6_000 * i as u64;
        let ep = send(&mut e, syn(CLIENT_A, port, NODE, 30080), now).unwrap().0;
        if ep != first_a {
            other = Some(ep);
            break;
        }
    }
    assert!(other.is_some(), "after the timeout, new choices are made");
}

#[test]
fn without_affinity_one_client_spreads_over_endpoints() {
    let mut s = small();
    let mut e = engine(&service("", THREE), &mut s);
    let mut seen = std::collections::BTreeSet::new();
    for port in 40000..40030 {
        seen.insert(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 0).unwrap().0);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn source_ranges_admit_only_listed_clients_on_every_address() {
    let mut s = small();
    let mut e = engine(
        &service(
            r#""clusterIP":"10.96.0.10","externalIPs":["10.77.0.50"],"loadBalancerSourceRanges":["10.77.0.100/32"],"#,
            THREE,
        ),
        &mut s,
    );
    for dst in [(NODE, 30080), ([10, 96, 0, 10], 80), ([10, 77, 0, 50], 80)] {
        assert!(send(&mut e, syn(CLIENT_A, 40000, dst.0, dst.1), 0).is_ok(), "allowed client to {dst:?}");
        assert_eq!(
            send(&mut e, syn(CLIENT_B, 40000, dst.0, dst.1), 0),
            Err(Verdict::Drop(DropReason::SourceRange)),
            "{dst:?}"
        );
    }
    assert_eq!(e.counters().dropped(DropReason::SourceRange), 3);
    assert_eq!(e.service_counters(0).source_range_drops, 3);
}

#[test]
fn cluster_ip_and_external_ips_forward_like_the_node_port_and_answer_arp() {
    let mut s = small();
    let mut e = engine(&service(r#""clusterIP":"10.96.0.10","externalIPs":["10.77.0.50"],"#, THREE), &mut s);
    assert_eq!(send(&mut e, syn(CLIENT_A, 40000, [10, 96, 0, 10], 80), 0).unwrap().1, 3000);
    assert_eq!(send(&mut e, udp(CLIENT_A, 40000, [10, 77, 0, 50], 53), 0).unwrap().1, 5353);
    assert_eq!(
        send(&mut e, syn(CLIENT_A, 40001, [10, 77, 0, 50], 30080), 0),
        Err(Verdict::Stack),
        "a VIP listens on port, not nodePort"
    );
    assert_eq!(
        send(&mut e, syn(CLIENT_A, 40001, [10, 77, 0, 51], 80), 0),
        Err(Verdict::Drop(DropReason::OtherAddress))
    );

    let mut out = [0u8; 1514];
    let mut who_has = arp(1, CLIENT_MAC, CLIENT_A, [10, 77, 0, 50]);
    let Verdict::Reply { len, .. } = e.process(&mut who_has, Millis(0), &mut out) else { panic!("no ARP reply") };
    let h = PacketHeaders::from_ethernet_slice(&out[..len]).unwrap();
    let Some(NetHeaders::Arp(reply)) = h.net else { panic!() };
    assert_eq!(reply.sender_hw_addr(), &NODE_MAC[..]);
    assert_eq!(reply.sender_protocol_addr(), &[10, 77, 0, 50][..]);
    assert_eq!(reply.target_protocol_addr(), &CLIENT_A[..]);
    let mut who_has_other = arp(1, CLIENT_MAC, CLIENT_A, [10, 77, 0, 51]);
    assert_eq!(e.process(&mut who_has_other, Millis(0), &mut out), Verdict::Stack, "not ours: smoltcp ignores it");
    assert_eq!(e.counters().answered, 1, "the VIP's ARP request, answered by the engine");
}

#[test]
fn local_policy_uses_this_nodes_endpoints_and_drops_without_one() {
    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-2"},{"ip":"10.77.0.12","nodeName":"edge-1"}"#;
    let mut e = engine(&service(r#""externalTrafficPolicy":"Local","healthCheckNodePort":30100,"#, eps), &mut s);
    for port in 40000..40010 {
        assert_eq!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 0).unwrap().0, [10, 77, 0, 12]);
    }
    assert_eq!(e.ready_endpoints(0), 1);

    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-2"}"#;
    let mut e = engine(&service(r#""externalTrafficPolicy":"Local","#, eps), &mut s);
    assert_eq!(send(&mut e, syn(CLIENT_A, 40000, NODE, 30080), 0), Err(Verdict::Drop(DropReason::NoLocalEndpoint)));
    assert_eq!(e.ready_endpoints(0), 0);

    // An endpoint of no node (a server, or a Kubernetes node behind the gateways) is every
    // gateway's: Local sends to it and counts it as local.
    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-2"},{"ip":"10.77.0.13"}"#;
    let mut e = engine(&service(r#""externalTrafficPolicy":"Local","healthCheckNodePort":30100,"#, eps), &mut s);
    for port in 40000..40010 {
        assert_eq!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 0).unwrap().0, [10, 77, 0, 13]);
    }
    assert_eq!(e.ready_endpoints(0), 1);
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let mut s = small();
    let eps =
        r#"{"ip":"10.77.0.11","ready":false,"terminating":true},{"ip":"10.77.0.12"},{"ip":"10.77.0.13","ready":false}"#;
    let mut e = engine(&service("", eps), &mut s);
    for port in 40000..40020 {
        assert_eq!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 0).unwrap().0, [10, 77, 0, 12]);
    }
    // The ready one fails its health checks: the terminating one takes over, the not-ready one never.
    e.set_endpoint_health(0, 1, false);
    for port in 41000..41020 {
        assert_eq!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 0).unwrap().0, [10, 77, 0, 11]);
    }
}

#[test]
fn the_health_check_node_port_counts_only_ready_local_endpoints() {
    // Local: this node's one endpoint is terminating. It still takes traffic (nothing else can),
    // but the node reports 0 ready so that the external load balancer drains it, as kube-proxy.
    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-1","ready":false,"terminating":true},{"ip":"10.77.0.12","nodeName":"edge-2"}"#;
    let mut e = engine(&service(r#""externalTrafficPolicy":"Local","healthCheckNodePort":30100,"#, eps), &mut s);
    assert_eq!(send(&mut e, syn(CLIENT_A, 40000, NODE, 30080), 0).unwrap().0, [10, 77, 0, 11]);
    assert!(e.endpoint_serving(0, 0));
    assert_eq!(e.ready_endpoints(0), 0);
}

#[test]
fn the_nodes_own_addresses_are_refused_as_sources() {
    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-1"}"#;
    let extra = r#""externalTrafficPolicy":"Local","clusterIP":"10.96.0.10","#;
    let mut e = engine(&service(extra, eps), &mut s);
    // From NodeIP to NodePort, the reply tuple would be a health probe's.
    for src in [NODE, [10, 96, 0, 10]] {
        assert_eq!(send(&mut e, syn(src, 61005, NODE, 30080), 0), Err(Verdict::Drop(DropReason::MartianSource)));
    }
    assert!(e.conntrack().is_empty());
}

#[test]
fn an_endpoint_that_fails_gets_no_new_flows_and_its_udp_flows_are_flushed() {
    let mut s = small();
    let mut e = engine(&service("", THREE), &mut s);
    let (ep, _) = send(&mut e, udp(CLIENT_A, 5000, NODE, 30053), 0).unwrap();
    // A TCP flow to the same endpoint.
    assert!((40000..40100).any(|p| send(&mut e, syn(CLIENT_A, p, NODE, 30080), 0).unwrap().0 == ep));
    let index = (ep[3] - 11) as usize;
    e.set_endpoint_health(0, index, false);
    assert_eq!(settle(&mut e), 1, "the UDP flow to it");
    assert_eq!(e.conntrack().flows().filter(|f| f.endpoint.octets() == ep).count(), 1, "its TCP flow stays");
    // The same client 5-tuple now reaches a live endpoint.
    let (again, _) = send(&mut e, udp(CLIENT_A, 5000, NODE, 30053), 1000).unwrap();
    assert_ne!(again, ep);
    for port in 50000..50050 {
        assert_ne!(send(&mut e, syn(CLIENT_A, port, NODE, 30080), 1000).unwrap().0, ep);
    }
    e.set_endpoint_health(0, index, true);
    assert!(
        (51000..51100).any(|p| send(&mut e, syn(CLIENT_A, p, NODE, 30080), 2000).unwrap().0 == ep),
        "back in the table"
    );
}

#[test]
fn a_reload_flushes_udp_flows_to_endpoints_it_makes_not_serving() {
    let mut s = small();
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-1"},{"ip":"10.77.0.12","nodeName":"edge-1"}"#;
    let local = r#""externalTrafficPolicy":"Local","#;
    let mut e = engine(&service(local, eps), &mut s);
    let mut udp_of = std::collections::BTreeMap::new();
    for p in 50000..50100 {
        let (ep, _) = send(&mut e, udp(CLIENT_A, p, NODE, 30053), 0).unwrap();
        udp_of.entry(ep).or_insert(p);
    }
    assert_eq!(udp_of.len(), 2);
    let udp_to = |e: &Engine, last: u8| {
        e.conntrack().flows().filter(|f| f.proto == 17 && f.endpoint.octets() == [10, 77, 0, last]).count()
    };
    // .11 stays in the list but is no longer ready; .12 moves to another node (Local policy).
    let eps = r#"{"ip":"10.77.0.11","nodeName":"edge-1","ready":false},{"ip":"10.77.0.12","nodeName":"edge-2"},{"ip":"10.77.0.13","nodeName":"edge-1"}"#;
    let new = config::parse(service(local, eps).as_bytes()).unwrap();
    let flushed = reload(
        &mut e,
        &service(local, r#"{"ip":"10.77.0.11","nodeName":"edge-1"},{"ip":"10.77.0.12","nodeName":"edge-1"}"#),
        &new,
    )
    .unwrap();
    assert_eq!((udp_to(&e, 11), udp_to(&e, 12)), (0, 0), "{flushed} flushed");
    assert_eq!(flushed, 100);
    for port in udp_of.values() {
        assert_eq!(send(&mut e, udp(CLIENT_A, *port, NODE, 30053), 1000).unwrap().0, [10, 77, 0, 13]);
    }
}

#[test]
fn reconfigure_keeps_flows_to_endpoints_that_stay() {
    let mut s = small();
    let mut e = engine(&service("", THREE), &mut s);
    // One UDP and one TCP flow to each endpoint.
    let mut udp_of = std::collections::BTreeMap::new();
    let mut tcp_of = std::collections::BTreeMap::new();
    for p in 5000..5100 {
        let (ep, _) = send(&mut e, udp(CLIENT_A, p, NODE, 30053), 0).unwrap();
        udp_of.entry(ep).or_insert(p);
        let (ep, _) = send(&mut e, syn(CLIENT_A, p, NODE, 30080), 0).unwrap();
        tcp_of.entry(ep).or_insert(p);
    }
    assert_eq!((udp_of.len(), tcp_of.len()), (3, 3));
    let before = e.conntrack().len();
    let flows_before = e.service_counters(0).new_flows();
    // 10.77.0.13 leaves, 10.77.0.14 arrives.
    let new = config::parse(service("", r#"{"ip":"10.77.0.11"},{"ip":"10.77.0.12"},{"ip":"10.77.0.14"}"#).as_bytes())
        .unwrap();
    let flushed = reload(&mut e, &service("", THREE), &new).unwrap() as usize;
    let udp_to_13 = e.conntrack().flows().filter(|f| f.proto == 17 && f.endpoint.octets() == [10, 77, 0, 13]).count();
    assert_eq!(
        (udp_to_13, before - e.conntrack().len()),
        (0, flushed),
        "UDP flows to the endpoint that left are flushed"
    );
    for (ep, port) in &udp_of {
        let (now, _) = send(&mut e, udp(CLIENT_A, *port, NODE, 30053), 1000).unwrap();
        if *ep != [10, 77, 0, 13] {
            assert_eq!(now, *ep, "a UDP flow to an endpoint that stayed goes on");
        } else {
            assert_ne!(now, *ep, "the flushed UDP flow reaches a live endpoint");
        }
    }
    let mut ack = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(CLIENT_A, NODE, 64)
        .tcp(tcp_of[&[10, 77, 0, 13]], 30080, 2, 1000)
        .ack(1)
        .write(&mut ack, b"x")
        .unwrap();
    assert_eq!(send(&mut e, ack, 1000).unwrap().0, [10, 77, 0, 13], "TCP to the endpoint that left is left to finish");
    assert!(
        (60000..60100).any(|p| send(&mut e, syn(CLIENT_A, p, NODE, 30080), 1000).unwrap().0 == [10, 77, 0, 14]),
        "new flows use the new table"
    );
    assert!(e.service_counters(0).new_flows() > flows_before, "counters carry over the reload");

    let moved = config::parse(service("", THREE).replace("10.77.0.1/24", "10.77.0.9/24").as_bytes()).unwrap();
    let err = reload(&mut e, &service("", THREE), &moved).unwrap_err();
    assert!(err.to_string().contains("restart nodegate"), "{err}");
}

#[test]
fn the_node_answers_ping_for_its_virtual_ips() {
    let mut s = small();
    let mut e = engine(&service(r#""externalIPs":["10.77.0.50"],"#, THREE), &mut s);
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv4(CLIENT_A, [10, 77, 0, 50], 9)
        .icmpv4_echo_request(7, 1)
        .write(&mut ping, b"hello")
        .unwrap();
    assert_eq!(e.process(&mut ping, Millis(0), &mut [0; 1514]), Verdict::Forward);
    let h = PacketHeaders::from_ethernet_slice(&ping).unwrap();
    let eth = h.link.clone().unwrap().ethernet2().unwrap();
    assert_eq!((eth.source, eth.destination), (NODE_MAC, CLIENT_MAC));
    let Some(NetHeaders::Ipv4(ip, _)) = &h.net else { panic!() };
    assert_eq!((ip.source, ip.destination, ip.time_to_live), ([10, 77, 0, 50], CLIENT_A, 64));
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    let Some(TransportHeader::Icmpv4(icmp)) = &h.transport else { panic!() };
    assert_eq!(icmp.icmp_type, etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 7, seq: 1 }));
    assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(h.payload.slice()));
}

#[test]
fn a_reload_keeps_each_ports_counters_with_that_port() {
    let mut s = small();
    let mut e = engine(&service("", THREE), &mut s);
    send(&mut e, syn(CLIENT_A, 40000, NODE, 30080), 0).unwrap();
    for p in 5000..5003 {
        send(&mut e, udp(CLIENT_A, p, NODE, 30053), 0).unwrap();
    }
    let before = e.service_counters(0);
    assert_eq!((before.ports[0].connections, before.ports[1].connections), (1, 3));
    // The same ports, listed the other way round: a Prometheus series must not jump.
    let swapped = service("", THREE).replace(
        r#"[{"name":"t","port":80,"targetPort":3000,"nodePort":30080},
                                                     {"name":"u","protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053}]"#,
        r#"[{"name":"u","protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053},
                                                     {"name":"t","port":80,"targetPort":3000,"nodePort":30080}]"#,
    );
    let cfg = config::parse(swapped.as_bytes()).unwrap();
    assert_eq!(cfg.services[0].ports[0].port, 53, "the swap took");
    reload(&mut e, &service("", THREE), &cfg).unwrap();
    let after = e.service_counters(0);
    assert_eq!((after.ports[0].connections, after.ports[1].connections), (3, 1));
    assert_eq!((after.ports[0].packets, after.ports[1].packets), (before.ports[1].packets, before.ports[0].packets));
}

#[test]
fn flows_are_counted_with_their_service_while_a_reload_renumbers_them() {
    let two = |first: &str, second: &str| {
        format!(
            r#"{{"nodes":[{{"name":"edge-1","tap":"ng0","mac":"02:00:00:00:00:01","addresses":["10.77.0.1/24"]}}],
                "services":[{first},{second}]}}"#
        )
    };
    let a = r#"{"name":"a","ports":[{"protocol":"UDP","port":53,"targetPort":5353,"nodePort":30053}],"endpoints":[{"ip":"10.77.0.11"}]}"#;
    let b = r#"{"name":"b","ports":[{"protocol":"UDP","port":54,"targetPort":5454,"nodePort":30054}],"endpoints":[{"ip":"10.77.0.12"}]}"#;
    let mut s = small();
    let running = two(a, b);
    let mut e = engine(&running, &mut s);
    send(&mut e, udp(CLIENT_A, 5000, NODE, 30053), 0).unwrap();
    send(&mut e, udp(CLIENT_A, 5001, NODE, 30054), 0).unwrap();
    // The same services the other way round: every flow's service index changes.
    let next = config::parse(two(b, a).as_bytes()).unwrap();
    let mut prepared = Box::<Reload>::default();
    prepared.prepare(&config::parse(running.as_bytes()).unwrap(), &next, None).unwrap();
    e.apply(&mut prepared);
    assert_eq!(e.flows_to_renumber(), 2, "nothing renumbered in the swap itself");
    // Before housekeeping reaches them, the flows' packets go on and count with their service.
    assert_eq!(send(&mut e, udp(CLIENT_A, 5000, NODE, 30053), 10).unwrap(), ([10, 77, 0, 11], 5353));
    assert_eq!(send(&mut e, udp(CLIENT_A, 5001, NODE, 30054), 10).unwrap(), ([10, 77, 0, 12], 5454));
    let packets = |e: &Engine, name: &str| {
        e.services().find(|(svc, _)| svc.name == name).map(|(_, c)| c.ports[0].packets[0]).unwrap()
    };
    assert_eq!((packets(&e, "a"), packets(&e, "b")), (2, 2));
    assert_eq!(e.counters().udp_flows_flushed, 0, "no flow of a service that stayed is flushed");
    settle(&mut e);
    let owners: Vec<(u16, u8)> = e.conntrack().flows().map(|f| (f.client_port, f.service_index)).collect();
    assert_eq!(owners.len(), 2);
    assert!(owners.contains(&(5000, 1)) && owners.contains(&(5001, 0)), "{owners:?}");
}

#[test]
fn a_drained_endpoint_takes_no_new_flows_keeps_its_own_and_stays_drained_across_a_reload() {
    let mut s = small();
    let json = service(r#""sessionAffinity":"ClientIP","#, THREE);
    let mut e = engine(&json, &mut s);
    // Client A's connection, its UDP flow and its pin: all on one endpoint.
    let (victim, _) = send(&mut e, syn(CLIENT_A, 40000, NODE, 30080), 0).unwrap();
    assert_eq!(send(&mut e, udp(CLIENT_A, 5555, NODE, 30053), 0).unwrap().0, victim);
    let v = usize::from(victim[3] - 11);
    e.set_endpoint_drained(0, v, true);
    assert!(e.endpoint_drained(0, v) && !e.endpoint_serving(0, v) && e.endpoint_healthy(0, v));
    assert_eq!(e.ready_endpoints(0), 2, "a drained endpoint is not counted ready");
    let series =
        format!(r#"nodegate_endpoint_drained{{service="web",endpoint="{}:3000"}} 1"#, std::net::Ipv4Addr::from(victim));
    assert!(metrics_of(&e).contains(&series), "{}", metrics_of(&e));
    let drained_ok = |e: &mut Engine, what: &str| {
        assert_eq!(send(e, syn(CLIENT_A, 40000, NODE, 30080), 1).unwrap().0, victim, "{what}: its connection goes on");
        assert_eq!(send(e, udp(CLIENT_A, 5555, NODE, 30053), 1).unwrap().0, victim, "{what}: its UDP flow too");
        for port in 41000..41030 {
            let (to, _) = send(e, syn(CLIENT_A, port, NODE, 30080), 1).unwrap();
            assert_ne!(to, victim, "{what}: the pin moved");
            assert_ne!(send(e, syn(CLIENT_B, port, NODE, 30080), 1).unwrap().0, victim, "{what}: no new flow");
        }
    };
    drained_ok(&mut e, "drained");
    assert_eq!(e.counters().udp_flows_flushed, 0, "draining flushes nothing");
    let cfg = config::parse(json.as_bytes()).unwrap();
    reload(&mut e, &json, &cfg).unwrap();
    assert!(e.endpoint_drained(0, v), "a reload keeps it drained");
    drained_ok(&mut e, "after a reload");
    e.set_endpoint_drained(0, v, false);
    assert!(e.endpoint_serving(0, v));
    // New clients (each pinned where its first flow goes): some of them to it.
    let back = (102..160).filter(|&c| send(&mut e, syn([10, 77, 0, c], 42000, NODE, 30080), 2).unwrap().0 == victim);
    assert!(back.count() >= 5, "undrained, it takes new flows again");

    // Drained, then no longer ready: now it could not serve undrained either, and its UDP flow
    // is flushed as any not-ready endpoint's.
    e.set_endpoint_drained(0, v, true);
    let ip = std::net::Ipv4Addr::from(victim);
    let not_ready = json.replace(&format!(r#"{{"ip":"{ip}"}}"#), &format!(r#"{{"ip":"{ip}","ready":false}}"#));
    assert_ne!(not_ready, json);
    let flushed = reload(&mut e, &json, &config::parse(not_ready.as_bytes()).unwrap()).unwrap();
    assert_eq!(flushed, 1, "the drained, not-ready endpoint's UDP flow");
}
