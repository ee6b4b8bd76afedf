//! Active health checks on the node's own smoltcp sockets, every interval, of every endpoint of
//! a service with a `healthCheck`: a TCP connect, or an HTTP `GET` whose status line decides.

use std::format;
use std::net::Ipv4Addr;
use std::vec;
use std::vec::Vec;

use log::{info, warn};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::config::{Config, HealthCheck, HttpCheck, PortRange};
use crate::engine::Engine;
use crate::health::Tracker;
use crate::random::Rng;
use crate::time::Millis;

struct Probe {
    service: usize,
    endpoint: usize,
    target: (Ipv4Addr, u16),
    check: HealthCheck,
    socket: SocketHandle,
    tracker: Tracker,
    next: Millis,
    deadline: Option<Millis>,
    /// With an HTTP check: the request and what came back of it.
    exchange: Option<Exchange>,
}

/// An HTTP check and its exchange under way: the request, sent once the connection is up, and
/// the first bytes of the answer, as many as the status line needs (the rest is never read).
struct Exchange {
    http: HttpCheck,
    request: Vec<u8>,
    sent: bool,
    head: [u8; STATUS_LINE],
    got: usize,
}

/// `HTTP/1.1 200`: the bytes up to the status code.
const STATUS_LINE: usize = 12;

impl Exchange {
    fn new(http: &HttpCheck, (ip, port): (Ipv4Addr, u16)) -> Exchange {
        let host = http.host.as_ref().map_or_else(|| format!("{ip}:{port}"), |h| h.as_str().into());
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: nodegate/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            http.path,
            env!("CARGO_PKG_VERSION")
        );
        Exchange { http: http.clone(), request: request.into_bytes(), sent: false, head: [0; STATUS_LINE], got: 0 }
    }

    fn restart(&mut self) {
        self.sent = false;
        self.got = 0;
    }

    /// Moves the exchange on; `Some(passed)` once the status line is in, or the connection
    /// ended before it.
    fn step(&mut self, socket: &mut tcp::Socket) -> Option<bool> {
        if !self.sent && socket.can_send() {
            // The request fits the socket's buffer whole (see `REQUEST_BUFFER`).
            self.sent = socket.send_slice(&self.request).is_ok_and(|n| n == self.request.len());
        }
        if socket.can_recv()
            && let Ok(n) = socket.recv_slice(&mut self.head[self.got..])
        {
            self.got += n;
        }
        if self.got == STATUS_LINE {
            return Some(status(&self.head).is_some_and(|code| self.http.passes(code)));
        }
        (socket.state() == tcp::State::Closed || (self.sent && !socket.may_recv())).then_some(false)
    }
}

/// The status code of a status line's start, `HTTP/1.x NNN`.
fn status(head: &[u8; STATUS_LINE]) -> Option<u16> {
    let digits = &head[9..12];
    let well_formed = head.starts_with(b"HTTP/1.") && head[8] == b' ' && digits.iter().all(u8::is_ascii_digit);
    well_formed.then(|| digits.iter().fold(0, |n, d| n * 10 + u16::from(d - b'0')))
}

/// A probe's send buffer: an HTTP request with the longest path and host the config allows.
const REQUEST_BUFFER: usize = 512;

/// Active health checks: a TCP connect to each endpoint's `ip:targetPort` every interval.
pub struct Probes {
    probes: Vec<Probe>,
    /// Source ports, random: a peer that cannot predict them cannot aim packets at a probe.
    ports: Rng,
}

impl Probes {
    /// Probes for `config`'s checks, each starting in the state `engine` has its endpoint in (so
    /// that an endpoint down at a reload comes back when its checks pass again). `seed` makes
    /// their source ports unpredictable.
    pub fn new(config: &Config, sockets: &mut SocketSet<'_>, seed: u64, engine: &Engine) -> Probes {
        let mut probes = Vec::new();
        for (s, svc) in config.services.iter().enumerate() {
            let (Some(check), Some(port)) = (&svc.health_check, svc.ports.first()) else { continue };
            for (e, ep) in svc.endpoints.iter().enumerate() {
                let buffers = (tcp::SocketBuffer::new(vec![0; 64]), tcp::SocketBuffer::new(vec![0; REQUEST_BUFFER]));
                let socket = sockets.add(tcp::Socket::new(buffers.0, buffers.1));
                let target = (ep.ip, check.port.unwrap_or(port.target_port));
                probes.push(Probe {
                    service: s,
                    endpoint: e,
                    target,
                    check: check.clone(),
                    socket,
                    tracker: Tracker::starting(engine.endpoint_healthy(s, e)),
                    next: Millis(0),
                    deadline: None,
                    exchange: check.http.as_ref().map(|http| Exchange::new(http, target)),
                });
            }
        }
        Probes { probes, ports: Rng::new(seed) }
    }

    /// Takes the probes' sockets out of the set (before a reload builds new ones).
    pub fn remove(self, sockets: &mut SocketSet<'_>) {
        for p in self.probes {
            sockets.remove(p.socket);
        }
    }

