//! Lab tests of operating nodegate: metrics over the wire, the control socket (status,
//! conntrack), reload without losing traffic, SIGHUP, `--user`. They need root (see
//! `common::lab_available`).

mod common;

use common::{Lab, NODE_IP, finish, lab_available, sample};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn config(endpoints: &[u8]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|i| format!(r#"{{ "ip": "10.77.0.1{i}" }}"#)).collect();
    format!(
        r#"{{ "nodes": [{{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                        "addresses": ["10.77.0.1/24"], "metricsPort": 9100 }}],
            "services": [{{ "name": "web",
                           "ports": [{{ "name": "http", "port": 80, "targetPort": 3000, "nodePort": 30080 }},
                                     {{ "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053 }}],
                           "endpoints": [{}] }},
                         {{ "name": "other", "ports": [{{ "port": 81, "targetPort": 3000, "nodePort": 30081 }}],
                           "endpoints": [{{ "ip": "10.77.0.13" }}] }}] }}"#,
        eps.join(", ")
    )
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn metrics_count_what_happens_and_pass_promtool() {
    let Some(lab) = Lab::started("metrics_count_what_happens_and_pass_promtool", "met", &config(&[1, 2, 3])) else {
        return;
    };
    // A slow client holds one of the metrics sockets the whole time.
    let mut slow =
        lab.client_command("client2", &["hold", NODE_IP, "9100", "5"]).stdout(Stdio::null()).spawn().unwrap();
    let before = lab.scrape("client");
    let connections = r#"nodegate_connections_total{service="web",port="http"}"#;
    let packets = r#"nodegate_packets_total{service="web",port="http",direction="original"}"#;
    assert_eq!(lab.backends("client", NODE_IP, 30080, 10).len(), 10);
    let after = lab.scrape("client");
    assert_eq!(sample(&after, connections) - sample(&before, connections), 10, "10 requests, 10 new connections");
    assert!(sample(&after, packets) - sample(&before, packets) >= 50, "at least SYN, ACK, request, ACK, FIN each");
    assert_eq!(sample(&after, "nodegate_conntrack_capacity"), nodegate::board::CONNTRACK_CAPACITY as u64);
    assert!(sample(&after, "nodegate_conntrack_entries") >= 10);
    assert_eq!(sample(&after, r#"nodegate_endpoint_ready{service="web",endpoint="10.77.0.12:3000"}"#), 1);
    assert_eq!(sample(&after, r#"nodegate_drops_total{reason="conntrack_full"}"#), 0);
    assert!(
        after.contains(&format!(r#"nodegate_build_info{{version="{}",board="host"}} 1"#, env!("CARGO_PKG_VERSION")))
    );
    let healthz =
        String::from_utf8_lossy(&lab.client("client", &["get", NODE_IP, "9100", "/healthz"]).stdout).into_owned();
    assert_eq!(healthz, "HTTP/1.1 200 OK\nok\n\n");

    // promtool (Debian's prometheus package; .ci/run installs it) accepts the exposition.
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut promtool) => {
            use std::io::Write;
            promtool.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
            let out = promtool.wait_with_output().unwrap();
            assert!(out.status.success(), "promtool check metrics: {}", text(&out));
        }
        Err(_) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!("promtool is not installed: the exposition was not linted")
        }
        Err(e) => panic!("promtool is needed in CI: {e}"),
    }
    let _ = slow.kill();
    let _ = slow.wait();
}

#[test]
fn conntrack_and_status_show_an_open_connection() {
    let Some(lab) = Lab::started("conntrack_and_status_show_an_open_connection", "ct", &config(&[1])) else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&lab.control).unwrap().permissions().mode() & 0o777,
        0o660,
        "the control socket is 0660"
    );
    let mut hold = lab.client_command("client", &["hold", NODE_IP, "30080", "6"]).spawn().unwrap();
    // Until the client (a Python start in a namespace, slow when the other lab tests load the
    // machine) has connected.
    let started = Instant::now();
    let listing = loop {
        let out = lab.nodegate("conntrack", &[]);
        let listing = text(&out);
        assert!(out.status.success(), "{listing}");
        if listing.contains(" ESTABLISHED ") || started.elapsed() > Duration::from_secs(4) {
            break listing;
        }
        sleep(Duration::from_millis(100));
    };
    let line = listing.lines().find(|l| l.contains("dport=30080")).unwrap_or_else(|| panic!("{listing}"));
    assert!(line.starts_with("tcp      6"), "{line}");
    assert!(line.contains(" ESTABLISHED src=10.77.0.100 dst=10.77.0.1 sport="), "{line}");
    assert!(line.contains(" src=10.77.0.11 dst=10.77.0.1 sport=3000 dport="), "{line}");
    assert!(line.contains("[ASSURED] service=web endpoint=10.77.0.11:3000"), "{line}");
    assert!(listing.ends_with("conntrack: 1 flow(s) shown, 1 tracked\n"), "{listing}");
    let other = text(&lab.nodegate("conntrack", &["--service", "other"]));
    assert!(other.ends_with("conntrack: 0 flow(s) shown, 1 tracked\n"), "{other}");
    let status = text(&lab.nodegate("status", &[]));
    assert!(
        status.contains("conntrack: 1 of ") && status.contains("endpoint 10.77.0.11:3000 serving, 1 SNAT ports in use"),
        "{status}"
    );
    assert!(status.contains("service web (NodePort, Cluster): 80:30080/TCP 53:30053/UDP, 1 flows created"), "{status}");
    let _ = hold.wait();
}

#[test]
fn reload_keeps_running_streams_and_sends_new_flows_to_the_new_endpoints() {
    let Some(lab) =
        Lab::started("reload_keeps_running_streams_and_sends_new_flows_to_the_new_endpoints", "rel", &config(&[1, 2]))
    else {
        return;
    };
    let tcp = lab.spawn_client("client", &["stream", NODE_IP, "30080", "4"]);
    let udp = lab.spawn_client("client2", &["udpstream", NODE_IP, "30053", "4", "5555"]);
    sleep(Duration::from_secs(1));

    // Endpoint 10.77.0.11 leaves, 10.77.0.13 arrives.
    std::fs::write(&lab.config, config(&[2, 3])).unwrap();
    let out = lab.nodegate("reload", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("service web: endpoints 10.77.0.13 added") && said.contains("endpoints 10.77.0.11 removed"),
        "{said}"
    );

    let (ok, said) = finish(tcp);
    assert!(ok && said.contains("blocks intact"), "TCP stream across the reload: {said}");
    let (ok, said) = finish(udp);
    assert!(ok, "UDP stream across the reload lost datagrams: {said}");

    let after = lab.backends("client", NODE_IP, 30080, 30);
    assert!(after.contains(&"web-frontend-3".to_string()), "new flows reach the new endpoint: {after:?}");
    assert!(!after.contains(&"web-frontend-1".to_string()) && !after.contains(&"FAILED".to_string()), "{after:?}");
    assert!(lab.gateway_log().contains("reload (control socket): applied:"), "{}", lab.gateway_log());
}

#[test]
fn a_broken_reload_changes_nothing_and_names_the_field() {
    let Some(lab) = Lab::started("a_broken_reload_changes_nothing_and_names_the_field", "bad", &config(&[1])) else {
        return;
    };
    std::fs::write(&lab.config, config(&[2]).replace("30080", "40000")).unwrap();
    let out = lab.nodegate("reload", &[]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out);
    assert!(said.contains("services[0].ports[0].nodePort: 40000 is outside nodePortRange 30000-32767"), "{said}");
    assert_eq!(lab.backends("client", NODE_IP, 30080, 5), ["web-frontend-1"; 5], "the running config stays");
    assert!(lab.gateway_log().contains("rejected, the running config stays"), "{}", lab.gateway_log());

    // SIGHUP reads the file again: once fixed, the change applies.
    std::fs::write(&lab.config, config(&[2])).unwrap();
    lab.hangup();
    let mut moved = false;
    for _ in 0..20 {
        sleep(Duration::from_millis(100));
        if lab.backends("client", NODE_IP, 30080, 1) == ["web-frontend-2"] {
            moved = true;
            break;
        }
    }
    assert!(moved, "SIGHUP reload: {}", lab.gateway_log());
    assert!(lab.gateway_log().contains("reload (SIGHUP): applied"), "{}", lab.gateway_log());
}

#[test]
fn run_as_another_user_after_the_tap_is_open() {
    if !lab_available("run_as_another_user_after_the_tap_is_open") {
        return;
    }
    let mut lab = Lab::up("usr");
    lab.start_gateway_with(&config(&[1]), &["--user", "nobody"]);
    let pid = lab.gateway_pid();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = proc_status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().nth(1), Some("65534"), "{uid}");
    assert_eq!(lab.backends("client", NODE_IP, 30080, 3), ["web-frontend-1"; 3]);
    assert!(text(&lab.nodegate("status", &[])).contains("endpoint 10.77.0.11:3000 serving"));
}

#[test]
fn clients_that_connect_and_vanish_free_the_health_and_metrics_ports_in_time() {
    let config = r#"{ "nodes": [{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                                  "addresses": ["10.77.0.1/24"], "metricsPort": 9100 }],
                      "services": [{ "name": "web", "externalTrafficPolicy": "Local", "healthCheckNodePort": 30100,
                                     "ports": [{ "port": 80, "targetPort": 3000, "nodePort": 30080 }],
                                     "endpoints": [{ "ip": "10.77.0.11", "nodeName": "edge-1" }] }] }"#;
    let Some(lab) =
        Lab::started("clients_that_connect_and_vanish_free_the_health_and_metrics_ports_in_time", "van", config)
    else {
        return;
    };
    let answers = |port: &str, path: &str| {
        let out = lab.client("client", &["get", NODE_IP, port, path]);
        String::from_utf8_lossy(&out.stdout).starts_with("HTTP/1.1 200 OK\n")
    };
    assert!(answers("9100", "/healthz") && answers("30100", "/"), "both answer before the burst");
    // Clients that connect and then say nothing, more than each port has sockets for, and a
    // burst of SYNs from spoofed sources that never complete their handshake.
    let mut vanished: Vec<_> = ["9100", "30100"]
        .iter()
        .flat_map(|port| (0..8).map(move |_| *port))
        .map(|port| {
            lab.client_command("client2", &["hold", NODE_IP, port, "30"]).stdout(Stdio::null()).spawn().unwrap()
        })
        .collect();
    sleep(Duration::from_millis(500));
    for port in ["9100", "30100"] {
        vanished
            .push(lab.client_command("client2", &["synflood", NODE_IP, port, "1", "10.80", "200"]).spawn().unwrap());
    }
    // Until the burst holds every metrics socket (the clients start slowly on a loaded machine).
    let started = Instant::now();
    while answers("9100", "/healthz") {
        assert!(started.elapsed() < Duration::from_secs(4), "the burst never held every metrics socket");
        sleep(Duration::from_millis(100));
    }
    // Each held socket is taken back after its request deadline (5 s): both ports answer again
    // while the silent clients are still there.
    let burst = Instant::now();
    while !(answers("9100", "/healthz") && answers("30100", "/")) {
        assert!(
            burst.elapsed() < Duration::from_secs(8),
            "still held after {:?}: {}",
            burst.elapsed(),
            lab.gateway_log()
        );
        sleep(Duration::from_millis(250));
    }
    println!("both ports answered again {:?} after the burst", burst.elapsed());
    for mut child in vanished {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn a_silent_control_client_holds_up_neither_reload_nor_status() {
    let Some(lab) = Lab::started("a_silent_control_client_holds_up_neither_reload_nor_status", "ctl", &config(&[1]))
    else {
        return;
    };
    // Connected, and never sends its command.
    let silent = std::os::unix::net::UnixStream::connect(&lab.control).unwrap();
    sleep(Duration::from_millis(200));
    std::fs::write(&lab.config, config(&[2])).unwrap();
    let started = Instant::now();
    let out = lab.nodegate("reload", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let status = lab.nodegate("status", &[]);
    assert!(status.status.success(), "{}", text(&status));
    let took = started.elapsed();
    println!("reload and status with a silent client connected: {took:?}");
    assert!(took < Duration::from_secs(2), "the silent client held them up for {took:?} (its timeout is 5 s)");
    assert_eq!(lab.backends("client", NODE_IP, 30080, 3), ["web-frontend-2"; 3]);
    // Eight silent clients are all the threads it serves at once: the next is told so at once,
    // and served again once they are gone.
    let more: Vec<_> = (0..7).map(|_| std::os::unix::net::UnixStream::connect(&lab.control).unwrap()).collect();
    sleep(Duration::from_millis(300));
    let busy = lab.nodegate("status", &[]);
    assert!(!busy.status.success() && text(&busy).contains("8 control clients are being served"), "{}", text(&busy));
    drop((silent, more));
    sleep(Duration::from_millis(300));
    assert!(lab.nodegate("status", &[]).status.success());
}

#[test]
fn a_reload_that_sets_the_gateway_routes_the_nodes_own_answers_through_it() {
    let Some(lab) =
        Lab::started("a_reload_that_sets_the_gateway_routes_the_nodes_own_answers_through_it", "gw", &config(&[1]))
    else {
        return;
    };
    // The far host is beyond the lab's router: the node answers its ping only through a gateway.
    let ping = |lab: &Lab| lab.client("far", &["ping", NODE_IP, "0", "2"]).status.success();
    assert!(!ping(&lab), "no gateway yet: no route back to the far host");
    let with_gateway =
        config(&[1]).replace(r#""metricsPort": 9100"#, r#""metricsPort": 9100, "gateway": "10.77.0.254""#);
    assert_ne!(with_gateway, config(&[1]));
    std::fs::write(&lab.config, with_gateway).unwrap();
    let out = lab.nodegate("reload", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(ping(&lab), "after the reload the node's stack routes via the new gateway: {}", lab.gateway_log());
}

/// With a spin after traffic the gateway serves as without one, and an idle gateway does not
/// spin: once the traffic stops its loop turns at the pace of its timers (a turn per 50 ms at
/// most) and takes next to no CPU. The spin is set long (20 ms), so that a loop that spun
/// after every turn, traffic or not, would burn a third of a core.
#[test]
fn a_gateway_with_a_spin_serves_and_goes_quiet_when_idle() {
    if !lab_available("a_gateway_with_a_spin_serves_and_goes_quiet_when_idle") {
        return;
    }
    let mut lab = Lab::up("spn");
    lab.start_gateway_with(&config(&[1, 2, 3]), &["--spin-micros", "20000"]);
    let answers = lab.backends("client", NODE_IP, 30080, 30);
    assert!(answers.iter().all(|a| a.starts_with("web-frontend-")), "{answers:?}\n{}", lab.gateway_log());
    let turns = |lab: &Lab| common::number_before(&text(&lab.nodegate("status", &[])), "loop: ", "turns");
    // The gateway's CPU time so far, user and system (/proc/PID/stat, in clock ticks of 10 ms).
    let cpu_ticks = |lab: &Lab| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", lab.gateway_pid())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    };
    sleep(Duration::from_millis(500));
    let (turns_before, cpu_before, started) = (turns(&lab), cpu_ticks(&lab), Instant::now());
    sleep(Duration::from_secs(2));
    let (idle_turns, idle_cpu, took) = (turns(&lab) - turns_before, cpu_ticks(&lab) - cpu_before, started.elapsed());
    println!("spin 20 ms: {idle_turns} turns and {} ms of CPU in {:.1} s idle", idle_cpu * 10, took.as_secs_f64());
    // A turn per 50 ms, and one per status request, ARP refresh or frame: well under 100.
    assert!(idle_turns < 100, "{idle_turns} turns in {took:?} idle");
    // Spinning 20 ms of every 70 would take some 600 ms of the 2 s.
    assert!(idle_cpu * 10 < 200, "{} ms of CPU in {took:?} idle", idle_cpu * 10);
}
