//! What the board's tables cost: a flow's bytes, and everything static against the board's RAM
//! budget. CI runs this for every board (`NODEGATE_BOARD`).

mod support;

use nodegate::board;
use nodegate::conntrack::Flow;
use nodegate::host::memory::{self, bytes_per_flow};

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
    let parts: Vec<String> =
        memory::parts().iter().map(|(part, bytes)| format!("{part} {} KiB", bytes / 1024)).collect();
    let total = memory::total();
    println!(
        "board {}: {} = {} KiB of {} KiB",
        board::NAME,
        parts.join(" + "),
        total / 1024,
        board::RAM_BUDGET_BYTES / 1024
    );
    assert!(total <= board::RAM_BUDGET_BYTES, "{total} > {}", board::RAM_BUDGET_BYTES);
}

#[test]
fn the_metrics_of_the_largest_config_fit_their_buffer() {
    // Every list at the board's limit, every name at its longest (63 characters).
    let name = |kind: char, i: usize| format!("{kind}{i:0>62}");
    let services: Vec<String> = (0..board::MAX_SERVICES)
        .map(|s| {
            let ports: Vec<String> = (0..board::MAX_PORTS_PER_SERVICE)
                .map(|p| {
                    format!(
                        r#"{{"name":"{}","protocol":"{}","port":{}}}"#,
                        name('p', p),
                        ["TCP", "UDP"][p % 2],
                        1000 + p
                    )
                })
                .collect();
            let endpoints: Vec<String> = (0..board::MAX_ENDPOINTS_PER_SERVICE)
                .map(|e| format!(r#"{{"ip":"10.{}.{}.{}"}}"#, 100 + e / 250, e % 250, 1 + s % 250))
                .collect();
            format!(
                r#"{{"name":"{}","ports":[{}],"endpoints":[{}]}}"#,
                name('s', s),
                ports.join(","),
                endpoints.join(",")
            )
        })
        .collect();
    let sessions: Vec<String> =
        (0..board::MAX_BFD_SESSIONS).map(|i| format!(r#"{{"peer":"10.77.0.{}"}}"#, 254 - i)).collect();
    let json = format!(
        r#"{{"nodes":[{{"name":"n","tap":"t","addresses":["10.77.0.1/24"],"gateway":"10.77.0.254"}}],
            "bfd":{{"sessions":[{}]}},"services":[{}]}}"#,
        sessions.join(","),
        services.join(",")
    );
    let cfg = nodegate::config::parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut room = support::Room::new(16);
    let engine = room.engine(&cfg, None);
    let mut buf = vec![0u8; nodegate::metrics::MAX_TEXT];
    let mut w = nodegate::text::SliceWriter::new(&mut buf);
    let fits = nodegate::metrics::render(&engine, &nodegate::time::Turns::default(), &mut w).is_ok();
    println!("largest metrics text: {} of {} bytes", w.len(), nodegate::metrics::MAX_TEXT);
    assert!(fits, "the metrics of the largest config outgrow MAX_TEXT");
}
