//! What a frame is and where it goes: Ethernet and ARP, IPv4, a tracked flow's packets, the
//! first packet of a new one.

use core::net::Ipv4Addr;
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};

use super::egress::to_stack;
use super::packet::{self, Ipv4Fields, Ipv4Frame, Offload, PROTO_TCP, PROTO_UDP, Rewrite};
use super::{DropReason, Engine, Role, Verdict, reply};
use crate::conntrack::{Check, Direction, Lookup, Tuple};
use crate::time::Millis;

impl Engine<'_> {
    pub(super) fn classify(&mut self, frame: &mut [u8], offload: Offload, now: Millis, out: &mut [u8]) -> Verdict {
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else { return Verdict::Drop(DropReason::Truncated) };
        if eth.src_addr().is_multicast() {
            return Verdict::Drop(DropReason::MartianSource);
        }
        if eth.dst_addr() != self.services.node.mac && eth.dst_addr().is_unicast() {
            return Verdict::Drop(DropReason::OtherMac);
        }
        match eth.ethertype() {
            EthernetProtocol::Arp => self.arp(frame, now, out),
            EthernetProtocol::Ipv4 => match Ipv4Frame::parse(frame, offload) {
                Ok(mut p) => match self.ipv4(&mut p, now, out) {
                    Verdict::Stack => to_stack(&mut p),
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
        let packet = ArpPacket::new_checked(&frame[packet::ETH_HEADER..]);
        let Ok(ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_protocol_addr: target,
            ..
        }) = packet.and_then(|p| ArpRepr::parse(&p))
        else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let node = &self.services.node;
        if node.address_on_link(ip).is_some() && !self.is_local(ip) && mac.is_unicast() {
            self.neighbors.learn(ip, mac.0, now);
        }
        if operation == ArpOperation::Request && self.answers_for(target) && mac.is_unicast() {
            let len = reply::arp_reply(node.mac.0, target, mac.0, ip, out);
            return Verdict::Reply { len, dropped: None };
        }
        Verdict::Stack
    }

    /// A node address, clusterIP, externalIP or floating address.
    fn is_local(&self, ip: Ipv4Addr) -> bool {
        self.services.node.owns(ip) || self.services.moves_with_role(ip)
    }

    /// The engine answers ARP for `ip` (smoltcp answers for the node's own addresses).
    fn answers_for(&self, ip: Ipv4Addr) -> bool {
        self.role == Role::Active && self.services.moves_with_role(ip)
    }

    fn ipv4(&mut self, p: &mut Ipv4Frame<'_>, now: Millis, out: &mut [u8]) -> Verdict {
        // The node's own addresses too: a packet from one would share its tuples with the node's
        // own connections (a health probe's SYN-ACK translated to whoever sent it).
        if p.src.is_broadcast() || p.src.is_multicast() || p.src.is_unspecified() || self.is_local(p.src) {
            return Verdict::Drop(DropReason::MartianSource);
        }
        let for_node = self.is_local(p.dst);
        let bfd = p.proto == PROTO_UDP && p.ports.is_some_and(|(_, d)| d == crate::bfd::PORT);
        if bfd && !self.bfd.is_empty() && self.services.node.owns(p.dst) {
            return self.bfd_receive(p, now, out);
        }
        if self.role == Role::Standby && self.is_service_traffic(p) {
            return Verdict::Drop(DropReason::Standby);
        }
        let Some((src_port, dst_port)) = p.ports else {
            if let Some(v) = self.translate_icmp_error(p, now, out) {
                return v;
            }
            if p.proto == packet::PROTO_ICMP && self.services.virtual_ips.binary_search(&p.dst).is_ok() {
                // smoltcp answers ping for the node's addresses; the node answers for its VIPs.
                return if p.echo_reply(self.services.node.mac.0) {
                    Verdict::Forward
                } else {
                    Verdict::Drop(DropReason::OtherAddress)
                };
            }
            return match () {
                _ if p.later_fragment && matches!(p.proto, PROTO_TCP | PROTO_UDP) => self.later_fragment(p, now, out),
                _ if for_node || p.dst.is_broadcast() || p.dst.is_multicast() => Verdict::Stack,
                _ => Verdict::Drop(DropReason::OtherAddress),
            };
        };
        let tuple = Tuple { src: p.src, dst: p.dst, src_port, dst_port, proto: p.proto };
        let secs = now.secs();
        let found = match self.conntrack.lookup(&tuple, secs) {
            Lookup::Live(slot, dir) => {
                let flow = self.conntrack.flow(slot);
                if self.services.keeps(&flow) {
                    Some((slot, dir, flow))
                } else {
                    // Its endpoint stopped serving: the packet starts a flow to a live one.
                    self.conntrack.remove(slot);
                    self.sync_removal(&flow, now);
                    self.counters.udp_flows_flushed += 1;
                    None
                }
            }
            Lookup::Expired(slot) => {
                // Its tuples are free for the flow this packet may start.
                self.conntrack.remove(slot);
                None
            }
            Lookup::Absent => None,
        };
        let Some((slot, dir, flow)) = found else {
            return self.untracked(p, for_node, (src_port, dst_port), now, out);
        };
        let reopens = p.tcp.is_some_and(|t| t.flags.syn && !t.flags.ack) && flow.state.is_closing();
        if dir == Direction::Original && reopens {
            // A new connection on the tuple of a closing one is a new flow, and passes every
            // check a first packet passes (the service, its source ranges and endpoints as they
            // are now).
            if flow.is_snat() {
                // The old flow keeps its SNAT tuple until TIME_WAIT ends; the new flow gets a
                // source port of its own, so the endpoint never sees a reused tuple it may still
                // hold in TIME_WAIT (PAWS drops).
                self.conntrack.detach_original(slot);
            } else {
                // Without SNAT the new flow's reply tuple is the old one's.
                self.conntrack.remove(slot);
            }
            return self.untracked(p, for_node, (src_port, dst_port), now, out);
        }
        if let Some(v) = self.ttl_expired(p, now, out) {
            return v;
        }
        if let Some(v) = self.judge(slot, dir, p, now) {
            return v;
        }
        self.sync_if_changed(slot, &flow, now);
        self.account(&flow, dir, p);
        // As the tuple the other side's packets come back with, reversed: to the endpoint, or
        // back to the client at the MAC its packets came from.
        match dir {
            Direction::Original => {
                self.forward(p, Rewrite::from(flow.reply().reversed()), None, flow.endpoint, now, out)
            }
            Direction::Reply => {
                let to = Rewrite::from(flow.original().reversed());
                self.forward(p, to, Some(flow.client_mac), flow.client, now, out)
            }
        }
    }

    /// A packet a standby gateway leaves to the active one: to a virtual IP or floating address,
    /// or to a service port of the node's own address.
    fn is_service_traffic(&self, p: &Ipv4Frame<'_>) -> bool {
        self.services.moves_with_role(p.dst)
            || p.ports.is_some_and(|(_, dst_port)| self.services.listener(p.proto, p.dst, dst_port).is_some())
    }

    /// A TCP or UDP packet of no tracked flow: the first of a new flow when it is for a service.
    fn untracked(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        for_node: bool,
        (src_port, dst_port): (u16, u16),
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        match self.services.listener(p.proto, p.dst, dst_port) {
            Some(listener) if for_node => self.new_flow(p, listener, src_port, dst_port, now, out),
            _ if for_node || p.dst.is_broadcast() || p.dst.is_multicast() => Verdict::Stack,
            _ if self.services.picks_up => {
                self.pick_up_reply(p, (src_port, dst_port), now, out).unwrap_or(Verdict::Drop(DropReason::OtherAddress))
            }
            _ => Verdict::Drop(DropReason::OtherAddress),
        }
    }

    /// Records a packet of the flow in `slot`; `Some` when the flow refuses it: a FIN or RST
    /// outside its sender's window is dropped, and an RST that is not at the sender's sequence
    /// passes unrecorded (see [`crate::conntrack::tcp::check`]).
    fn judge(&mut self, slot: usize, dir: Direction, p: &Ipv4Fields, now: Millis) -> Option<Verdict> {
        match self.conntrack.seen(slot, dir, p.tcp, now) {
            Check::InWindow => None,
            Check::ResetNotExact => {
                self.counters.resets_not_exact += 1;
                None
            }
            Check::OutOfWindow => Some(Verdict::Drop(DropReason::TcpOutOfWindow)),
        }
    }
}
