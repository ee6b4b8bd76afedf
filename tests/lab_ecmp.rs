//! Lab tests of three gateways behind a router's ECMP, under the real BIRD with the configs this
//! repository ships (`contrib/bird/`): the router (the lab's, 10.77.0.254) routes the VIP via
//! every gateway's node address with the L4 hash, each next hop tracked by BFD
//! (`router.conf`) or announced over BGP by a BIRD on the gateway's host while its BFD session
//! to that gateway is up (`gateway-host.conf`, `router-bgp.conf`); clients sit behind the router
//! on a link of their own. They need root and BIRD (`scripts/test` installs it;
//! see `common::lab_available`).

mod common;

use common::{Lab, finish, lab_available, run, stop, tracked};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

const VIP: &str = "10.96.0.10";
const NODE_IPS: [&str; 3] = ["10.77.0.1", "10.77.0.2", "10.77.0.3"];

/// The gateways' site: the VIP of `contrib/bird/` to the lab's three backends (of no node, so
/// every gateway's) with `policy`, BFD sessions with `peers`, health checks each second.
fn site(peers: &[&str], policy: Policy) -> String {
    let sessions: Vec<String> = peers.iter().map(|p| format!(r#"{{ "peer": "{p}" }}"#)).collect();
    format!(
        r#"{{
  "nodes": [
    {{ "name": "edge-1", "tap": "ng0", "bridge": "br0", "mac": "02:00:00:00:00:01", "addresses": ["10.77.0.1/24"], "gateway": "10.77.0.254", "metricsPort": 9100 }},
    {{ "name": "edge-2", "tap": "ng1", "bridge": "br0", "mac": "02:00:00:00:00:02", "addresses": ["10.77.0.2/24"], "gateway": "10.77.0.254", "metricsPort": 9100 }},
    {{ "name": "edge-3", "tap": "ng2", "bridge": "br0", "mac": "02:00:00:00:00:03", "addresses": ["10.77.0.3/24"], "gateway": "10.77.0.254", "metricsPort": 9100 }}],
  "bfd": {{ "sessions": [{}] }},
  "services": [{{ "name": "web", "clusterIP": "10.96.0.10", "externalTrafficPolicy": "{policy:?}",
                 "ports": [{{ "port": 80, "targetPort": 3000 }}],
                 "healthCheck": {{ "intervalSeconds": 1, "timeoutSeconds": 1, "unhealthyThreshold": 2, "healthyThreshold": 1 }},
                 "endpoints": [{{ "ip": "10.77.0.11" }}, {{ "ip": "10.77.0.12" }}, {{ "ip": "10.77.0.13" }}] }}]
}}"#,
        sessions.join(", ")
    )
}

/// The service's `externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    /// SNAT to the gateway's address: the endpoints answer the gateway that sent the flow.
    Cluster,
    /// The client's address kept: the endpoints answer through the router, which sends their
    /// replies over the gateways as it sends the requests (`contrib/bird/router.conf`'s
    /// `replies` table).
    Local,
}

/// How the router learns the VIP's next hops.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// Static routes on the router, each next hop tracked by BFD (`router.conf`).
    Static,
    /// BGP from a BIRD on each gateway's host, gated by its BFD session to its gateway
    /// (`gateway-host.conf` on 10.77.0.211-213, `router-bgp.conf`).
    Announced,
}

/// The lab with three gateways and BIRD on its router; everything it started is stopped by PID
/// when it goes out of scope, the namespace it added deleted, then the lab torn down.
struct Ecmp {
    lab: Lab,
    dir: PathBuf,
    gateways: [Option<Child>; 3],
    /// The router's BIRD, then the hosts'.
    birds: Vec<Child>,
    hosts: usize,
}

