//! Replay protection for one peer's run: the anti-replay window of IPsec (RFC 4303 section
//! 3.4.3). A message is taken once, and only if it is newer than the 64 before the newest.

/// The sequence numbers seen of one peer's run (`epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub epoch: u64,
    /// The highest sequence number taken.
    top: u64,
    /// Bit `i`: `top - i` was taken.
    seen: u64,
}

impl Window {
    /// The window of a run whose message `seq` was just taken.
    pub const fn starting_at(epoch: u64, seq: u64) -> Window {
        Window { epoch, top: seq, seen: 1 }
    }

    /// Takes `seq` if it was not taken before and is not too old to tell.
    pub fn take(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 1 } else { (self.seen << shift) | 1 };
            self.top = seq;
            return true;
        }
        let age = self.top - seq;
        if age >= 64 || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

#[cfg(test)]
mod test {
    use super::Window;

    #[test]
    fn each_number_is_taken_once_in_any_order_within_the_window() {
        let mut w = Window::starting_at(5, 100);
        assert!(!w.take(100));
        assert!(w.take(103));
        assert!(w.take(101));
        assert!(!w.take(101));
        assert!(w.take(102));
        assert!(!w.take(103));
        // 64 behind the top is too old to tell from a replay.
        assert!(w.take(200));
        assert!(w.take(137));
        assert!(!w.take(136));
        // A jump past the window forgets what it held.
        assert!(w.take(1000));
        assert!(!w.take(200));
        assert!(w.take(999));
    }
}
