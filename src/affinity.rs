//! ClientIP session affinity: which endpoint a client address was last sent to, per service.
//!
//! A set-associative table of fixed size: a key hashes (keyed at start, like conntrack) to a
//! set of the board's `affinityWays` slots; a full set gives up its entry that expires first. Lookups and updates
//! touch one set, so the cost stays flat however full the table is.

use core::net::Ipv4Addr;

use crate::board::AFFINITY_WAYS as WAYS;
use crate::hash::sip13;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    client: Ipv4Addr,
    service: u8,
    endpoint: u8,
    /// Seconds since start; 0 marks an empty slot.
    expires: u32,
}

const EMPTY: Entry = Entry { client: Ipv4Addr::UNSPECIFIED, service: 0, endpoint: 0, expires: 0 };

pub struct Affinity<const N: usize> {
    entries: [Entry; N],
    key: [u64; 2],
    evictions: u64,
}

impl<const N: usize> Affinity<N> {
    pub const fn new(key: [u64; 2]) -> Self {
        const { assert!(N.is_power_of_two() && N >= WAYS, "N must be a power of two, at least WAYS") };
        Affinity { entries: [EMPTY; N], key, evictions: 0 }
    }

    fn set(&self, service: u8, client: Ipv4Addr) -> core::ops::Range<usize> {
        let h = sip13(self.key, u32::from(client) as u64, service as u64) as usize;
        let first = h & (N - 1) & !(WAYS - 1);
        first..first + WAYS
    }

    /// The endpoint `client` is pinned to for `service`, if the pin has not expired.
    pub fn lookup(&self, service: u8, client: Ipv4Addr, now: u32) -> Option<u8> {
        self.entries[self.set(service, client)]
            .iter()
            .find(|e| e.expires > now && e.client == client && e.service == service)
            .map(|e| e.endpoint)
    }

    /// Pins `client` to `endpoint` for `service` until `timeout` seconds from `now`.
    pub fn pin(&mut self, service: u8, client: Ipv4Addr, endpoint: u8, now: u32, timeout: u32) {
        let range = self.set(service, client);
        let set = &mut self.entries[range];
        let entry = Entry { client, service, endpoint, expires: now.saturating_add(timeout).max(1) };
        let slot = match set.iter().position(|e| e.client == client && e.service == service && e.expires > now) {
            Some(i) => i,
            None => match set.iter().position(|e| e.expires <= now) {
                Some(i) => i,
                None => {
                    self.evictions += 1;
                    set.iter().enumerate().min_by_key(|(_, e)| e.expires).map_or(0, |(i, _)| i)
                }
            },
        };
        set[slot] = entry;
    }

    /// Forgets every pin (after a reload, when endpoint indices change meaning).
    pub fn clear(&mut self) {
        self.entries.fill(EMPTY);
    }

    /// Starts afresh with hash key `key`, in place.
    pub fn reset(&mut self, key: [u64; 2]) {
        self.clear();
        self.key = key;
        self.evictions = 0;
    }

    /// Live pins that were pushed out by newer ones in a full set.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn pins_per_client_and_service_until_the_timeout() {
        let mut t = Affinity::<64>::new([1, 2]);
        t.pin(0, A, 3, 100, 10);
        t.pin(0, B, 1, 100, 10);
        t.pin(1, A, 2, 100, 10);
        assert_eq!(t.lookup(0, A, 109), Some(3));
        assert_eq!(t.lookup(0, B, 109), Some(1));
        assert_eq!(t.lookup(1, A, 109), Some(2));
        assert_eq!(t.lookup(0, A, 110), None, "expired");
        t.pin(0, A, 4, 105, 10);
        assert_eq!(t.lookup(0, A, 114), Some(4), "a new pin replaces the old one");
    }

    #[test]
    fn a_full_set_gives_up_the_entry_that_expires_first() {
        let mut t = Affinity::<8>::new([1, 2]);
        for i in 0..8u8 {
            t.pin(0, Ipv4Addr::new(10, 0, 1, i), i, 0, 100 + i as u32);
        }
        t.pin(0, B, 9, 0, 500);
        assert_eq!(t.evictions(), 1);
        assert_eq!(t.lookup(0, Ipv4Addr::new(10, 0, 1, 0), 1), None);
        assert_eq!(t.lookup(0, B, 1), Some(9));
        assert_eq!(t.lookup(0, Ipv4Addr::new(10, 0, 1, 7), 1), Some(7));
    }

    #[test]
    fn a_secret_key_keeps_crafted_clients_from_pushing_out_a_pin() {
        // Clients crafted to share a victim's set under a key the attacker knows push the
        // victim's pin out; under a secret key they spread over the table and the pin stays.
        let known = [0, 0];
        let probe = Affinity::<1024>::new(known);
        let crafted: heapless::Vec<Ipv4Addr, 16> = (1u32..)
            .map(|i| Ipv4Addr::from(0x0a01_0000 + i))
            .filter(|&c| probe.set(0, c) == probe.set(0, A))
            .take(16)
            .collect();
        let pin_survives = |key: [u64; 2]| {
            let mut t = Affinity::<1024>::new(key);
            t.pin(0, A, 3, 0, 100);
            for &c in &crafted {
                t.pin(0, c, 1, 0, 200);
            }
            t.lookup(0, A, 1) == Some(3)
        };
        assert!(!pin_survives(known), "the crafted clients fill the victim's set");
        assert!(pin_survives([0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321]));
    }
}
