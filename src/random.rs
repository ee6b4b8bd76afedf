//! A small pseudo-random sequence, seeded from the kernel's random source at start: for choices
//! a peer must not predict (SNAT ports, the node's own source ports), not for keys.

/// xorshift64*.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub const fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value of `range`, near enough to uniform for ranges of ports.
    pub fn in_range(&mut self, range: core::ops::RangeInclusive<u16>) -> u16 {
        let span = u64::from(range.end().saturating_sub(*range.start())) + 1;
        range.start() + (self.next_u64() % span) as u16
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn stays_in_its_range_and_covers_it() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.in_range(61000..=61009);
            seen[usize::from(v - 61000)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }
}
