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
        // A live pin wins while its endpoint still takes new flows; else Maglev decides.
        let pinned = match svc.config.session_affinity {
            SessionAffinity::ClientIp { .. } => self.affinity.lookup(listener.service_index, p.src, secs),
            SessionAffinity::None => None,
        };
        let ep = match pinned.map(usize::from).filter(|&e| svc.maglev.takes(e)) {
            Some(e) => e,
            None => match svc.maglev.pick(flow_hash(p.src, src_port, p.dst, dst_port, p.proto)) {
                Some(e) => e,
                None => {
                    svc.counters.no_endpoint_drops += 1;
                    return match svc.config.external_traffic_policy {
                        TrafficPolicy::Local => Verdict::Drop(DropReason::NoLocalEndpoint),
                        TrafficPolicy::Cluster => self.reject(p, now, out),
                    };
                }
            },
        };
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
        // A SNAT port was chosen free; without SNAT the client's own tuple may be taken.
        if !snat && !self.conntrack.claim(&flow.reply(), secs) {
            return Verdict::Drop(DropReason::SnatExhausted);
        }
        let Ok(slot) = self.conntrack.insert(flow, now) else { return Verdict::Drop(DropReason::ConntrackFull) };
        // The SYN (or the segment picked up) starts the client's sequence.
        self.conntrack.seen(slot, Direction::Original, p.tcp, now);
        self.sync_flow(slot, now);
        self.counters.flows_picked_up += u64::from(picked_up);
        if let SessionAffinity::ClientIp { timeout_seconds } = self.services.list[s].config.session_affinity {
            // Refreshed by every new connection, as kube-proxy's `recent` match does.
            self.affinity.pin(listener.service_index, p.src, ep as u8, secs, timeout_seconds);
            self.sync_pin(&flow, timeout_seconds, now);
        }
        self.counters.new_flows += 1;
        self.services.list[s].counters.ports[listener.port_index as usize].connections += 1;
        self.account(&flow, Direction::Original, p);
        self.forward(p, Rewrite::from(flow.reply().reversed()), None, endpoint, now, out)
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
