//! The packet engine: a pure state machine over `(frame, now)`.
//!
//! [`Engine::process`] looks at one Ethernet frame and decides: rewrite it and send it on (DNAT,
//! SNAT, or the reverse for a reply), answer it (RST, ICMP error), hold it until its next hop
//! answers ARP, hand it to the node's own stack, or drop it with a counted reason. It reads no
//! clock, does no I/O and allocates nothing, so every behaviour is a "frame in, frame out" test.

pub mod checksum;
pub mod counters;
mod fragments;
pub mod packet;
mod parked;
mod rate_limit;
pub mod reply;

use core::net::Ipv4Addr;
use heapless::Vec;

use crate::affinity::Affinity;
use crate::balance::{Maglev, maglev::flow_hash};
use crate::board;
use crate::config::{Config, ConfigError, Node, Service, ServiceType, SessionAffinity, TrafficPolicy};
use crate::conntrack::{Check, Direction, Flow, Owner, State, Table, Tuple};
use crate::neighbor::Neighbors;
use crate::random::Rng;
use crate::time::Millis;
pub use counters::{Counters, DropReason};
use fragments::{Fragments, Key as FragmentKey, Translation};
pub use packet::Offload;
use packet::{Ipv4Frame, PROTO_TCP, PROTO_UDP, Rewrite};
use parked::Parked;
use rate_limit::RateLimit;

/// What to do with a frame after [`Engine::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The frame was translated in place: send it.
    Forward,
    /// The frame was answered (or dropped and answered): send `out[..len]`.
    Reply(usize),
    /// The frame is for the node itself: hand it to the stack.
    Stack,
    /// The frame waits for its next hop's MAC; send `out[..len]` (an ARP request) if `len > 0`.
    Parked(usize),
    /// The frame was dropped, for this reason (already counted).
    Drop(DropReason),
}

/// Where port `p` of `before` is in `after`: the port with the same name, protocol and port.
fn same_port(before: &Service, p: usize, after: &Service) -> Option<usize> {
    let was = before.ports.get(p)?;
    after.ports.iter().position(|n| n.name == was.name && n.protocol == was.protocol && n.port == was.port)
}

/// A frame for smoltcp, which takes whole packets with their checksums.
fn to_stack(frame: &mut [u8], f: &Ipv4Frame) -> Verdict {
    if f.offload.segment_size > 0 {
        return Verdict::Drop(DropReason::Oversized);
    }
    if f.offload.partial_checksum {
        packet::complete_checksum(frame, f);
    }
    Verdict::Stack
}

/// ICMP types and codes the engine sends.
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_PORT_UNREACHABLE: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;

/// Random SNAT ports tried before a new flow is dropped as `snat_exhausted`.
const SNAT_ATTEMPTS: usize = 64;
/// How long a frame may wait for ARP before it is dropped as `neighbor_missing`.
const PARK_MAX_MS: u64 = 3 * board::ARP_RETRY_MILLIS;
/// How often the next hops of all endpoints are checked for an ARP refresh.
const RESOLVE_EVERY_MS: u64 = 100;

