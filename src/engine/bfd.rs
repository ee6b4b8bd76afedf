//! BFD on the node's addresses: control packets in (TTL 255, checksum, a session's peer and
//! discriminators), each session's packets out, and the administrative state that tells the
//! router this gateway cannot serve (no service has a serving endpoint) or is leaving.

use core::net::Ipv4Addr;

use super::packet::{self, Ipv4Frame};
use super::{DropReason, Engine, Verdict, checksum, reply};
use crate::bfd::wire::{self, Control};
use crate::bfd::{BfdDrop, PORT, Session};
use crate::board;
use crate::config::Config;
use crate::random::Rng;
use crate::time::Millis;

/// A single-hop packet must arrive with the TTL it was sent with (RFC 5881 section 5).
const TTL: u8 = 255;
/// The first of the sessions' source ports (RFC 5881 section 4: 49152-65535).
const FIRST_SOURCE_PORT: u16 = 49152;

pub(super) type Sessions = heapless::Vec<Session, { board::MAX_BFD_SESSIONS }>;

/// The sessions of `config` for `node`, down, each from the node's address on its peer's link,
/// with a discriminator drawn from `rng`.
pub(super) fn sessions(config: &Config, node: &crate::config::Node, rng: &mut Rng) -> Sessions {
    let mut out = Sessions::new();
    for (i, s) in config.bfd.sessions.iter().enumerate() {
        let local = node.address_on_link(s.peer).unwrap_or(Ipv4Addr::UNSPECIFIED);
        let _ = out.push(Session::new(s, local, FIRST_SOURCE_PORT + i as u16, rng.next_u64() as u32));
    }
    out
}

impl Engine<'_> {
    /// A UDP datagram to port 3784 of a node address: a control packet for one of the sessions.
    pub(super) fn bfd_receive(&mut self, p: &Ipv4Frame<'_>, now: Millis, out: &mut [u8]) -> Verdict {
        match self.bfd_take(p, now) {
            // A poll or a change of state is answered at once, the rest in its time.
            Ok(i) => self.bfd_send(i, now, out).map_or(Verdict::Consumed, |len| Verdict::Reply { len, dropped: None }),
            Err(reason) => {
                self.bfd_dropped[reason as usize] += 1;
                Verdict::Drop(DropReason::Bfd)
            }
        }
    }

    /// Checks `p` and hands it to its session; the session's index.
    fn bfd_take(&mut self, p: &Ipv4Frame<'_>, now: Millis) -> Result<usize, BfdDrop> {
        let bytes = p.bytes();
        let udp = &bytes[p.l4..p.end];
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp_len < 8 || udp_len > udp.len() {
            return Err(BfdDrop::BadLength);
        }
        let udp = &udp[..udp_len];
        let sum = checksum::pseudo_header(p.src.octets(), p.dst.octets(), packet::PROTO_UDP, udp_len as u16)
            + checksum::sum(udp);
        if !p.offload.partial_checksum && udp[6..8] != [0, 0] && checksum::finish(sum) != 0 {
            return Err(BfdDrop::BadChecksum);
        }
        if p.ttl != TTL {
            return Err(BfdDrop::BadTtl);
        }
        let c = Control::parse(&udp[8..])?;
        let i = if c.your_disc != 0 {
            let i = self.bfd.iter().position(|s| s.local_disc == c.your_disc).ok_or(BfdDrop::BadDiscriminator)?;
            if self.bfd[i].peer != p.src {
                return Err(BfdDrop::BadDiscriminator);
            }
            i
        } else {
            self.bfd.iter().position(|s| s.peer == p.src).ok_or(BfdDrop::UnknownPeer)?
        };
        let session = &mut self.bfd[i];
        session.peer_mac = Some(packet::src_mac(bytes));
        session.receive(&c, now);
        Ok(i)
    }

    /// Session `i`'s packet, if one is due, written to `out`.
    fn bfd_send(&mut self, i: usize, now: Millis, out: &mut [u8]) -> Option<usize> {
        let (rng, s) = (&mut self.rng, &mut self.bfd[i]);
        let c = s.transmit(now, || rng.next_u64() as u32)?;
        let mut payload = [0u8; wire::LEN];
        c.emit(&mut payload);
        // transmit sends only once the peer's MAC is known.
        let macs = (self.services.node.mac.0, s.peer_mac?);
        Some(reply::udp_datagram(macs, (s.local, s.source_port), (s.peer, PORT), TTL, &payload, out))
    }

    /// The next control packet due, of any session.
    pub(super) fn bfd_output(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        (0..self.bfd.len()).find_map(|i| self.bfd_send(i, now, out))
    }

    /// The sessions' timers, and their administrative state: down while the gateway leaves or
    /// no service has an endpoint taking new flows (the router should send it nothing).
    pub(super) fn bfd_housekeeping(&mut self, now: Millis) {
        if self.bfd.is_empty() {
            return;
        }
        let serving = self.services.list.iter().any(|s| s.maglev.endpoints() > 0);
        let down = self.leaving || !serving;
        for s in &mut self.bfd {
            s.tick(now);
            s.set_admin_down(down, now);
        }
    }

    /// The gateway is stopping: its sessions go AdminDown now, so the router withdraws it
    /// while it still forwards.
    pub fn bfd_leave(&mut self, now: Millis) {
        self.leaving = true;
        self.bfd_housekeeping(now);
    }

    pub fn bfd_sessions(&self) -> &[Session] {
        &self.bfd
    }

    pub fn bfd_dropped(&self, reason: BfdDrop) -> u64 {
        self.bfd_dropped[reason as usize]
    }

    /// When a session next has a packet to send or a timer to look at.
    pub fn bfd_next_deadline(&self) -> Option<Millis> {
        self.bfd.iter().filter_map(Session::next_deadline).min()
    }
}
