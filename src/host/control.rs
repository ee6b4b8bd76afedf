//! The control socket: a Unix socket served by a thread of its own (and a short-lived thread per
//! client), which talks to the single-threaded loop over a crossbeam channel. The loop answers
//! between frames and never waits on the socket; what takes time (reading and validating a
//! config, formatting a long flow list) happens on these threads.
//!
//! Protocol: the client writes one line (`status`, `conntrack [SERVICE]`, `reload`) and closes
//! its side; the answer is `ok` or `error` on the first line, then the text.

use std::boxed::Box;
use std::fmt::{self, Write as _};
use std::format;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;
use std::vec::Vec;

use crossbeam_channel::{Receiver, Sender, bounded};
use log::{error, info};

use super::load::{self, LoadError};
use super::sys::{RELOAD, SHUTDOWN};
use crate::config::{Config, ConfigError, Service};
use crate::conntrack::Flow;
use crate::engine::{Reload, Role};

/// What the control thread asks of the loop.
pub enum Request {
    Status,
    /// Whether the gateway is fit to be active (`nodegate status --check`).
    Check,
    /// Take this role.
    Role(Role),
    /// A copy of the flows in slots `from..` (at most [`FLOWS_PER_ANSWER`]), for
    /// `nodegate conntrack`.
    Flows {
        from: usize,
    },
    /// A validated config, made ready to swap in.
    Apply(Box<Prepared>),
    /// Drain (or take back) the endpoint at `endpoint` of `service`.
    Drain {
        service: String,
        endpoint: std::net::Ipv4Addr,
        drained: bool,
    },
}

/// A reload as the control thread prepares it: the engine's part and the config it came from.
pub struct Prepared {
    pub reload: Reload,
    pub config: Config,
}

/// Flows copied per answer: the loop copies a slice of the table per request, so that a dump
/// of a full table never holds it for long.
pub const FLOWS_PER_ANSWER: usize = 16384;

/// The loop's answer.
pub enum Reply {
    Text(String),
    Flows(FlowSnapshot),
    /// The loop refused, and why: not fit to be active, no such service or endpoint.
    Refused(String),
}

/// What went wrong on either side of the control socket.
#[derive(Debug)]
pub enum ControlError {
    /// The socket at `path` could not be made or used.
    Socket {
        path: PathBuf,
        error: io::Error,
    },
    /// Its directory could not be made.
    Directory {
        path: PathBuf,
        error: io::Error,
    },
    /// A live gateway answers there already.
    Taken {
        path: PathBuf,
    },
    /// Nothing answers there.
    NotRunning {
        path: PathBuf,
        error: io::Error,
    },
    /// The gateway answered with something that is not an answer.
    Garbled {
        path: PathBuf,
        answer: String,
    },
    /// The gateway refused the command, with its reason.
    Refused(String),
    LoopStopped,
    LoopSilent,
    /// A reload of a gateway that runs on the built-in config.
    NoFile,
    Load(LoadError),
    /// A valid config that the running gateway cannot take (a node change).
    Rejected {
        file: PathBuf,
        error: Box<ConfigError>,
    },
    NoService(String),
    UnknownCommand(String),
    /// The loop answered a request with the answer to another kind.
    WrongAnswer,
}

impl std::error::Error for ControlError {}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ControlError::Socket { path, error } => write!(f, "control socket {}: {error}", path.display()),
            ControlError::Directory { path, error } => {
                let dir = path.parent().unwrap_or(path);
                write!(f, "control socket {}: cannot create {}: {error}", path.display(), dir.display())
            }
            ControlError::Taken { path } => {
                write!(f, "control socket {}: another nodegate is running there", path.display())
            }
            ControlError::NotRunning { path, error } => {
                write!(f, "control socket {}: {error} (is nodegate running there?)", path.display())
            }
            ControlError::Garbled { path, answer } => {
                write!(f, "control socket {}: unexpected answer {answer:?}", path.display())
            }
            ControlError::Refused(why) => f.write_str(why),
            ControlError::LoopStopped => f.write_str("the gateway loop has stopped"),
            ControlError::LoopSilent => f.write_str("the gateway loop did not answer"),
            ControlError::NoFile => f.write_str("nodegate runs on the built-in config: there is no file to reload"),
            ControlError::Load(e) => write!(f, "{e}"),
            ControlError::Rejected { file, error } => write!(f, "{}: {error}", file.display()),
            ControlError::NoService(name) => write!(f, "no service named {name:?}"),
            ControlError::UnknownCommand(line) => {
                write!(f, "unknown command {line:?} (status, check, conntrack [SERVICE], reload, ha active|standby)")
            }
            ControlError::WrongAnswer => f.write_str("unexpected answer"),
        }
    }
}

