//! Active health checks on the node's own smoltcp sockets: a TCP connect to every endpoint of a
//! service with a `healthCheck`, every interval.

use std::format;
use std::net::Ipv4Addr;
use std::vec;
use std::vec::Vec;

use log::{info, warn};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::config::{Config, HealthCheck, PortRange};
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
}

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
            let (Some(check), Some(port)) = (svc.health_check, svc.ports.first()) else { continue };
            for (e, ep) in svc.endpoints.iter().enumerate() {
                let buffers = (tcp::SocketBuffer::new(vec![0; 64]), tcp::SocketBuffer::new(vec![0; 64]));
                let socket = sockets.add(tcp::Socket::new(buffers.0, buffers.1));
                let target = (ep.ip, port.target_port);
                let next = Millis(0);
                probes.push(Probe {
                    service: s,
                    endpoint: e,
                    target,
                    check,
                    socket,
                    tracker: Tracker::starting(engine.endpoint_healthy(s, e)),
                    next,
                    deadline: None,
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
                    match socket.connect(iface.context(), p.target, local) {
                        Ok(()) => {
                            p.deadline = Some(Millis(now.0 + p.check.timeout_seconds as u64 * 1000));
                            None
                        }
                        Err(_) => Some(false),
                    }
                }
                None => None,
                Some(deadline) => match socket.state() {
                    tcp::State::Established => Some(true),
                    tcp::State::Closed => Some(false),
                    _ if now >= deadline => Some(false),
                    _ => None,
                },
            };
            let Some(ok) = result else { continue };
            socket.abort();
            p.deadline = None;
            let c = p.check;
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
            let checks = s.health_check.map(|c| {
                format!(
                    "TCP checks every {}s (timeout {}s, down after {}, up after {})",
                    c.interval_seconds, c.timeout_seconds, c.unhealthy_threshold, c.healthy_threshold
                )
            });
            let port = s.health_check_node_port.map(|p| format!("healthCheckNodePort {p}"));
            let parts: Vec<_> = checks.into_iter().chain(port).collect();
            (!parts.is_empty()).then(|| format!("service {}: {}", s.name, parts.join(", ")))
        })
        .collect()
}
