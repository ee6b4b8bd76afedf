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

/// How long the loop's turns took (a turn: from waking up to waiting again), which bounds how
/// long a frame waits in the TAP's queue. Kept by the runner, shown by status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Turns {
    pub count: u64,
    /// The longest since start, in microseconds.
    pub longest_micros: u64,
    /// The most CPU time one turn used (the kernel's included: a TAP write runs the receiving
    /// side's network stack too): a long turn that used little was waiting for a CPU.
    pub longest_cpu_micros: u64,
    /// Turns longer than [`Turns::BUDGET_MICROS`].
    pub over_budget: u64,
    /// Frames that found the TAP's queue full while the loop was away, dropped by the kernel
    /// before the gateway could see them (since start, read once a second).
    pub queue_drops: u64,
}

impl Turns {
    /// What a turn should stay within: a frame behind it waits no longer than this.
    pub const BUDGET_MICROS: u64 = 1000;

    pub fn record(&mut self, micros: u64, cpu_micros: u64) {
        self.count += 1;
        self.longest_micros = self.longest_micros.max(micros);
        self.longest_cpu_micros = self.longest_cpu_micros.max(cpu_micros);
        self.over_budget += u64::from(micros > Self::BUDGET_MICROS);
    }
}
