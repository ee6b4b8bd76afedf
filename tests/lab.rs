//! Lab tests: real Linux TCP and UDP clients reach real backends through nodegate on its TAP,
//! all inside fresh network namespaces. They need root (see `common::lab_available`).

mod common;

use common::{Lab, NODE_IP, lab_available, sample};
use std::collections::BTreeMap;
use std::time::Duration;

const CONFIG: &str = r#"{
  "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"] }],
  "services": [
    { "name": "web-frontend", "ports": [{ "name": "http", "port": 80, "targetPort": 3000, "nodePort": 30080 }],
      "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] },
    { "name": "dns", "ports": [{ "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }],
      "endpoints": [{ "ip": "10.77.0.11" }, { "ip": "10.77.0.12" }, { "ip": "10.77.0.13" }] },
    { "name": "nothing-yet", "ports": [{ "name": "t", "port": 80, "nodePort": 30099 }, { "name": "u", "protocol": "UDP", "port": 53, "nodePort": 30099 }],
      "endpoints": [] }
  ]
}"#;

#[test]
fn nodeport_gateway_end_to_end() {
    let Some(mut lab) = Lab::started("nodeport_gateway_end_to_end", "e2e", CONFIG) else { return };

    // 60 TCP connections from a real Linux client, one request each.
    let out = lab.client("client", &["http", NODE_IP, "30080", "60"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "some requests failed:\n{text}\n{}", lab.gateway_log());
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for line in text.lines() {
        // "request N: web-frontend-2 saw 10.77.0.1:40123"
        let answer = line.split_once(": ").map(|(_, a)| a).unwrap_or("");
        let (backend, seen) = answer.split_once(" saw ").unwrap_or_else(|| panic!("unexpected answer {line:?}"));
        assert!(seen.starts_with("10.77.0.1:"), "Cluster policy: the backend must see the node's address, saw {seen}");
        *per_backend.entry(backend.to_string()).or_default() += 1;
    }
    assert_eq!(per_backend.values().sum::<usize>(), 60, "{text}");
    assert!(per_backend.len() >= 2, "Maglev spread 60 connections over {per_backend:?}");

    // UDP request and response.
    let out = lab.client("client", &["udp", NODE_IP, "30053", "hello"]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "UDP: {answer}\n{}", lab.gateway_log());
    assert!(answer.contains(" saw 10.77.0.1:") && answer.trim_end().ends_with("hello"), "UDP answer: {answer}");

    // A service without endpoints refuses at once: TCP RST, ICMP port unreachable.
    let out = lab.client("client", &["http", NODE_IP, "30099", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Connection refused"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = lab.client("client", &["udp", NODE_IP, "30099", "anyone?"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Connection refused"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Ping to the node address.
    assert!(lab.client("client2", &["ping", NODE_IP, "0", "3"]).status.success());

    // SIGTERM: a clean exit, and the TAP and control socket it created are gone.
    assert!(lab.has_link("gw", "ng0") && lab.control.exists());
    let (took, status) = lab.stop_gateway();
    assert!(status.success(), "exit status {status}: {}", lab.gateway_log());
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(!lab.has_link("gw", "ng0"), "the TAP must be removed");
    assert!(!lab.control.exists(), "the control socket must be removed");
    let log = lab.gateway_log();
    assert!(log.contains("61 flows created"), "60 TCP + 1 UDP flows: {log}");
}

#[test]
fn bulk_tcp_crosses_the_gateway_as_super_frames() {
    let config =
        CONFIG.replace(r#""addresses": ["10.77.0.1/24"] }"#, r#""addresses": ["10.77.0.1/24"], "metricsPort": 9100 }"#);
    let Some(lab) = Lab::started("bulk_tcp_crosses_the_gateway_as_super_frames", "gso", &config) else { return };
    let out = lab.client("client", &["stream", NODE_IP, "30080", "2"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("blocks intact"), "{said}{}", lab.gateway_log());
    // The backend's kernel hands its 8 KiB writes to the TAP unsegmented, with partial checksums;
    // nodegate translates each once and the kernel cuts it into packets after it.
    // The client's packets (the request, ACKs) are single frames.
    let metrics = lab.scrape("client");
    let packets = |direction: &str| {
        sample(
            &metrics,
            &format!(r#"nodegate_packets_total{{service="web-frontend",port="http",direction="{direction}"}}"#),
        )
    };
    let frames = sample(&metrics, "nodegate_frames_forwarded_total") - packets("original");
    println!("{} packets from the backend crossed the gateway in {frames} frames", packets("reply"));
    assert!(
        packets("reply") > 3 * frames,
        "{} packets in {frames} frames: the TAP's offloads are off",
        packets("reply")
    );
}

#[test]
fn run_without_permission_names_the_cause_and_both_fixes() {
    if !lab_available("run_without_permission_names_the_cause_and_both_fixes") {
        return;
    }
    // An unprivileged user inside a namespace of the lab: nothing can leak into the root one.
    let lab = Lab::up("perm");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("gw"),
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_nodegate"))
        .arg("run")
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("cannot open TAP ng0")
            && err.contains("CAP_NET_ADMIN")
            && err.contains("ip tuntap add dev ng0 mode tap user"),
        "{err}"
    );
}
