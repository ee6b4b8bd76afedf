//! The services as the engine runs them: their listeners and virtual IPs, Maglev tables,
//! endpoint health, counters, and a reload's new config with the flows remapped to it.

use core::net::Ipv4Addr;
use heapless::Vec;

use super::Engine;
use super::packet::PROTO_UDP;
use crate::balance::Maglev;
use crate::board;
use crate::config::{Config, ConfigError, Endpoint, Service, ServiceType, TrafficPolicy};
use crate::conntrack::Owner;

/// Where port `p` of `before` is in `after`: the port with the same name, protocol and port.
fn same_port(before: &Service, p: usize, after: &Service) -> Option<usize> {
    let was = before.ports.get(p)?;
    after.ports.iter().position(|n| n.name == was.name && n.protocol == was.protocol && n.port == was.port)
}

/// A service's balancing state.
pub(super) struct ServiceState {
    pub(super) config: Service,
    pub(super) maglev: Maglev<{ board::MAGLEV_TABLE_SIZE }>,
    /// Per endpoint: passing its active health checks (always, without checks).
    pub(super) healthy: Vec<bool, { board::MAX_ENDPOINTS_PER_SERVICE }>,
    pub(super) counters: ServiceCounters,
}

impl ServiceState {
    /// Endpoint `i` passes its health checks and may serve this node (`node`: its index), as
    /// Local policy asks.
    fn eligible(&self, i: usize, node: u8) -> bool {
        let policy_allows =
            |e: &Endpoint| self.config.external_traffic_policy == TrafficPolicy::Cluster || e.node == Some(node);
        self.healthy.get(i).copied().unwrap_or(false) && self.config.endpoints.get(i).is_some_and(policy_allows)
    }

    /// Eligible endpoints that are ready: what the healthCheckNodePort reports. Terminating ones
    /// may still serve when none is ready, but are not counted, so that an external load
    /// balancer drains the node.
    fn ready(&self, node: u8) -> usize {
        (0..self.config.endpoints.len()).filter(|&i| self.eligible(i, node) && self.config.endpoints[i].ready).count()
    }
}

/// Traffic of one service port, per direction (0: client to endpoint, 1: back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortTraffic {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    /// Flows created.
    pub connections: u64,
}

/// Totals of one service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub ports: [PortTraffic; board::MAX_PORTS_PER_SERVICE],
    /// Dropped: client outside loadBalancerSourceRanges.
    pub source_range_drops: u64,
    /// Dropped or refused: no endpoint to send to.
    pub no_endpoint_drops: u64,
}

impl ServiceCounters {
    /// Flows created, all ports together.
    pub fn new_flows(&self) -> u64 {
        self.ports.iter().map(|p| p.connections).sum()
    }
}

/// What listens where: `(protocol, port, address)` to the service and port that own it. The
/// address is a clusterIP or externalIP, or unspecified for "any node address" (a nodePort).
#[derive(Debug, Clone, Copy)]
pub(super) struct Listener {
    pub(super) proto: u8,
    pub(super) port: u16,
    pub(super) ip: Ipv4Addr,
    pub(super) service: u8,
    pub(super) port_index: u8,
}

/// A flow's service (or port) index once its service (or port) left the config.
const NO_INDEX: u8 = u8::MAX;

pub(super) const MAX_LISTENERS: usize =
    board::MAX_SERVICES * board::MAX_PORTS_PER_SERVICE * (2 + board::MAX_EXTERNAL_IPS_PER_SERVICE);
pub(super) const MAX_VIRTUAL_IPS: usize = board::MAX_SERVICES * (1 + board::MAX_EXTERNAL_IPS_PER_SERVICE);

