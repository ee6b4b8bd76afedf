use super::*;

const DEFAULT: &str = include_str!("../../config/default.json");

fn error_of(json: &str) -> std::string::String {
    extern crate std;
    use std::string::ToString;
    parse(json.as_bytes()).expect_err("must be rejected").to_string()
}

extern crate std;

#[test]
fn default_config_is_the_documented_service() {
    let cfg = parse(DEFAULT.as_bytes()).unwrap();
    assert_eq!(cfg.node_port_range, PortRange::DEFAULT);
    let node = cfg.node(None).unwrap();
    assert_eq!(node.name, "edge-1");
    assert_eq!(node.tap, "ng0");
    assert_eq!(node.bridge.as_deref(), Some("br0"));
    assert_eq!(node.mac, EthernetAddress([2, 0, 0, 0, 0, 1]));
    assert_eq!(node.addresses[0], Ipv4Cidr::new(Ipv4Addr::new(10, 77, 0, 1), 24));
    assert_eq!(node.gateway, Some(Ipv4Addr::new(10, 77, 0, 254)));
    assert_eq!(node.metrics_port, Some(9100));
    let svc = &cfg.services[0];
    assert_eq!(
        (svc.name.as_str(), svc.kind, svc.external_traffic_policy),
        ("web-frontend", ServiceType::NodePort, TrafficPolicy::Cluster)
    );
    assert_eq!(
        svc.ports[0],
        ServicePort {
            name: Some("http".try_into().unwrap()),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 3000,
            node_port: Some(30080)
        }
    );
    assert_eq!(svc.endpoints.len(), 3);
    assert_eq!(svc.endpoints[0].node, Some(0));
    assert_eq!(svc.endpoints[1].node, None);
}

#[test]
fn optional_fields_take_their_defaults() {
    let cfg = parse(
        br#"{"nodes":[{"name":"n","tap":"t0","addresses":["10.0.0.1/24"]}],
             "services":[{"name":"s","ports":[{"port":53,"nodePort":30053,"protocol":"UDP"}],"endpoints":[{"ip":"10.0.0.9"}]}]}"#,
    )
    .unwrap();
    let node = &cfg.nodes[0];
    assert!(node.bridge.is_none() && node.gateway.is_none() && node.metrics_port.is_none());
    assert!(node.mac.is_unicast() && node.mac.0[0] & 2 == 2, "a locally administered MAC is derived");
    let svc = &cfg.services[0];
    assert_eq!(svc.kind, ServiceType::NodePort);
    assert_eq!(svc.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(svc.ports[0].target_port, 53, "targetPort defaults to port");
}

