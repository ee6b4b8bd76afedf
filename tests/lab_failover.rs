//! Lab tests of a gateway pair under the real keepalived, with the config this repository
//! ships (`contrib/keepalived/keepalived.conf`): two nodegate gateways on the lab's bridge,
//! keepalived on each gateway's "host" (a namespace of its own on the same segment), a client
//! behind the lab's router, flows synced between the gateways. They need root and keepalived
//! (`scripts/test` installs it; see `common::lab_available`).

mod common;

use common::{Lab, finish, lab_available, run, stop};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const VIP: &str = "10.77.0.50";
const NODE_IPS: [&str; 2] = ["10.77.0.1", "10.77.0.2"];

/// The pair's site: one service on an external IP, TCP and UDP, the floating SNAT and endpoint
/// gateway addresses, flow sync with the key in `key`. With Local policy each gateway's node
/// runs one of the endpoints (be1 on edge-1, be2 on edge-2), as a Kubernetes node runs its pods.
fn site(policy: &str, key: &Path) -> String {
    let on = |node: &str| if policy == "Local" { format!(r#", "nodeName": "{node}""#) } else { String::new() };
    format!(
        r#"{{ "nodes": [{{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01",
                        "addresses": ["10.77.0.1/24"], "metricsPort": 9100 }},
                      {{ "name": "edge-2", "tap": "ng1", "bridge": "br0", "mac": "02:00:00:00:00:02",
                        "addresses": ["10.77.0.2/24"], "metricsPort": 9100 }}],
          "highAvailability": {{ "snatAddress": "10.77.0.5", "endpointGatewayAddress": "10.77.0.6",
                                 "sync": {{ "keyFile": "{}" }} }},
          "services": [{{ "name": "web", "externalIPs": ["{VIP}"], "externalTrafficPolicy": "{policy}",
                          "ports": [{{ "name": "http", "port": 80, "targetPort": 3000 }},
                                    {{ "name": "echo", "port": 53, "targetPort": 5353, "protocol": "UDP" }}],
                          "healthCheck": {{ "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2 }},
                          "endpoints": [{{ "ip": "10.77.0.11"{} }}, {{ "ip": "10.77.0.12"{} }}] }}] }}"#,
        key.display(),
        on("edge-1"),
        on("edge-2"),
    )
}

/// The lab with two gateways and a keepalived beside each; everything it started is stopped
/// by PID when it goes out of scope, the namespaces it added deleted, then the lab torn down.
struct Pair {
    lab: Lab,
    /// Root-owned: keepalived runs only scripts no other user can change (enable_script_security).
    dir: PathBuf,
    gateways: [Option<Child>; 2],
    keepalived: [Option<Child>; 2],
}

