//! The single-threaded loop: poll the TAP, run the engine and smoltcp, keep time, answer the
//! control thread between frames, stop on SIGINT/SIGTERM.

use std::boxed::Box;
use std::fmt;
use std::format;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::string::{String, ToString};
use std::sync::atomic::Ordering;
use std::vec;
use std::vec::Vec;

use log::{info, warn};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::wire::{HardwareAddress, IpCidr};

use super::control::{self, Command, ControlError, ControlSocket, FLOWS_PER_ANSWER, FlowSnapshot, Reply, Request};
use super::device::NatDevice;
use super::health::{self, Probes};
use super::http::HttpServer;
use super::sync::{self, SyncError, SyncSocket};
use super::sys::{self, SHUTDOWN};
use super::tap::{Tap, TapError};
use crate::bfd::BfdDrop;
use crate::board;
use crate::config::{Config, ConfigError};
use crate::conntrack::{Flow, Table, buckets_for};
use crate::engine::{DropReason, Engine, Resources};
use crate::sync::SyncDrop;
use crate::time::{Millis, Turns};

/// How often expired flows are swept (a bounded number each time).
const SWEEP_EVERY_MS: u64 = 10;

/// How often the TAP's queue drops are read (a file read: not every turn).
const QUEUE_DROPS_EVERY_MS: u64 = 1000;

/// Longest sleep between two turns: timers (conntrack expiry, ARP refresh, health checks, the
/// control thread's requests) need this often.
const MAX_WAIT_MS: i64 = 50;

/// How `nodegate run` was asked to run.
pub struct Options {
    /// The config file, re-read by reload; `None` for the built-in config.
    pub config_path: Option<PathBuf>,
    pub node: Option<String>,
    /// The control socket; `None` for the default path of the node.
    pub control: Option<PathBuf>,
    /// A user to switch to once the TAP and the control socket are open.
    pub user: Option<String>,
    /// How long the loop looks at the TAP after a turn with traffic before it sleeps.
    pub spin_micros: u32,
}

/// The node's own sockets on smoltcp, built from the config (and again on reload).
struct NodeSockets {
    probes: Probes,
    http: HttpServer,
}

impl NodeSockets {
    fn new(config: &Config, sockets: &mut SocketSet<'_>, seed: u64, engine: &Engine) -> NodeSockets {
        let probes = Probes::new(config, sockets, seed, engine);
        NodeSockets { probes, http: HttpServer::new(config, engine.node(), sockets) }
    }

    fn remove(self, sockets: &mut SocketSet<'_>) {
        self.probes.remove(sockets);
        self.http.remove(sockets);
    }
}

/// Why the gateway did not start, or stopped on its own.
#[derive(Debug)]
pub enum RunError {
    /// The config (read from `source`) has no such node.
    Config {
        source: String,
        error: Box<ConfigError>,
    },
    Tap(TapError),
    Control(ControlError),
    Sync(SyncError),
    /// `--user`: not found, or the switch to it failed.
    User {
        user: String,
        switching: bool,
        error: io::Error,
    },
    /// A step of the start that the system refused.
    System {
        step: &'static str,
        error: io::Error,
    },
    /// The TAP failed while running (it vanished): reading it, or waiting on it.
    Device {
        tap: String,
        waiting: bool,
        error: io::Error,
    },
}

impl std::error::Error for RunError {}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            RunError::Config { source, error } => write!(f, "{source}: {error}"),
            RunError::Tap(e) => write!(f, "{e}"),
            RunError::Control(e) => write!(f, "{e}"),
            RunError::Sync(e) => write!(f, "{e}"),
            RunError::User { user, switching: false, error } => write!(f, "--user {user}: {error}"),
            RunError::User { user, switching: true, error } => write!(f, "--user {user}: cannot switch: {error}"),
            RunError::System { step, error } => write!(f, "{step}: {error}"),
            RunError::Device { tap, waiting: false, error } => write!(f, "TAP {tap}: {error}"),
            RunError::Device { tap, waiting: true, error } => write!(f, "poll on TAP {tap}: {error}"),
        }
    }
}

