//! Time as the engine sees it: milliseconds since the gateway started, handed in by the caller.
//! The engine never reads a clock, so every behaviour can be replayed in a test.

/// Milliseconds since start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// Whole seconds since start-up, the resolution of connection-table deadlines.
    pub const fn secs(self) -> u32 {
        let s = self.0 / 1000;
        if s > u32::MAX as u64 { u32::MAX } else { s as u32 }
    }
}
