//! Fragments of translated datagrams. The first fragment carries the ports: it goes through its
//! flow's translation like any packet, and the translation is remembered here under the
//! datagram's (source, destination, protocol, IP id). The fragments after it carry no ports and
//! get the same addresses from this table. Fixed slots; a datagram whose first fragment has not
//! passed (or passed too long ago) has its later fragments dropped and counted.

use core::net::Ipv4Addr;

use super::packet::Ipv4Fields;

/// What ties the fragments of one datagram together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ident: u16,
}

impl Key {
    /// The datagram fragment `f` belongs to.
    pub fn of(f: &Ipv4Fields) -> Key {
        Key { src: f.src, dst: f.dst, proto: f.proto, ident: f.ident }
    }
}

/// Where the fragments of one datagram go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// The MAC to send to, when known from the flow (replies to the client).
    pub dst_mac: Option<[u8; 6]>,
    /// Otherwise, the address whose next hop to send to.
    pub to_ip: Ipv4Addr,
}

#[derive(Debug, Clone, Copy)]
struct Track {
    key: Key,
    translation: Translation,
    expires: u32,
}

pub struct Fragments<const N: usize> {
    tracks: [Option<Track>; N],
    /// The slot a new datagram takes when none is free: the oldest, round robin.
    next: usize,
}

impl<const N: usize> Fragments<N> {
    pub const fn new() -> Self {
        Fragments { tracks: [None; N], next: 0 }
    }

    /// Remembers the translation of the datagram `key` until `expires` (seconds).
    pub fn record(&mut self, key: Key, translation: Translation, now: u32, expires: u32) {
        let track = Some(Track { key, translation, expires });
        let slot = self
            .tracks
            .iter()
            .position(|t| t.is_some_and(|t| t.key == key))
            .or_else(|| self.tracks.iter().position(|t| t.is_none_or(|t| t.expires <= now)));
        let slot = slot.unwrap_or_else(|| {
            let s = self.next % N.max(1);
            self.next = s + 1;
            s
        });
        if let Some(t) = self.tracks.get_mut(slot) {
            *t = track;
        }
    }

    /// The translation of the datagram `key`, if its first fragment passed and has not expired.
    pub fn lookup(&self, key: &Key, now: u32) -> Option<Translation> {
        self.tracks.iter().flatten().find(|t| t.key == *key && t.expires > now).map(|t| t.translation)
    }
}

impl<const N: usize> Default for Fragments<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn key(ident: u16) -> Key {
        Key { src: Ipv4Addr::new(10, 0, 0, 1), dst: Ipv4Addr::new(10, 0, 0, 2), proto: 17, ident }
    }

    const TO: Translation = Translation {
        src: Ipv4Addr::new(1, 1, 1, 1),
        dst: Ipv4Addr::new(2, 2, 2, 2),
        dst_mac: None,
        to_ip: Ipv4Addr::new(2, 2, 2, 2),
    };

    #[test]
    fn remembers_until_expiry_and_reuses_the_oldest_slot() {
        let mut f = Fragments::<2>::new();
        f.record(key(1), TO, 0, 30);
        assert_eq!(f.lookup(&key(1), 29), Some(TO));
        assert_eq!(f.lookup(&key(1), 30), None);
        assert_eq!(f.lookup(&key(2), 0), None);
        f.record(key(2), TO, 0, 30);
        f.record(key(3), TO, 0, 30);
        assert_eq!([1, 2, 3].map(|i| f.lookup(&key(i), 1).is_some()), [false, true, true], "the oldest gave way");
    }
}
