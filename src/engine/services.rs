//! The services as the engine runs them: their listeners and virtual IPs, Maglev tables,
//! endpoint health, counters; and a reload, prepared off the packet thread and swapped in.

use core::net::Ipv4Addr;
use heapless::Vec;

use super::packet::PROTO_UDP;
use super::{Engine, Role};
use crate::balance::Maglev;
use crate::board;
use crate::config::{Config, ConfigError, HighAvailability, Node, Service, ServicePort, ServiceType};
use crate::conntrack::{Flow, Renumbering};

/// A yes or no per endpoint of a service.
pub(super) type EndpointFlags = Vec<bool, { board::MAX_ENDPOINTS_PER_SERVICE }>;

/// A service's balancing state.
pub(super) struct ServiceState {
    pub(super) config: Service,
    pub(super) maglev: Maglev<{ board::MAGLEV_TABLE_SIZE }>,
    /// Per endpoint: passing its active health checks (always, without checks).
    pub(super) healthy: EndpointFlags,
    /// Per endpoint: drained by the operator (`nodegate drain`): no new flows, its own go on.
    pub(super) drained: EndpointFlags,
    /// Per endpoint: its UDP flows stay. It takes new flows, or would if it were not drained;
    /// decided at each rebuild, read per packet.
    pub(super) keeps_flows: EndpointFlags,
    pub(super) counters: ServiceCounters,
}

impl ServiceState {
    /// Endpoint `i` passes its health checks and may serve this node (`node`: its index), as
    /// Local policy asks.
    fn eligible(&self, i: usize, node: u8) -> bool {
        self.eligible_undrained(i, node) && !self.drained.get(i).copied().unwrap_or(false)
    }

    /// [`ServiceState::eligible`] as if no endpoint were drained.
    fn eligible_undrained(&self, i: usize, node: u8) -> bool {
        self.healthy.get(i).copied().unwrap_or(false)
            && self.config.endpoints.get(i).is_some_and(|e| self.config.sends_to(e, node))
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
    pub(super) service_index: u8,
    pub(super) port_index: u8,
}

pub(super) const MAX_LISTENERS: usize =
    board::MAX_SERVICES * board::MAX_PORTS_PER_SERVICE * (2 + board::MAX_EXTERNAL_IPS_PER_SERVICE);
pub(super) const MAX_VIRTUAL_IPS: usize = board::MAX_SERVICES * (1 + board::MAX_EXTERNAL_IPS_PER_SERVICE);

/// What the engine serves, as one value built from a config: the node, its services with their
/// Maglev tables, the listeners and the virtual IPs. A reload builds the next one off the packet
/// thread ([`Reload`]); the loop swaps it in whole.
pub struct Services {
    pub(super) node: Node,
    /// This node's index in the config (endpoints name their node by it).
    pub(super) node_index: u8,
    pub(super) list: Vec<ServiceState, { board::MAX_SERVICES }>,
    /// Sorted by `(proto, port, ip)`.
    pub(super) listeners: Vec<Listener, MAX_LISTENERS>,
    /// clusterIPs and externalIPs, sorted: the node answers ARP for them.
    pub(super) virtual_ips: Vec<Ipv4Addr, MAX_VIRTUAL_IPS>,
    /// The config's high-availability section: its floating addresses move with the active
    /// role like the virtual IPs.
    pub(super) high_availability: Option<HighAvailability>,
    /// Mid-stream flows are taken up: another gateway may have carried them (high
    /// availability, or BFD sessions: a gateway behind a router's ECMP).
    pub(super) picks_up: bool,
}

impl Services {
    /// None yet: [`Services::build`] fills them in place.
    pub(super) fn new() -> Self {
        Services {
            node: Node::default(),
            node_index: 0,
            list: Vec::new(),
            listeners: Vec::new(),
            virtual_ips: Vec::new(),
            high_availability: None,
            picks_up: false,
        }
    }