/// Each row: what is wrong, the config, the exact error.
#[test]
fn invalid_configs_name_the_field() {
    let node = r#"{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]}"#;
    let svc = |ports: &str, eps: &str| format!(r#"{{"name":"web","ports":[{ports}],"endpoints":[{eps}]}}"#);
    let cfg = |nodes: &str, services: &str| format!(r#"{{"nodes":[{nodes}],"services":[{services}]}}"#);
    let port = r#"{"port":80,"targetPort":3000,"nodePort":30080}"#;
    let ep = r#"{"ip":"10.77.0.11"}"#;
    use std::format;
    let rows: &[(&str, std::string::String, &str)] = &[
        (
            "nodePort outside the range",
            cfg(node, &svc(r#"{"port":80,"nodePort":40000}"#, ep)),
            "services[0].ports[0].nodePort: 40000 is outside nodePortRange 30000-32767",
        ),
        (
            "nodePort outside a custom range",
            format!(r#"{{"nodePortRange":"31000-31999","nodes":[{node}],"services":[{}]}}"#, svc(port, ep)),
            "services[0].ports[0].nodePort: 30080 is outside nodePortRange 31000-31999",
        ),
        (
            "nodePort used twice",
            cfg(node, &format!("{},{}", svc(port, ep), svc(port, ep).replace("\"web\"", "\"api\""))),
            "services[1].ports[0].nodePort: 30080/TCP is already used by service \"web\"",
        ),
        (
            "nodePortRange over the SNAT ports",
            format!(r#"{{"nodePortRange":"30000-40000","nodes":[{node}]}}"#),
            "nodePortRange: 30000-40000 overlaps the board's SNAT ports 32768-60999",
        ),
        (
            "nodePortRange over the probes' ports",
            format!(r#"{{"nodePortRange":"61000-62000","nodes":[{node}]}}"#),
            "nodePortRange: 61000-62000 overlaps the node's own client ports 61000-65535",
        ),
        (
            "metricsPort in the SNAT range",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"metricsPort":40000}"#, ""),
            "nodes[0].metricsPort: 40000 is one of the board's SNAT ports 32768-60999",
        ),
        (
            "metricsPort equal to a nodePort",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"metricsPort":30080}"#, &svc(port, ep)),
            "nodes[0].metricsPort: 30080 is already used by service \"web\"",
        ),
        (
            "metricsPort equal to a healthCheckNodePort",
            cfg(
                r#"{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"metricsPort":30100}"#,
                r#"{"name":"web","externalTrafficPolicy":"Local","healthCheckNodePort":30100,"ports":[{"port":80}],"endpoints":[]}"#,
            ),
            "nodes[0].metricsPort: 30100 is already used by service \"web\"",
        ),
        (
            "endpoint at a node address",
            cfg(node, &svc(port, r#"{"ip":"10.77.0.1"}"#)),
            "services[0].endpoints[0].ip: 10.77.0.1 is an address of node edge-1",
        ),
        (
            "gateway at the node's address",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"gateway":"10.77.0.1"}"#, ""),
            "nodes[0].gateway: 10.77.0.1 is the node's own address",
        ),
        (
            "the same port and protocol twice in a service",
            cfg(node, &svc(r#"{"name":"a","port":80,"nodePort":30080},{"name":"b","port":80,"nodePort":30081}"#, ep)),
            "services[0].ports[1].port: 80/TCP is already ports[0] of this service",
        ),
        (
            "bad endpoint address",
            cfg(node, &svc(port, r#"{"ip":"10.77.0.300"}"#)),
            "services[0].endpoints[0].ip: \"10.77.0.300\" is not an IPv4 address",
        ),
        (
            "bad CIDR",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.1"]}"#, ""),
            "nodes[0].addresses[0]: \"10.77.0.1\" is not an IPv4 address with a prefix length (like 10.77.0.1/24)",
        ),
        (
            "network address as node address",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.0/24"]}"#, ""),
            "nodes[0].addresses[0]: \"10.77.0.0/24\": the address must be a host address of its subnet",
        ),
        (
            "bad MAC",
            cfg(r#"{"name":"n","tap":"t","mac":"02:00:00:00:01","addresses":["10.77.0.1/24"]}"#, ""),
            "nodes[0].mac: \"02:00:00:00:01\" is not a MAC address (like 02:00:00:00:00:01)",
        ),
        (
            "multicast MAC",
            cfg(r#"{"name":"n","tap":"t","mac":"01:00:5e:00:00:01","addresses":["10.77.0.1/24"]}"#, ""),
            "nodes[0].mac: \"01:00:5e:00:00:01\" is not a unicast MAC address",
        ),
        (
            "unknown protocol",
            cfg(node, &svc(r#"{"port":80,"nodePort":30080,"protocol":"SCTP"}"#, ep)),
            "services[0].ports[0].protocol: \"SCTP\" is not one of TCP, UDP",
        ),
        (
            "unknown policy",
            cfg(
                node,
                &svc(port, ep).replace("{\"name\":\"web\"", "{\"name\":\"web\",\"externalTrafficPolicy\":\"Nearest\""),
            ),
            "services[0].externalTrafficPolicy: \"Nearest\" is not one of Cluster, Local",
        ),
        (
            "unknown type",
            cfg(node, &svc(port, ep).replace("{\"name\":\"web\"", "{\"name\":\"web\",\"type\":\"ExternalName\"")),
            "services[0].type: \"ExternalName\" is not one of NodePort, ClusterIP",
        ),
        (
            "gateway off every subnet",
            cfg(r#"{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"gateway":"10.78.0.1"}"#, ""),
            "nodes[0].gateway: 10.78.0.1 is on none of the node's subnets",
        ),
        (
            "port zero",
            cfg(node, &svc(r#"{"port":0,"nodePort":30080}"#, ep)),
            "services[0].ports[0].port: 0 is not a port (1-65535)",
        ),
        (
            "targetPort too large",
            cfg(node, &svc(r#"{"port":80,"targetPort":70000,"nodePort":30080}"#, ep)),
            "services[0].ports[0].targetPort: 70000 is not a port (1-65535)",
        ),
        ("missing port", cfg(node, &svc(r#"{"nodePort":30080}"#, ep)), "services[0].ports[0].port: is required"),
        (
            "unnamed port among several",
            cfg(node, &svc(r#"{"name":"a","port":80,"nodePort":30080},{"port":81,"nodePort":30081}"#, ep)),
            "services[0].ports[1].name: is required when a service has several ports",
        ),
        (
            "endpoint twice",
            cfg(node, &svc(port, &format!("{ep},{ep}"))),
            "services[0].endpoints[1].ip: 10.77.0.11 is listed twice",
        ),
        (
            "endpoint on an unknown node",
            cfg(node, &svc(port, r#"{"ip":"10.77.0.11","nodeName":"edge-9"}"#)),
            "services[0].endpoints[0].nodeName: \"edge-9\" is not one of the nodes",
        ),
        (
            "bad name",
            cfg(r#"{"name":"Edge_1","tap":"t","addresses":["10.77.0.1/24"]}"#, ""),
            "nodes[0].name: \"Edge_1\" is not a valid name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
        ),
        (
            "tap name too long",
            cfg(r#"{"name":"n","tap":"a-very-long-tap-name","addresses":["10.77.0.1/24"]}"#, ""),
            "nodes[0].tap: \"a-very-long-tap-name\" is not a valid interface name (1-15 of A-Z, a-z, 0-9, '-', '_', '.')",
        ),
        ("no nodes", r#"{"nodes":[],"services":[]}"#.into(), "nodes: at least one node is needed"),
        (
            "bad range",
            format!(r#"{{"nodePortRange":"32767-30000","nodes":[{node}]}}"#),
            "nodePortRange: \"32767-30000\" is not a port range like \"30000-32767\"",
        ),
        ("not JSON", "{\"nodes\": [".into(), "invalid JSON: EOF while parsing a list."),
    ];
    for (what, json, want) in rows {
        assert_eq!(error_of(json), *want, "{what}");
    }
}

#[test]
fn more_entries_than_the_board_holds_are_reported_with_the_count() {
    use std::format;
    let eps: std::vec::Vec<_> = (0..board::MAX_ENDPOINTS_PER_SERVICE + 3)
        .map(|i| format!(r#"{{"ip":"10.{}.{}.1"}}"#, i / 250, i % 250))
        .collect();
    let json = format!(
        r#"{{"nodes":[{{"name":"n","tap":"t","addresses":["10.77.0.1/24"]}}],"services":[{{"name":"s","ports":[{{"port":1,"nodePort":30001}}],"endpoints":[{}]}}]}}"#,
        eps.join(",")
    );
    assert_eq!(
        error_of(&json),
        format!(
            "services[0].endpoints: {} entries, but board {:?} holds at most {}",
            board::MAX_ENDPOINTS_PER_SERVICE + 3,
            board::NAME,
            board::MAX_ENDPOINTS_PER_SERVICE
        )
    );
}

#[test]
fn service_fields_and_defaults() {
    let cfg = parse(
        br#"{"nodes":[{"name":"n","tap":"t","addresses":["10.77.0.1/24"]}],
             "services":[{"name":"web","type":"ClusterIP","clusterIP":"10.96.0.10","externalIPs":["10.77.0.50"],
                          "sessionAffinity":"ClientIP","loadBalancerSourceRanges":["10.77.0.100/32","192.168.0.0/16"],
                          "healthCheck":{"intervalSeconds":5},
                          "ports":[{"port":80,"targetPort":3000}],
                          "endpoints":[{"ip":"10.77.0.11","weight":3,"ready":false,"terminating":true},{"ip":"10.77.0.12"}]}]}"#,
    )
    .unwrap();
    let s = &cfg.services[0];
    assert_eq!(s.kind, ServiceType::ClusterIP);
    assert_eq!(s.ports[0].node_port, None, "a ClusterIP service gets no nodePort");
    assert_eq!(
        s.virtual_ips().collect::<std::vec::Vec<_>>(),
        [Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 77, 0, 50)]
    );
    assert_eq!(s.session_affinity, SessionAffinity::ClientIp { timeout_seconds: 10800 });
    assert!(s.admits(Ipv4Addr::new(10, 77, 0, 100)) && s.admits(Ipv4Addr::new(192, 168, 3, 4)));
    assert!(!s.admits(Ipv4Addr::new(10, 77, 0, 101)));
    assert_eq!(
        s.health_check,
        Some(HealthCheck {
            interval_seconds: 5,
            timeout_seconds: 1,
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            port: None,
            http: None
        })
    );
    assert_eq!((s.endpoints[0].weight, s.endpoints[0].ready, s.endpoints[0].terminating), (3, false, true));
    assert_eq!((s.endpoints[1].weight, s.endpoints[1].ready, s.endpoints[1].terminating), (1, true, false));
}

#[test]
fn an_http_health_check_keeps_its_path_host_port_and_statuses() {
    let json = |check: &str| {
        std::format!(
            r#"{{"nodes":[{{"name":"n","tap":"t","addresses":["10.77.0.1/24"]}}],
                "services":[{{"name":"web","ports":[{{"port":80,"targetPort":3000}}],"healthCheck":{check},
                              "endpoints":[{{"ip":"10.77.0.11"}}]}}]}}"#
        )
    };
    let cfg = parse(
        json(r#"{"type":"HTTP","path":"/healthz?full=1","host":"web.example","port":10256,"expectedStatuses":[200,204]}"#)
            .as_bytes(),
    )
    .unwrap();
    let check = cfg.services[0].health_check.clone().unwrap();
    assert_eq!(check.port, Some(10256));
    let http = check.http.unwrap();
    assert_eq!((http.path.as_str(), http.host.as_deref()), ("/healthz?full=1", Some("web.example")));
    assert!(http.passes(204) && !http.passes(301), "only the codes listed");
    let plain = parse(json(r#"{"type":"HTTP"}"#).as_bytes()).unwrap();
    let http = plain.services[0].health_check.clone().unwrap().http.unwrap();
    assert_eq!((http.path.as_str(), http.host.as_deref()), ("/", None));
    assert!(http.passes(200) && http.passes(399) && !http.passes(400) && !http.passes(199), "200-399, as httpGet");
}

#[test]
fn left_out_node_ports_are_allocated_deterministically_and_stably() {
    use std::format;
    let svc = |name: &str| {
        format!(
            r#"{{"name":"{name}","ports":[{{"name":"a","port":80}},{{"name":"b","protocol":"UDP","port":53}}],"endpoints":[]}}"#
        )
    };
    let cfg_of = |services: &[&str]| {
        let json = format!(
            r#"{{"nodes":[{{"name":"n","tap":"t","addresses":["10.0.0.1/24"]}}],"services":[{}]}}"#,
            services.join(",")
        );
        parse(json.as_bytes()).unwrap()
    };
    let (web, api, dns) = (svc("web"), svc("api"), svc("dns"));
    let one = cfg_of(&[&web]);
    let again = cfg_of(&[&web]);
    let more = cfg_of(&[&web, &api, &dns]);
    let ports =
        |c: &Config, s: usize| c.services[s].ports.iter().map(|p| p.node_port.unwrap()).collect::<std::vec::Vec<_>>();
    assert_eq!(ports(&one, 0), ports(&again, 0), "the same config gives the same ports");
    assert_eq!(ports(&one, 0), ports(&more, 0), "adding services leaves the ports of earlier ones alone");
    let mut all: std::vec::Vec<(u16, Protocol)> =
        more.services.iter().flat_map(|s| s.ports.iter().map(|p| (p.node_port.unwrap(), p.protocol))).collect();
    assert!(all.iter().all(|(p, _)| PortRange::DEFAULT.contains(*p)));
    all.sort_by_key(|(p, proto)| (*p, proto.number()));
    all.dedup();
    assert_eq!(all.len(), 6, "no port is given twice");
}

#[test]
fn allocation_works_around_ports_already_taken() {
    // A one-port range: the explicit port takes it, so the allocation must fail with a path.
    let json = br#"{"nodePortRange":"30000-30000","nodes":[{"name":"n","tap":"t","addresses":["10.0.0.1/24"]}],
        "services":[{"name":"a","ports":[{"port":1,"nodePort":30000}]},{"name":"b","ports":[{"port":1}]}]}"#;
    use std::string::ToString;
    assert_eq!(
        parse(json).unwrap_err().to_string(),
        "services[1].ports[0].nodePort: no free port left in nodePortRange 30000-30000"
    );
    let json = br#"{"nodePortRange":"30000-30001","nodes":[{"name":"n","tap":"t","addresses":["10.0.0.1/24"]}],
        "services":[{"name":"a","ports":[{"port":1,"nodePort":30000}]},{"name":"b","ports":[{"port":1}]}]}"#;
    assert_eq!(parse(json).unwrap().services[1].ports[0].node_port, Some(30001));
}

#[test]
fn node_selection() {
    let two = br#"{"nodes":[{"name":"a","tap":"t","addresses":["10.0.0.1/24"]},{"name":"b","tap":"t","addresses":["10.0.0.2/24"]}]}"#;
    let cfg = parse(two).unwrap();
    assert_eq!(cfg.node(Some("b")).unwrap().name, "b");
    use std::string::ToString;
    assert_eq!(cfg.node(None).unwrap_err().to_string(), "--node: the config has 2 nodes: name one with --node");
    assert_eq!(cfg.node(Some("c")).unwrap_err().to_string(), "--node: no node named \"c\" (nodes: a, b)");
}

#[test]
fn hostile_bytes_never_panic() {
    let mut seed = 7u32;
    let base = DEFAULT.as_bytes();
    for _ in 0..3000 {
        let mut bytes: heapless::Vec<u8, 2048> = base.iter().copied().collect();
        for _ in 0..4 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let at = (seed >> 8) as usize % bytes.len();
            bytes[at] = (seed >> 20) as u8;
        }
        let _ = parse(&bytes);
    }
}

/// Each row: what is wrong, the fields added to a valid service, the exact error.
#[test]
fn invalid_service_fields_name_the_field() {
    use std::format;
    let rows: &[(&str, &str, &str)] = &[
        (
            "nodePort in a ClusterIP service",
            r#""type":"ClusterIP","clusterIP":"10.96.0.10""#,
            "services[0].ports[0].nodePort: a ClusterIP service has no nodePort",
        ),
        (
            "affinity timeout out of range",
            r#""sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":86401}}"#,
            "services[0].sessionAffinityConfig.clientIP.timeoutSeconds: 86401 is outside 1-86400",
        ),
        (
            "unknown affinity",
            r#""sessionAffinity":"Cookie""#,
            "services[0].sessionAffinity: \"Cookie\" is not one of None, ClientIP",
        ),
        (
            "bad source range",
            r#""loadBalancerSourceRanges":["10.0.0.0/33"]"#,
            "services[0].loadBalancerSourceRanges[0]: \"10.0.0.0/33\" is not an IPv4 network with a prefix length (like 192.168.0.0/16)",
        ),
        (
            "health check node port with Cluster policy",
            r#""healthCheckNodePort":30100"#,
            "services[0].healthCheckNodePort: is only valid with externalTrafficPolicy: Local",
        ),
        (
            "health check node port on a nodePort",
            r#""externalTrafficPolicy":"Local","healthCheckNodePort":30080"#,
            "services[0].healthCheckNodePort: 30080 is already used by service \"web\"",
        ),
        (
            "health check node port outside the range",
            r#""externalTrafficPolicy":"Local","healthCheckNodePort":10256"#,
            "services[0].healthCheckNodePort: 10256 is outside nodePortRange 30000-32767",
        ),
        (
            "health check timeout above interval",
            r#""healthCheck":{"intervalSeconds":2,"timeoutSeconds":3}"#,
            "services[0].healthCheck.timeoutSeconds: 3 is longer than intervalSeconds 2",
        ),
        (
            "unknown health check type",
            r#""healthCheck":{"type":"gRPC"}"#,
            "services[0].healthCheck.type: \"gRPC\" is not one of TCP, HTTP",
        ),
        (
            "HTTP path without a slash",
            r#""healthCheck":{"type":"HTTP","path":"healthz"}"#,
            "services[0].healthCheck.path: \"healthz\" is not a path (starting with '/', visible ASCII, no spaces)",
        ),
        (
            "HTTP path that would end the request line",
            r#""healthCheck":{"type":"HTTP","path":"/ HTTP/1.0"}"#,
            "services[0].healthCheck.path: \"/ HTTP/1.0\" is not a path (starting with '/', visible ASCII, no spaces)",
        ),
        (
            "HTTP host with a space",
            r#""healthCheck":{"type":"HTTP","host":"a b"}"#,
            "services[0].healthCheck.host: \"a b\" is not a host (visible ASCII, no spaces)",
        ),
        (
            "HTTP status out of range",
            r#""healthCheck":{"type":"HTTP","expectedStatuses":[200,99]}"#,
            "services[0].healthCheck.expectedStatuses[1]: 99 is not an HTTP status (100-599)",
        ),
        (
            "path on a TCP check",
            r#""healthCheck":{"path":"/healthz"}"#,
            "services[0].healthCheck.path: is only valid with type: HTTP",
        ),
        (
            "health check port zero",
            r#""healthCheck":{"type":"HTTP","port":0}"#,
            "services[0].healthCheck.port: 0 is not a port (1-65535)",
        ),
        (
            "health check threshold zero",
            r#""healthCheck":{"unhealthyThreshold":0}"#,
            "services[0].healthCheck.unhealthyThreshold: 0 is outside 1-100",
        ),
        (
            "externalIP that is the node's",
            r#""externalIPs":["10.77.0.1"]"#,
            "services[0].externalIPs: 10.77.0.1 is a node address",
        ),
        ("bad clusterIP", r#""clusterIP":"None""#, "services[0].clusterIP: \"None\" is not an IPv4 address"),
        (
            "weight zero",
            r#""endpoints":[{"ip":"10.77.0.11","weight":0}]"#,
            "services[0].endpoints[0].weight: 0 is outside 1-255",
        ),
    ];
    for (what, extra, want) in rows {
        let json = format!(
            r#"{{"nodes":[{{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]}}],
                "services":[{{"name":"web",{extra},"ports":[{{"port":80,"nodePort":30080}}]}}]}}"#
        );
        assert_eq!(error_of(&json), *want, "{what}");
    }
    let two = r#"{"nodes":[{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]}],
        "services":[{"name":"web","clusterIP":"10.96.0.1","ports":[{"port":80}]},{"name":"api","clusterIP":"10.96.0.1","ports":[{"port":80}]}]}"#;
    assert_eq!(error_of(two), "services[1].clusterIP: 10.96.0.1:80/TCP is already used by service \"web\"");
}

#[test]
fn hostile_shapes_are_rejected_with_a_reason() {
    use std::string::ToString;
    let deep: std::vec::Vec<u8> = core::iter::repeat_n(b'[', 100_000).collect();
    assert_eq!(parse(&deep).unwrap_err().to_string(), "invalid JSON: nested deeper than 16 levels at byte 16");
    let deep_in_field = std::format!(r#"{{"nodes":[{{"name":"n","labels":{}}}]}}"#, "{\"a\":".repeat(40));
    assert!(error_of(&deep_in_field).starts_with("invalid JSON: nested deeper than 16 levels"));
    // Brackets inside strings do not count.
    let quoted = r#"{"nodes":[{"name":"n","tap":"t","addresses":["10.0.0.1/24"],"note":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}]}"#;
    assert!(parse(quoted.as_bytes()).is_ok());
    let long_name =
        std::format!(r#"{{"nodes":[{{"name":"{}","tap":"t","addresses":["10.0.0.1/24"]}}]}}"#, "a".repeat(10_000));
    assert!(
        error_of(&long_name)
            .starts_with("nodes[0].name: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"... is not a valid name")
    );
    assert!(error_of("\u{0}\u{1}garbage").starts_with("invalid JSON"));
    assert!(parse(b"").is_err());
}

#[test]
fn more_on_link_endpoints_than_the_neighbour_table_holds_are_refused() {
    use std::format;
    use std::string::{String, ToString};
    use std::vec::Vec;
    let n = crate::board::NEIGHBOR_CAPACITY;
    let per = crate::board::MAX_ENDPOINTS_PER_SERVICE;
    // `count` endpoints on the node's /8, in services of at most `per` each.
    let cfg = |count: usize| -> String {
        let services: Vec<String> = (0..count.div_ceil(per))
            .map(|s| {
                let eps: Vec<String> = (s * per..count.min((s + 1) * per))
                    .map(|k| format!(r#"{{"ip":"10.1.{}.{}"}}"#, k / 250, 1 + k % 250))
                    .collect();
                format!(r#"{{"name":"s{s}","ports":[{{"port":80}}],"endpoints":[{}]}}"#, eps.join(","))
            })
            .collect();
        format!(
            r#"{{"nodes":[{{"name":"n","tap":"t","addresses":["10.0.0.1/8"]}}],"services":[{}]}}"#,
            services.join(",")
        )
    };
    assert!(parse(cfg(n).as_bytes()).is_ok(), "as many as the table holds");
    let err = parse(cfg(n + 1).as_bytes()).unwrap_err().to_string();
    assert!(err.contains(&format!("more than {n} endpoints and gateway on node n's subnets")), "{err}");
}

#[test]
fn bfd_sessions_take_their_defaults_and_bad_ones_name_the_field() {
    use std::format;
    let with = |bfd: &str| {
        format!(
            r#"{{"nodePortRange":"3000-4000","nodes":[{{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]}}],
                "services":[{{"name":"dns","ports":[{{"protocol":"UDP","port":53,"nodePort":3053}}],"endpoints":[]}}],
                "bfd":{bfd}}}"#
        )
    };
    let cfg = parse(with(r#"{"sessions":[{"peer":"10.77.0.254"}]}"#).as_bytes()).unwrap();
    assert_eq!(
        cfg.bfd.sessions[..],
        [BfdSession {
            peer: Ipv4Addr::new(10, 77, 0, 254),
            desired_min_tx_millis: 100,
            required_min_rx_millis: 100,
            detect_multiplier: 3
        }]
    );
    assert_eq!(cfg.bfd.shutdown_drain_millis, 2000);
    let rows = [
        (r#"{"sessions":[{}]}"#, "bfd.sessions[0].peer: is required"),
        (
            r#"{"sessions":[{"peer":"192.0.2.1"}]}"#,
            "bfd.sessions[0].peer: 192.0.2.1 is on none of node edge-1's subnets (BFD is single hop)",
        ),
        (r#"{"sessions":[{"peer":"10.77.0.1"}]}"#, "bfd.sessions[0].peer: 10.77.0.1 is a node address or a virtual IP"),
        (
            r#"{"sessions":[{"peer":"10.77.0.254"},{"peer":"10.77.0.254"}]}"#,
            "bfd.sessions[1].peer: 10.77.0.254 has an earlier session",
        ),
        (
            r#"{"sessions":[{"peer":"10.77.0.254","detectMultiplier":0}]}"#,
            "bfd.sessions[0].detectMultiplier: 0 is outside 1-255",
        ),
        (
            r#"{"sessions":[{"peer":"10.77.0.254","desiredMinTxMillis":5}]}"#,
            "bfd.sessions[0].desiredMinTxMillis: 5 is outside 10-10000 milliseconds",
        ),
        (r#"{"shutdownDrainMillis":70000}"#, "bfd.shutdownDrainMillis: 70000 is longer than 60000"),
    ];
    for (bfd, want) in rows {
        assert_eq!(error_of(&with(bfd)), want, "{bfd}");
    }
    let clash = with(r#"{"sessions":[{"peer":"10.77.0.254"}]}"#).replace("3053", "3784");
    assert_eq!(error_of(&clash), "bfd: UDP port 3784 (BFD) is the nodePort of service \"dns\"");
}
