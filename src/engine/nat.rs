//! A new flow: its endpoint (affinity, Maglev), its source (SNAT port), tracked, counted.

use core::net::Ipv4Addr;

use super::packet::{self, Ipv4Fields, Ipv4Frame, PROTO_TCP, Rewrite};
use super::services::Listener;
use super::{DropReason, Engine, Verdict};
use crate::balance::maglev::flow_hash;
use crate::board;
use crate::config::{PortRange, SessionAffinity, TrafficPolicy};
use crate::conntrack::{Direction, Flow, State, Tuple};
use crate::time::Millis;

impl Engine<'_> {
    /// The first packet of a flow to a service: choose the endpoint and the source, track it.
    pub(super) fn new_flow(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        listener: Listener,
        src_port: u16,
        dst_port: u16,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        // A SYN opens a flow. With high availability or behind ECMP a mid-stream segment opens
        // one too, taken up as established: a flow another gateway carried before a failover
        // (that flow sync has not brought) or before ECMP moved it (as IPVS's sloppy_tcp does).
        let picked_up = match p.tcp.map(|t| t.flags) {
            None => false,
            Some(t) if t.syn && !t.ack && !t.rst && !t.fin => false,
            Some(t) if self.services.picks_up && t.ack && !t.syn && !t.rst && !t.fin => true,
            Some(_) => return Verdict::Drop(DropReason::TcpNoFlow),
        };
        let s = listener.service_index as usize;
        let secs = now.secs();
        let svc = &mut self.services.list[s];
        if !svc.config.admits(p.src) {
            svc.counters.source_range_drops += 1;
            return Verdict::Drop(DropReason::SourceRange);
        }
        let original = Tuple { src: p.src, dst: p.dst, src_port, dst_port, proto: p.proto };
        let Some(ep) = self.choose(s, &original, secs) else {
            let svc = &mut self.services.list[s];
            svc.counters.no_endpoint_drops += 1;
            return match svc.config.external_traffic_policy {
                TrafficPolicy::Local => Verdict::Drop(DropReason::NoLocalEndpoint),
                TrafficPolicy::Cluster => self.reject(p, now, out),
            };
        };
        let svc = &self.services.list[s];
        let endpoint = svc.config.endpoints[ep].ip;
        let endpoint_port = svc.config.ports[listener.port_index as usize].target_port;
        let policy = svc.config.external_traffic_policy;
        if let Some(v) = self.ttl_expired(p, now, out) {
            return v;
        }
        let Some(hop) = self.next_hop(endpoint) else { return Verdict::Drop(DropReason::NoRoute) };
        // Local keeps the client's address, but not for an endpoint that is its own client
        // (hairpin): it would get a packet from itself and answer itself, so it sees the node's
        // address, as kube-proxy masquerades hairpin traffic.
        let snat = policy == TrafficPolicy::Cluster || p.src == endpoint;
        let (source, source_port) = if snat {
            let on_link = self.services.node.address_on_link(hop).unwrap_or(p.dst);
            let snat_ip = self.services.high_availability.as_ref().map_or(on_link, |ha| ha.snat_address);
            match self.snat_port(endpoint, endpoint_port, snat_ip, p.proto, src_port, secs) {
                Some(port) => (snat_ip, port),
                None => return Verdict::Drop(DropReason::SnatExhausted),
            }
        } else {
            (p.src, src_port)
        };
        let flow = Flow {
            client: p.src,
            service_ip: p.dst,
            endpoint,
            source,
            client_port: src_port,
            service_port: dst_port,
            endpoint_port,
            source_port,
            client_mac: packet::src_mac(p.bytes()),
            proto: p.proto,
            state: match p.proto {
                PROTO_TCP if picked_up => State::Established,
                PROTO_TCP => State::SynSent,
                _ => State::None,
            },
            service_index: listener.service_index,
            port_index: listener.port_index,
            endpoint_index: ep as u8,
            ..Flow::EMPTY
        };
        if let Err(v) = self.track(&flow, Direction::Original, p, now) {
            return v;
        }
        self.counters.flows_picked_up += u64::from(picked_up);
        if let SessionAffinity::ClientIp { timeout_seconds } = self.services.list[s].config.session_affinity {
            // Refreshed by every new connection, as kube-proxy's `recent` match does.
            self.affinity.pin(listener.service_index, p.src, ep as u8, secs, timeout_seconds);
            self.sync_pin(&flow, timeout_seconds, now);
        }
        self.forward(p, Rewrite::from(flow.reply().reversed()), None, endpoint, now, out)
    }

    /// Tracks the new `flow` whose first packet `p` travels `dir`, and counts it.
    fn track(&mut self, flow: &Flow, dir: Direction, p: &Ipv4Fields, now: Millis) -> Result<(), Verdict> {
        // A SNAT port was chosen free; without SNAT the client's own tuple may be taken.
        if !flow.is_snat() && !self.conntrack.claim(&flow.reply(), now.secs()) {
            return Err(Verdict::Drop(DropReason::SnatExhausted));
        }
        let Ok(slot) = self.conntrack.insert(*flow, now) else { return Err(Verdict::Drop(DropReason::ConntrackFull)) };
        // The first packet (a SYN, or the segment picked up) starts its sender's sequence.
        self.conntrack.seen(slot, dir, p.tcp, now);
        self.sync_flow(slot, now);
        self.counters.new_flows += 1;
        self.services.list[flow.service_index as usize].counters.ports[flow.port_index as usize].connections += 1;
        self.account(flow, dir, p);
        Ok(())
    }

    /// The endpoint of service `s` for a new flow `original` (client to service address): a
    /// live pin while its endpoint still takes new flows, else Maglev's choice.
    fn choose(&self, s: usize, original: &Tuple, secs: u32) -> Option<usize> {
        let svc = &self.services.list[s];
        let pinned = match svc.config.session_affinity {
            SessionAffinity::ClientIp { .. } => self.affinity.lookup(s as u8, original.src, secs),
            SessionAffinity::None => None,
        };
        let t = original;
        let pick = || svc.maglev.pick(flow_hash(t.src, t.src_port, t.dst, t.dst_port, t.proto));
        pinned.map(usize::from).filter(|&e| svc.maglev.takes(e)).or_else(pick)
    }

    /// A reply from an endpoint to a client, of a flow this gateway does not track. Behind ECMP
    /// with Local policy (no SNAT) the router sends an endpoint's replies through whichever
    /// gateway its hash picks, and after a gateway's loss through another one: the reply is
    /// taken up when its flow is one this gateway would have sent to that endpoint itself, a
    /// `Local` service port whose target is the reply's source, on a virtual IP for which the
    /// client's tuple chooses that endpoint (Maglev is the same on every gateway). `None`: it
    /// is not such a reply.
    pub(super) fn pick_up_reply(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        (src_port, dst_port): (u16, u16),
        now: Millis,
        out: &mut [u8],
    ) -> Option<Verdict> {
        // An endpoint's SYN opens nothing, and its RST ends what it does not know.
        if p.tcp.is_some_and(|t| t.flags.rst || !t.flags.ack) {
            return None;
        }
        let secs = now.secs();
        let (client, proto) = (p.dst, p.proto);
        let (s, port_index, ep, service_ip, service_port) =
            self.services.list.iter().enumerate().find_map(|(s, svc)| {
                let cfg = &svc.config;
                if cfg.external_traffic_policy != TrafficPolicy::Local {
                    return None;
                }
                let ep = cfg.endpoints.iter().position(|e| e.ip == p.src)?;
                let ports = cfg.ports.iter().enumerate();
                let mut ports = ports.filter(|(_, sp)| sp.protocol.number() == proto && sp.target_port == src_port);
                ports.find_map(|(i, sp)| {
                    let original = |vip| Tuple { src: client, dst: vip, src_port: dst_port, dst_port: sp.port, proto };
                    let vip = cfg.virtual_ips().find(|&vip| self.choose(s, &original(vip), secs) == Some(ep))?;
                    Some((s, i, ep, vip, sp.port))
                })
            })?;
        if let Some(v) = self.ttl_expired(p, now, out) {
            return Some(v);
        }
        let Some(hop) = self.next_hop(client) else { return Some(Verdict::Drop(DropReason::NoRoute)) };
        let Some(client_mac) = self.neighbors.lookup(hop, now) else {
            // Not parked: a parked frame leaves as it is, and this one is not translated yet.
            // The endpoint sends its reply again; by then the next hop is known.
            let len = self.arp_request(hop, now, out);
            return Some(Verdict::Reply { len, dropped: Some(DropReason::NeighborMissing) });
        };
        let flow = Flow {
            client,
            service_ip,
            endpoint: p.src,
            source: client,
            client_port: dst_port,
            service_port,
            endpoint_port: src_port,
            source_port: dst_port,
            client_mac,
            proto,
            state: if proto == PROTO_TCP { State::Established } else { State::None },
            service_index: s as u8,
            port_index: port_index as u8,
            endpoint_index: ep as u8,
            ..Flow::EMPTY
        };
        if let Err(v) = self.track(&flow, Direction::Reply, p, now) {
            return Some(v);
        }
        self.counters.flows_picked_up += 1;
        Some(self.forward(p, Rewrite::from(flow.original().reversed()), Some(client_mac), client, now, out))
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
        let range = PortRange::SNAT.ports();
        if range.contains(&client_port) && self.conntrack.claim(&reply(client_port), now) {
            return Some(client_port);
        }
        let mut tried = [0u16; board::SNAT_ATTEMPTS];
        for slot in tried.iter_mut() {
            let port = self.rng.in_range(range.clone());
            if self.conntrack.claim(&reply(port), now) {
                return Some(port);
            }
            *slot = port;
        }
        self.conntrack.take_port(&tried, reply, now)
    }

    /// Counts a packet of `flow` going `dir`.
    pub(super) fn account(&mut self, flow: &Flow, dir: Direction, p: &Ipv4Fields) {
        let Some(t) = self
            .services
            .list
            .get_mut(flow.service_index as usize)
            .and_then(|s| s.counters.ports.get_mut(flow.port_index as usize))
        else {
            return;
        };
        let d = usize::from(dir == Direction::Reply);
        t.packets[d] += p.packets as u64;
        t.bytes[d] += (p.end - packet::ETH_HEADER) as u64;
    }
}
