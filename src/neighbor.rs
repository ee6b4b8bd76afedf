//! The gateway's own neighbour (ARP) table for forwarded traffic.
//!
//! smoltcp keeps its neighbour cache private and fills it only from ARP aimed at its own
//! addresses, so the NAT path keeps this one: learned from every ARP frame on the wire,
//! pre-resolved for the endpoints at start, asked for (rate-limited) on a miss.

use core::net::Ipv4Addr;

use crate::time::Millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ip: Ipv4Addr,
    mac: [u8; 6],
    /// When the MAC was last confirmed; `None` while only asked for.
    learned: Option<Millis>,
    /// When we last sent an ARP request for `ip`.
    asked: Option<Millis>,
}

/// A table of `N` neighbours; when full, the entry least recently confirmed gives way.
pub struct Neighbors<const N: usize> {
    entries: heapless::Vec<Entry, N>,
    lifetime_ms: u64,
    retry_ms: u64,
}

impl<const N: usize> Neighbors<N> {
    pub const fn new(lifetime_ms: u64, retry_ms: u64) -> Self {
        Neighbors { entries: heapless::Vec::new(), lifetime_ms, retry_ms }
    }

    /// The MAC of `ip`, if learned and not older than the lifetime.
    pub fn lookup(&self, ip: Ipv4Addr, now: Millis) -> Option<[u8; 6]> {
        self.entries
            .iter()
            .find(|e| e.ip == ip)
            .filter(|e| e.learned.is_some_and(|t| now.0.saturating_sub(t.0) < self.lifetime_ms))
            .map(|e| e.mac)
    }

    /// Records what an ARP frame says: `ip` is at `mac`.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: [u8; 6], now: Millis) {
        let entry = Entry { ip, mac, learned: Some(now), asked: None };
        self.upsert(ip, |e| *e = Entry { asked: e.asked, ..entry });
    }

    /// Whether to send an ARP request for `ip` now: true at most once per retry interval. Also
    /// true when the entry is near the end of its lifetime, so that a live neighbour is confirmed
    /// before it would expire.
    pub fn should_ask(&mut self, ip: Ipv4Addr, now: Millis) -> bool {
        let (lifetime, retry) = (self.lifetime_ms, self.retry_ms);
        let mut ask = false;
        self.upsert(ip, |e| {
            let fresh = e.learned.is_some_and(|t| now.0.saturating_sub(t.0) < lifetime / 2);
            let waited = e.asked.is_none_or(|t| now.0.saturating_sub(t.0) >= retry);
            ask = !fresh && waited;
            if ask {
                e.asked = Some(now);
            }
        });
        ask
    }

    fn upsert(&mut self, ip: Ipv4Addr, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.ip == ip) {
            return f(e);
        }
        let fresh = Entry { ip, mac: [0; 6], learned: None, asked: None };
        if self.entries.is_full() {
            // Give way: the entry confirmed longest ago (or never).
            let oldest =
                self.entries.iter().enumerate().min_by_key(|(_, e)| e.learned.unwrap_or_default()).map(|(i, _)| i);
            if let Some(i) = oldest {
                self.entries.swap_remove(i);
            }
        }
        if self.entries.push(fresh).is_ok() {
            let last = self.entries.len() - 1;
            f(&mut self.entries[last]);
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);

    #[test]
    fn learns_and_forgets_after_lifetime() {
        let mut n = Neighbors::<2>::new(60_000, 1000);
        assert_eq!(n.lookup(A, Millis(0)), None);
        n.learn(A, [2, 0, 0, 0, 0, 1], Millis(0));
        assert_eq!(n.lookup(A, Millis(59_999)), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(n.lookup(A, Millis(60_000)), None);
    }

    #[test]
    fn asks_at_most_once_per_retry_interval() {
        let mut n = Neighbors::<2>::new(60_000, 1000);
        assert!(n.should_ask(A, Millis(0)));
        assert!(!n.should_ask(A, Millis(999)));
        assert!(n.should_ask(A, Millis(1000)));
        n.learn(A, [2, 0, 0, 0, 0, 1], Millis(1000));
        assert!(!n.should_ask(A, Millis(2000)), "fresh entry");
        assert!(n.should_ask(A, Millis(31_000)), "refresh before it expires");
    }

    #[test]
    fn full_table_replaces_the_stalest_entry() {
        let mut n = Neighbors::<2>::new(60_000, 1000);
        n.learn(A, [2, 0, 0, 0, 0, 1], Millis(10));
        n.learn(B, [2, 0, 0, 0, 0, 2], Millis(5));
        n.learn(C, [2, 0, 0, 0, 0, 3], Millis(20));
        assert_eq!(n.lookup(B, Millis(20)), None);
        assert!(n.lookup(A, Millis(20)).is_some() && n.lookup(C, Millis(20)).is_some());
    }
}