impl Ecmp {
    fn new(test: &str, tag: &str, shape: Shape, policy: Policy) -> Option<Ecmp> {
        if !lab_available(test) {
            return None;
        }
        let lab = Lab::up(tag);
        let dir = std::env::temp_dir().join(&lab.prefix);
        std::fs::create_dir_all(&dir).unwrap();
        let peers: &[&str] =
            if shape == Shape::Static { &["10.77.0.254"] } else { &["10.77.0.211", "10.77.0.212", "10.77.0.213"] };
        std::fs::write(dir.join("site.json"), site(peers, policy)).unwrap();
        let mut ecmp = Ecmp { lab, dir, gateways: [None, None, None], birds: Vec::new(), hosts: 0 };
        // The clients' link to the router.
        let (router, clients) = (ecmp.lab.ns("router"), ecmp.lab.ns("clients"));
        run("ip", &["netns", "add", &clients]);
        run("ip", &["-n", &clients, "link", "set", "lo", "up"]);
        run("ip", &["-n", &router, "link", "add", "eth2", "type", "veth", "peer", "name", "eth0", "netns", &clients]);
        run("ip", &["-n", &router, "addr", "add", "10.80.0.1/24", "dev", "eth2"]);
        run("ip", &["-n", &router, "link", "set", "eth2", "up"]);
        run("ip", &["-n", &clients, "addr", "add", "10.80.0.100/24", "dev", "eth0"]);
        run("ip", &["-n", &clients, "link", "set", "eth0", "up"]);
        run("ip", &["-n", &clients, "route", "add", "default", "via", "10.80.0.1"]);
        // The L4 hash over the packet's own 5-tuple, as a hardware router's (policy 3, these
        // fields). Policy 1 takes a hash the packet already carries: over a veth that is the
        // sending socket's, which TCP draws anew on each retransmission timeout, so flows would
        // move between gateways as no real router moves them.
        let hash = ["net.ipv4.fib_multipath_hash_policy=3", "net.ipv4.fib_multipath_hash_fields=0x0037"];
        run("ip", &["netns", "exec", &router, "sysctl", "-qw", hash[0], hash[1]]);
        if policy == Policy::Local {
            // As router.conf says: the endpoints' packets to the clients via the gateways, and
            // no redirects that would pin a client to one of them.
            ecmp.lab.ip("router", &["rule", "add", "from", "10.77.0.8/29", "lookup", "100"]);
            let redirects = ["net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.eth0.send_redirects=0"];
            run("ip", &["netns", "exec", &router, "sysctl", "-qw", redirects[0], redirects[1]]);
            for be in 1..=3 {
                ecmp.lab.ip(&format!("be{be}"), &["route", "add", "10.80.0.0/24", "via", "10.77.0.254"]);
            }
        }
        for n in 1..=3 {
            ecmp.start_gateway(n);
        }
        match shape {
            Shape::Static => ecmp.start_bird("router", "router.conf", &[]),
            Shape::Announced => {
                ecmp.start_bird("router", "router-bgp.conf", &[]);
                for n in 1..=3 {
                    ecmp.lab.add_host(&format!("h{n}"), &format!("10.77.0.21{n}"));
                    ecmp.hosts = n;
                    let (me, gateway) = (format!("10.77.0.21{n}"), NODE_IPS[n - 1].to_string());
                    let defines = [
                        ("nodegate_address", gateway),
                        ("host_address", me),
                        ("router_address", "10.77.0.254".to_string()),
                    ];
                    ecmp.start_bird(&format!("h{n}"), "gateway-host.conf", &defines);
                }
            }
        }
        ecmp.wait_for("BIRD to route the VIP via all three gateways", Duration::from_secs(15), || {
            ecmp.next_hops().is_some_and(|h| h.len() == 3)
        });
        Some(ecmp)
    }

    fn control(&self, n: usize) -> PathBuf {
        self.dir.join(format!("edge-{n}.sock"))
    }

    /// Starts gateway `n` (1-3) and waits until its control socket answers.
    fn start_gateway(&mut self, n: usize) {
        let (bin, site, log) =
            (env!("CARGO_BIN_EXE_nodegate"), self.dir.join("site.json"), self.dir.join(format!("edge-{n}.log")));
        let child = self.lab.spawn_node(Path::new(bin), &format!("edge-{n}"), &site, &self.control(n), &log);
        self.gateways[n - 1] = Some(child);
        self.wait_for(&format!("gateway {n} to answer"), Duration::from_secs(10), || {
            self.nodegate(n, "status").status.success()
        });
    }

