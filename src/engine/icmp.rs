//! ICMP errors about tracked flows, translated back; the answers the engine makes up (RST,
//! port unreachable, time exceeded), within the rate limit.

use super::packet::{Ipv4Frame, PROTO_TCP, Rewrite, icmp};
use super::{DropReason, Engine, Verdict, reply};
use crate::conntrack::Direction;
use crate::time::Millis;

impl Engine<'_> {
    /// Translates an ICMP error about a packet of a tracked flow, so that it reaches the host
    /// that sent the packet, about the packet as that host sent it (PMTU discovery works
    /// through the gateway). `None`: not such an error.
    pub(super) fn translate_icmp_error(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        now: Millis,
        out: &mut [u8],
    ) -> Option<Verdict> {
        let q = p.quoted()?;
        // The quoted packet left the gateway translated; the reverse of what it says is one of
        // its flow's tuples.
        let (slot, dir) = self.conntrack.lookup(&q.tuple.reversed(), now.secs()).live()?;
        let flow = self.conntrack.flow(slot);
        // As nf_conntrack takes an error as related: sent to the host that sent the quoted
        // packet, and intact (it leaves with a checksum computed anew, so it is checked first).
        if p.dst != q.tuple.src || !p.icmp_checksum_ok() {
            return Some(Verdict::Drop(DropReason::BadIcmpError));
        }
        if p.ttl <= 1 {
            // No ICMP error is ever sent about an ICMP error (RFC 1122 3.2.2).
            return Some(Verdict::Drop(DropReason::TtlExceeded));
        }
        Some(match dir {
            // About a reply on its way to the client: tell the endpoint, about what it sent.
            Direction::Original => {
                let outer_src = if flow.is_snat() { flow.source } else { p.src };
                let inner = Rewrite::from(flow.reply());
                p.rewrite_icmp_error(&q, outer_src, flow.endpoint, inner);
                self.send_to(p, None, flow.endpoint, now, out)
            }
            // About a packet on its way to the endpoint: tell the client, about what it sent.
            Direction::Reply => {
                let inner = Rewrite::from(flow.original());
                p.rewrite_icmp_error(&q, flow.service_ip, flow.client, inner);
                self.send_to(p, Some(flow.client_mac), flow.client, now, out)
            }
        })
    }

    /// Answers a packet for a service without endpoints: RST for TCP, port unreachable for UDP.
    pub(super) fn reject(&mut self, p: &Ipv4Frame<'_>, now: Millis, out: &mut [u8]) -> Verdict {
        let mac = self.services.node.mac.0;
        self.answer(DropReason::NoEndpoint, now, || match p.proto {
            PROTO_TCP => reply::tcp_reset(p, mac, out),
            _ => reply::icmp_error(p, icmp::DESTINATION_UNREACHABLE, icmp::PORT_UNREACHABLE, p.dst, mac, out),
        })
    }

    /// A packet that would leave with TTL 0 is dropped and answered with ICMP time exceeded.
    pub(super) fn ttl_expired(&mut self, p: &Ipv4Frame<'_>, now: Millis, out: &mut [u8]) -> Option<Verdict> {
        if p.ttl > 1 {
            return None;
        }
        let (from, mac) = (self.address_for(p.src), self.services.node.mac.0);
        Some(self.answer(DropReason::TtlExceeded, now, || reply::icmp_error(p, icmp::TIME_EXCEEDED, 0, from, mac, out)))
    }

    /// A frame dropped for `reason` and answered with the frame `build` writes, when the rate
    /// limit lets an answer go now (else dropped unanswered, and the refusal counted).
    fn answer(&mut self, reason: DropReason, now: Millis, build: impl FnOnce() -> usize) -> Verdict {
        if !self.replies.allow(now) {
            self.counters.replies_suppressed += 1;
            return Verdict::Drop(reason);
        }
        Verdict::Reply { len: build(), dropped: Some(reason) }
    }
}
