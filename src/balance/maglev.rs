//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! Each endpoint fills the lookup table in the order of its own permutation of the slots; a flow
//! picks `table[hash(flow) % M]`. The hash is unkeyed ([`STABLE_KEY`]) so that every gateway
//! with the same config picks the same endpoint for the same flow, and removing an endpoint moves
//! only the flows that were on it (plus about M/100N others for table balance).

use core::net::Ipv4Addr;

use crate::hash::{STABLE_KEY, sip13};

/// Marks a slot no endpoint has taken (only when there are no endpoints).
const EMPTY: u8 = u8::MAX;

/// A lookup table of `M` slots (prime) over at most 255 endpoints.
pub struct Maglev<const M: usize> {
    table: [u8; M],
    endpoints: usize,
    /// Per endpoint index: has slots.
    taking: [bool; 255],
}

impl<const M: usize> Default for Maglev<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const M: usize> Maglev<M> {
    pub const fn new() -> Self {
        Maglev { table: [EMPTY; M], endpoints: 0, taking: [false; 255] }
    }

    /// Rebuilds the table for `endpoints` (identified by address; endpoint i gets a share of
    /// the slots proportional to `weights[i]`, 0 leaves it out). `next` is scratch space, one
    /// entry per endpoint.
    pub fn build(&mut self, endpoints: &[Ipv4Addr], weights: &[u8], next: &mut [u32]) {
        self.table.fill(EMPTY);
        let n = endpoints.len().min(weights.len()).min(next.len()).min(EMPTY as usize);
        self.taking = [false; 255];
        for (taking, &w) in self.taking.iter_mut().zip(&weights[..n]) {
            *taking = w > 0;
        }
        self.endpoints = weights[..n].iter().filter(|&&w| w > 0).count();
        if self.endpoints == 0 || M < 2 {
            return;
        }
        let quota = quotas::<M>(&weights[..n]);
        next[..n].fill(0);
        let m = M as u64;
        let perm = |i: usize, j: u32| {
            let id = u32::from(endpoints[i]) as u64;
            let offset = sip13(STABLE_KEY, id, 1) % m;
            let skip = sip13(STABLE_KEY, id, 2) % (m - 1) + 1;
            ((offset + skip * j as u64) % m) as usize
        };
        // Turn by turn, each endpoint with slots still due takes its next preferred free one,
        // as in Maglev; the quotas (which sum to M) make the shares follow the weights.
        let mut taken = [0u16; 255];
        let mut filled = 0;
        while filled < M {
            for i in 0..n {
                if taken[i] >= quota[i] {
                    continue;
                }
                // The permutation visits every slot once, so a free one is found.
                let mut c = perm(i, next[i]);
                while self.table[c] != EMPTY {
                    next[i] += 1;
                    c = perm(i, next[i]);
                }
                self.table[c] = i as u8;
                next[i] += 1;
                taken[i] += 1;
                filled += 1;
            }
        }
    }

    /// The endpoint index for a flow hash, or `None` when there are no endpoints.
    pub fn pick(&self, flow_hash: u64) -> Option<usize> {
        match self.table.get((flow_hash % M as u64) as usize) {
            Some(&i) if i != EMPTY => Some(i as usize),
            _ => None,
        }
    }

    /// How many endpoints have slots.
    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Whether endpoint `i` has slots, that is, takes new flows.
    pub fn takes(&self, i: usize) -> bool {
        self.taking.get(i).copied().unwrap_or(false)
    }
}

/// Slots per endpoint: one for each endpoint with a weight (so that every endpoint counted as
/// serving has a share), the rest in proportion to the weights, largest remainders first (ties
/// to the lower index). The quotas sum to `M`; `M` is at least ten times the endpoints.
fn quotas<const M: usize>(weights: &[u8]) -> [u16; 255] {
    let mut quota = [0u16; 255];
    let mut remainder = [0u64; 255];
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let weighted = weights.iter().filter(|&&w| w > 0).count();
    let rest = (M - weighted) as u64;
    let mut given = weighted;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0 {
            let share = rest * u64::from(w);
            quota[i] = 1 + (share / total) as u16;
            remainder[i] = share % total;
            given += (share / total) as usize;
        }
    }
    for _ in given..M {
        let mut best = 0;
        for i in 0..weights.len() {
            if weights[i] > 0 && (weights[best] == 0 || remainder[i] > remainder[best]) {
                best = i;
            }
        }
        quota[best] += 1;
        remainder[best] = 0;
    }
    quota
}

/// The balancing hash of a flow: the same on every gateway.
pub fn flow_hash(src: Ipv4Addr, src_port: u16, dst: Ipv4Addr, dst_port: u16, proto: u8) -> u64 {
    let ips = (u32::from(src) as u64) << 32 | u32::from(dst) as u64;
    sip13(STABLE_KEY, ips, (src_port as u64) << 32 | (dst_port as u64) << 16 | proto as u64)
}

#[cfg(test)]
mod test {
    use super::*;

    const M: usize = 4093;

