//! The `nodegate` command line, as an operator uses it.

use std::process::{Command, Output};

fn nodegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodegate")).args(args).output().expect("nodegate runs")
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("nodegate-cli-{}-{name}.json", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_shows_the_default_service_like_kubectl() {
    let out = nodegate(&["check"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("CLUSTER-IP")
            && lines[0].contains("EXTERNAL-IP")
            && lines[0].contains("PORT(S)")
            && lines[0].contains("ENDPOINTS"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("web-frontend") && lines[1].contains("NodePort") && lines[1].contains("80:30080/TCP"),
        "{text}"
    );
    assert!(lines[1].contains("10.77.0.11:3000,10.77.0.12:3000,10.77.0.13:3000"), "{text}");
}

#[test]
fn check_of_a_broken_config_names_file_and_field_and_exits_1() {
    let path = temp_config(
        "broken",
        r#"{"nodes":[{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]}],
            "services":[{"name":"web","ports":[{"port":80,"nodePort":40000}],"endpoints":[]}]}"#,
    );
    let out = nodegate(&["check", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("{}: services[0].ports[0].nodePort: 40000 is outside nodePortRange 30000-32767\n", path.display())
    );
}

#[test]
fn unknown_node_and_unreadable_file_are_errors() {
    let out = nodegate(&["check", "--node", "edge-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "config/default.json (built in): --node: no node named \"edge-9\" (nodes: edge-1)\n"
    );

    let out = nodegate(&["check", "--config", "/nonexistent/site.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "/nonexistent/site.json: cannot read: No such file or directory (os error 2)\n"
    );
}

#[test]
fn run_refuses_an_invalid_config_before_touching_the_network() {
    let path = temp_config("invalid-run", r#"{"nodes":[{"name":"n","tap":"ng0","addresses":["10.77.0.1"]}]}"#);
    let out = nodegate(&["run", "--config", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr).unwrap().ends_with(
        "nodes[0].addresses[0]: \"10.77.0.1\" is not an IPv4 address with a prefix length (like 10.77.0.1/24)\n"
    ));
}

#[test]
fn version_names_the_board_and_its_capacities() {
    let out = nodegate(&["--version"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!(
            "nodegate {} (board {}: {} flows",
            env!("CARGO_PKG_VERSION"),
            nodegate::board::NAME,
            nodegate::board::CONNTRACK_CAPACITY
        )),
        "{text}"
    );
}

#[test]
fn check_shows_allocated_node_ports_policy_and_affinity() {
    let path = temp_config(
        "effective",
        r#"{"nodes":[{"name":"edge-1","tap":"ng0","addresses":["10.77.0.1/24"]},
                     {"name":"edge-2","tap":"ng1","addresses":["10.77.0.2/24"]}],
            "services":[{"name":"web","externalTrafficPolicy":"Local","healthCheckNodePort":30100,"sessionAffinity":"ClientIP",
                         "clusterIP":"10.96.0.10","externalIPs":["10.77.0.50"],
                         "ports":[{"name":"http","port":80,"targetPort":3000}],
                         "endpoints":[{"ip":"10.77.0.11","nodeName":"edge-1"},{"ip":"10.77.0.12","nodeName":"edge-2"},
                                      {"ip":"10.77.0.13"}]}]}"#,
    );
    let out = nodegate(&["check", "--config", path.to_str().unwrap(), "--node", "edge-1"]);
    let config = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8(out.stdout).unwrap();
    let row = text.lines().nth(1).unwrap();
    let allocated = nodegate::config::parse(&config).unwrap().services[0].ports[0].node_port.unwrap();
    assert!(row.contains(&format!("80:{allocated}/TCP")), "the allocated nodePort is shown: {text}");
    assert!(row.contains("10.96.0.10") && row.contains("10.77.0.50"), "{text}");
    assert!(row.contains("Local (health 30100)") && row.contains("ClientIP (10800s)"), "{text}");
    assert!(
        row.ends_with(" 10.77.0.11:3000,10.77.0.13:3000"),
        "Local: this node's endpoints and those of no node, not edge-2's: {text}"
    );
}

#[test]
fn check_diff_says_what_a_reload_would_change_or_why_it_would_be_refused() {
    let site = |web: &str, extra: &str, address: &str| {
        format!(
            r#"{{"nodes":[{{"name":"edge-1","tap":"ng0","addresses":["{address}"]}}],
                "services":[{{"name":"web","externalTrafficPolicy":"{web}",
                              "ports":[{{"name":"http","port":80,"targetPort":3000,"nodePort":30080}}],
                              "endpoints":[{{"ip":"10.77.0.11"}},{{"ip":"10.77.0.12"}}]}}{extra}]}}"#
        )
    };
    let running = temp_config("diff-running", &site("Cluster", "", "10.77.0.1/24"));
    let same = temp_config("diff-same", &site("Cluster", "", "10.77.0.1/24"));
    let changed = temp_config(
        "diff-changed",
        &site(
            "Local",
            r#",{"name":"dns","ports":[{"protocol":"UDP","port":53,"nodePort":30053}],"endpoints":[]}"#,
            "10.77.0.1/24",
        )
        .replace(r#""targetPort":3000"#, r#""targetPort":3001"#)
        .replace(r#"{"ip":"10.77.0.12"}"#, r#"{"ip":"10.77.0.12","weight":3},{"ip":"10.77.0.13"}"#)
        .replace(r#"{"ip":"10.77.0.11"},"#, ""),
    );
    let moved = temp_config("diff-moved", &site("Cluster", "", "10.77.0.2/24").replace("10.77.0.1", "10.77.0.2"));
    let with_bfd = temp_config(
        "diff-bfd",
        &site("Cluster", "", "10.77.0.1/24")
            .replace(r#""services""#, r#""bfd":{"sessions":[{"peer":"10.77.0.254"}]},"services""#),
    );
    let diff = |new: &std::path::Path| nodegate(&["check", "--diff", running.to_str().unwrap(), new.to_str().unwrap()]);
    let (none, some, refused, bfd) = (diff(&same), diff(&changed), diff(&moved), diff(&with_bfd));
    for p in [&running, &same, &changed, &moved, &with_bfd] {
        let _ = std::fs::remove_file(p);
    }
    assert!(none.status.success());
    assert_eq!(String::from_utf8(none.stdout).unwrap(), "no change\n");
    assert!(some.status.success(), "{}", String::from_utf8_lossy(&some.stderr));
    assert_eq!(
        String::from_utf8(some.stdout).unwrap(),
        "service dns: added (1 ports, 0 endpoints)\n\
         service web: NodePort Cluster -> NodePort Local\n\
         service web: port http 80:30080/TCP->3000 -> http 80:30080/TCP->3001\n\
         service web: endpoint 10.77.0.12 (weight 1, ready) -> 10.77.0.12 (weight 3, ready)\n\
         service web: endpoint 10.77.0.13 (weight 1, ready) added\n\
         service web: endpoint 10.77.0.11 removed\n"
    );
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(refused.stderr).unwrap(),
        format!(
            "{}: a reload would be refused: nodes: node edge-1 changed its TAP, bridge, MAC or addresses: restart nodegate to apply that\n",
            moved.display()
        )
    );
    assert_eq!(bfd.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(bfd.stderr).unwrap(),
        format!("{}: a reload would be refused: bfd: changed: restart nodegate to apply that\n", with_bfd.display())
    );
}
