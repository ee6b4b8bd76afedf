//! What the board's tables cost: a flow's bytes, and everything static against the board's RAM
//! budget. CI runs this for every board (`NODEGATE_BOARD`).

use nodegate::board;
use nodegate::conntrack::{Flow, buckets_for};
use nodegate::engine::Engine;
use nodegate::host::http;

/// A flow's slot plus its share of the index (both directions).
fn bytes_per_flow() -> usize {
    std::mem::size_of::<Flow>()
        + std::mem::size_of::<u32>() * buckets_for(board::CONNTRACK_CAPACITY) / board::CONNTRACK_CAPACITY
}

#[test]
fn a_flow_takes_at_most_64_bytes_both_directions_included() {
    println!(
        "{} bytes per flow ({} the flow, the rest its index slots)",
        bytes_per_flow(),
        std::mem::size_of::<Flow>()
    );
    assert!(bytes_per_flow() <= 64, "{}", bytes_per_flow());
}

#[test]
fn static_tables_fit_the_boards_ram_budget() {
    let conntrack = board::CONNTRACK_CAPACITY * bytes_per_flow();
    let engine = std::mem::size_of::<Engine>();
    let servers = http::static_bytes();
    let total = conntrack + engine + servers;
    println!(
        "board {}: conntrack {} KiB + engine {} KiB + HTTP buffers {} KiB = {} KiB of {} KiB",
        board::NAME,
        conntrack / 1024,
        engine / 1024,
        servers / 1024,
        total / 1024,
        board::RAM_BUDGET_BYTES / 1024
    );
    assert!(total <= board::RAM_BUDGET_BYTES, "{total} > {}", board::RAM_BUDGET_BYTES);
}
