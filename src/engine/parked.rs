//! Frames waiting for their next hop to answer ARP: one frame a slot, fixed slots, so a burst
//! towards an unresolved endpoint costs a bounded amount of memory and never blocks other flows.

use core::net::Ipv4Addr;

use crate::time::Millis;

/// Largest frame a slot holds: an untagged Ethernet frame at the link's MTU.
pub const MAX_FRAME: usize = super::packet::ETH_HEADER + super::packet::MTU;

struct Slot {
    next_hop: Ipv4Addr,
    since: Millis,
    len: usize,
    frame: [u8; MAX_FRAME],
}

pub struct Parked<const N: usize> {
    slots: [Option<Slot>; N],
}

impl<const N: usize> Parked<N> {
    pub const fn new() -> Self {
        Parked { slots: [const { None }; N] }
    }

    /// Holds a copy of `frame` until `next_hop` resolves. False when no slot is free or the
    /// frame is too large.
    pub fn park(&mut self, next_hop: Ipv4Addr, frame: &[u8], now: Millis) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) else { return false };
        let mut slot = Slot { next_hop, since: now, len: frame.len(), frame: [0; MAX_FRAME] };
        slot.frame[..frame.len()].copy_from_slice(frame);
        *free = Some(slot);
        true
    }

    /// Frames waiting now.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Takes out one parked frame that is ready: `resolve` gives its next hop's MAC. Returns
    /// the frame's length in `out` and the MAC, or `Err(())` for a frame that waited longer
    /// than `max_wait_ms` and was discarded.
    pub fn take_ready(
        &mut self,
        now: Millis,
        max_wait_ms: u64,
        mut resolve: impl FnMut(Ipv4Addr) -> Option<[u8; 6]>,
        out: &mut [u8],
    ) -> Option<Result<(usize, [u8; 6]), ()>> {
        for s in self.slots.iter_mut() {
            let Some(slot) = s else { continue };
            if let Some(mac) = resolve(slot.next_hop) {
                let len = slot.len.min(out.len());
                out[..len].copy_from_slice(&slot.frame[..len]);
                *s = None;
                return Some(Ok((len, mac)));
            }
            if now.0.saturating_sub(slot.since.0) > max_wait_ms {
                *s = None;
                return Some(Err(()));
            }
        }
        None
    }
}

impl<const N: usize> Default for Parked<N> {
    fn default() -> Self {
        Self::new()
    }
}