    /// Builds, in place, the services of node `node_name` of `config`, every endpoint healthy.
    pub(super) fn build(&mut self, config: &Config, node_name: Option<&str>) -> Result<(), ConfigError> {
        let node = config.node(node_name)?;
        self.node = node.clone();
        self.node_index = config.index_of(node);
        self.list.clear();
        self.listeners.clear();
        self.virtual_ips.clear();
        self.high_availability = config.high_availability.clone();
        self.picks_up = config.high_availability.is_some() || !config.bfd.sessions.is_empty();
        for (s, svc) in config.services.iter().enumerate() {
            let healthy = svc.endpoints.iter().map(|_| true).collect();
            let drained = svc.endpoints.iter().map(|_| false).collect();
            let keeps_flows = Vec::new();
            let _ = self.list.push(ServiceState {
                config: svc.clone(),
                maglev: Maglev::new(),
                healthy,
                drained,
                keeps_flows,
                counters: ServiceCounters::default(),
            });
            self.rebuild(s);
            for (p, port) in svc.ports.iter().enumerate() {
                let proto = port.protocol.number();
                let listener =
                    |port: u16, ip: Ipv4Addr| Listener { proto, port, ip, service_index: s as u8, port_index: p as u8 };
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
        Ok(())
    }

    /// Rebuilds the Maglev table of service `s` from its endpoints' state: the ready, healthy,
    /// undrained ones (not another node's, with Local policy); if none is ready, the
    /// terminating ones. And which endpoints keep their UDP flows: those, and those a drain
    /// alone keeps out.
    fn rebuild(&mut self, s: usize) {
        let node = self.node_index;
        let Some(svc) = self.list.get_mut(s) else { return };
        let cfg = &svc.config;
        let any_ready = svc.ready(node) > 0;
        let any_ready_undrained =
            (0..cfg.endpoints.len()).any(|i| svc.eligible_undrained(i, node) && cfg.endpoints[i].ready);
        let mut ips: Vec<Ipv4Addr, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        let mut weights: Vec<u8, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        let mut keeps_flows = Vec::new();
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let serves = |eligible: bool, any_ready: bool| eligible && if any_ready { e.ready } else { e.terminating };
            let usable = serves(svc.eligible(i, node), any_ready);
            let _ = ips.push(e.ip);
            let _ = weights.push(if usable { e.weight } else { 0 });
            let _ = keeps_flows.push(usable || serves(svc.eligible_undrained(i, node), any_ready_undrained));
        }
        svc.maglev.build(&ips, &weights, &mut [0; board::MAX_ENDPOINTS_PER_SERVICE]);
        svc.keeps_flows = keeps_flows;
    }

    /// Takes health and counters over from `before`, the services running until now (`map`
    /// says where each of them went), and rebuilds the Maglev tables whose health differs
    /// from the all-healthy start.
    fn carry_over(&mut self, before: &Services, map: &Renumbering) {
        for (s, old) in before.list.iter().enumerate() {
            let Some(svc) = map.service_of(s).and_then(|to| self.list.get_mut(to)) else { continue };
            // Counted per port, by the port (a reordered list keeps each series with its port).
            svc.counters = ServiceCounters { ports: Default::default(), ..old.counters };
            for (p, traffic) in old.counters.ports.iter().enumerate() {
                if let Some(slot) = map.port_of(s, p).and_then(|to| svc.counters.ports.get_mut(to)) {
                    *slot = *traffic;
                }
            }
            let mut changed = false;
            for (e, (&healthy, &drained)) in old.healthy.iter().zip(&old.drained).enumerate() {
                let Some(to) = map.endpoint_of(s, e) else { continue };
                for (slot, was) in [(svc.healthy.get_mut(to), healthy), (svc.drained.get_mut(to), drained)] {
                    if let Some(slot) = slot {
                        changed |= *slot != was;
                        *slot = was;
                    }
                }
            }
            if changed && let Some(to) = map.service_of(s) {
                self.rebuild(to);
            }
        }
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

    /// A virtual IP or floating address: what the active gateway of a pair answers for.
    pub(super) fn moves_with_role(&self, ip: Ipv4Addr) -> bool {
        self.virtual_ips.binary_search(&ip).is_ok() || self.floating().any(|f| f == ip)
    }

    /// The addresses that move with the active role besides the virtual IPs.
    pub(super) fn floating(&self) -> impl Iterator<Item = Ipv4Addr> {
        self.high_availability.iter().flat_map(|ha| ha.floating())
    }

    /// A UDP flow stays only while its endpoint takes new flows, or would but for a drain (it
    /// has no end of its own: a client that keeps sending on the same 5-tuple must reach a live
    /// endpoint, as kube-proxy flushes it); TCP flows are left to finish.
    pub(super) fn keeps(&self, flow: &Flow) -> bool {
        let e = usize::from(flow.endpoint_index);
        flow.proto != PROTO_UDP
            || self.list.get(usize::from(flow.service_index)).is_some_and(|s| s.keeps_flows.get(e) == Some(&true))
    }
}

/// A new config made ready to apply off the packet thread: its [`Services`] and where the
/// running config's services, ports and endpoints went in it. Built in place (a few hundred
/// KiB): make one, then [`Reload::prepare`] it.
pub struct Reload {
    services: Services,
    renumbering: Renumbering,
}

impl Default for Reload {
    fn default() -> Self {
        Reload { services: Services::new(), renumbering: Renumbering::new() }
    }
}

impl Reload {
    /// Validates `next` against `running` for node `node_name` and builds what the loop swaps
    /// in; what cannot change without a restart is [`crate::config::diff::reload_refuses`].
    /// Services, ports and endpoints are matched by name, by name, protocol and port, and by
    /// address.
    pub fn prepare(&mut self, running: &Config, next: &Config, node_name: Option<&str>) -> Result<(), ConfigError> {
        crate::config::diff::reload_refuses(running, next, node_name)?;
        let renumbering = &mut self.renumbering;
        *renumbering = Renumbering::new();
        for (s, before) in running.services.iter().enumerate() {
            let Some(to) = next.services.iter().position(|n| n.name == before.name) else { continue };
            renumbering.service(s, to);
            let after = &next.services[to];
            for (p, was) in before.ports.iter().enumerate() {
                let same = |n: &&ServicePort| n.name == was.name && n.protocol == was.protocol && n.port == was.port;
                if let Some(now) = after.ports.iter().position(|n| same(&n)) {
                    renumbering.port(s, p, now);
                }
            }
            for (e, was) in before.endpoints.iter().enumerate() {
                if let Some(now) = after.endpoints.iter().position(|n| n.ip == was.ip) {
                    renumbering.endpoint(s, e, now);
                }
            }
        }
        self.services.build(next, node_name)
    }
}

impl Engine<'_> {
    /// Applies a prepared config between two frames: its services replace the running ones,
    /// with their health (by endpoint address) and counters. Tracked flows are renumbered a
    /// slice at a time by [`Engine::housekeeping`] (and read renumbered before that); UDP flows
    /// to endpoints that no longer take new flows are flushed as they are reached, TCP flows
    /// are left to finish. ClientIP pins start afresh. `reload` is left holding the services
    /// that ran until now.
    pub fn apply(&mut self, reload: &mut Reload) {
        reload.services.carry_over(self.services, &reload.renumbering);
        core::mem::swap(self.services, &mut reload.services);
        // Without high availability there is no standby to be.
        if self.services.high_availability.is_none() {
            self.role = Role::Active;
        }
        self.conntrack.renumber(reload.renumbering);
        self.affinity.clear();
        self.resolve_cursor = (0, 0);
    }

    /// Marks endpoint `e` of service `s` healthy or not. An endpoint that leaves gets no new
    /// flows; its UDP flows are flushed (see [`Services::keeps`]): at their next packet, or
    /// when the sweep reaches them. TCP flows are left to finish or time out.
    pub fn set_endpoint_health(&mut self, s: usize, e: usize, healthy: bool) {
        self.set_endpoint_flag(s, e, |svc| &mut svc.healthy, healthy);
    }

    /// Sets endpoint `e`'s entry in the `flags` of service `s`, and rebuilds the service if it
    /// changed.
    fn set_endpoint_flag(&mut self, s: usize, e: usize, flags: fn(&mut ServiceState) -> &mut EndpointFlags, to: bool) {
        let Some(slot) = self.services.list.get_mut(s).and_then(|svc| flags(svc).get_mut(e)) else { return };
        if *slot != to {
            *slot = to;
            self.services.rebuild(s);
        }
    }

    /// Ready endpoints of service `s` (on this node, with Local policy): what its
    /// healthCheckNodePort reports, as kube-proxy counts them.
    pub fn ready_endpoints(&self, s: usize) -> usize {
        self.services.list.get(s).map_or(0, |svc| svc.ready(self.services.node_index))
    }

    /// The services as the engine runs them, with their counters.
    pub fn services(&self) -> impl Iterator<Item = (&Service, &ServiceCounters)> {
        self.services.list.iter().map(|s| (&s.config, &s.counters))
    }

    /// Whether endpoint `e` of service `s` passes its health checks (as far as the engine knows:
    /// health carries over a reload by address).
    pub fn endpoint_healthy(&self, s: usize, e: usize) -> bool {
        self.services.list.get(s).and_then(|svc| svc.healthy.get(e)).copied().unwrap_or(true)
    }

    /// Drains endpoint `e` of service `s` (no new flows, its pins move, its flows go on), or
    /// takes it back. A reload keeps it drained.
    pub fn set_endpoint_drained(&mut self, s: usize, e: usize, drained: bool) {
        self.set_endpoint_flag(s, e, |svc| &mut svc.drained, drained);
    }

    pub fn endpoint_drained(&self, s: usize, e: usize) -> bool {
        self.services.list.get(s).and_then(|svc| svc.drained.get(e)).copied().unwrap_or(false)
    }

    /// Whether endpoint `e` of service `s` takes new flows now.
    pub fn endpoint_serving(&self, s: usize, e: usize) -> bool {
        self.services.list.get(s).is_some_and(|svc| svc.maglev.takes(e))
    }

    pub fn service_counters(&self, s: usize) -> ServiceCounters {
        self.services.list.get(s).map_or_else(ServiceCounters::default, |svc| svc.counters)
    }
}
