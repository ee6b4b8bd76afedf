//! A token bucket for the answers the engine makes up itself (TCP RST, ICMP port unreachable and
//! time exceeded): a flood of packets that each earn an answer must not turn the gateway into
//! a reflector, as Linux's `icmp_ratelimit` keeps a host from becoming one.

use crate::time::Millis;

pub struct RateLimit {
    /// Answers per second, and the most that may go at once.
    rate: u32,
    burst: u32,
    /// Thousandths of an answer in the bucket.
    tokens: u64,
    last: Millis,
}

impl RateLimit {
    pub const fn new(rate: u32, burst: u32) -> RateLimit {
        RateLimit { rate, burst, tokens: burst as u64 * 1000, last: Millis(0) }
    }

    /// Takes one answer's token at `now`; false when the bucket is empty.
    pub fn allow(&mut self, now: Millis) -> bool {
        let elapsed = now.0.saturating_sub(self.last.0);
        self.last = Millis(self.last.0.max(now.0));
        let refill = elapsed.saturating_mul(u64::from(self.rate));
        self.tokens = self.tokens.saturating_add(refill).min(u64::from(self.burst) * 1000);
        if self.tokens < 1000 {
            return false;
        }
        self.tokens -= 1000;
        true
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let mut r = RateLimit::new(100, 5);
        let allowed = (0..20).filter(|_| r.allow(Millis(0))).count();
        assert_eq!(allowed, 5, "the burst");
        assert!(!r.allow(Millis(9)), "one token takes 10 ms");
        assert!(r.allow(Millis(10)));
        let in_a_second = (11..1011).filter(|&t| r.allow(Millis(t))).count();
        assert_eq!(in_a_second, 100);
        assert!(!r.allow(Millis(5)), "time going back adds nothing");
    }
}