/// A service's balancing state.
struct ServiceState {
    config: Service,
    maglev: Maglev<{ board::MAGLEV_TABLE_SIZE }>,
    /// Per endpoint: passing its active health checks (always, without checks).
    healthy: Vec<bool, { board::MAX_ENDPOINTS_PER_SERVICE }>,
    /// Endpoints that are ready, healthy and eligible (on this node, with Local policy): what
    /// its healthCheckNodePort reports. Terminating ones may still serve when none is ready,
    /// but are not counted, so that an external load balancer drains the node.
    ready: usize,
    counters: ServiceCounters,
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
struct Listener {
    proto: u8,
    port: u16,
    ip: Ipv4Addr,
    service: u8,
    port_index: u8,
}

/// A flow's service (or port) index once its service (or port) left the config.
const NO_INDEX: u8 = u8::MAX;

const MAX_LISTENERS: usize =
    board::MAX_SERVICES * board::MAX_PORTS_PER_SERVICE * (2 + board::MAX_EXTERNAL_IPS_PER_SERVICE);
const MAX_VIRTUAL_IPS: usize = board::MAX_SERVICES * (1 + board::MAX_EXTERNAL_IPS_PER_SERVICE);

pub struct Engine<'a> {
    node: Node,
    /// This node's index in the config (endpoints name their node by it).
    node_index: u8,
    services: Vec<ServiceState, { board::MAX_SERVICES }>,
    /// Sorted by `(proto, port, ip)`.
    listeners: Vec<Listener, MAX_LISTENERS>,
    /// clusterIPs and externalIPs, sorted: the node answers ARP for them.
    virtual_ips: Vec<Ipv4Addr, MAX_VIRTUAL_IPS>,
    conntrack: Table<'a>,
    affinity: Affinity<{ board::AFFINITY_CAPACITY }>,
    neighbors: Neighbors<{ board::NEIGHBOR_CAPACITY }>,
    parked: Parked<{ board::PARKED_FRAMES }>,
    fragments: Fragments<{ board::FRAGMENT_TRACKS }>,
    counters: Counters,
    /// The RSTs and ICMP errors the engine makes up.
    replies: RateLimit,
    /// SNAT ports: unpredictable to a client.
    rng: Rng,
    /// (service, endpoint) the periodic ARP refresh looks at next.
    resolve_cursor: (usize, usize),
    last_resolve: Option<Millis>,
}

impl<'a> Engine<'a> {
    /// An engine for node `node_name` of `config`, tracking flows in `conntrack`. `seed` seeds
    /// the SNAT port choice; draw it from a random source.
    pub fn new(config: &Config, node_name: Option<&str>, conntrack: Table<'a>, seed: u64) -> Result<Self, ConfigError> {
        let node = config.node(node_name)?.clone();
        let node_index = config.nodes.iter().position(|n| n.name == node.name).unwrap_or(0) as u8;
        let mut engine = Engine {
            node,
            node_index,
            services: Vec::new(),
            listeners: Vec::new(),
            virtual_ips: Vec::new(),
            conntrack,
            affinity: Affinity::new([seed, seed.rotate_left(32)]),
            neighbors: Neighbors::new(board::NEIGHBOR_SECONDS as u64 * 1000, board::ARP_RETRY_MILLIS),
            parked: Parked::new(),
            fragments: Fragments::new(),
            counters: Counters::default(),
            replies: RateLimit::new(board::REPLIES_PER_SECOND, board::REPLY_BURST),
            rng: Rng::new(seed),
            resolve_cursor: (0, 0),
            last_resolve: None,
        };
        engine.install(config);
        Ok(engine)
    }