/// Runs `config` (read from `source`) until a shutdown signal.
pub fn run(config: Config, source: &str, opts: &Options) -> Result<(), RunError> {
    let mut config = Box::new(config);
    let in_config = |error| RunError::Config { source: source.to_string(), error: Box::new(error) };
    let system = |step| move |error| RunError::System { step, error };
    let node = config.node(opts.node.as_deref()).map_err(in_config)?.clone();
    let key = sys::random_key().map_err(system("cannot read random bytes"))?;

    // The connection table and the engine's other large tables are allocated once, here.
    let mut resources = Box::new(Resources::new());
    let mut flows = vec![Flow::EMPTY; board::CONNTRACK_CAPACITY];
    let mut buckets = vec![0u32; buckets_for(board::CONNTRACK_CAPACITY)];
    let table = Table::new(&mut flows, &mut buckets, key, board::TIMEOUTS);
    let mut engine = Box::new(
        Engine::new(&config, opts.node.as_deref(), table, &mut resources, key[0] ^ key[1]).map_err(in_config)?,
    );

    let sync_key = sync::key_of(&config).map_err(RunError::Sync)?;
    let tap = Tap::open(&node.tap, node.bridge.as_deref()).map_err(RunError::Tap)?;
    let control_path = opts.control.clone().unwrap_or_else(|| control::default_path(&node.name));
    let mut control_socket = ControlSocket::bind(&control_path).map_err(RunError::Control)?;
    if let Some(user) = &opts.user {
        let as_user = |switching| move |error| RunError::User { user: user.clone(), switching, error };
        let (uid, gid) = sys::user_ids(user).map_err(as_user(false))?;
        std::os::unix::fs::chown(control_socket.path(), Some(uid), Some(gid))
            .map_err(|error| RunError::Control(ControlError::Socket { path: control_path.clone(), error }))?;
        sys::switch_user(uid, gid).map_err(as_user(true))?;
    }
    sys::catch_signals().map_err(system("cannot install signal handlers"))?;
    let (requests, control_thread) = control_socket
        .serve(opts.config_path.clone(), opts.node.clone(), config.clone())
        .map_err(system("cannot start the control thread"))?;
    log_start(&config, source, &tap, &control_path, opts.user.as_deref());

    let fd = tap.as_raw_fd();
    let spin = std::time::Duration::from_micros(opts.spin_micros.into());
    let mut device = NatDevice::new(tap, &mut engine);
    let start = std::time::Instant::now();
    let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(node.mac));
    // smoltcp draws the node's TCP initial sequence numbers from this: left at 0, they would
    // repeat at every start.
    iface_config.random_seed = sys::random_key().map_err(system("cannot read random bytes"))?[0];
    let mut iface = Interface::new(iface_config, &mut device, smoltcp::time::Instant::ZERO);
    iface.update_ip_addrs(|addrs| {
        for a in &node.addresses {
            let _ = addrs.push(IpCidr::Ipv4(*a));
        }
    });
    if let Some(gw) = node.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    let mut sockets = SocketSet::new(vec![]);
    let mut own = NodeSockets::new(&config, &mut sockets, key[1], device.engine);
    let mut sync = match sync_key {
        Some(k) => Some(SyncSocket::start(&config, k, device.engine, &mut sockets).map_err(RunError::Sync)?),
        None => None,
    };
    let mut watch = Watch::default();
    let mut last_sweep = Millis(0);
    let mut turns = Turns::default();
    // The TAP's drops before this run (a persistent TAP keeps its counters).
    let queue_drops_before = device.tap.queue_drops().unwrap_or(0);
    let mut last_queue_read = Millis(0);
    let mut waiting_reload = None;

    // Told to stop with BFD sessions: when the drain after AdminDown ends.
    let mut leaving_until = None;
    let result = loop {
        let woke = std::time::Instant::now();
        let cpu_at_wake = sys::thread_cpu_micros();
        let now = Millis(start.elapsed().as_millis() as u64);
        if SHUTDOWN.load(Ordering::Relaxed) {
            let drain = u64::from(config.bfd.shutdown_drain_millis);
            match leaving_until {
                None if !device.engine.bfd_sessions().is_empty() && drain > 0 => {
                    device.engine.bfd_leave(now);
                    info!("stopping: BFD sessions admin down, forwarding for {drain} ms more");
                    leaving_until = Some(Millis(now.0 + drain));
                }
                Some(until) if now < until => {}
                _ => break Ok(()),
            }
        }
        let ts = smoltcp::time::Instant::from_millis(now.0 as i64);
        device.start_turn(now);
        iface.poll(ts, &mut device, &mut sockets);
        if let Some(e) = device.fatal.take() {
            break Err(RunError::Device { tap: node.tap.to_string(), waiting: false, error: e });
        }
        own.probes.poll(now, &config, &mut iface, &mut sockets, device.engine);
        own.http.poll(now, &config, &mut sockets, device.engine, &turns);
        if now.0 >= last_sweep.0 + SWEEP_EVERY_MS {
            device.engine.housekeeping(now);
            last_sweep = now;
        }
        if now.0 >= last_queue_read.0 + QUEUE_DROPS_EVERY_MS {
            if let Some(drops) = device.tap.queue_drops() {
                turns.queue_drops = drops.saturating_sub(queue_drops_before);
            }
            last_queue_read = now;
        }
        if let Some(sync) = &mut sync {
            sync.poll(now, &mut sockets, device.engine);
        }
        device.flush_engine_output();
        while let Ok(Command { request, reply }) = requests.try_recv() {
            let answer = match request {
                Request::Status => Reply::Text(status(source, device.engine, now, &turns)),
                Request::Check => match unfit(device.engine) {
                    Some(why) => Reply::Refused(why),
                    None => Reply::Text(String::new()),
                },
                Request::Role(role) => {
                    let was = device.engine.set_role(role, now);
                    if was != role {
                        info!("high availability: {} now (was {})", role.as_str(), was.as_str());
                    }
                    Reply::Text(format!("{} (was {})\n", role.as_str(), was.as_str()))
                }
                Request::Flows { from } => Reply::Flows(flows_from(device.engine, from, now)),
                Request::Drain { service, endpoint, drained } => drain(device.engine, &service, endpoint, drained),
                Request::Apply(prepared) => {
                    // Reloads come one at a time (the control thread waits for each answer).
                    waiting_reload = Some((prepared, reply));
                    continue;
                }
            };
            let _ = reply.send(answer);
        }
        // A reload is swapped in once the last one's flows are all renumbered, so that no turn
        // has to finish that renumbering in one step.
        if device.engine.flows_to_renumber() == 0
            && let Some((mut prepared, reply)) = waiting_reload.take()
        {
            device.engine.apply(&mut prepared.reload);
            // The node's own sockets (probes, HTTP answers) route by smoltcp's table.
            iface.routes_mut().remove_default_ipv4_route();
            if let Some(gw) = device.engine.node().gateway {
                let _ = iface.routes_mut().add_default_ipv4_route(gw);
            }
            core::mem::swap(&mut *config, &mut prepared.config);
            own.remove(&mut sockets);
            own = NodeSockets::new(&config, &mut sockets, key[1] ^ now.0, device.engine);
            let pending = device.engine.flows_to_renumber();
            let _ = reply.send(Reply::Text(format!("; {pending} tracked flow(s) to renumber\n")));
        }
        watch.check(now, device.engine);
        turns.record(woke.elapsed().as_micros() as u64, sys::thread_cpu_micros().saturating_sub(cpu_at_wake));
        let wait = iface.poll_delay(ts, &sockets).map_or(MAX_WAIT_MS, |d| d.total_millis() as i64).min(MAX_WAIT_MS);
        // A BFD packet goes on time: the router counts a late one towards taking us out.
        let bfd_due = device.engine.bfd_next_deadline().map_or(MAX_WAIT_MS, |d| d.0.saturating_sub(now.0) as i64);
        let wait = wait.min(bfd_due.max(1));
        if let Err(error) = spin_then_wait(fd, spin, device.read_this_turn > 0, wait as i32) {
            break Err(RunError::Device { tap: node.tap.to_string(), waiting: true, error });
        }
    };
    SHUTDOWN.store(true, Ordering::Relaxed);
    let _ = control_thread.join();
    log_totals(device.engine);
    result
}

