//! The memory the board fixes, part by part: `--version` prints it and `tests/footprint.rs`
//! holds it against the board's budget. Only the node's own smoltcp sockets (health probes, a
//! few KiB each, as many as the config has checks) come on top.

use crate::board;
use crate::config::Config;
use crate::conntrack::{Flow, buckets_for};
use crate::engine::{Engine, Resources};

use super::control::Prepared;
use super::device::NatDevice;
use super::http;

/// A flow's slot plus its share of the index (both directions).
pub const fn bytes_per_flow() -> usize {
    size_of::<Flow>() + size_of::<u32>() * buckets_for(board::CONNTRACK_CAPACITY) / board::CONNTRACK_CAPACITY
}

/// Each part and its bytes.
pub fn parts() -> [(&'static str, usize); 6] {
    [
        ("conntrack", board::CONNTRACK_CAPACITY * bytes_per_flow()),
        ("engine tables", size_of::<Resources>()),
        ("engine", size_of::<Engine>()),
        ("TAP frame buffers", size_of::<NatDevice>()),
        ("HTTP buffers", http::static_bytes()),
        // The loop's config, the control thread's copy, and a reload being prepared.
        ("configs and a reload", 2 * size_of::<Config>() + size_of::<Prepared>()),
    ]
}

pub fn total() -> usize {
    parts().iter().map(|(_, bytes)| bytes).sum()
}
