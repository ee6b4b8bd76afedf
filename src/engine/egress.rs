//! Where a translated frame goes: its next hop's MAC (or a wait for ARP), the later fragments
//! of a datagram, and the background ARP refresh of the endpoints' next hops.

use core::net::Ipv4Addr;

use super::fragments::{Key as FragmentKey, Translation};
use super::packet::{Ipv4Frame, Rewrite};
use super::{DropReason, Engine, Role, Verdict, reply};
use crate::board;
use crate::time::Millis;

/// A frame for smoltcp, which takes whole packets with their checksums.
pub(super) fn to_stack(p: &mut Ipv4Frame<'_>) -> Verdict {
    if p.offload.segment_size > 0 {
        return Verdict::Drop(DropReason::Oversized);
    }
    if p.offload.partial_checksum {
        p.complete_checksum();
    }
    Verdict::Stack
}

/// How long a frame may wait for ARP before it is dropped as `neighbor_missing`.
pub(super) const PARK_MAX_MS: u64 = 3 * board::ARP_RETRY_MILLIS;

impl Engine<'_> {
    /// Where a packet for `ip` goes first: `ip` itself on a node subnet, else the gateway.
    pub(super) fn next_hop(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.services.node.address_on_link(ip).is_some() { Some(ip) } else { self.services.node.gateway }
    }

    /// The node's address to answer `peer` from.
    pub(super) fn address_for(&self, peer: Ipv4Addr) -> Ipv4Addr {
        self.services.node.address_on_link(peer).unwrap_or(self.services.node.addresses[0].address())
    }

    /// Rewrites `p` and addresses it to `dst_mac`, or to the MAC of `to_ip`'s next hop.
    pub(super) fn forward(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        to: Rewrite,
        dst_mac: Option<[u8; 6]>,
        to_ip: Ipv4Addr,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        p.rewrite(to);
        if p.fragment {
            // The first fragment: the ones after it will need the same addresses.
            let translation = Translation { src: to.src, dst: to.dst, dst_mac, to_ip };
            let secs = now.secs();
            self.fragments.record(FragmentKey::of(p), translation, secs, secs.saturating_add(board::FRAGMENT_SECONDS));
        }
        self.send_to(p, dst_mac, to_ip, now, out)
    }

    /// A fragment after the first: it goes where the first fragment of its datagram went.
    pub(super) fn later_fragment(&mut self, p: &mut Ipv4Frame<'_>, now: Millis, out: &mut [u8]) -> Verdict {
        let Some(t) = self.fragments.lookup(&FragmentKey::of(p), now.secs()) else {
            return Verdict::Drop(DropReason::Fragment);
        };
        if let Some(v) = self.ttl_expired(p, now, out) {
            return v;
        }
        p.rewrite_addresses(t.src, t.dst);
        self.send_to(p, t.dst_mac, t.to_ip, now, out)
    }

    /// Addresses a translated `p` to `dst_mac`, or to the MAC of `to_ip`'s next hop (held
    /// back while that is being resolved).
    pub(super) fn send_to(
        &mut self,
        p: &mut Ipv4Frame<'_>,
        dst_mac: Option<[u8; 6]>,
        to_ip: Ipv4Addr,
        now: Millis,
        out: &mut [u8],
    ) -> Verdict {
        let our_mac = self.services.node.mac.0;
        let mac = match dst_mac {
            Some(mac) => mac,
            None => {
                let Some(hop) = self.next_hop(to_ip) else { return Verdict::Drop(DropReason::NoRoute) };
                match self.neighbors.lookup(hop, now) {
                    Some(mac) => mac,
                    None => return self.park(p, hop, now, out),
                }
            }
        };
        p.set_macs(our_mac, mac);
        Verdict::Forward
    }

    /// Holds `p` until `hop` answers ARP. It leaves later without its offload, so a partial
    /// checksum is finished now (a super-frame is too large to hold and is dropped).
    pub(super) fn park(&mut self, p: &mut Ipv4Frame<'_>, hop: Ipv4Addr, now: Millis, out: &mut [u8]) -> Verdict {
        if p.offload.partial_checksum {
            p.complete_checksum();
        }
        let ask = self.arp_request(hop, now, out);
        if self.parked.park(hop, p.bytes(), now) {
            Verdict::Parked(ask)
        } else {
            Verdict::Reply { len: ask, dropped: Some(DropReason::NeighborMissing) }
        }
    }

    /// An ARP request for `ip` in `out`, unless one went out too recently (then 0).
    pub(super) fn arp_request(&mut self, ip: Ipv4Addr, now: Millis, out: &mut [u8]) -> usize {
        if !self.neighbors.should_ask(ip, now) {
            return 0;
        }
        reply::arp_request(self.services.node.mac.0, self.address_for(ip), ip, out)
    }

    /// The next gratuitous ARP of a gateway that became active: each floating address and
    /// virtual IP in turn, the board's count of rounds, spaced (as keepalived repeats its own),
    /// so that the segment's caches move to this gateway's MAC.
    pub(super) fn announce(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        let (rounds, next, at) = self.announce;
        if rounds == 0 || now < next || self.role != Role::Active {
            return None;
        }
        let services = &*self.services;
        let mut addresses = services.floating().chain(services.virtual_ips.iter().copied());
        let Some(ip) = addresses.nth(at) else {
            // A round is through: the next one after the interval.
            let later = Millis(now.0 + board::GRATUITOUS_ARP_INTERVAL_MILLIS);
            self.announce = (rounds - 1, later, 0);
            return None;
        };
        self.announce.2 += 1;
        Some(reply::gratuitous_arp(services.node.mac.0, ip, out))
    }

    /// Keeps the MACs of every endpoint's next hop (and the gateway) fresh, so that new flows
    /// rarely wait for ARP. Walks the endpoints at most once per the board's `neighborRefreshMillis`.
    pub(super) fn refresh_next_hop(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        if self.last_resolve.is_some_and(|t| now.0.saturating_sub(t.0) < board::NEIGHBOR_REFRESH_MILLIS) {
            return None;
        }
        loop {
            let (s, e) = self.resolve_cursor;
            let target = match self.services.list.get(s) {
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
                    return self.services.node.gateway.map(|gw| self.arp_request(gw, now, out)).filter(|&len| len > 0);
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
