//! Lab tests of robustness: PMTU discovery through the gateway. They need root (see
//! `common::lab_available`).

mod common;

use common::{Lab, NODE_IP, lab_available};

#[test]
fn pmtu_discovery_works_through_the_gateway() {
    if !lab_available("pmtu_discovery_works_through_the_gateway") {
        return;
    }
    let mut lab = Lab::up("mtu");
    lab.start_gateway(
        r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                         "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" }],
             "services": [{ "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                            "endpoints": [{ "ip": "10.77.0.11" }] }] }"#,
    );
    // The client, at MTU 1500, sits behind a router whose link towards it has MTU 1280: the
    // backend's full-size segments need the router's "fragmentation needed", translated by the
    // gateway, to get through.
    let out = lab.client("far", &["stream", NODE_IP, "30080", "1"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("blocks intact"), "{said}{}", lab.gateway_log());
    let route = lab.ip("be1", &["route", "get", NODE_IP]);
    assert!(route.contains("mtu 1280"), "the backend learned the path MTU: {route}");
}

#[test]
fn fragmented_udp_reaches_the_backend_and_comes_back_whole() {
    if !lab_available("fragmented_udp_reaches_the_backend_and_comes_back_whole") {
        return;
    }
    let mut lab = Lab::up("frag");
    lab.start_gateway(
        r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }],
             "services": [{ "name": "dns", "ports": [{ "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
                            "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }] }"#,
    );
    // 4000 bytes: three fragments each way at MTU 1500.
    let out = lab.client("client", &["udp", NODE_IP, "30053", "@4000"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("4000 bytes echoed intact"), "{said}{}", lab.gateway_log());
}