    fn eps(n: u8) -> heapless::Vec<Ipv4Addr, 16> {
        (0..n).map(|i| Ipv4Addr::new(10, 77, 0, 11 + i)).collect()
    }

    fn build(endpoints: &[Ipv4Addr], weights: &[u8]) -> Maglev<M> {
        let mut m = Maglev::new();
        m.build(endpoints, weights, &mut [0; 16]);
        m
    }

    fn shares(m: &Maglev<M>, n: usize) -> [usize; 16] {
        let mut s = [0; 16];
        for slot in 0..M as u64 {
            s[m.pick(slot).unwrap()] += 1;
        }
        assert!(s[n..].iter().all(|&c| c == 0));
        s
    }

    #[test]
    fn empty_table_picks_nothing() {
        assert_eq!(build(&[], &[]).pick(7), None);
        assert_eq!(build(&eps(2), &[0, 0]).pick(7), None);
    }

    #[test]
    fn equal_weights_share_the_table_evenly() {
        let s = shares(&build(&eps(3), &[1; 3]), 3);
        for c in &s[..3] {
            assert!(c.abs_diff(M / 3) <= 2, "{s:?}");
        }
    }

    #[test]
    fn removing_an_endpoint_moves_little_else() {
        let all = eps(5);
        let before = build(&all, &[1; 5]);
        let after = build(&all, &[1, 1, 0, 1, 1]);
        let (mut moved_others, mut total) = (0, 0);
        for h in 0..100_000u64 {
            let hash = flow_hash(Ipv4Addr::from(h as u32), h as u16, Ipv4Addr::new(10, 77, 0, 1), 30080, 6);
            let (b, a) = (before.pick(hash).unwrap(), after.pick(hash).unwrap());
            assert_ne!(a, 2);
            if b != 2 {
                total += 1;
                moved_others += usize::from(a != b);
            }
        }
        // Maglev's promise is "minimal disruption", not zero: a few percent of other flows move.
        let fraction = moved_others as f64 / total as f64;
        extern crate std;
        std::println!(
            "5 endpoints, one removed: {:.2} % of the other endpoints' 100,000 flows moved",
            fraction * 100.0
        );
        assert!(fraction < 0.05, "{fraction}");
    }

    #[test]
    fn weights_shift_the_share() {
        let s = shares(&build(&eps(2), &[3, 1]), 2);
        let ratio = s[0] as f64 / M as f64;
        extern crate std;
        std::println!("weights 3:1 give the first endpoint {:.2} % of the table", ratio * 100.0);
        assert!((ratio - 0.75).abs() < 0.02, "{s:?}");
    }

    #[test]
    fn shares_follow_the_weights_for_every_weight_set() {
        let mut rng = crate::random::Rng::new(99);
        let mut sets: heapless::Vec<heapless::Vec<u8, 64>, 16> = heapless::Vec::new();
        for (n, w) in [(10, 255u8), (20, 255), (64, 255), (64, 1), (3, 7)] {
            let _ = sets.push((0..n).map(|_| w).collect());
        }
        let _ = sets.push([1, 255, 128, 2, 200].into_iter().collect());
        let _ = sets.push((0..64).map(|i| if i == 0 { 1 } else { 255 }).collect());
        for _ in 0..8 {
            let n = rng.in_range(1..=64) as usize;
            let _ = sets.push((0..n).map(|_| rng.in_range(0..=255) as u8).collect());
        }
        let addrs: heapless::Vec<Ipv4Addr, 64> = (0..64).map(|i| Ipv4Addr::new(10, 77, 1, i)).collect();
        for weights in &sets {
            let n = weights.len();
            let mut m: Maglev<M> = Maglev::new();
            m.build(&addrs[..n], weights, &mut [0; 64]);
            let mut slots = [0usize; 64];
            for slot in 0..M as u64 {
                if let Some(i) = m.pick(slot) {
                    slots[i] += 1;
                }
            }
            let total: u32 = weights.iter().map(|&w| u32::from(w)).sum();
            for (i, &w) in weights.iter().enumerate() {
                let want = if total == 0 { 0.0 } else { f64::from(w) / f64::from(total) };
                let got = slots[i] as f64 / M as f64;
                assert!((got - want).abs() <= 0.01, "weights {weights:?}: endpoint {i} has {got}, not {want}");
                assert_eq!(m.takes(i), w > 0);
                assert_eq!(slots[i] > 0, w > 0, "weights {weights:?}: endpoint {i} serves without slots");
            }
        }
    }

    #[test]
    fn same_endpoints_give_the_same_table_in_any_build() {
        let a = build(&eps(4), &[1; 4]);
        let b = build(&eps(4), &[1; 4]);
        assert!(a.table == b.table);
        // Pinned: a gateway of a later release must pick as this one does.
        let picks: heapless::Vec<usize, 8> = (0..8)
            .map(|p| {
                a.pick(flow_hash(Ipv4Addr::new(10, 77, 0, 100), 40000 + p, Ipv4Addr::new(10, 77, 0, 1), 30080, 6))
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [2, 3, 2, 3, 2, 2, 2, 2]);
    }
}