    /// BIRD in namespace `host` with the shipped `config`, its `define`s set to `defines` and its
    /// log to stderr (the file's syslog is not the lab's); its socket is `HOST.ctl`.
    fn start_bird(&mut self, host: &str, config: &str, defines: &[(&str, String)]) {
        let shipped = std::fs::read_to_string(format!("{}/contrib/bird/{config}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let lines: Vec<String> = shipped
            .lines()
            .map(|l| match defines.iter().find(|(name, _)| l.starts_with(&format!("define {name} = "))) {
                Some((name, value)) => format!("define {name} = {value};"),
                None if l == "log syslog all;" => "log stderr all;".to_string(),
                None => l.to_string(),
            })
            .collect();
        let conf = self.dir.join(format!("{host}.conf"));
        std::fs::write(&conf, lines.join("\n") + "\n").unwrap();
        let (control, pid) = (self.dir.join(format!("{host}.ctl")), self.dir.join(format!("{host}.pid")));
        let command = ["bird".as_ref(), "-f".as_ref(), "-c".as_ref(), conf.as_os_str(), "-s".as_ref()];
        let command = command.into_iter().chain([control.as_os_str(), "-P".as_ref(), pid.as_os_str()]);
        let child = self.lab.spawn_in(host, command, &self.dir.join(format!("bird-{host}.log")));
        self.birds.push(child);
    }

    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc").arg("-s").arg(self.dir.join("router.ctl")).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The gateways BIRD routes the VIP through now (`birdc show route`), in order.
    /// `None` when birdc gave no answer (it could not reach BIRD): no route is not no answer.
    fn next_hops(&self) -> Option<Vec<String>> {
        let routes = self.birdc(&["show", "route", "for", VIP, "all"]);
        if !routes.contains("Table master4:") && !routes.contains("Network not found") {
            return None;
        }
        let mut hops: Vec<String> = routes
            .lines()
            .filter_map(|l| l.trim().strip_prefix("via "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        hops.sort();
        Some(hops)
    }

    fn nodegate(&self, n: usize, command: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nodegate"))
            .arg(command)
            .arg("--control")
            .arg(self.control(n))
            .output()
            .unwrap()
    }

    /// Waits until the 300 connections of a `longlived` client are open and spread over the
    /// three gateways, then 2 s more for them to be answered.
    fn spread(&self) {
        self.wait_for("the connections to spread", Duration::from_secs(10), || {
            let flows: Vec<u64> = (1..=3).map(|n| tracked(&self.status(n))).collect();
            flows.iter().all(|&f| f >= 50) && flows.iter().sum::<u64>() >= 300
        });
        sleep(Duration::from_secs(2));
    }

    /// Kills gateway `n` (`kill -9`) and waits for BIRD to take it out of the VIP's route: how
    /// long that took from the kill.
    fn kill(&mut self, n: usize) -> Duration {
        let killed = Instant::now();
        let mut gateway = self.gateways[n - 1].take().unwrap();
        gateway.kill().unwrap();
        gateway.wait().unwrap();
        let hop = NODE_IPS[n - 1].to_string();
        self.wait_for(&format!("BIRD to drop gateway {n}"), Duration::from_secs(5), || {
            self.next_hops().is_some_and(|h| !h.contains(&hop))
        });
        killed.elapsed()
    }

    /// A sample of gateway `n`'s metrics, fetched from the router.
    fn metric(&self, n: usize, series: &str) -> u64 {
        let out = self.lab.client("router", &["get", NODE_IPS[n - 1], "9100", "/metrics"]);
        common::sample(&String::from_utf8_lossy(&out.stdout), series)
    }

    fn status(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.nodegate(n, "status").stdout).into_owned()
    }

    /// Polls every 10 ms: the route's removal is measured with it.
    fn wait_for(&self, what: &str, limit: Duration, done: impl FnMut() -> bool) -> Duration {
        common::wait_for(what, limit, Duration::from_millis(10), done, || self.logs())
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut all: String =
            ["edge-1.log", "edge-2.log", "edge-3.log", "bird-router.log", "bird-h1.log", "bird-h2.log"]
                .iter()
                .map(|name| format!("--- {name}\n{}", self.log(name)))
                .collect();
        all += &format!("--- birdc show bfd sessions\n{}", self.birdc(&["show", "bfd", "sessions"]));
        all += &format!("--- birdc show route\n{}", self.birdc(&["show", "route", "all"]));
        all
    }
}

impl Drop for Ecmp {
    fn drop(&mut self) {
        for b in self.birds.drain(..) {
            stop(b);
        }
        for g in self.gateways.iter_mut().filter_map(Option::take) {
            stop(g);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.lab.ns("clients")]).status();
        for n in 1..=self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.lab.ns(&format!("h{n}"))]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lines of a `longlived` client's output: connections and broken ones per gateway.
fn per_gateway(out: &str, gateway: &str) -> (u64, u64) {
    let prefix = format!("via {gateway}:");
    (common::number_before(out, &prefix, "connections"), common::number_before(out, &prefix, "broken"))
}

/// 300 long-lived connections over the three gateways; gateway 2 is killed: BFD takes it out
/// of the router's table within a second, and no connection through the other two breaks.
///
/// Gateway 2 is the middle next hop, and that matters: Linux's ECMP is hash-threshold (each
/// next hop owns a range of the hash, in order), so when the middle one goes its range is split
/// between its neighbours and theirs stay; when an outer one goes, a sixth of all flows moves
/// between the survivors too, and with SNAT those break. Resilient hashing (nexthop groups of
/// type resilient, or a hardware router's) moves only the dead gateway's flows whichever it is.
#[test]
fn a_killed_gateway_leaves_the_route_within_a_second_and_the_others_flows_go_on() {
    let test = "a_killed_gateway_leaves_the_route_within_a_second_and_the_others_flows_go_on";
    let Some(ecmp) = Ecmp::new(test, "ek", Shape::Static, Policy::Cluster) else { return };
    kill_under_load(ecmp, "static routes with BFD");
}

/// The same with the routes announced over BGP by each gateway's host, gated by BFD there.
#[test]
fn a_killed_gateways_host_withdraws_its_announcement_within_a_second() {
    let Some(ecmp) = Ecmp::new(
        "a_killed_gateways_host_withdraws_its_announcement_within_a_second",
        "eb",
        Shape::Announced,
        Policy::Cluster,
    ) else {
        return;
    };
    let kernel = ecmp.lab.ip("router", &["route", "show", VIP]);
    assert_eq!(kernel.matches("nexthop via").count(), 3, "one ECMP route in the kernel: {kernel}");
    kill_under_load(ecmp, "BGP from the hosts, BFD there");
}

fn kill_under_load(mut ecmp: Ecmp, shape: &str) {
    let client = ecmp.lab.spawn_client("clients", &["longlived", VIP, "80", "14", "300", "1000"]);
    // Every connection open and answered once, spread over the three gateways.
    ecmp.spread();
    let detection = ecmp.kill(2);
    let (_, out) = finish(client);
    // A session of a survivor that went down and up again: its loop did not answer within the
    // detection time (a starved CPU), and the router took it out for that while.
    let flaps: u64 = [1, 3].iter().map(|&n| bfd_flaps(&ecmp.status(n))).sum();
    let (on_1, broken_1) = per_gateway(&out, NODE_IPS[0]);
    let (on_2, broken_2) = per_gateway(&out, NODE_IPS[1]);
    let (on_3, broken_3) = per_gateway(&out, NODE_IPS[2]);
    println!(
        "ecmp kill -9 ({shape}): route withdrawn {:.0} ms after the kill; connections per gateway \
         {on_1}/{on_2}/{on_3}, broken {broken_1}/{broken_2}/{broken_3} (gateway 2's: SNAT to its address, see README); \
         survivors' sessions down and up again: {flaps}",
        detection.as_secs_f64() * 1000.0
    );
    assert!(detection < Duration::from_secs(1), "{:?}\n{}", detection, ecmp.logs());
    // A flapped session is back within a second or two.
    ecmp.wait_for("the survivors in the route", Duration::from_secs(5), || {
        ecmp.next_hops().is_some_and(|h| h == ["10.77.0.1", "10.77.0.3"])
    });
    assert_eq!(on_1 + on_2 + on_3, 300, "{out}");
    assert!(on_1 >= 50 && on_2 >= 50 && on_3 >= 50, "the L4 hash spreads them: {out}");
    assert_eq!((broken_1, broken_3), (0, 0), "{out}\n{}", ecmp.logs());
}

/// With Local policy every gateway can carry every flow: Maglev sends a client's tuple to the
/// same endpoint everywhere, the endpoint sees the client and answers through the router, and
/// a gateway takes up what it never saw of a flow, a request or a reply. Gateway 1 is killed
/// (an outer next hop: ECMP moves a sixth of the survivors' flows between them too), and no
/// connection breaks, those it carried included; six downloads arrive with every byte, in order.
#[test]
fn with_local_policy_a_killed_gateways_connections_carry_on_through_the_others() {
    let test = "with_local_policy_a_killed_gateways_connections_carry_on_through_the_others";
    let Some(mut ecmp) = Ecmp::new(test, "el", Shape::Static, Policy::Local) else { return };
    let client = ecmp.lab.spawn_client("clients", &["longlived", VIP, "80", "14", "300", "1000"]);
    let streams: Vec<Child> = (0..6).map(|_| ecmp.lab.spawn_client("clients", &["stream", VIP, "80", "12"])).collect();
    ecmp.spread();
    let carried = tracked(&ecmp.status(1));
    let picked_before: u64 = [2, 3].iter().map(|&n| ecmp.metric(n, "nodegate_flows_picked_up_total")).sum();
    let detection = ecmp.kill(1);
    let (_, out) = finish(client);
    let downloads: Vec<String> = streams.into_iter().map(|s| finish(s).1.trim().to_string()).collect();
    let picked: u64 = [2, 3].iter().map(|&n| ecmp.metric(n, "nodegate_flows_picked_up_total")).sum();
    let summary = out.lines().last().unwrap_or("").to_string();
    println!(
        "ecmp kill -9 (Local policy): route withdrawn {:.0} ms after the kill; gateway 1 carried {carried} flows \
         (requests or replies); the others took up {} after the kill; {summary}; downloads: {}",
        detection.as_secs_f64() * 1000.0,
        picked - picked_before,
        downloads.join(", ")
    );
    assert!(detection < Duration::from_secs(1), "{:?}\n{}", detection, ecmp.logs());
    assert!(carried >= 50, "{}", ecmp.logs());
    assert!(picked > picked_before, "the survivors took gateway 1's flows up\n{}", ecmp.logs());
    assert!(summary.starts_with("longlived: 300 connections, 0 broken"), "{out}\n{}", ecmp.logs());
    assert!(downloads.iter().all(|d| d.ends_with("blocks intact")), "{downloads:?}\n{}", ecmp.logs());
}

/// How often the BFD sessions in a gateway's status came up again after their first time.
fn bfd_flaps(status: &str) -> u64 {
    let ups = |l: &str| l.split(", up ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse::<u64>().ok());
    status.lines().filter(|l| l.starts_with("bfd: peer")).filter_map(ups).map(|n| n.saturating_sub(1)).sum()
}

/// A gateway told to stop (SIGTERM) says AdminDown first: the router takes it out at once, it
/// goes on forwarding for its drain time, and a running HTTP load of new connections sees no
/// error but on a connection that was open through it at the moment the route changed (its
/// next packets go to another gateway, and with SNAT the endpoint does not know them there).
#[test]
fn a_stopping_gateway_says_admin_down_first_and_the_load_sees_no_error() {
    let Some(mut ecmp) = Ecmp::new(
        "a_stopping_gateway_says_admin_down_first_and_the_load_sees_no_error",
        "es",
        Shape::Static,
        Policy::Cluster,
    ) else {
        return;
    };
    let load = ecmp.lab.spawn_client("clients", &["connects", VIP, "80", "8", "3"]);
    sleep(Duration::from_secs(2));
    let g2 = ecmp.gateways[1].as_ref().unwrap().id();
    let (told, told_at) = (Instant::now(), unix_now());
    run("kill", &["-TERM", &g2.to_string()]);
    ecmp.wait_for("BIRD to drop gateway 2", Duration::from_secs(5), || {
        ecmp.next_hops().is_some_and(|h| !h.contains(&"10.77.0.2".to_string()))
    });
    let (withdrawn, withdrawn_at) = (told.elapsed(), unix_now());
    let still_running = ecmp.gateways[1].as_mut().unwrap().try_wait().unwrap().is_none();
    let mut g2 = ecmp.gateways[1].take().unwrap();
    let status = g2.wait().unwrap();
    let exited = told.elapsed();
    let (_, out) = finish(load);
    let summary = out.lines().last().unwrap_or("").to_string();
    // "connect AT ok|FAILED TOOK": the failures, and those of connections open at the switch.
    let attempts: Vec<(f64, bool, f64)> = out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split(' ').collect();
            (w.len() == 4 && w[0] == "connect").then(|| (w[1].parse().unwrap(), w[2] == "ok", w[3].parse().unwrap()))
        })
        .collect();
    let open_at_switch = |(at, _, took): &(f64, bool, f64)| *at <= withdrawn_at && at + took >= told_at;
    let failed: Vec<_> = attempts.iter().filter(|a| !a.1).collect();
    let failed_open = failed.iter().filter(|a| open_at_switch(a)).count();
    println!(
        "ecmp SIGTERM: route withdrawn {:.0} ms after the signal, gateway exited after {:.2} s; HTTP load: {summary}, \
         {} failed ({failed_open} of them open at the switch, {} open then)",
        withdrawn.as_secs_f64() * 1000.0,
        exited.as_secs_f64(),
        failed.len(),
        attempts.iter().filter(|a| open_at_switch(a)).count()
    );
    assert!(still_running, "the route went before the gateway did");
    assert!(withdrawn < Duration::from_millis(500), "AdminDown, not a timeout: {withdrawn:?}\n{}", ecmp.logs());
    assert!(exited >= Duration::from_secs(2), "it forwarded for its drain time: {exited:?}");
    assert!(status.success(), "{}", ecmp.logs());
    assert!(ecmp.log("edge-2.log").contains("BFD sessions admin down"), "{}", ecmp.logs());
    assert!(attempts.len() >= 70, "{out}");
    assert_eq!(failed.len(), failed_open, "only connections open at the switch may fail: {out}\n{}", ecmp.logs());
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// With every endpoint failing its health checks a gateway can serve nothing: it says AdminDown
/// and the router stops sending to it; when the endpoints recover it comes back.
#[test]
fn gateways_whose_endpoints_all_fail_withdraw_and_return_when_they_recover() {
    let Some(ecmp) = Ecmp::new(
        "gateways_whose_endpoints_all_fail_withdraw_and_return_when_they_recover",
        "eh",
        Shape::Static,
        Policy::Cluster,
    ) else {
        return;
    };
    for be in 1..=3 {
        ecmp.lab.backend(be, false);
    }
    let gone = ecmp
        .wait_for("the VIP's route to go", Duration::from_secs(10), || ecmp.next_hops().is_some_and(|h| h.is_empty()));
    let sessions = ecmp.birdc(&["show", "bfd", "sessions"]);
    assert!(ecmp.status(1).contains("bfd: peer 10.77.0.254 admin-down"), "{}", ecmp.status(1));
    for be in 1..=3 {
        ecmp.lab.backend(be, true);
    }
    let back = ecmp.wait_for("the VIP's route to return", Duration::from_secs(15), || {
        ecmp.next_hops().is_some_and(|h| h.len() == 3)
    });
    println!(
        "ecmp health: route withdrawn {:.1} s after the backends stopped, back {:.1} s after they started",
        gone.as_secs_f64(),
        back.as_secs_f64()
    );
    assert!(sessions.contains("10.77.0.1"), "{sessions}");
    let answers = ecmp.lab.backends("clients", VIP, 80, 6);
    assert!(answers.iter().all(|a| a.starts_with("web-frontend-")), "{answers:?}\n{}", ecmp.logs());
}