/// After a turn with traffic, looks at the TAP for up to `spin` before sleeping: the next frame
/// of a request/response exchange is then taken without the wake-up a sleep costs, and an idle
/// gateway spins not at all.
fn spin_then_wait(fd: RawFd, spin: std::time::Duration, traffic: bool, wait_ms: i32) -> io::Result<()> {
    if traffic && !spin.is_zero() {
        let until = std::time::Instant::now() + spin;
        while std::time::Instant::now() < until {
            if sys::wait_readable(fd, 0)? {
                return Ok(());
            }
        }
    }
    sys::wait_readable(fd, wait_ms).map(|_| ())
}

fn log_start(config: &Config, source: &str, tap: &Tap, control: &std::path::Path, user: Option<&str>) {
    let node = tap.name();
    info!(
        "nodegate {} on board {} ({} flows, {} services): TAP {node}, {} service(s) from {source}, control socket {}{}",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        board::CONNTRACK_CAPACITY,
        board::MAX_SERVICES,
        config.services.len(),
        control.display(),
        user.map(|u| format!(", running as {u}")).unwrap_or_default(),
    );
    for svc in &config.services {
        let ports: Vec<String> = svc.ports.iter().map(|p| format!("{p}->{}", p.target_port)).collect();
        info!(
            "service {}: {} ports {}, {} endpoint(s), externalTrafficPolicy {}{}",
            svc.name,
            svc.kind.as_str(),
            ports.join(" "),
            svc.endpoints.len(),
            svc.external_traffic_policy.as_str(),
            svc.virtual_ips().map(|ip| format!(", on {ip}")).collect::<String>(),
        );
    }
    for line in health::describe(config) {
        info!("{line}");
    }
}