    /// Starts the checks that are due and reads the results of those under way.
    pub fn poll(
        &mut self,
        now: Millis,
        config: &Config,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        engine: &mut Engine,
    ) {
        for p in &mut self.probes {
            let socket = sockets.get_mut::<tcp::Socket>(p.socket);
            let result = match p.deadline {
                None if now >= p.next => {
                    // The node's own client ports: apart from the SNAT pools and the listening
                    // ports (the validator checks), so replies to them are never NATed flows'.
                    let local = self.ports.in_range(PortRange::NODE_CLIENTS.ports());
                    socket.abort();
                    p.next = Millis(now.0 + p.check.interval_seconds as u64 * 1000);
                    if let Some(x) = &mut p.exchange {
                        x.restart();
                    }
                    match socket.connect(iface.context(), p.target, local) {
                        Ok(()) => {
                            p.deadline = Some(Millis(now.0 + p.check.timeout_seconds as u64 * 1000));
                            None
                        }
                        Err(_) => Some(false),
                    }
                }
                None => None,
                Some(deadline) => {
                    let answer = match &mut p.exchange {
                        Some(x) => x.step(socket),
                        None => match socket.state() {
                            tcp::State::Established => Some(true),
                            tcp::State::Closed => Some(false),
                            _ => None,
                        },
                    };
                    answer.or((now >= deadline).then_some(false))
                }
            };
            let Some(ok) = result else { continue };
            socket.abort();
            p.deadline = None;
            let c = &p.check;
            if let Some(up) = p.tracker.record(ok, c.healthy_threshold, c.unhealthy_threshold) {
                engine.set_endpoint_health(p.service, p.endpoint, up);
                let name = &config.services[p.service].name;
                let (ip, port) = p.target;
                if up {
                    info!("service {name}: endpoint {ip}:{port} is up again ({} checks passed)", c.healthy_threshold);
                } else {
                    warn!(
                        "service {name}: endpoint {ip}:{port} is down ({} checks failed); no new flows to it, its UDP flows are flushed",
                        c.unhealthy_threshold
                    );
                }
            }
        }
    }
}

/// A log line for the start: which health sockets run.
pub fn describe(config: &Config) -> Vec<std::string::String> {
    config
        .services
        .iter()
        .filter_map(|s| {
            let checks = s.health_check.as_ref().map(|c| {
                let kind =
                    c.http.as_ref().map_or_else(|| "TCP checks".into(), |h| format!("HTTP checks of GET {}", h.path));
                let port = c.port.map(|p| format!(" on port {p}")).unwrap_or_default();
                format!(
                    "{kind}{port} every {}s (timeout {}s, down after {}, up after {})",
                    c.interval_seconds, c.timeout_seconds, c.unhealthy_threshold, c.healthy_threshold
                )
            });
            let port = s.health_check_node_port.map(|p| format!("healthCheckNodePort {p}"));
            let parts: Vec<_> = checks.into_iter().chain(port).collect();
            (!parts.is_empty()).then(|| format!("service {}: {}", s.name, parts.join(", ")))
        })
        .collect()
}

#[cfg(test)]
mod test {
    use super::{Exchange, STATUS_LINE, status};
    use crate::config::HttpCheck;
    use std::net::Ipv4Addr;

    #[test]
    fn the_status_code_is_read_from_the_status_lines_start() {
        let head = |s: &[u8]| -> [u8; STATUS_LINE] { s[..STATUS_LINE].try_into().unwrap() };
        assert_eq!(status(&head(b"HTTP/1.1 200 OK\r\n")), Some(200));
        assert_eq!(status(&head(b"HTTP/1.0 503 Service Unavailable")), Some(503));
        assert_eq!(status(&head(b"HTTP/2.0 200 OK  ")), None, "not HTTP/1");
        assert_eq!(status(&head(b"HTTP/1.1 2x0 OK  ")), None);
        assert_eq!(status(&head(b"SSH-2.0-OpenSSH_9")), None, "not HTTP at all");
    }

    #[test]
    fn the_request_names_the_path_and_the_host_and_fits_its_buffer() {
        let target = (Ipv4Addr::new(10, 77, 0, 11), 10256);
        let mut http = HttpCheck { path: "/healthz".try_into().unwrap(), host: None, statuses: Default::default() };
        let request = |http: &HttpCheck| std::string::String::from_utf8(Exchange::new(http, target).request).unwrap();
        let plain = request(&http);
        assert!(plain.starts_with("GET /healthz HTTP/1.1\r\nHost: 10.77.0.11:10256\r\n"), "{plain}");
        assert!(plain.ends_with("Connection: close\r\n\r\n"), "{plain}");
        http.host = Some("web.example".try_into().unwrap());
        assert!(request(&http).contains("\r\nHost: web.example\r\n"));
        // The longest path and host the config allows.
        http.path = core::iter::once('/').chain(core::iter::repeat_n('p', crate::config::HTTP_PATH_LEN - 1)).collect();
        http.host = Some(core::iter::repeat_n('h', crate::config::HTTP_HOST_LEN).collect());
        assert!(request(&http).len() <= super::REQUEST_BUFFER, "{}", request(&http).len());
    }
}
