//! The lab harness: fresh network namespaces from `scripts/lab`, nodegate on a TAP in the
//! gateway namespace, and the lab's Python client in the client namespaces. Every lab is named
//! after the test process and a counter, and is torn down (processes by PID, then namespaces)
//! when it goes out of scope, also when the test fails.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const NODE_IP: &str = "10.77.0.1";
static LABS: AtomicUsize = AtomicUsize::new(0);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether lab tests can run here. They need root; in CI (`CI=true`) a missing root is a failure,
/// elsewhere the test is skipped with a message saying why.
pub fn lab_available(test: &str) -> bool {
    let uid = Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.is_ok_and(|u| u == "0") {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: lab tests need root (network namespaces, a TAP device), and CI must run them");
    }
    eprintln!(
        "skipping {test}: lab tests need root to create network namespaces and a TAP device (CI runs them as root)"
    );
    false
}

pub struct Lab {
    pub prefix: String,
    gateway: Option<Child>,
    pub config: PathBuf,
    pub control: PathBuf,
    log: PathBuf,
}

impl Lab {
    /// Builds the lab of `scripts/lab` (client, client2, be1..3 behind a bridge).
    pub fn up(tag: &str) -> Lab {
        let prefix = format!("ng{}{}{}", tag, std::process::id() % 100_000, LABS.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir();
        let lab = Lab {
            config: dir.join(format!("{prefix}.json")),
            control: dir.join(format!("{prefix}.sock")),
            log: dir.join(format!("{prefix}.log")),
            prefix,
            gateway: None,
        };
        let out =
            Command::new(repo().join("scripts/lab")).args(["up", &lab.prefix]).output().expect("scripts/lab runs");
        assert!(out.status.success(), "scripts/lab up: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    /// A lab with nodegate running `config`, or `None` where lab tests cannot run here (see
    /// [`lab_available`]; the test then returns).
    pub fn started(test: &str, tag: &str, config: &str) -> Option<Lab> {
        Lab::started_bin(test, tag, config, || std::path::PathBuf::from(env!("CARGO_BIN_EXE_nodegate")))
    }

    /// [`Lab::started`] with another build of nodegate (another board), which `build` makes
    /// only where the lab can run.
    pub fn started_bin(test: &str, tag: &str, config: &str, build: impl FnOnce() -> std::path::PathBuf) -> Option<Lab> {
        if !lab_available(test) {
            return None;
        }
        let mut lab = Lab::up(tag);
        lab.start_gateway_bin(&build(), config, &[]);
        Some(lab)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{}", self.prefix, host)
    }

    /// [`Lab::start_gateway_with`] as node `node` of the config.
    pub fn start_gateway_as(&mut self, config: &str, node: Option<&str>) {
        let args: Vec<&str> = node.map(|n| vec!["--node", n]).unwrap_or_default();
        self.start_gateway_with(config, &args)
    }

    /// Starts nodegate with `config` and more arguments to `nodegate run` in the gateway
    /// namespace, and waits until the node answers ping from the client.
    pub fn start_gateway_with(&mut self, config: &str, args: &[&str]) {
        self.start_gateway_bin(std::path::Path::new(env!("CARGO_BIN_EXE_nodegate")), config, args)
    }

    /// [`Lab::start_gateway_with`] for another build of nodegate (another board).
    pub fn start_gateway_bin(&mut self, bin: &std::path::Path, config: &str, args: &[&str]) {
        std::fs::write(&self.config, config).unwrap();
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("gw")])
            .arg(bin)
            .args(["run", "--config"])
            .arg(&self.config)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("nodegate starts");
        self.gateway = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.gateway.as_mut().unwrap().try_wait().unwrap() {
                panic!("nodegate exited with {status}: {}", self.gateway_log());
            }
            if self.client("client", &["ping", NODE_IP, "0", "1"]).status.success() {
                return;
            }
        }
        panic!("the node never answered ping: {}", self.gateway_log());
    }

    /// Runs `nodegate COMMAND --control SOCKET ARGS` (status, conntrack, reload) from the root
    /// namespace: the control socket is a file, no network is involved.
    pub fn nodegate(&self, command: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_nodegate"))
            .arg(command)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .output()
            .expect("nodegate runs")
    }

    pub fn gateway_pid(&self) -> u32 {
        self.gateway.as_ref().expect("the gateway runs").id()
    }

    /// Sends SIGHUP to the gateway.
    pub fn hangup(&self) {
        let pid = self.gateway.as_ref().expect("the gateway runs").id();
        Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    }

    /// Runs `scripts/lab-client.py ARGS` in namespace `host`.
    pub fn client(&self, host: &str, args: &[&str]) -> Output {
        self.client_command(host, args).output().expect("lab client runs")
    }

    /// [`Lab::client`] in the background; [`finish`] waits for it.
    pub fn spawn_client(&self, host: &str, args: &[&str]) -> Child {
        self.client_command(host, args).stdout(Stdio::piped()).spawn().expect("lab client runs")
    }