/// `nodegate drain` and `undrain`: the endpoint at `ip` of `service` takes no new flows (or
/// does again); its tracked flows go on either way.
fn drain(engine: &mut Engine, service: &str, ip: std::net::Ipv4Addr, drained: bool) -> Reply {
    let Some((s, (svc, _))) = engine.services().enumerate().find(|(_, (svc, _))| svc.name == service) else {
        return Reply::Refused(format!("no service {service:?}"));
    };
    let Some(e) = svc.endpoints.iter().position(|ep| ep.ip == ip) else {
        return Reply::Refused(format!("service {service} has no endpoint {ip}"));
    };
    engine.set_endpoint_drained(s, e, drained);
    let flows = engine.conntrack().flows().filter(|f| usize::from(f.service_index) == s && f.endpoint == ip).count();
    let state = if drained { "drained: no new flows" } else { "undrained: takes new flows" };
    Reply::Text(format!("service {service}: endpoint {ip} {state}; {flows} tracked flow(s) go on\n"))
}

/// What an operator sees with `nodegate status`.
fn status(source: &str, engine: &Engine, now: Millis, turns: &Turns) -> String {
    use std::fmt::Write;
    let ct = engine.conntrack();
    let mut out = String::new();
    let node = engine.node();
    let _ = writeln!(
        out,
        "nodegate {} on board {}, node {} ({}), config {source}, up {}s, {}",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        node.name,
        node.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "),
        now.0 / 1000,
        engine.role().as_str()
    );
    let _ = writeln!(
        out,
        "conntrack: {} of {} flows ({:.1} %), {} SNAT ports in use, {} evicted, {} SNAT ports taken back",
        ct.len(),
        ct.capacity(),
        ct.len() as f64 * 100.0 / ct.capacity() as f64,
        ct.snat_ports_in_use(),
        ct.evictions(),
        ct.port_evictions()
    );
    let _ = writeln!(
        out,
        "loop: {} turns, longest {} us ({} us on the CPU at most), {} over {} us; {} frames dropped by the kernel \
         in front of the TAP (its queue full); {} flows to renumber",
        turns.count,
        turns.longest_micros,
        turns.longest_cpu_micros,
        turns.over_budget,
        Turns::BUDGET_MICROS,
        turns.queue_drops,
        engine.flows_to_renumber()
    );
    for (s, (svc, c)) in engine.services().enumerate() {
        let ports: Vec<String> = svc.ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            out,
            "service {} ({}, {}): {}, {} flows created, {} dropped by source range",
            svc.name,
            svc.kind.as_str(),
            svc.external_traffic_policy.as_str(),
            ports.join(" "),
            c.new_flows(),
            c.source_range_drops
        );
        let target = svc.ports.first().map_or(0, |p| p.target_port);
        for (e, ep) in svc.endpoints.iter().enumerate() {
            let state = match (engine.endpoint_serving(s, e), engine.endpoint_drained(s, e)) {
                (_, true) => "not serving (drained)",
                (true, false) => "serving",
                (false, false) => "not serving",
            };
            let snat = ct.endpoint_snat_ports(s, e);
            let _ = writeln!(out, "  endpoint {}:{target} {state}, {snat} SNAT ports in use", ep.ip);
        }
    }
    if let Some(sync) = engine.sync_state() {
        let c = &sync.counters;
        let _ = writeln!(
            out,
            "sync: port {}, {} of {} peer(s) in sync ({}), {} messages sent, {} received, {} flows installed, {} removed; dropped: {}",
            sync.port,
            sync.peers_in_sync(),
            sync.peers().count(),
            sync.peers().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
            c.messages_sent,
            c.messages_received,
            c.flows_installed,
            c.flows_removed,
            reasons(SyncDrop::ALL.iter().map(|r| (r.name(), c.dropped(*r))))
        );
    }
    for s in engine.bfd_sessions() {
        let _ = writeln!(
            out,
            "bfd: peer {} {} (remote {}, diag {}), {} packets received, {} sent, up {} times",
            s.peer,
            s.state.as_str(),
            s.remote_state.as_str(),
            s.diag as u8,
            s.counters.received,
            s.counters.sent,
            s.counters.up_transitions
        );
    }
    if !engine.bfd_sessions().is_empty() {
        let dropped = reasons(BfdDrop::ALL.iter().map(|r| (r.name(), engine.bfd_dropped(*r))));
        let _ = writeln!(out, "bfd: dropped: {dropped}");
    }
    let c = engine.counters();
    let _ = writeln!(
        out,
        "frames: {} received, {} forwarded, {} to the node, {} answered; drops: {}",
        c.received,
        c.forwarded,
        c.to_stack,
        c.answered,
        drops(engine)
    );
    out
}