impl Pair {
    fn new(test: &str, tag: &str, policy: &str) -> Option<Pair> {
        if !lab_available(test) {
            return None;
        }
        let lab = Lab::up(tag);
        let dir = PathBuf::from("/run").join(&lab.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("nodegate");
        std::fs::copy(env!("CARGO_BIN_EXE_nodegate"), &bin).unwrap();
        let key = dir.join("sync.key");
        std::fs::write(&key, "0f4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060\n").unwrap();
        run("chmod", &["600", key.to_str().unwrap()]);
        std::fs::write(dir.join("site.json"), site(policy, &key)).unwrap();
        let pair = Pair { lab, dir, gateways: [None, None], keepalived: [None, None] };
        for i in 1..=2 {
            // Each gateway's host on the segment, where its keepalived runs.
            pair.lab.add_host(&format!("ka{i}"), &format!("10.77.0.20{i}"));
        }
        if policy == "Local" {
            // The endpoints route client traffic back through the pair's floating address.
            for be in ["be1", "be2"] {
                pair.lab.ip(be, &["route", "replace", "default", "via", "10.77.0.6"]);
            }
        }
        Some(pair)
    }

    fn control(&self, n: usize) -> PathBuf {
        self.dir.join(format!("edge-{n}.sock"))
    }

    /// Starts gateway `n` (1 or 2) and waits until its control socket answers.
    fn start_gateway(&mut self, n: usize) {
        let (bin, site, log) =
            (self.dir.join("nodegate"), self.dir.join("site.json"), self.dir.join(format!("edge-{n}.log")));
        let child = self.lab.spawn_node(&bin, &format!("edge-{n}"), &site, &self.control(n), &log);
        self.gateways[n - 1] = Some(child);
        self.wait_for(&format!("gateway {n} to answer"), Duration::from_secs(10), || {
            self.nodegate(n, "status", &[]).status.success()
        });
    }

    /// Starts keepalived for gateway `n` with the shipped config, its four settings filled in.
    fn start_keepalived(&mut self, n: usize, priority: u8) {
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/keepalived/keepalived.conf"))
                .unwrap();
        let settings = [
            ("$INTERFACE=", "eth0".to_string()),
            ("$PRIORITY=", priority.to_string()),
            ("$CONTROL=", self.control(n).display().to_string()),
            ("$NODEGATE=", self.dir.join("nodegate").display().to_string()),
        ];
        let conf: Vec<String> = shipped
            .lines()
            .map(|l| match settings.iter().find(|(name, _)| l.starts_with(name)) {
                Some((name, value)) => format!("{name}{value}"),
                None => l.to_string(),
            })
            .collect();
        let path = self.dir.join(format!("keepalived-{n}.conf"));
        std::fs::write(&path, conf.join("\n") + "\n").unwrap();
        let (pid, vrrp_pid) = (self.dir.join(format!("keepalived-{n}.pid")), self.dir.join(format!("vrrp-{n}.pid")));
        let command = ["keepalived", "--dont-fork", "--log-console", "--vrrp", "-f"].map(OsStr::new).into_iter();
        let command =
            command.chain([path.as_os_str(), "-p".as_ref(), pid.as_os_str(), "-r".as_ref(), vrrp_pid.as_os_str()]);
        let log = self.dir.join(format!("keepalived-{n}.log"));
        let child = self.lab.spawn_in(&format!("ka{n}"), command, &log);
        self.keepalived[n - 1] = Some(child);
    }

    fn nodegate(&self, n: usize, command: &str, args: &[&str]) -> Output {
        Command::new(self.dir.join("nodegate"))
            .arg(command)
            .arg("--control")
            .arg(self.control(n))
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.nodegate(n, "status", &[]).stdout).into_owned()
    }

    /// "active" or "standby" (the end of status' first line), or "down".
    fn role(&self, n: usize) -> String {
        let status = self.status(n);
        status.lines().next().and_then(|l| l.rsplit(", ").next()).unwrap_or("down").to_string()
    }

    fn forwarded(&self, n: usize) -> u64 {
        common::number_before(&self.status(n), "frames:", "forwarded")
    }

    fn tracked(&self, n: usize) -> u64 {
        common::tracked(&self.status(n))
    }

    /// A metric of gateway `n`, scraped from the client.
    fn metric(&self, n: usize, series: &str) -> u64 {
        let out = self.lab.client("client", &["get", NODE_IPS[n - 1], "9100", "/metrics"]);
        common::sample(&String::from_utf8_lossy(&out.stdout), series)
    }

    fn wait_for(&self, what: &str, limit: Duration, done: impl FnMut() -> bool) -> Duration {
        common::wait_for(what, limit, Duration::from_millis(20), done, || self.logs())
    }

    /// Both gateways and keepalived beside each: gateway 1 active, gateway 2 standby and in sync.
    fn elect(&mut self) {
        self.start_gateway(1);
        self.start_gateway(2);
        self.start_keepalived(1, 100);
        self.wait_for("gateway 1 to become active", Duration::from_secs(15), || self.role(1) == "active");
        self.start_keepalived(2, 90);
        self.wait_for("keepalived 2 to be a backup", Duration::from_secs(10), || {
            self.log("keepalived-2.log").contains("Entering BACKUP STATE")
        });
        assert_eq!(self.role(2), "standby");
    }

