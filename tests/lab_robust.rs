//! Lab tests of robustness: PMTU discovery through the gateway. They need root (see
//! `common::lab_available`).

mod common;

use common::{Lab, NODE_IP, lab_available};

#[test]
fn pmtu_discovery_works_through_the_gateway() {
    let Some(lab) = Lab::started(
        "pmtu_discovery_works_through_the_gateway",
        "mtu",
        r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                         "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254" }],
             "services": [{ "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                            "endpoints": [{ "ip": "10.77.0.11" }] }] }"#,
    ) else {
        return;
    };
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
    let Some(lab) = Lab::started(
        "fragmented_udp_reaches_the_backend_and_comes_back_whole",
        "frag",
        r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }],
             "services": [{ "name": "dns", "ports": [{ "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
                            "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }] }"#,
    ) else {
        return;
    };
    // 4000 bytes: three fragments each way at MTU 1500.
    let out = lab.client("client", &["udp", NODE_IP, "30053", "@4000"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("4000 bytes echoed intact"), "{said}{}", lab.gateway_log());
}

/// nodegate built for the edge-tiny board (4,096 flows), in a target directory of its own.
fn tiny_gateway() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/edge-tiny");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--bin", "nodegate", "--target-dir"])
        .arg(&target)
        .env("NODEGATE_BOARD", "edge-tiny")
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "building the edge-tiny gateway: {}", String::from_utf8_lossy(&out.stderr));
    target.join("debug/nodegate")
}

/// The value of `series` in a Prometheus text.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(u64::MAX)
}

#[test]
fn a_syn_flood_neither_breaks_a_running_stream_nor_locks_out_new_clients() {
    if !lab_available("a_syn_flood_neither_breaks_a_running_stream_nor_locks_out_new_clients") {
        return;
    }
    let gateway = tiny_gateway();
    let mut lab = Lab::up("syn");
    lab.start_gateway_bin(
        &gateway,
        r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                         "addresses": ["10.77.0.1/24"], "metricsPort": 9100 }],
             "services": [{ "name": "web", "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                            "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }] }] }"#,
        &[],
    );
    let stream = lab
        .client_command("client2", &["stream", NODE_IP, "30080", "7"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Spoofed sources from 10.80.0.0/16, a block only this lab uses: the SYN-ACKs the backends
    // send them go back to the client namespace's MAC, where nothing answers.
    let flood = lab
        .client_command("client", &["synflood", NODE_IP, "30080", "5", "10.80"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut most = 0;
    for _ in 0..8 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let out = lab.client("client2", &["get", NODE_IP, "9100", "/metrics"]);
        most = most.max(sample(&String::from_utf8_lossy(&out.stdout), "nodegate_conntrack_entries"));
    }
    let flood = flood.wait_with_output().unwrap();
    let flooded = String::from_utf8_lossy(&flood.stdout).into_owned();
    let sent: u64 =
        flooded.trim().strip_prefix("synflood: ").and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(0);
    assert!(sent > 4096 * 2, "the flood must outnumber the table: {flooded}");
    println!("{}: the table held at most {most} flows of 4096", flooded.trim());
    assert!(most <= 4096, "the table never holds more than its capacity: {most}");

    let started = std::time::Instant::now();
    let after = lab.backends("client", NODE_IP, 30080, 1);
    assert!(
        after[0].starts_with("web-frontend-") && started.elapsed() < std::time::Duration::from_secs(2),
        "a new client after the flood: {after:?}\n{}",
        lab.gateway_log()
    );
    let stream = stream.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&stream.stdout);
    assert!(stream.status.success() && said.contains("blocks intact"), "the stream through the flood: {said}");
}