/// Why the gateway should not be the active one, if it should not: a service with no
/// endpoint taking new flows. (That the loop answers at all is the rest of the check.)
fn unfit(engine: &Engine) -> Option<String> {
    let idle = engine
        .services()
        .enumerate()
        .find(|(s, (svc, _))| !(0..svc.endpoints.len()).any(|e| engine.endpoint_serving(*s, e)));
    idle.map(|(_, (svc, _))| format!("service {} has no endpoint taking new flows", svc.name))
}

/// The engine's drops, as [`reasons`] shows them.
fn drops(engine: &Engine) -> String {
    let c = engine.counters();
    reasons(DropReason::ALL.iter().map(|r| (r.name(), c.dropped(*r))))
}

/// `reason=count` for every reason with drops, or "none".
fn reasons(counts: impl Iterator<Item = (&'static str, u64)>) -> String {
    let items: Vec<String> = counts.filter(|(_, n)| *n > 0).map(|(name, n)| format!("{name}={n}")).collect();
    if items.is_empty() { "none".into() } else { items.join(" ") }
}

/// The flows in slots `from..`, at most [`FLOWS_PER_ANSWER`] of them.
fn flows_from(engine: &Engine, from: usize, now: Millis) -> FlowSnapshot {
    let ct = engine.conntrack();
    let slots = from.min(ct.len())..ct.len().min(from.saturating_add(FLOWS_PER_ANSWER));
    FlowSnapshot {
        flows: slots.map(|slot| (ct.flow(slot), ct.expires(slot))).collect(),
        total: ct.len(),
        services: engine.services().map(|(s, _)| s.name.to_string()).collect(),
        now: now.secs(),
    }
}

/// State an operator should hear about once, not per packet: the table filling up, and the
/// first frame dropped for a reason not seen before. Looked at once a second.
#[derive(Default)]
struct Watch {
    last: Millis,
    full_warned: bool,
    reasons_seen: [bool; DropReason::ALL.len()],
    udp_flows_flushed: u64,
    renumbering: bool,
}

impl Watch {
    fn check(&mut self, now: Millis, engine: &Engine) {
        if now.0 < self.last.0 + 1000 {
            return;
        }
        self.last = now;
        let ct = engine.conntrack();
        if !self.full_warned && ct.len() * 10 > ct.capacity() * 9 {
            warn!("conntrack above 90 % full: {} of {} flows", ct.len(), ct.capacity());
            self.full_warned = true;
        } else if self.full_warned && ct.len() * 10 < ct.capacity() * 8 {
            info!("conntrack below 80 % full again: {} of {} flows", ct.len(), ct.capacity());
            self.full_warned = false;
        }
        let c = engine.counters();
        if c.udp_flows_flushed > self.udp_flows_flushed {
            let n = c.udp_flows_flushed - self.udp_flows_flushed;
            info!("{n} UDP flow(s) flushed: their endpoint stopped taking new flows");
            self.udp_flows_flushed = c.udp_flows_flushed;
        }
        let renumbering = engine.flows_to_renumber() > 0;
        if self.renumbering && !renumbering {
            info!("reload: every tracked flow is renumbered for the new config");
        }
        self.renumbering = renumbering;
        for (i, r) in DropReason::ALL.iter().enumerate() {
            if !self.reasons_seen[i] && c.dropped(*r) > 0 {
                self.reasons_seen[i] = true;
                info!("dropping frames: {} (first seen now; {} so far)", r.name(), c.dropped(*r));
            }
        }
    }
}

fn log_totals(engine: &Engine) {
    let c = engine.counters();
    info!(
        "stopping: {} frames received, {} forwarded, {} to the node, {} flows created, {} tracked; drops: {}",
        c.received,
        c.forwarded,
        c.to_stack,
        c.new_flows,
        engine.conntrack().len(),
        drops(engine)
    );
    if engine.conntrack().evictions() > 0 {
        warn!("{} flows were evicted from a full connection table", engine.conntrack().evictions());
    }
}