    /// The command of [`Lab::client`].
    pub fn client_command(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host), "python3"])
            .arg(repo().join("scripts/lab-client.py"))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn gateway_log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM to nodegate and returns how long it took to exit, and its exit status.
    pub fn stop_gateway(&mut self) -> (Duration, std::process::ExitStatus) {
        let mut child = self.gateway.take().expect("the gateway runs");
        let start = Instant::now();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (start.elapsed(), status);
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                panic!("nodegate ignored SIGTERM for 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops or starts backend `n` (1-3) with `scripts/lab`.
    pub fn backend(&self, n: u8, running: bool) {
        let cmd = if running { "start-backend" } else { "stop-backend" };
        let out = Command::new(repo().join("scripts/lab")).args([cmd, &self.prefix, &n.to_string()]).output().unwrap();
        assert!(out.status.success(), "scripts/lab {cmd}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// What backend `n`'s `GET /health` answers from now on: a status code, "hang" or "big"
    /// (see `scripts/lab-backend.py`).
    pub fn backend_health(&self, n: u8, say: &str) {
        let state = std::env::temp_dir().join(format!("nodegate-lab-{}", self.prefix));
        std::fs::write(state.join(format!("be{n}.health")), say).unwrap();
    }

    /// Runs `ip ARGS` in namespace `host` and returns its output.
    pub fn ip(&self, host: &str, args: &[&str]) -> String {
        let out = Command::new("ip").args(["-n", &self.ns(host)]).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `http` requests from `host`; the backend that answered each, or "FAILED".
    pub fn backends(&self, host: &str, ip: &str, port: u16, count: usize) -> Vec<String> {
        let out = self.client(host, &["http", ip, &port.to_string(), &count.to_string(), "2"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| match l.split_once(": ").map(|(_, a)| a.split(' ').next().unwrap_or("")) {
                Some(name) if name.starts_with("web-frontend-") => name.to_string(),
                _ => "FAILED".to_string(),
            })
            .collect()
    }

    /// The gateway's metrics, scraped from `host` (the config's metricsPort must be 9100).
    pub fn scrape(&self, host: &str) -> String {
        let out = self.client(host, &["get", NODE_IP, "9100", "/metrics"]);
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(body.starts_with("HTTP/1.1 200 OK\n"), "{body}");
        body["HTTP/1.1 200 OK\n".len()..].to_string()
    }

    /// A host of the segment: namespace `host` joined to the bridge at `address`/24. The caller
    /// deletes it (the lab knows only its own).
    pub fn add_host(&self, host: &str, address: &str) {
        let (ns, gw, veth) = (self.ns(host), self.ns("gw"), format!("v-{host}"));
        run("ip", &["netns", "add", &ns]);
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        run("ip", &["-n", &gw, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        run("ip", &["-n", &gw, "link", "set", &veth, "master", "br0", "up"]);
        run("ip", &["-n", &ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
    }

    /// `bin` as node `node` of the site file `config` in the gateway namespace, its control
    /// socket at `control`, logging to `log`: one of several gateways of one site.
    pub fn spawn_node(&self, bin: &Path, node: &str, config: &Path, control: &Path, log: &Path) -> Child {
        let (bin, config, control) = (bin.as_os_str(), config.as_os_str(), control.as_os_str());
        let args = [bin, "run".as_ref(), "--node".as_ref(), node.as_ref(), "--config".as_ref(), config];
        self.spawn_in("gw", args.into_iter().chain(["--control".as_ref(), control]), log)
    }

    /// `command` (a program and its arguments) in namespace `host`, its output to the file `log`:
    /// a daemon the test stops by PID.
    pub fn spawn_in<'a>(&self, host: &str, command: impl IntoIterator<Item = &'a OsStr>, log: &Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        let mut command = command.into_iter();
        let program = command.next().expect("a program");
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .arg(program)
            .args(command)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{} starts in {host} (scripts/test installs it): {e}", program.to_string_lossy())
            })
    }

    /// Whether interface `name` exists in namespace `host`.
    pub fn has_link(&self, host: &str, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.ns(host), "link", "show", name])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(repo().join("scripts/lab")).args(["down", &self.prefix]).status();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.control);
    }
}

/// The value of the series `series` (name and labels, exactly) in a Prometheus text.
pub fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{metrics}"))
}

/// The number before the word `unit` on the first line of `text` that starts with `prefix`
/// (words split at spaces, commas and colons); 0 when there is none.
pub fn number_before(text: &str, prefix: &str, unit: &str) -> u64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or("");
    let words: Vec<&str> = line.split([' ', ',', ':']).filter(|w| !w.is_empty()).collect();
    words.windows(2).find(|w| w[1] == unit).and_then(|w| w[0].parse().ok()).unwrap_or(0)
}

/// The flows a gateway tracks, from its `nodegate status` ("conntrack: N ...").
pub fn tracked(status: &str) -> u64 {
    let line = status.lines().find(|l| l.starts_with("conntrack: ")).unwrap_or("conntrack: 0");
    line["conntrack: ".len()..].split(' ').next().and_then(|w| w.parse().ok()).unwrap_or(0)
}

/// Polls `done` every `poll` until it holds (how long that took), or fails after `limit` with
/// `what` and the `logs`.
pub fn wait_for(
    what: &str,
    limit: Duration,
    poll: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "waited {limit:?} for {what}:\n{}", logs());
        std::thread::sleep(poll);
    }
    start.elapsed()
}

/// Waits for a client from [`Lab::spawn_client`]: whether it succeeded, and what it printed.
pub fn finish(client: Child) -> (bool, String) {
    let out = client.wait_with_output().expect("lab client ends");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// SIGTERM, and SIGKILL if it has not gone in 5 s.
pub fn stop(mut child: Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).stdin(Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}
