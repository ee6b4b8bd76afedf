//! Lab tests of Kubernetes Service semantics with real Linux clients and servers: Local policy
//! and its healthCheckNodePort, ClientIP affinity, source ranges, clusterIP and externalIPs,
//! active health checks and the UDP flush. They need root (see `common::lab_available`).

mod common;

use common::{Lab, NODE_IP, finish, lab_available};
use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

const NODE: &str = r#"{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                        "addresses": ["10.77.0.1/24", "10.78.0.1/24"] }"#;

fn config(services: &str) -> String {
    format!(
        r#"{{ "nodes": [{NODE}, {{ "name": "edge-2", "tap": "ng0", "addresses": ["10.77.0.2/24"] }}], "services": [{services}] }}"#
    )
}

/// A lab with nodegate running `services` as edge-1, or `None` where lab tests cannot run.
fn start(test: &str, tag: &str, services: &str) -> Option<Lab> {
    if !lab_available(test) {
        return None;
    }
    let mut lab = Lab::up(tag);
    lab.start_gateway_as(&config(services), Some("edge-1"));
    Some(lab)
}

fn distinct(names: &[String]) -> BTreeSet<&str> {
    names.iter().map(|s| s.as_str()).collect()
}

#[test]
fn local_policy_keeps_the_client_address_and_reports_on_the_health_check_port() {
    let Some(mut lab) = start(
        "local_policy_keeps_the_client_address_and_reports_on_the_health_check_port",
        "loc",
        r#"{ "name": "web-local", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100,
             "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30081 }],
             "endpoints": [{ "ip": "10.77.0.11", "nodeName": "edge-1" }, { "ip": "10.77.0.12", "nodeName": "edge-2" }] },
           { "name": "web-elsewhere", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30101,
             "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30082 }],
             "endpoints": [{ "ip": "10.77.0.12", "nodeName": "edge-2" }] },
           { "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }] }"#,
    ) else {
        return;
    };
    // Local: the backend sees the client itself (10.78.0.100, routed via the node).
    let out = lab.client("remote", &["http", "10.78.0.1", "30081", "5"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", lab.gateway_log());
    assert_eq!(text.lines().filter(|l| l.contains("web-frontend-1 saw 10.78.0.100:")).count(), 5, "{text}");
    // Cluster: the backend sees the node.
    let text = String::from_utf8_lossy(&lab.client("remote", &["http", "10.78.0.1", "30080", "1"]).stdout).into_owned();
    assert!(text.contains("web-frontend-1 saw 10.77.0.1:"), "{text}");

    let health = String::from_utf8_lossy(&lab.client("remote", &["get", "10.78.0.1", "30100"]).stdout).into_owned();
    assert_eq!(health, "HTTP/1.1 200 OK\n{\"service\":{\"name\":\"web-local\"},\"localEndpoints\":1}\n");
    let health = String::from_utf8_lossy(&lab.client("remote", &["get", "10.78.0.1", "30101"]).stdout).into_owned();
    assert_eq!(
        health,
        "HTTP/1.1 503 Service Unavailable\n{\"service\":{\"name\":\"web-elsewhere\"},\"localEndpoints\":0}\n"
    );
    // Several checks in a row (health checkers poll): each is answered.
    for _ in 0..6 {
        let again = lab.client("client", &["get", NODE_IP, "30100"]);
        assert!(String::from_utf8_lossy(&again.stdout).starts_with("HTTP/1.1 200 OK"));
    }
    // No local endpoint: the nodePort drops, and says so.
    assert_eq!(lab.backends("remote", "10.78.0.1", 30082, 1), ["FAILED"]);
    lab.stop_gateway();
    assert!(lab.gateway_log().contains("no_local_endpoint="), "{}", lab.gateway_log());
}

#[test]
fn client_ip_affinity_pins_each_client() {
    let Some(lab) = start(
        "client_ip_affinity_pins_each_client",
        "aff",
        r#"{ "name": "web", "sessionAffinity": "ClientIP", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }"#,
    ) else {
        return;
    };
    let first = lab.backends("client", NODE_IP, 30080, 30);
    assert_eq!(distinct(&first).len(), 1, "30 connections from one client: {first:?}");
    assert!(!first.contains(&"FAILED".to_string()));
    let second = lab.backends("client2", NODE_IP, 30080, 30);
    assert_eq!(distinct(&second).len(), 1, "{second:?}");
    // The mapping holds per client.
    assert_eq!(lab.backends("client", NODE_IP, 30080, 5), first[..5]);
    assert_eq!(lab.backends("client2", NODE_IP, 30080, 5), second[..5]);
}

#[test]
fn source_ranges_let_only_listed_clients_in() {
    let Some(mut lab) = start(
        "source_ranges_let_only_listed_clients_in",
        "src",
        r#"{ "name": "web", "loadBalancerSourceRanges": ["10.77.0.100/32"], "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }] }"#,
    ) else {
        return;
    };
    assert_eq!(lab.backends("client", NODE_IP, 30080, 3), ["web-frontend-1"; 3]);
    let out = lab.client("client2", &["http", NODE_IP, "30080", "1", "2"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED (timed out)"), "no answer at all, not a refusal");
    lab.stop_gateway();
    let log = lab.gateway_log();
    let drops: u64 = log
        .split("source_range=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(drops >= 1, "the drop counter rose: {log}");
    assert!(
        log.contains("dropping frames: source_range (first seen now"),
        "the first drop of a new reason is logged: {log}"
    );
}

#[test]
fn cluster_ip_and_external_ips_are_reachable_and_answer_arp() {
    let Some(lab) = start(
        "cluster_ip_and_external_ips_are_reachable_and_answer_arp",
        "vip",
        r#"{ "name": "web", "type": "ClusterIP", "clusterIP": "10.96.0.10", "externalIPs": ["10.77.0.50"],
             "ports": [{ "port": 80, "targetPort": 3000 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }"#,
    ) else {
        return;
    };
    // The client routes the service range via the node, as a site router would.
    lab.ip("client", &["route", "add", "10.96.0.0/16", "via", NODE_IP]);
    let via_cluster_ip = lab.backends("client", "10.96.0.10", 80, 12);
    assert!(
        !via_cluster_ip.contains(&"FAILED".to_string()) && distinct(&via_cluster_ip).len() >= 2,
        "{via_cluster_ip:?}"
    );
    let via_external_ip = lab.backends("client", "10.77.0.50", 80, 12);
    assert!(
        !via_external_ip.contains(&"FAILED".to_string()) && distinct(&via_external_ip).len() >= 2,
        "{via_external_ip:?}"
    );
    let neigh = lab.ip("client", &["neigh", "show", "10.77.0.50"]);
    assert!(neigh.contains("lladdr 02:00:00:00:00:01"), "the node answered ARP for the externalIP: {neigh}");
}

#[test]
fn health_checks_take_a_failed_endpoint_out_and_bring_it_back_and_flush_its_udp_flows() {
    let Some(mut lab) = start(
        "health_checks_take_a_failed_endpoint_out_and_bring_it_back_and_flush_its_udp_flows",
        "hc",
        r#"{ "name": "web", "healthCheck": { "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2, "healthyThreshold": 1 },
             "ports": [{ "name": "http", "port": 80, "targetPort": 3000, "nodePort": 30080 },
                       { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }"#,
    ) else {
        return;
    };
    // A UDP client that keeps one 5-tuple (source port 5555).
    let udp = |lab: &Lab| {
        String::from_utf8_lossy(&lab.client("client", &["udp", NODE_IP, "30053", "ping", "5555"]).stdout).into_owned()
    };
    let answer = udp(&lab);
    let victim: u8 = answer
        .strip_prefix("web-frontend-")
        .and_then(|r| r[..1].parse().ok())
        .unwrap_or_else(|| panic!("UDP: {answer}"));
    assert_eq!(udp(&lab).split(' ').next(), answer.split(' ').next(), "the same 5-tuple stays on its endpoint");

    lab.backend(victim, false);
    // interval x unhealthyThreshold + 1 s.
    sleep(Duration::from_secs(3));
    let name = format!("web-frontend-{victim}");
    let after = lab.backends("client", NODE_IP, 30080, 30);
    assert!(!after.contains(&name) && !after.contains(&"FAILED".to_string()), "{after:?}\n{}", lab.gateway_log());
    let moved = udp(&lab);
    assert!(
        moved.starts_with("web-frontend-") && !moved.starts_with(&name),
        "the UDP flow was flushed and moved: {moved}"
    );

    lab.backend(victim, true);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if lab.backends("client", NODE_IP, 30080, 30).contains(&name) {
            break;
        }
        assert!(Instant::now() < deadline, "the endpoint never came back: {}", lab.gateway_log());
        sleep(Duration::from_millis(500));
    }
    lab.stop_gateway();
    let log = lab.gateway_log();
    assert!(
        log.contains(&format!("endpoint 10.77.0.1{victim}:3000 is down")) && log.contains("1 UDP flow(s) flushed"),
        "{log}"
    );
    assert!(log.contains(&format!("endpoint 10.77.0.1{victim}:3000 is up again")), "{log}");
}

#[test]
fn an_endpoint_down_at_a_reload_comes_back_when_it_recovers() {
    let services = r#"{ "name": "web", "healthCheck": { "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 3, "healthyThreshold": 1 },
             "ports": [{ "name": "http", "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }"#;
    let Some(lab) = start("an_endpoint_down_at_a_reload_comes_back_when_it_recovers", "hcr", services) else {
        return;
    };
    let status = |lab: &Lab| String::from_utf8_lossy(&lab.nodegate("status", &[]).stdout).into_owned();
    let wait_for = |lab: &Lab, what: &str, serving: bool| {
        let deadline = Instant::now() + Duration::from_secs(8);
        let want = format!("endpoint 10.77.0.11:3000 {}", if serving { "serving" } else { "not serving" });
        while !status(lab).contains(&want) {
            assert!(Instant::now() < deadline, "{what}: {}\n{}", status(lab), lab.gateway_log());
            sleep(Duration::from_millis(200));
        }
    };
    lab.backend(1, false);
    wait_for(&lab, "down", false);
    // A reload while it is down (the same file), and it recovers at once, before three checks
    // could fail: the new probes must start from "down" to see it come back.
    let out = lab.nodegate("reload", &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    lab.backend(1, true);
    wait_for(&lab, "back after its checks pass", true);
    let answers = lab.backends("client", NODE_IP, 30080, 30);
    assert!(answers.contains(&"web-frontend-1".to_string()), "{answers:?}");
}

/// HTTP checks read the status line: a backend that answers 503 leaves the table, one that
/// accepts the connection and never answers times out, and one whose answer is far larger
/// than the probe reads (64 KiB of headers) passes on its status; the 503 one comes back when
/// it answers 200 again. A check may name its own port: the UDP service's endpoints are
/// checked over HTTP on the backends' port 3000.
#[test]
fn http_health_checks_go_by_the_status_of_the_answer() {
    let services = r#"{ "name": "web", "healthCheck": { "type": "HTTP", "path": "/health", "intervalSeconds": 1, "timeoutSeconds": 1,
                                          "unhealthyThreshold": 2, "healthyThreshold": 1 },
             "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] },
           { "name": "dns", "healthCheck": { "type": "HTTP", "path": "/health", "port": 3000, "intervalSeconds": 1, "timeoutSeconds": 1,
                                          "unhealthyThreshold": 2, "healthyThreshold": 1 },
             "ports": [{ "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }"#;
    let Some(lab) = start("http_health_checks_go_by_the_status_of_the_answer", "hh", services) else {
        return;
    };
    let status = |lab: &Lab| String::from_utf8_lossy(&lab.nodegate("status", &[]).stdout).into_owned();
    let wait_for = |lab: &Lab, what: &str, want: &[(u8, bool)]| {
        let deadline = Instant::now() + Duration::from_secs(8);
        // Both services, web's checks on its targetPort, dns's on the port its check names.
        let lines = |&(n, serving): &(u8, bool)| {
            let state = if serving { "serving" } else { "not serving" };
            [3000, 5353].map(|port| format!("endpoint 10.77.0.1{n}:{port} {state},"))
        };
        while !want.iter().flat_map(lines).all(|l| status(lab).contains(&l)) {
            assert!(Instant::now() < deadline, "{what}: {}\n{}", status(lab), lab.gateway_log());
            sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(distinct(&lab.backends("client", NODE_IP, 30080, 30)).len(), 3, "all three pass at first");
    lab.backend_health(1, "503");
    lab.backend_health(2, "hang");
    lab.backend_health(3, "big");
    wait_for(&lab, "503 and the hung one down, the big answer up", &[(1, false), (2, false), (3, true)]);
    // Two more rounds of checks: the big answer keeps passing.
    sleep(Duration::from_secs(2));
    wait_for(&lab, "the big answer still up", &[(1, false), (2, false), (3, true)]);
    let answers = lab.backends("client", NODE_IP, 30080, 10);
    assert!(answers.iter().all(|a| a == "web-frontend-3"), "{answers:?}");
    lab.backend_health(1, "200");
    wait_for(&lab, "the 503 one back", &[(1, true), (2, false)]);
    let log = lab.gateway_log();
    assert!(log.contains("HTTP checks of GET /health every 1s"), "{log}");
    assert!(log.contains("HTTP checks of GET /health on port 3000 every 1s"), "{log}");
    assert!(log.contains("endpoint 10.77.0.12:3000 is down"), "{log}");
}

/// `nodegate drain` during a kept-alive load: the drained endpoint gets no new connection,
/// the ones it has go on to the end of the load, and `undrain` takes it back.
#[test]
fn a_drained_endpoint_finishes_its_connections_and_gets_no_new_ones() {
    let services = r#"{ "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] }"#;
    let Some(lab) = start("a_drained_endpoint_finishes_its_connections_and_gets_no_new_ones", "dr", services) else {
        return;
    };
    let text = |out: std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let load = lab.spawn_client("client", &["longlived", NODE_IP, "30080", "8", "30", "200"]);
    sleep(Duration::from_secs(2));
    let said = lab.nodegate("drain", &["web", "10.77.0.11"]);
    assert!(said.status.success(), "{}", String::from_utf8_lossy(&said.stderr));
    let said = text(said);
    // 30 connections over three endpoints: some of them are the drained one's.
    let open: u64 = said.split("; ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(said.contains("endpoint 10.77.0.11 drained") && open > 0, "{said}");
    let flows = text(lab.nodegate("conntrack", &[]));
    let established = flows.lines().filter(|l| l.contains("ESTABLISHED") && l.contains("endpoint=10.77.0.11:3000"));
    assert!(established.count() > 0, "{flows}");
    let answers = lab.backends("client2", NODE_IP, 30080, 20);
    assert!(answers.iter().all(|a| a == "web-frontend-2" || a == "web-frontend-3"), "{answers:?}");
    let status = text(lab.nodegate("status", &[]));
    assert!(status.contains("endpoint 10.77.0.11:3000 not serving (drained)"), "{status}");
    let (ok, out) = finish(load);
    assert!(ok && out.contains("longlived: 30 connections, 0 broken"), "{out}\n{}", lab.gateway_log());
    let said = lab.nodegate("undrain", &["web", "10.77.0.11"]);
    assert!(text(said).contains("undrained"));
    assert!(lab.backends("client2", NODE_IP, 30080, 30).contains(&"web-frontend-1".to_string()));
    let unknown = lab.nodegate("drain", &["web", "10.77.0.99"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("service web has no endpoint 10.77.0.99"));
}

#[test]
fn the_nodes_own_connections_start_from_unpredictable_sequences_and_ports() {
    let services = r#"{ "name": "web", "healthCheck": { "intervalSeconds": 1, "timeoutSeconds": 1 },
             "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
             "endpoints": [{ "ip": "10.77.0.11" }] }"#;
    let Some(mut lab) =
        start("the_nodes_own_connections_start_from_unpredictable_sequences_and_ports", "isn", services)
    else {
        return;
    };
    // The health probes' SYNs as the backend sees them, in two runs of the gateway.
    let probes = |lab: &Lab| -> Vec<(u16, u32)> {
        let out = lab.client("be1", &["synsniff", NODE_IP, "3000", "4.5"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut w = l.strip_prefix("syn ")?.split(' ');
                Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
            })
            .collect()
    };
    let first = probes(&lab);
    lab.stop_gateway();
    lab.start_gateway_as(&config(services), Some("edge-1"));
    let second = probes(&lab);
    println!("probe SYNs (port, sequence): {first:?} then {second:?}");
    assert!(first.len() >= 3 && second.len() >= 3, "{first:?} {second:?}");
    let seqs: BTreeSet<u32> = first.iter().chain(&second).map(|p| p.1).collect();
    assert_eq!(seqs.len(), first.len() + second.len(), "no sequence number repeats across starts");
    let consecutive = |run: &[(u16, u32)]| run.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1));
    assert!(!consecutive(&first) && !consecutive(&second), "source ports follow no order");
    assert_ne!(first[0].0, second[0].0, "the first probe's port differs between starts");
}