/// A slice of the flows, with what is needed to print them.
pub struct FlowSnapshot {
    /// Each with the second it expires.
    pub flows: Vec<(Flow, u32)>,
    /// Flows tracked when the slice was taken.
    pub total: usize,
    /// Service names by the index flows carry.
    pub services: Vec<String>,
    /// Seconds since start, for the time each flow has left.
    pub now: u32,
}

pub struct Command {
    pub request: Request,
    pub reply: Sender<Reply>,
}

/// How long the control thread waits for the loop (it answers within one turn).
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client may take to send its command, and to take each part of the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once, each on a thread of its own, so that a slow one holds up neither
/// the others nor SIGHUP; one more is told to come back later.
const MAX_CLIENTS: usize = 8;

/// The socket's default path for node `node`.
pub fn default_path(node: &str) -> PathBuf {
    PathBuf::from(format!("/run/nodegate/{node}.sock"))
}

/// The bound control socket; removed again when dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ControlSocket {
    /// Binds `path` (mode 0660), replacing a socket left behind by a gateway that is gone.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let failed = |error| ControlError::Socket { path: path.to_path_buf(), error };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|error| ControlError::Directory { path: path.to_path_buf(), error })?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::Taken { path: path.to_path_buf() });
            }
            let _ = fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(failed)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o660)).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        Ok(ControlSocket { path: path.to_path_buf(), listener: Some(listener) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts the control thread for the gateway running `running` as `node`. `config_path` is
    /// what `reload` and SIGHUP re-read.
    pub fn serve(
        &mut self,
        config_path: Option<PathBuf>,
        node: Option<String>,
        running: Box<Config>,
    ) -> io::Result<(Receiver<Command>, JoinHandle<()>)> {
        let (tx, rx) = bounded(4);
        let listener = self.listener.take();
        let site = Arc::new(Site { config_path, node, running: Mutex::new(running) });
        let handle = thread(CONTROL_THREAD).spawn(move || {
            let Some(listener) = listener else { return };
            control_loop(&listener, &site, &tx)
        })?;
        Ok((rx, handle))
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// What the control threads share: where the config comes from, and the config running now
/// (what the next reload is prepared against; its lock makes reloads one at a time).
struct Site {
    config_path: Option<PathBuf>,
    node: Option<String>,
    running: Mutex<Box<Config>>,
}

const CONTROL_THREAD: &str = "control";
const CLIENT_THREAD: &str = "control-client";

/// A control thread. A reload's services are built on it: a few hundred KiB on the largest
/// board, more than a spawned thread's default 2 MiB stack leaves room for in every build, so
/// it gets a main thread's 8 MiB (reserved; what is not touched costs nothing).
fn thread(name: &str) -> thread::Builder {
    thread::Builder::new().name(name.into()).stack_size(8 << 20)
}

fn control_loop(listener: &UnixListener, site: &Arc<Site>, tx: &Sender<Command>) {
    let clients = Arc::new(AtomicUsize::new(0));
    while !SHUTDOWN.load(Ordering::Relaxed) {
        if RELOAD.swap(false, Ordering::Relaxed) {
            match reload(site, tx) {
                Ok(text) => info!("reload (SIGHUP): {text}"),
                Err(e) => error!("reload (SIGHUP) rejected, the running config stays: {e}"),
            }
        }
        match listener.accept() {
            Ok((mut stream, _)) => {
                if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    // What has come of its command is read first: a socket closed with unread
                    // data resets the client's read, and it would never see the answer.
                    let _ = stream.set_nonblocking(true);
                    let _ = io::copy(&mut (&stream).take(4096), &mut io::sink());
                    let _ = write!(stream, "error\n{MAX_CLIENTS} control clients are being served: try again\n");
                    continue;
                }
                let (site, tx, served) = (Arc::clone(site), tx.clone(), Arc::clone(&clients));
                let spawned = thread(CLIENT_THREAD).spawn(move || {
                    if let Err(e) = serve_client(stream, &site, &tx) {
                        error!("control client: {e}");
                    }
                    served.fetch_sub(1, Ordering::AcqRel);
                });
                if let Err(e) = spawned {
                    clients.fetch_sub(1, Ordering::AcqRel);
                    error!("control client: cannot start a thread for it: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                error!("control socket: {e}");
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn ask(tx: &Sender<Command>, request: Request) -> Result<Reply, ControlError> {
    let (reply, answer) = bounded(1);
    tx.send(Command { request, reply }).map_err(|_| ControlError::LoopStopped)?;
    answer.recv_timeout(LOOP_TIMEOUT).map_err(|_| ControlError::LoopSilent)
}

/// What the loop says to a request answered with text.
fn ask_text(tx: &Sender<Command>, request: Request) -> Result<String, ControlError> {
    match ask(tx, request)? {
        Reply::Text(text) => Ok(text),
        Reply::Refused(why) => Err(ControlError::Refused(why)),
        Reply::Flows(_) => Err(ControlError::WrongAnswer),
    }
}

/// Re-reads and validates the config file, prepares it against the running one (services,
/// Maglev tables, listeners, where each service, port and endpoint went), then has the loop
/// swap it in.
fn reload(site: &Site, tx: &Sender<Command>) -> Result<String, ControlError> {
    let Some(path) = &site.config_path else { return Err(ControlError::NoFile) };
    let (_, config) = load::load(Some(path)).map_err(ControlError::Load)?;
    // A thread that panicked while holding the lock left the config as it was.
    let mut running = site.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let changes = describe_changes(&running, &config);
    let next = Box::new(config.clone());
    let mut prepared = Box::new(Prepared { reload: Reload::default(), config });
    let p = &mut *prepared;
    p.reload
        .prepare(&running, &p.config, site.node.as_deref())
        .map_err(|error| ControlError::Rejected { file: path.clone(), error: Box::new(error) })?;
    let text = ask_text(tx, Request::Apply(prepared))?;
    *running = next;
    Ok(format!("applied: {changes}{text}"))
}

/// The endpoint addresses of `of` that `from` does not have.
fn missing_from(from: &Service, of: &Service) -> Vec<String> {
    of.endpoints.iter().filter(|e| !from.endpoints.iter().any(|x| x.ip == e.ip)).map(|e| e.ip.to_string()).collect()
}

/// Services and endpoints added and removed between two configs.
fn describe_changes(old: &Config, new: &Config) -> String {
    let mut changes = Vec::new();
    for s in &new.services {
        match old.services.iter().find(|o| o.name == s.name) {
            None => changes.push(format!("service {} added", s.name)),
            Some(o) => {
                let added = missing_from(o, s);
                let removed = missing_from(s, o);
                if !added.is_empty() {
                    changes.push(format!("service {}: endpoints {} added", s.name, added.join(", ")));
                }
                if !removed.is_empty() {
                    changes.push(format!("service {}: endpoints {} removed", s.name, removed.join(", ")));
                }
                if o != s && added.is_empty() && removed.is_empty() {
                    changes.push(format!("service {} changed", s.name));
                }
            }
        }
    }
    for o in old.services.iter().filter(|o| !new.services.iter().any(|s| s.name == o.name)) {
        changes.push(format!("service {} removed", o.name));
    }
    if changes.is_empty() { "no changes".into() } else { changes.join("; ") }
}

/// Every flow, a slice per request.
fn dump(tx: &Sender<Command>) -> Result<FlowSnapshot, ControlError> {
    let mut all: Option<FlowSnapshot> = None;
    loop {
        let from = all.as_ref().map_or(0, |a| a.flows.len());
        let slice = match ask(tx, Request::Flows { from })? {
            Reply::Flows(slice) => slice,
            Reply::Text(_) | Reply::Refused(_) => return Err(ControlError::WrongAnswer),
        };
        let last = slice.flows.len() < FLOWS_PER_ANSWER;
        match &mut all {
            None => all = Some(slice),
            Some(a) => {
                a.flows.extend(slice.flows);
                a.total = slice.total;
            }
        }
        if last {
            return all.ok_or(ControlError::WrongAnswer);
        }
    }
}

fn serve_client(mut stream: UnixStream, site: &Site, tx: &Sender<Command>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(4096)).read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let answer = match (words.next(), words.next()) {
        (Some("status"), None) => ask_text(tx, Request::Status),
        (Some("check"), None) => ask_text(tx, Request::Check),
        (Some(verb @ ("drain" | "undrain")), Some(service)) => {
            let drained = verb == "drain";
            match words.next().map(str::parse::<std::net::Ipv4Addr>) {
                Some(Ok(endpoint)) if words.next().is_none() => {
                    let service = service.to_string();
                    let result = ask_text(tx, Request::Drain { service, endpoint, drained });
                    if let Ok(text) = &result {
                        info!("{verb} (control socket): {}", text.trim_end());
                    }
                    result
                }
                _ => Err(ControlError::UnknownCommand(line.trim().to_string())),
            }
        }
        (Some("ha"), Some(role @ ("active" | "standby"))) => {
            let role = if role == "active" { Role::Active } else { Role::Standby };
            let result = ask_text(tx, Request::Role(role));
            if let Ok(text) = &result {
                info!("ha (control socket): {}", text.trim_end());
            }
            result
        }
        (Some("conntrack"), filter) => dump(tx).and_then(|flows| format_flows(&flows, filter)),
        (Some("reload"), None) => {
            let result = reload(site, tx);
            match &result {
                Ok(text) => info!("reload (control socket): {text}"),
                Err(e) => error!("reload (control socket) rejected, the running config stays: {e}"),
            }
            result
        }
        _ => Err(ControlError::UnknownCommand(line.trim().to_string())),
    };
    match answer {
        Ok(text) => write!(stream, "ok\n{text}"),
        Err(e) => write!(stream, "error\n{e}\n"),
    }
}

/// Flows one a line, as `conntrack -L` prints them, with the service and endpoint; then the total.
fn format_flows(s: &FlowSnapshot, service: Option<&str>) -> Result<String, ControlError> {
    let wanted = match service {
        Some(name) => {
            Some(s.services.iter().position(|n| n == name).ok_or_else(|| ControlError::NoService(name.to_string()))?)
        }
        None => None,
    };
    let mut out = String::new();
    let mut shown = 0;
    for (f, expires) in s.flows.iter().filter(|(f, _)| wanted.is_none_or(|w| f.service_index as usize == w)) {
        let (o, r) = (f.original(), f.reply());
        let proto = if f.proto == 6 { "tcp" } else { "udp" };
        let state = if f.proto == 6 { format!(" {}", f.state.as_str()) } else { String::new() };
        let service = s.services.get(f.service_index as usize).map_or("-", |n| n.as_str());
        let _ = writeln!(
            out,
            "{proto:<8} {} {}{state} src={} dst={} sport={} dport={} src={} dst={} sport={} dport={}{} service={service} endpoint={}:{}",
            f.proto,
            expires.saturating_sub(s.now),
            o.src,
            o.dst,
            o.src_port,
            o.dst_port,
            r.src,
            r.dst,
            r.src_port,
            r.dst_port,
            if f.replied() { " [ASSURED]" } else { "" },
            f.endpoint,
            f.endpoint_port,
        );
        shown += 1;
    }
    let _ = writeln!(out, "conntrack: {shown} flow(s) shown, {} tracked", s.total);
    Ok(out)
}

/// Sends `command` to the gateway at `path` and returns its answer.
pub fn client(path: &Path, command: &str) -> Result<String, ControlError> {
    let failed = |error| ControlError::Socket { path: path.to_path_buf(), error };
    let mut stream =
        UnixStream::connect(path).map_err(|error| ControlError::NotRunning { path: path.to_path_buf(), error })?;
    stream.set_read_timeout(Some(LOOP_TIMEOUT * 2)).map_err(failed)?;
    // A gateway that turns the client away may close before the command is written: its answer
    // is still there to read.
    let _ = writeln!(stream, "{command}");
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(failed)?;
    match answer.split_once('\n') {
        Some(("ok", text)) => Ok(text.to_string()),
        Some(("error", text)) => Err(ControlError::Refused(text.trim_end().to_string())),
        _ => Err(ControlError::Garbled { path: path.to_path_buf(), answer }),
    }
}