    /// Kills gateway `n`'s nodegate at once (SIGKILL), and with `host` its keepalived too: the
    /// gateway's host is gone.
    fn crash(&mut self, n: usize, host: bool) {
        if host {
            // keepalived's VRRP process first, so that it sends no last advert with priority 0.
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("vrrp-{n}.pid"))) {
                run("kill", &["-KILL", pid.trim()]);
            }
            if let Some(mut k) = self.keepalived[n - 1].take() {
                let _ = k.kill();
                let _ = k.wait();
            }
        }
        if let Some(mut g) = self.gateways[n - 1].take() {
            let _ = g.kill();
            let _ = g.wait();
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        ["edge-1.log", "edge-2.log", "keepalived-1.log", "keepalived-2.log"]
            .iter()
            .map(|name| format!("--- {name}\n{}", self.log(name)))
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for k in self.keepalived.iter_mut().filter_map(Option::take) {
            stop(k);
        }
        for g in self.gateways.iter_mut().filter_map(Option::take) {
            stop(g);
        }
        for i in 1..=2 {
            let _ = Command::new("ip").args(["netns", "del", &self.lab.ns(&format!("ka{i}"))]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The host of the active gateway dies during a 20 s TCP stream, an HTTP keep-alive load on
/// four connections and a UDP request/response stream from behind the router: the standby's
/// keepalived takes over, and all three go on through the standby with the flows it was sent.
fn crash_during_streams(test: &str, tag: &str, policy: &str) {
    let Some(mut pair) = Pair::new(test, tag, policy) else { return };
    pair.elect();
    let stream = pair.lab.spawn_client("far", &["stream", VIP, "80", "20"]);
    let udp = pair.lab.spawn_client("far", &["udpstream", VIP, "53", "20", "40053", "50"]);
    let keepalive = pair.lab.spawn_client("far", &["longlived", VIP, "80", "20", "4", "0"]);
    // The stream, the four keep-alive connections and the UDP flow. With Local policy gateway 2
    // keeps no copy of the UDP flow: its endpoint runs on the other node, so the flow would go
    // to one of its own (as kube-proxy flushes UDP), and will.
    let copies = if policy == "Local" { 5 } else { 6 };
    pair.wait_for("gateway 2 to hold the flows", Duration::from_secs(5), || pair.tracked(2) >= copies);
    sleep(Duration::from_secs(3));
    let before = pair.forwarded(2);
    assert_eq!(before, 0, "the standby forwarded nothing");
    pair.crash(1, true);
    let failover = pair.wait_for("gateway 2 to forward", Duration::from_secs(15), || pair.forwarded(2) > before);
    let active_after = pair.role(2);
    let (stream_ok, stream_out) = finish(stream);
    let (_, udp_out) = finish(udp);
    let (keepalive_ok, keepalive_out) = finish(keepalive);
    let lost = udp_out.lines().filter(|l| *l == "lost").count();
    let summary = udp_out.lines().last().unwrap_or("").to_string();
    println!(
        "failover ({policy}, host crash): {:.2} s from kill to the standby's first forwarded frame; \
         TCP {}; UDP {lost} datagram(s) lost ({summary}); HTTP {}",
        failover.as_secs_f64(),
        stream_out.trim(),
        keepalive_out.lines().last().unwrap_or("")
    );
    assert_eq!(active_after, "active", "{}", pair.logs());
    assert!(stream_ok && stream_out.contains("intact"), "the stream: {stream_out}\n{}", pair.logs());
    // Each datagram waits 0.5 s for its answer and the next goes 50 ms later: the datagrams of
    // the detection window and no more.
    let window = (failover.as_secs_f64() + 1.0) / 0.55;
    assert!(lost as f64 <= window.ceil(), "{lost} lost in {:.2} s:\n{udp_out}", failover.as_secs_f64());
    assert!(summary.starts_with("udpstream:"), "{udp_out}");
    // Every keep-alive request answered, on the connections it started with.
    assert!(keepalive_ok, "{keepalive_out}\n{}", pair.logs());
    assert_eq!(pair.metric(2, "nodegate_flows_picked_up_total"), 0, "the flows were synced, not taken up");
    assert!(pair.metric(2, "nodegate_sync_flows_installed_total") >= 2);
}

#[test]
fn a_crashed_active_hosts_streams_go_on_through_the_standby_with_cluster_policy() {
    crash_during_streams(
        "a_crashed_active_hosts_streams_go_on_through_the_standby_with_cluster_policy",
        "fc",
        "Cluster",
    );
}

#[test]
fn a_crashed_active_hosts_streams_go_on_through_the_standby_with_local_policy() {
    crash_during_streams("a_crashed_active_hosts_streams_go_on_through_the_standby_with_local_policy", "fl", "Local");
}

/// Only the active gateway's nodegate dies (its keepalived lives): the check script fails,
/// keepalived hands the role over; when the gateway comes back it stays standby (nopreempt),
/// takes the new active's table, and a flow of the new active loses nothing meanwhile.
#[test]
fn the_check_script_fails_over_when_nodegate_dies_and_the_old_active_does_not_preempt() {
    let test = "the_check_script_fails_over_when_nodegate_dies_and_the_old_active_does_not_preempt";
    let Some(mut pair) = Pair::new(test, "fk", "Cluster") else { return };
    pair.elect();
    let udp = pair.lab.spawn_client("far", &["udpstream", VIP, "53", "10", "40054", "50"]);
    pair.wait_for("gateway 2 to hold the flow", Duration::from_secs(5), || pair.tracked(2) >= 1);
    pair.crash(1, false);
    let failover = pair.wait_for("gateway 2 to become active", Duration::from_secs(15), || pair.role(2) == "active");
    let (_, out) = finish(udp);
    let lost = out.lines().filter(|l| *l == "lost").count();
    assert!(pair.log("keepalived-1.log").contains("VRRP_Script(nodegate_fit) failed"), "{}", pair.logs());
    let window = (failover.as_secs_f64() + 1.5) / 0.55;
    assert!(lost as f64 <= window.ceil(), "{lost} lost:\n{out}");
    // The same flow goes on while the old active comes back: standby, in sync with the new
    // one, and it stays standby.
    let udp = pair.lab.spawn_client("far", &["udpstream", VIP, "53", "10", "40054", "50"]);
    pair.start_gateway(1);
    pair.wait_for("gateway 1 to be in sync", Duration::from_secs(10), || {
        pair.status(1).contains("1 of 1 peer(s) in sync") && pair.tracked(1) >= 1
    });
    let back = Instant::now();
    while back.elapsed() < Duration::from_secs(6) {
        assert_eq!((pair.role(1).as_str(), pair.role(2).as_str()), ("standby", "active"), "{}", pair.logs());
        sleep(Duration::from_millis(200));
    }
    let (ok, out) = finish(udp);
    println!(
        "failover (nodegate killed, check script): {:.2} s to gateway 2 active, {lost} datagram(s) lost; \
         the old active back as standby for 6 s: no preemption, {}",
        failover.as_secs_f64(),
        out.lines().last().unwrap_or("")
    );
    assert!(ok, "nothing lost while the old active came back:\n{out}");
}

/// `scripts/lab-frames.py ARGS` in the gateways' namespace, where the bridge is.
fn frames(pair: &Pair, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &pair.lab.ns("gw"), "/usr/bin/python3"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lab-frames.py"))
        .args(args)
        .stdin(Stdio::null());
    c
}

/// A sync message recorded on the wire and sent again, the same with its tag changed (a
/// forgery without the key), and one from a host that is not a peer: each dropped, counted by
/// its reason, and the standby's table does not change.
#[test]
fn replayed_forged_and_stray_sync_messages_are_dropped_and_counted() {
    let test = "replayed_forged_and_stray_sync_messages_are_dropped_and_counted";
    let Some(mut pair) = Pair::new(test, "fs", "Cluster") else { return };
    pair.start_gateway(1);
    pair.start_gateway(2);
    assert!(pair.nodegate(1, "ha", &["active"]).status.success());
    pair.wait_for("the pair to be in sync", Duration::from_secs(10), || {
        pair.status(2).contains("1 of 1 peer(s) in sync")
    });
    // Recorded where it leaves the bridge for gateway 2's TAP; sent back into the bridge.
    let capture = frames(&pair, &["capture-sync", "ng1", "8848", "15"]).stdout(Stdio::piped()).spawn().unwrap();
    sleep(Duration::from_millis(500));
    assert_eq!(pair.lab.backends("far", VIP, 80, 2).len(), 2);
    let (captured, hex) = finish(capture);
    assert!(captured, "no sync message seen on the bridge:\n{}", pair.logs());
    let hex = hex.trim().to_string();
    pair.wait_for("gateway 2 to hold the flows", Duration::from_secs(5), || pair.tracked(2) >= 2);
    let drops = |reason: &str| pair.metric(2, &format!(r#"nodegate_sync_dropped_total{{reason="{reason}"}}"#));
    let (tracked, installed) = (pair.tracked(2), pair.metric(2, "nodegate_sync_flows_installed_total"));
    let before = [drops("replayed"), drops("bad_mac"), drops("unknown_peer")];

    for args in [vec!["send", "br0", &hex], vec!["send", "br0", &hex, "forge"]] {
        let out = frames(&pair, &args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // A stranger on the segment, with no key at all.
    pair.lab.client("client", &["udp", NODE_IPS[1], "8848", "install this NAT entry"]);
    pair.wait_for("the three to be counted", Duration::from_secs(5), || {
        [drops("replayed"), drops("bad_mac"), drops("unknown_peer")] == [before[0] + 1, before[1] + 1, before[2] + 1]
    });
    assert_eq!(pair.tracked(2), tracked, "the table did not change");
    assert_eq!(pair.metric(2, "nodegate_sync_flows_installed_total"), installed, "nothing was installed");
    let status = pair.status(2);
    assert!(
        status.contains("replayed=") && status.contains("bad_mac=") && status.contains("unknown_peer="),
        "{status}"
    );
}