impl Engine<'_> {
    /// Builds the services, their listeners and the virtual IPs from `config`, all endpoints
    /// healthy.
    pub(super) fn install(&mut self, config: &Config) {
        for (s, svc) in config.services.iter().enumerate() {
            let healthy = svc.endpoints.iter().map(|_| true).collect();
            let _ = self.services.push(ServiceState {
                config: svc.clone(),
                maglev: Maglev::new(),
                healthy,
                counters: ServiceCounters::default(),
            });
            self.rebuild(s);
            for (p, port) in svc.ports.iter().enumerate() {
                let proto = port.protocol.number();
                let listener =
                    |port: u16, ip: Ipv4Addr| Listener { proto, port, ip, service: s as u8, port_index: p as u8 };
                if let (ServiceType::NodePort, Some(node_port)) = (svc.kind, port.node_port) {
                    let _ = self.listeners.push(listener(node_port, Ipv4Addr::UNSPECIFIED));
                }
                for vip in svc.virtual_ips() {
                    let _ = self.listeners.push(listener(port.port, vip));
                }
            }
            for vip in svc.virtual_ips() {
                if !self.virtual_ips.contains(&vip) {
                    let _ = self.virtual_ips.push(vip);
                }
            }
        }
        self.listeners.sort_unstable_by_key(|l| (l.proto, l.port, l.ip));
        self.virtual_ips.sort_unstable();
    }

    /// Applies a new config in one step, between two frames. Flows to endpoints that are still
    /// in their service go on untouched; UDP flows to endpoints (or services) that left are
    /// flushed, TCP flows to them are left to finish. Health state and counters carry over by
    /// service name and endpoint address. ClientIP pins start afresh. The node itself (TAP,
    /// MAC, addresses) cannot change without a restart. Returns the UDP flows flushed.
    pub fn reconfigure(&mut self, config: &Config, node_name: Option<&str>) -> Result<usize, ConfigError> {
        let node = config.node(node_name)?;
        let same_node = node.tap == self.node.tap
            && node.bridge == self.node.bridge
            && node.mac == self.node.mac
            && node.addresses == self.node.addresses;
        if !same_node {
            return Err(ConfigError::new(
                format_args!("nodes"),
                format_args!(
                    "node {} changed its TAP, bridge, MAC or addresses: restart nodegate to apply that",
                    node.name
                ),
            ));
        }
        self.node = node.clone();
        self.node_index = config.nodes.iter().position(|n| n.name == node.name).unwrap_or(0) as u8;
        let old = core::mem::take(&mut self.services);
        self.listeners.clear();
        self.virtual_ips.clear();
        self.install(config);
        for s in 0..self.services.len() {
            let svc = &mut self.services[s];
            let Some(before) = old.iter().find(|o| o.config.name == svc.config.name) else { continue };
            // Counted per port, by the port (a reordered list keeps each series with its port).
            svc.counters = ServiceCounters { ports: Default::default(), ..before.counters };
            for (p, traffic) in before.counters.ports.iter().enumerate() {
                if let Some(now) = same_port(&before.config, p, &svc.config) {
                    svc.counters.ports[now] = *traffic;
                }
            }
            for (e, ep) in svc.config.endpoints.iter().enumerate() {
                if let Some(i) = before.config.endpoints.iter().position(|o| o.ip == ep.ip) {
                    svc.healthy[e] = before.healthy[i];
                }
            }
            self.rebuild(s);
        }
        let services = &self.services;
        let flushed = self.conntrack.remap(|f| {
            let udp = f.proto == PROTO_UDP;
            let before = old.get(f.service as usize);
            let now = before.and_then(|b| services.iter().position(|n| n.config.name == b.config.name));
            let gone = Owner { service: NO_INDEX, port: NO_INDEX, endpoint_index: NO_INDEX };
            let (Some(before), Some(s)) = (before, now) else { return (!udp).then_some(gone) };
            let svc = &services[s];
            let endpoint = svc.config.endpoints.iter().position(|e| e.ip == f.endpoint);
            // UDP has no end: a flow stays only on an endpoint that still takes new flows (not
            // one made not ready, or moved to another node with Local policy), as kube-proxy
            // flushes it.
            if udp && !endpoint.is_some_and(|e| svc.maglev.takes(e)) {
                return None;
            }
            let port = same_port(&before.config, f.port as usize, &svc.config);
            Some(Owner {
                service: s as u8,
                port: port.map_or(NO_INDEX, |p| p as u8),
                endpoint_index: endpoint.map_or(NO_INDEX, |e| e as u8),
            })
        });
        self.affinity.clear();
        Ok(flushed)
    }

    /// Rebuilds the Maglev table of service `s` from its endpoints' state: the ready, healthy
    /// ones (this node's only, with Local policy); if none is ready, the terminating ones.
    fn rebuild(&mut self, s: usize) {
        let node = self.node_index;
        let Some(svc) = self.services.get_mut(s) else { return };
        let any_ready = svc.ready(node) > 0;
        let cfg = &svc.config;
        let mut ips: Vec<Ipv4Addr, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        let mut weights: Vec<u8, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let usable = svc.eligible(i, node) && if any_ready { e.ready } else { e.terminating };
            let _ = ips.push(e.ip);
            let _ = weights.push(if usable { e.weight } else { 0 });
        }
        svc.maglev.build(&ips, &weights, &mut [0; board::MAX_ENDPOINTS_PER_SERVICE]);
    }

    /// Marks endpoint `e` of service `s` healthy or not. An endpoint that leaves gets no new
    /// flows; its UDP flows are flushed, so that a client sending on the same 5-tuple reaches a
    /// live endpoint (TCP flows are left to finish or time out). Returns the UDP flows flushed.
    pub fn set_endpoint_health(&mut self, s: usize, e: usize, healthy: bool) -> usize {
        let Some(slot) = self.services.get_mut(s).and_then(|svc| svc.healthy.get_mut(e)) else { return 0 };
        if *slot == healthy {
            return 0;
        }
        *slot = healthy;
        self.rebuild(s);
        if healthy {
            return 0;
        }
        let ip = self.services[s].config.endpoints[e].ip;
        self.conntrack.remap(|f| {
            let gone = f.proto == PROTO_UDP && f.service as usize == s && f.endpoint == ip;
            (!gone).then_some(f.owner())
        })
    }

    /// Ready endpoints of service `s` (on this node, with Local policy): what its
    /// healthCheckNodePort reports, as kube-proxy counts them.
    pub fn ready_endpoints(&self, s: usize) -> usize {
        self.services.get(s).map_or(0, |svc| svc.ready(self.node_index))
    }

    /// The services as the engine runs them, with their counters.
    pub fn services(&self) -> impl Iterator<Item = (&Service, &ServiceCounters)> {
        self.services.iter().map(|s| (&s.config, &s.counters))
    }

    /// Whether endpoint `e` of service `s` passes its health checks (as far as the engine knows:
    /// health carries over a reload by address).
    pub fn endpoint_healthy(&self, s: usize, e: usize) -> bool {
        self.services.get(s).and_then(|svc| svc.healthy.get(e)).copied().unwrap_or(true)
    }

    /// Whether endpoint `e` of service `s` takes new flows now.
    pub fn endpoint_serving(&self, s: usize, e: usize) -> bool {
        self.services.get(s).is_some_and(|svc| svc.maglev.takes(e))
    }

    pub fn service_counters(&self, s: usize) -> ServiceCounters {
        self.services.get(s).map_or_else(ServiceCounters::default, |svc| svc.counters)
    }

    /// The service port listening on `dst:port`: a virtual IP's own listener, or a nodePort
    /// on any node address.
    pub(super) fn listener(&self, proto: u8, dst: Ipv4Addr, port: u16) -> Option<Listener> {
        let first = self.listeners.partition_point(|l| (l.proto, l.port) < (proto, port));
        let same_port = self.listeners[first..].iter().take_while(|l| (l.proto, l.port) == (proto, port));
        let mut found = None;
        for l in same_port {
            if l.ip == dst {
                return Some(*l);
            }
            if l.ip.is_unspecified() && self.node.owns(dst) {
                found = Some(*l);
            }
        }
        found
    }
}