    /// Builds the services, their listeners and the virtual IPs from `config`, all endpoints
    /// healthy.
    fn install(&mut self, config: &Config) {
        for (s, svc) in config.services.iter().enumerate() {
            let healthy = svc.endpoints.iter().map(|_| true).collect();
            let _ = self.services.push(ServiceState {
                config: svc.clone(),
                maglev: Maglev::new(),
                healthy,
                ready: 0,
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
        let cfg = &svc.config;
        let candidate = |i: usize| {
            let e = &cfg.endpoints[i];
            svc.healthy[i] && (cfg.external_traffic_policy == TrafficPolicy::Cluster || e.node == Some(node))
        };
        svc.ready = (0..cfg.endpoints.len()).filter(|&i| candidate(i) && cfg.endpoints[i].ready).count();
        let any_ready = svc.ready > 0;
        let mut ips: Vec<Ipv4Addr, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        let mut weights: Vec<u8, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
        for (i, e) in cfg.endpoints.iter().enumerate() {
            let usable = candidate(i) && if any_ready { e.ready } else { e.terminating };
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
        self.services.get(s).map_or(0, |svc| svc.ready)
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

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Frames waiting for their next hop's MAC.
    pub fn frames_waiting(&self) -> usize {
        self.parked.len()
    }

    pub fn conntrack(&self) -> &Table<'a> {
        &self.conntrack
    }

    /// Counts a frame the host could not send.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.drop(reason);
    }

    /// Decides what happens to `frame`, rewriting it in place or writing a reply into `out`
    /// (which must hold a full frame).
    pub fn process(&mut self, frame: &mut [u8], now: Millis, out: &mut [u8]) -> Verdict {
        self.process_offloaded(frame, Offload::NONE, now, out)
    }

    /// [`Engine::process`] for a frame the kernel left work on (see [`Offload`]); a forwarded
    /// frame leaves with the same offload.
    pub fn process_offloaded(&mut self, frame: &mut [u8], offload: Offload, now: Millis, out: &mut [u8]) -> Verdict {
        self.counters.received += 1;
        let verdict = self.classify(frame, offload, now, out);
        match verdict {
            Verdict::Forward => self.counters.forwarded += 1,
            Verdict::Stack => self.counters.to_stack += 1,
            Verdict::Drop(reason) => self.counters.drop(reason),
            // Counted where they are decided: a reply to a dropped frame under its drop reason,
            // an ARP answer as answered, a parked frame when it leaves.
            Verdict::Reply(_) | Verdict::Parked(_) => {}
        }
        verdict
    }

    /// Expires flows, a bounded number at a time; the runner calls it every few milliseconds.
    pub fn housekeeping(&mut self, now: Millis) {
        self.conntrack.sweep(now.secs(), board::CONNTRACK_SWEEP_PER_TURN);
    }

    /// A frame the engine wants to send on its own (a parked frame whose next hop answered, an
    /// ARP request to refresh a next hop), written to `out`. Call until `None`.
    pub fn next_output(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        loop {
            let neighbors = &self.neighbors;
            match self.parked.take_ready(now, PARK_MAX_MS, |ip| neighbors.lookup(ip, now), out) {
                Some(Ok((len, mac))) => {
                    packet::set_macs(out, self.node.mac.0, mac);
                    self.counters.forwarded += 1;
                    return Some(len);
                }
                Some(Err(())) => self.counters.drop(DropReason::NeighborMissing),
                None => return self.refresh_next_hop(now, out),
            }
        }
    }

    fn classify(&mut self, frame: &mut [u8], offload: Offload, now: Millis, out: &mut [u8]) -> Verdict {
        if frame.len() < packet::ETH_HEADER {
            return Verdict::Drop(DropReason::Truncated);
        }
        let dst_mac = &frame[0..6];
        if frame[6] & 1 != 0 {
            return Verdict::Drop(DropReason::MartianSource);
        }
        if dst_mac != self.node.mac.0 && dst_mac[0] & 1 == 0 {
            return Verdict::Drop(DropReason::OtherMac);
        }
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0806 => self.arp(frame, now, out),
            0x0800 => match Ipv4Frame::parse(frame, offload) {
                Ok(f) => match self.ipv4(frame, &f, now, out) {
                    Verdict::Stack => to_stack(frame, &f),
                    verdict => verdict,
                },
                Err(reason) => Verdict::Drop(reason),
            },
            _ => Verdict::Drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Learns `sender IP is at sender MAC` from any ARP frame on one of the node's subnets, and
    /// answers requests for the services' virtual IPs (smoltcp answers for the node's own).
    fn arp(&mut self, frame: &[u8], now: Millis, out: &mut [u8]) -> Verdict {
        let a = &frame[packet::ETH_HEADER..];
        if a.len() < 28 || a[0..6] != [0, 1, 8, 0, 6, 4] {
            return Verdict::Drop(DropReason::Malformed);
        }
        let mac: [u8; 6] = [a[8], a[9], a[10], a[11], a[12], a[13]];
        let ip = Ipv4Addr::new(a[14], a[15], a[16], a[17]);
        let target = Ipv4Addr::new(a[24], a[25], a[26], a[27]);
        let request = a[6..8] == [0, 1];
        if self.node.address_on_link(ip).is_some() && !self.node.owns(ip) && mac[0] & 1 == 0 {
            self.neighbors.learn(ip, mac, now);
        }
        if request && self.virtual_ips.binary_search(&target).is_ok() && mac[0] & 1 == 0 {
            self.counters.answered += 1;
            return Verdict::Reply(reply::arp_reply(self.node.mac.0, target, mac, ip, out));
        }
        Verdict::Stack
    }

    /// A node address, clusterIP or externalIP.
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.node.owns(ip) || self.virtual_ips.binary_search(&ip).is_ok()
    }

    fn ipv4(&mut self, frame: &mut [u8], f: &Ipv4Frame, now: Millis, out: &mut [u8]) -> Verdict {
        // The node's own addresses too: a packet from one would share its tuples with the node's
        // own connections (a health probe's SYN-ACK translated to whoever sent it).
        if f.src.is_broadcast() || f.src.is_multicast() || f.src.is_unspecified() || self.is_local(f.src) {
            return Verdict::Drop(DropReason::MartianSource);
        }
        let for_node = self.is_local(f.dst);
        let Some((src_port, dst_port)) = f.ports else {
            if let Some(v) = self.icmp_error(frame, f, now, out) {
                return v;
            }
            if f.proto == packet::PROTO_ICMP && self.virtual_ips.binary_search(&f.dst).is_ok() {
                // smoltcp answers ping for the node's addresses; the node answers for its VIPs.
                return if packet::echo_reply(frame, f, self.node.mac.0) {
                    Verdict::Forward
                } else {
                    Verdict::Drop(DropReason::OtherAddress)
                };
            }
            return match () {
                _ if f.later_fragment && matches!(f.proto, PROTO_TCP | PROTO_UDP) => {
                    self.later_fragment(frame, f, now, out)
                }
                _ if for_node || f.dst.is_broadcast() || f.dst.is_multicast() => Verdict::Stack,
                _ => Verdict::Drop(DropReason::OtherAddress),
            };
        };
        let tuple = Tuple { src: f.src, dst: f.dst, src_port, dst_port, proto: f.proto };
        let secs = now.secs();
        match self.conntrack.lookup(&tuple, secs) {
            Some((slot, Direction::Original)) => {
                let flow = *self.conntrack.flow(slot);
                if f.tcp.is_some_and(|t| t.flags.syn && !t.flags.ack) && flow.state.is_closing() {
                    // A new connection on the tuple of a closing one is a new flow, and passes
                    // every check a first packet passes (the service, its source ranges and
                    // endpoints as they are now).
                    if flow.is_snat() {
                        // The old flow keeps its SNAT tuple until TIME_WAIT ends; the new flow
                        // gets a source port of its own, so the endpoint never sees a reused
                        // tuple it may still hold in TIME_WAIT (PAWS drops).
                        self.conntrack.detach_original(slot);
                    } else {
                        // Without SNAT the new flow's reply tuple is the old one's.
                        self.conntrack.remove(slot);
                    }
                    return self.untracked(frame, f, for_node, (src_port, dst_port), now, out);
                }
                if let Some(v) = self.ttl_expired(frame, f, now, out) {
                    return v;
                }
                if let Some(v) = self.judge(slot, Direction::Original, f, now) {
                    return v;
                }
                self.account(&flow, Direction::Original, f);
                // To the endpoint, as the tuple its replies come back with, reversed.
                let to = Rewrite::from(flow.reply().reversed());
                self.forward(frame, f, to, None, flow.endpoint, now, out)
            }
            Some((slot, Direction::Reply)) => {
                if let Some(v) = self.ttl_expired(frame, f, now, out) {
                    return v;
                }
                if let Some(v) = self.judge(slot, Direction::Reply, f, now) {
                    return v;
                }
                let flow = *self.conntrack.flow(slot);
                self.account(&flow, Direction::Reply, f);
                let to = Rewrite::from(flow.original().reversed());
                self.forward(frame, f, to, Some(flow.client_mac), flow.client, now, out)
            }
            None => self.untracked(frame, f, for_node, (src_port, dst_port), now, out),
        }
    }

    /// A TCP or UDP packet of no tracked flow: the first of a new flow when it is for a service.
    fn untracked(
        &mut self,
        frame: &mut [u8],
        f: &Ipv4Frame,
        for_node: bool,
        (src_port, dst_port): (u16, u16),
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        match self.listener(f.proto, f.dst, dst_port) {
            Some(listener) if for_node => self.new_flow(frame, f, listener, src_port, dst_port, now, out),
            _ if for_node || f.dst.is_broadcast() || f.dst.is_multicast() => Verdict::Stack,
            _ => Verdict::Drop(DropReason::OtherAddress),
        }
    }

    /// Records a packet of the flow in `slot`; `Some` when the flow refuses it: a FIN or RST
    /// outside its sender's window is dropped, and an RST that is not at the sender's sequence
    /// passes unrecorded (see [`crate::conntrack::tcp::check`]).
    fn judge(&mut self, slot: usize, dir: Direction, f: &Ipv4Frame, now: Millis) -> Option<Verdict> {
        match self.conntrack.seen(slot, dir, f.tcp, now) {
            Check::InWindow => None,
            Check::ResetNotExact => {
                self.counters.resets_not_exact += 1;
                None
            }
            Check::OutOfWindow => Some(Verdict::Drop(DropReason::TcpOutOfWindow)),
        }
    }

    /// Translates an ICMP error about a packet of a tracked flow, so that it reaches the host
    /// that sent the packet, about the packet as that host sent it (PMTU discovery works
    /// through the gateway). `None`: not such an error.
    fn icmp_error(&mut self, frame: &mut [u8], f: &Ipv4Frame, now: Millis, out: &mut [u8]) -> Option<Verdict> {
        let q = packet::quoted(frame, f)?;
        // The quoted packet left the gateway translated; the reverse of what it says is one of
        // its flow's tuples.
        let (slot, dir) = self.conntrack.lookup(&q.tuple.reversed(), now.secs())?;
        let flow = *self.conntrack.flow(slot);
        // As nf_conntrack takes an error as related: sent to the host that sent the quoted
        // packet, and intact (it leaves with a checksum computed anew, so it is checked first).
        if f.dst != q.tuple.src || !packet::icmp_checksum_ok(frame, f) {
            return Some(Verdict::Drop(DropReason::BadIcmpError));
        }
        if f.ttl <= 1 {
            // No ICMP error is ever sent about an ICMP error (RFC 1122 3.2.2).
            return Some(Verdict::Drop(DropReason::TtlExceeded));
        }
        Some(match dir {
            // About a reply on its way to the client: tell the endpoint, about what it sent.
            Direction::Original => {
                let outer_src = if flow.is_snat() { flow.source } else { f.src };
                let inner = Rewrite::from(flow.reply());
                packet::rewrite_icmp_error(frame, f, &q, outer_src, flow.endpoint, inner);
                self.send_to(frame, f, None, flow.endpoint, now, out)
            }
            // About a packet on its way to the endpoint: tell the client, about what it sent.
            Direction::Reply => {
                let inner = Rewrite::from(flow.original());
                packet::rewrite_icmp_error(frame, f, &q, flow.service_ip, flow.client, inner);
                self.send_to(frame, f, Some(flow.client_mac), flow.client, now, out)
            }
        })
    }

    /// The service port listening on `dst:port`: a virtual IP's own listener, or a nodePort
    /// on any node address.
    fn listener(&self, proto: u8, dst: Ipv4Addr, port: u16) -> Option<Listener> {
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

    /// The first packet of a flow to a service: choose the endpoint and the source, track it.
    #[allow(clippy::too_many_arguments)]
    fn new_flow(
        &mut self,
        frame: &mut [u8],
        f: &Ipv4Frame,
        listener: Listener,
        src_port: u16,
        dst_port: u16,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        if let Some(t) = f.tcp.map(|t| t.flags)
            && !(t.syn && !t.ack && !t.rst && !t.fin)
        {
            return Verdict::Drop(DropReason::TcpNoFlow);
        }
        let s = listener.service as usize;
        let secs = now.secs();
        let svc = &mut self.services[s];
        if !svc.config.admits(f.src) {
            svc.counters.source_range_drops += 1;
            return Verdict::Drop(DropReason::SourceRange);
        }
        // A live pin wins while its endpoint still takes new flows; else Maglev decides.
        let pinned = match svc.config.session_affinity {
            SessionAffinity::ClientIp { .. } => self.affinity.lookup(listener.service, f.src, secs),
            SessionAffinity::None => None,
        };
        let ep = match pinned.map(usize::from).filter(|&e| svc.maglev.takes(e)) {
            Some(e) => e,
            None => match svc.maglev.pick(flow_hash(f.src, src_port, f.dst, dst_port, f.proto)) {
                Some(e) => e,
                None => {
                    svc.counters.no_endpoint_drops += 1;
                    return match svc.config.external_traffic_policy {
                        TrafficPolicy::Local => Verdict::Drop(DropReason::NoLocalEndpoint),
                        TrafficPolicy::Cluster => self.reject(frame, f, now, out),
                    };
                }
            },
        };
        let endpoint = svc.config.endpoints[ep].ip;
        let endpoint_port = svc.config.ports[listener.port_index as usize].target_port;
        let policy = svc.config.external_traffic_policy;
        if let Some(v) = self.ttl_expired(frame, f, now, out) {
            return v;
        }
        let Some(hop) = self.next_hop(endpoint) else { return Verdict::Drop(DropReason::NoRoute) };
        // Local keeps the client's address, but not for an endpoint that is its own client
        // (hairpin): it would get a packet from itself and answer itself, so it sees the node's
        // address, as kube-proxy masquerades hairpin traffic.
        let snat = policy == TrafficPolicy::Cluster || f.src == endpoint;
        let (source, source_port) = if snat {
            let snat_ip = self.node.address_on_link(hop).unwrap_or(f.dst);
            match self.snat_port(endpoint, endpoint_port, snat_ip, f.proto, src_port, secs) {
                Some(port) => (snat_ip, port),
                None => return Verdict::Drop(DropReason::SnatExhausted),
            }
        } else {
            (f.src, src_port)
        };
        let flow = Flow {
            client: f.src,
            service_ip: f.dst,
            endpoint,
            source,
            client_port: src_port,
            service_port: dst_port,
            endpoint_port,
            source_port,
            client_mac: packet::src_mac(frame),
            proto: f.proto,
            state: if f.proto == PROTO_TCP { State::SynSent } else { State::None },
            service: listener.service,
            port: listener.port_index,
            endpoint_index: ep as u8,
            ..Flow::EMPTY
        };
        // A SNAT port was chosen free; without SNAT the client's own tuple may be taken.
        if !snat && !self.conntrack.is_free(&flow.reply(), secs) {
            return Verdict::Drop(DropReason::SnatExhausted);
        }
        let Ok(slot) = self.conntrack.insert(flow, now) else { return Verdict::Drop(DropReason::ConntrackFull) };
        // The SYN starts the client's sequence.
        self.conntrack.seen(slot, Direction::Original, f.tcp, now);
        if let SessionAffinity::ClientIp { timeout_seconds } = self.services[s].config.session_affinity {
            // Refreshed by every new connection, as kube-proxy's `recent` match does.
            self.affinity.pin(listener.service, f.src, ep as u8, secs, timeout_seconds);
        }
        self.counters.new_flows += 1;
        self.services[s].counters.ports[listener.port_index as usize].connections += 1;
        self.account(&flow, Direction::Original, f);
        self.forward(frame, f, Rewrite::from(flow.reply().reversed()), None, endpoint, now, out)
    }

    /// A source port towards `endpoint:endpoint_port` from `snat_ip` that no tracked flow uses
    /// (TIME_WAIT included): the client's own port if free, else a random one in the SNAT range.
    /// When every port tried is taken, a flow that is not established gives its port up
    /// ([`Table::take_port`]): a flood of half-open flows cannot hold a pool against real clients.
    fn snat_port(
        &mut self,
        endpoint: Ipv4Addr,
        endpoint_port: u16,
        snat_ip: Ipv4Addr,
        proto: u8,
        client_port: u16,
        now: u32,
    ) -> Option<u16> {
        let reply = |port| Tuple { src: endpoint, dst: snat_ip, src_port: endpoint_port, dst_port: port, proto };
        let range = board::SNAT_PORT_MIN..=board::SNAT_PORT_MAX;
        if range.contains(&client_port) && self.conntrack.is_free(&reply(client_port), now) {
            return Some(client_port);
        }
        let mut tried = [0u16; SNAT_ATTEMPTS];
        for slot in tried.iter_mut() {
            let port = self.rng.in_range(range.clone());
            if self.conntrack.is_free(&reply(port), now) {
                return Some(port);
            }
            *slot = port;
        }
        self.conntrack.take_port(&tried, reply, now)
    }

    /// Counts a packet of `flow` going `dir`.
    fn account(&mut self, flow: &Flow, dir: Direction, f: &Ipv4Frame) {
        let Some(t) =
            self.services.get_mut(flow.service as usize).and_then(|s| s.counters.ports.get_mut(flow.port as usize))
        else {
            return;
        };
        let d = usize::from(dir == Direction::Reply);
        t.packets[d] += f.packets as u64;
        t.bytes[d] += (f.end - packet::ETH_HEADER) as u64;
    }

    /// Where a packet for `ip` goes first: `ip` itself on a node subnet, else the gateway.
    fn next_hop(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.node.address_on_link(ip).is_some() { Some(ip) } else { self.node.gateway }
    }

    /// The node's address to answer `peer` from.
    fn address_for(&self, peer: Ipv4Addr) -> Ipv4Addr {
        self.node.address_on_link(peer).unwrap_or(self.node.addresses[0].address())
    }

    /// Answers a packet for a service without endpoints: RST for TCP, port unreachable for UDP.
    fn reject(&mut self, frame: &[u8], f: &Ipv4Frame, now: Millis, out: &mut [u8]) -> Verdict {
        if !self.may_answer(now) {
            return Verdict::Drop(DropReason::NoEndpoint);
        }
        self.counters.drop(DropReason::NoEndpoint);
        let mac = self.node.mac.0;
        let len = match f.proto {
            PROTO_TCP => reply::tcp_reset(frame, f, mac, out),
            _ => reply::icmp_error(frame, f, ICMP_DEST_UNREACHABLE, ICMP_PORT_UNREACHABLE, f.dst, mac, out),
        };
        Verdict::Reply(len)
    }

    /// A packet that would leave with TTL 0 is dropped and answered with ICMP time exceeded.
    fn ttl_expired(&mut self, frame: &[u8], f: &Ipv4Frame, now: Millis, out: &mut [u8]) -> Option<Verdict> {
        if f.ttl > 1 {
            return None;
        }
        if !self.may_answer(now) {
            return Some(Verdict::Drop(DropReason::TtlExceeded));
        }
        self.counters.drop(DropReason::TtlExceeded);
        let from = self.address_for(f.src);
        Some(Verdict::Reply(reply::icmp_error(frame, f, ICMP_TIME_EXCEEDED, 0, from, self.node.mac.0, out)))
    }

    /// Whether the rate limit lets an answer (RST, ICMP error) go now; counts it when not.
    fn may_answer(&mut self, now: Millis) -> bool {
        let allowed = self.replies.allow(now);
        self.counters.replies_suppressed += u64::from(!allowed);
        allowed
    }

    /// Rewrites `frame` and addresses it to `dst_mac`, or to the MAC of `to_ip`'s next hop.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        frame: &mut [u8],
        f: &Ipv4Frame,
        to: Rewrite,
        dst_mac: Option<[u8; 6]>,
        to_ip: Ipv4Addr,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        packet::rewrite(frame, f, to);
        if f.fragment {
            // The first fragment: the ones after it will need the same addresses.
            let translation = Translation { src: to.src, dst: to.dst, dst_mac, to_ip };
            let secs = now.secs();
            self.fragments.record(FragmentKey::of(f), translation, secs, secs.saturating_add(board::FRAGMENT_SECONDS));
        }
        self.send_to(frame, f, dst_mac, to_ip, now, out)
    }

    /// A fragment after the first: it goes where the first fragment of its datagram went.
    fn later_fragment(&mut self, frame: &mut [u8], f: &Ipv4Frame, now: Millis, out: &mut [u8]) -> Verdict {
        let Some(t) = self.fragments.lookup(&FragmentKey::of(f), now.secs()) else {
            return Verdict::Drop(DropReason::Fragment);
        };
        if let Some(v) = self.ttl_expired(frame, f, now, out) {
            return v;
        }
        packet::rewrite_addresses(frame, t.src, t.dst);
        self.send_to(frame, f, t.dst_mac, t.to_ip, now, out)
    }

    /// Addresses a translated `frame` to `dst_mac`, or to the MAC of `to_ip`'s next hop (held
    /// back while that is being resolved).
    fn send_to(
        &mut self,
        frame: &mut [u8],
        f: &Ipv4Frame,
        dst_mac: Option<[u8; 6]>,
        to_ip: Ipv4Addr,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        let our_mac = self.node.mac.0;
        let mac = match dst_mac {
            Some(mac) => mac,
            None => {
                let Some(hop) = self.next_hop(to_ip) else { return Verdict::Drop(DropReason::NoRoute) };
                match self.neighbors.lookup(hop, now) {
                    Some(mac) => mac,
                    None => return self.park(frame, f, hop, now, out),
                }
            }
        };
        packet::set_macs(frame, our_mac, mac);
        Verdict::Forward
    }

    /// Holds `frame` until `hop` answers ARP. It leaves later without its offload, so a partial
    /// checksum is finished now (a super-frame is too large to hold and is dropped).
    fn park(&mut self, frame: &mut [u8], f: &Ipv4Frame, hop: Ipv4Addr, now: Millis, out: &mut [u8]) -> Verdict {
        if f.offload.partial_checksum {
            packet::complete_checksum(frame, f);
        }
        let ask = self.arp_request(hop, now, out);
        if self.parked.park(hop, frame, now) {
            Verdict::Parked(ask)
        } else {
            self.counters.drop(DropReason::NeighborMissing);
            Verdict::Reply(ask)
        }
    }

    /// An ARP request for `ip` in `out`, unless one went out too recently (then 0).
    fn arp_request(&mut self, ip: Ipv4Addr, now: Millis, out: &mut [u8]) -> usize {
        if !self.neighbors.should_ask(ip, now) {
            return 0;
        }
        reply::arp_request(self.node.mac.0, self.address_for(ip), ip, out)
    }

    /// Keeps the MACs of every endpoint's next hop (and the gateway) fresh, so that new flows
    /// rarely wait for ARP. Walks the endpoints at most once per `RESOLVE_EVERY_MS`.
    fn refresh_next_hop(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        if self.last_resolve.is_some_and(|t| now.0.saturating_sub(t.0) < RESOLVE_EVERY_MS) {
            return None;
        }
        loop {
            let (s, e) = self.resolve_cursor;
            let target = match self.services.get(s) {
                Some(svc) if e < svc.config.endpoints.len() => {
                    self.resolve_cursor.1 += 1;
                    self.next_hop(svc.config.endpoints[e].ip)
                }
                Some(_) => {
                    self.resolve_cursor = (s + 1, 0);
                    continue;
                }
                None => {
                    self.resolve_cursor = (0, 0);
                    self.last_resolve = Some(now);
                    return self.node.gateway.map(|gw| self.arp_request(gw, now, out)).filter(|&len| len > 0);
                }
            };
            if let Some(hop) = target {
                let len = self.arp_request(hop, now, out);
                if len > 0 {
                    return Some(len);
                }
            }
        }
    }
}
