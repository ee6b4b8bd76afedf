//! Turns the chosen board (`boards/$NODEGATE_BOARD.json`, `host` by default) into the constants of
//! `src/board.rs`, so every capacity and timeout is fixed at build time and lives in one file.

use serde::Deserialize;
use std::{env, fs, path::Path};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Board<'a> {
    name: &'a str,
    #[allow(dead_code)]
    description: &'a str,
    ram_budget_bytes: u32,
    conntrack_capacity: u32,
    max_nodes: u32,
    max_addresses_per_node: u32,
    max_services: u32,
    max_ports_per_service: u32,
    max_endpoints_per_service: u32,
    max_external_ips_per_service: u32,
    max_source_ranges_per_service: u32,
    max_bfd_sessions: u32,
    affinity_capacity: u32,
    maglev_table_size: u32,
    neighbor_capacity: u32,
    fragment_tracks: u32,
    parked_frames: u32,
    snat_port_min: u16,
    snat_port_max: u16,
    replies_per_second: u32,
    reply_burst: u32,
    conntrack_sweep_per_turn: u32,
    conntrack_renumber_per_turn: u32,
    conntrack_eviction_window: u32,
    snat_attempts: u32,
    node_client_port_min: u16,
    affinity_ways: u32,
    neighbor_refresh_millis: u32,
    gratuitous_arp_count: u32,
    gratuitous_arp_interval_millis: u32,
    spin_micros: u32,
    sync: Sync,
    health_check_defaults: HealthCheckDefaults,
    timeouts: Timeouts,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Sync {
    message_bytes: u32,
    queued_messages: u32,
    batch_millis: u32,
    refresh_seconds: u32,
    refresh_per_turn: u32,
    table_messages_per_turn: u32,
    request_retry_millis: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HealthCheckDefaults {
    interval_seconds: u32,
    timeout_seconds: u32,
    unhealthy_threshold: u32,
    healthy_threshold: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Timeouts {
    tcp_syn_sent_seconds: u32,
    tcp_syn_sent_under_pressure_seconds: u32,
    tcp_syn_recv_seconds: u32,
    tcp_established_seconds: u32,
    tcp_fin_wait_seconds: u32,
    tcp_close_wait_seconds: u32,
    tcp_time_wait_seconds: u32,
    tcp_close_seconds: u32,
    udp_seconds: u32,
    udp_stream_seconds: u32,
    fragment_seconds: u32,
    neighbor_seconds: u32,
    arp_retry_millis: u32,
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

fn main() {
    let board = env::var("NODEGATE_BOARD").unwrap_or_else(|_| "host".into());
    let path = Path::new("boards").join(format!("{board}.json"));
    println!("cargo:rerun-if-env-changed=NODEGATE_BOARD");
    println!("cargo:rerun-if-changed={}", path.display());
    let text = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (b, _): (Board, _) = serde_json_core::from_slice(&text)
        .unwrap_or_else(|e| panic!("{}: not a valid board file: {e}", path.display()));

    let fail = |field: &str, why: &str| panic!("{}: {field}: {why}", path.display());
    if b.name != board {
        fail("name", "must equal the file name");
    }
    if !is_prime(b.maglev_table_size) || b.maglev_table_size > u16::MAX as u32 {
        fail("maglevTableSize", "must be a prime below 65536");
    }
    if b.max_endpoints_per_service == 0 || b.max_endpoints_per_service > 255 {
        fail("maxEndpointsPerService", "must be 1..=255 (Maglev stores endpoint indices in a byte)");
    }
    if b.maglev_table_size < 10 * b.max_endpoints_per_service {
        fail("maglevTableSize", "must be at least 10 x maxEndpointsPerService");
    }
    if b.max_addresses_per_node == 0 || b.max_addresses_per_node > 8 {
        fail("maxAddressesPerNode", "must be 1..=8 (SMOLTCP_IFACE_MAX_ADDR_COUNT in .cargo/config.toml)");
    }
    if b.max_services == 0 || b.max_services > 255 {
        fail("maxServices", "must be 1..=255");
    }
    if b.conntrack_capacity < 16 || b.conntrack_capacity > (1 << 24) {
        fail("conntrackCapacity", "must be 16..=16777216");
    }
    if b.snat_port_min < 1024 || b.snat_port_min >= b.snat_port_max {
        fail("snatPortMin", "must be >= 1024 and below snatPortMax");
    }
    if b.snat_port_max >= b.node_client_port_min {
        fail("snatPortMax", "must be below nodeClientPortMin: the node's own client ports lie above it");
    }
    if !b.affinity_ways.is_power_of_two() || b.affinity_ways > b.affinity_capacity {
        fail("affinityWays", "must be a power of two, at most affinityCapacity");
    }
    if b.gratuitous_arp_count > 255 {
        fail("gratuitousArpCount", "must be at most 255");
    }
    let sync = &b.sync;
    // A record (36 bytes) must fit beside the header (32) and tag (16); a message must fit one
    // unfragmented UDP datagram on a 1500-byte link.
    if !(128..=1472).contains(&sync.message_bytes) {
        fail("sync.messageBytes", "must be 128..=1472");
    }
    let h = &b.health_check_defaults;
    if h.timeout_seconds > h.interval_seconds {
        fail("healthCheckDefaults.timeoutSeconds", "must not be longer than intervalSeconds");
    }
    if !b.affinity_capacity.is_power_of_two() || b.affinity_capacity < 8 {
        fail("affinityCapacity", "must be a power of two, at least 8");
    }
    for (field, value) in [
        ("neighborCapacity", b.neighbor_capacity),
        ("parkedFrames", b.parked_frames),
        ("conntrackSweepPerTurn", b.conntrack_sweep_per_turn),
        ("conntrackRenumberPerTurn", b.conntrack_renumber_per_turn),
        ("conntrackEvictionWindow", b.conntrack_eviction_window),
        ("snatAttempts", b.snat_attempts),
        ("neighborRefreshMillis", b.neighbor_refresh_millis),
        ("gratuitousArpCount", b.gratuitous_arp_count),
        ("gratuitousArpIntervalMillis", b.gratuitous_arp_interval_millis),
        ("healthCheckDefaults.intervalSeconds", h.interval_seconds),
        ("healthCheckDefaults.timeoutSeconds", h.timeout_seconds),
        ("healthCheckDefaults.unhealthyThreshold", h.unhealthy_threshold),
        ("healthCheckDefaults.healthyThreshold", h.healthy_threshold),
        ("fragmentTracks", b.fragment_tracks),
        ("repliesPerSecond", b.replies_per_second),
        ("replyBurst", b.reply_burst),
        ("sync.queuedMessages", sync.queued_messages),
        ("sync.batchMillis", sync.batch_millis),
        ("sync.refreshSeconds", sync.refresh_seconds),
        ("sync.refreshPerTurn", sync.refresh_per_turn),
        ("sync.tableMessagesPerTurn", sync.table_messages_per_turn),
        ("sync.requestRetryMillis", sync.request_retry_millis),
    ] {
        if value == 0 {
            fail(field, "must be positive");
        }
    }

    let t = &b.timeouts;
    let out = format!(
        "/// Name of the board this binary was built for.\n\
         pub const NAME: &str = {name:?};\n\
         /// Memory the gateway's static tables and buffers may take on this board.\n\
         pub const RAM_BUDGET_BYTES: usize = {ram};\n\
         /// Flows the connection table holds (both directions of a flow are one entry).\n\
         pub const CONNTRACK_CAPACITY: usize = {ct};\n\
         pub const MAX_NODES: usize = {nodes};\n\
         pub const MAX_ADDRESSES_PER_NODE: usize = {addrs};\n\
         pub const MAX_SERVICES: usize = {svcs};\n\
         pub const MAX_PORTS_PER_SERVICE: usize = {ports};\n\
         pub const MAX_ENDPOINTS_PER_SERVICE: usize = {eps};\n\
         pub const MAX_EXTERNAL_IPS_PER_SERVICE: usize = {xips};\n\
         pub const MAX_SOURCE_RANGES_PER_SERVICE: usize = {ranges};\n\
         /// BFD sessions (routers in front) a node answers.\n\
         pub const MAX_BFD_SESSIONS: usize = {bfd};\n\
         /// ClientIP session-affinity entries (client address and service to endpoint).\n\
         pub const AFFINITY_CAPACITY: usize = {affinity};\n\
         /// Prime size of each service's Maglev lookup table.\n\
         pub const MAGLEV_TABLE_SIZE: usize = {maglev};\n\
         pub const NEIGHBOR_CAPACITY: usize = {neigh};\n\
         /// Fragmented datagrams whose later fragments are being translated at once.\n\
         pub const FRAGMENT_TRACKS: usize = {frags};\n\
         /// Seconds the fragments of one datagram may take to pass.\n\
         pub const FRAGMENT_SECONDS: u32 = {frag_secs};\n\
         /// Frames held while their next hop is being resolved by ARP.\n\
         pub const PARKED_FRAMES: usize = {parked};\n\
         pub const SNAT_PORT_MIN: u16 = {smin};\n\
         pub const SNAT_PORT_MAX: u16 = {smax};\n\
         /// RSTs and ICMP errors the engine makes up, per second, and at once.\n\
         pub const REPLIES_PER_SECOND: u32 = {rps};\n\
         pub const REPLY_BURST: u32 = {burst};\n\
         /// Connection-table slots examined for expiry per sweep (bounded work).\n\
         pub const CONNTRACK_SWEEP_PER_TURN: usize = {sweep};\n\
         /// Connection-table slots renumbered per turn after a reload (bounded work).\n\
         pub const CONNTRACK_RENUMBER_PER_TURN: usize = {renumber};\n\
         /// Timeouts of this board.\n\
         pub const TIMEOUTS: crate::conntrack::Timeouts = crate::conntrack::Timeouts {{\n\
             tcp_syn_sent: {a}, tcp_syn_sent_under_pressure: {a2}, tcp_syn_recv: {b_}, tcp_established: {c}, tcp_fin_wait: {d},\n\
             tcp_close_wait: {e}, tcp_time_wait: {f}, tcp_close: {g}, udp: {h}, udp_stream: {i},\n\
         }};\n\
         /// Seconds a learned neighbour (ARP) entry stays valid without being refreshed.\n\
         pub const NEIGHBOR_SECONDS: u32 = {ns};\n\
         /// Milliseconds between two ARP requests for the same address.\n\
         pub const ARP_RETRY_MILLIS: u64 = {arp};\n",
        name = b.name,
        ram = b.ram_budget_bytes,
        ct = b.conntrack_capacity,
        nodes = b.max_nodes,
        addrs = b.max_addresses_per_node,
        svcs = b.max_services,
        ports = b.max_ports_per_service,
        eps = b.max_endpoints_per_service,
        xips = b.max_external_ips_per_service,
        ranges = b.max_source_ranges_per_service,
        bfd = b.max_bfd_sessions,
        affinity = b.affinity_capacity,
        maglev = b.maglev_table_size,
        neigh = b.neighbor_capacity,
        parked = b.parked_frames,
        frags = b.fragment_tracks,
        frag_secs = t.fragment_seconds,
        smin = b.snat_port_min,
        smax = b.snat_port_max,
        rps = b.replies_per_second,
        burst = b.reply_burst,
        sweep = b.conntrack_sweep_per_turn,
        renumber = b.conntrack_renumber_per_turn,
        a = t.tcp_syn_sent_seconds,
        a2 = t.tcp_syn_sent_under_pressure_seconds,
        b_ = t.tcp_syn_recv_seconds,
        c = t.tcp_established_seconds,
        d = t.tcp_fin_wait_seconds,
        e = t.tcp_close_wait_seconds,
        f = t.tcp_time_wait_seconds,
        g = t.tcp_close_seconds,
        h = t.udp_seconds,
        i = t.udp_stream_seconds,
        ns = t.neighbor_seconds,
        arp = t.arp_retry_millis,
    );
    let out = out
        + &format!(
            "/// Slots a full connection table searches for a flow to give up.\n\
             pub const CONNTRACK_EVICTION_WINDOW: usize = {window};\n\
             /// Random SNAT ports a new flow tries before it takes one back or is dropped.\n\
             pub const SNAT_ATTEMPTS: usize = {attempts};\n\
             /// The lowest source port of the node's own connections (health probes): the SNAT\n\
             /// range lies below it.\n\
             pub const NODE_CLIENT_PORT_MIN: u16 = {clients};\n\
             /// Entries in one set of the affinity table: how many pins one hash set holds.\n\
             pub const AFFINITY_WAYS: usize = {ways};\n\
             /// Milliseconds between two walks of the endpoints that refresh their next hops' ARP.\n\
             pub const NEIGHBOR_REFRESH_MILLIS: u64 = {refresh};\n\
             /// Rounds of gratuitous ARP for every address that moves to a gateway becoming\n\
             /// active, and the time between two rounds.\n\
             pub const GRATUITOUS_ARP_COUNT: u8 = {garps};\n\
             pub const GRATUITOUS_ARP_INTERVAL_MILLIS: u64 = {garp_ms};\n\
             /// Microseconds the loop looks at the TAP after a turn with traffic before it sleeps\n\
             /// (0: it sleeps at once); `nodegate run --spin-micros` overrides it.\n\
             pub const SPIN_MICROS: u32 = {spin};\n\
             /// What a service's `healthCheck` leaves out.\n\
             pub const HEALTH_CHECK_DEFAULTS: crate::config::HealthCheck = crate::config::HealthCheck {{\n\
                 interval_seconds: {hi}, timeout_seconds: {ht}, unhealthy_threshold: {hu}, healthy_threshold: {hh},\n\
                 port: None, http: None,\n\
             }};\n",
            window = b.conntrack_eviction_window,
            attempts = b.snat_attempts,
            clients = b.node_client_port_min,
            ways = b.affinity_ways,
            refresh = b.neighbor_refresh_millis,
            garps = b.gratuitous_arp_count,
            garp_ms = b.gratuitous_arp_interval_millis,
            spin = b.spin_micros,
            hi = h.interval_seconds,
            ht = h.timeout_seconds,
            hu = h.unhealthy_threshold,
            hh = h.healthy_threshold,
        );
    let out = out
        + &format!(
            "/// Flow sync: the largest message (UDP payload), the messages of records that may wait\n\
             /// for the loop to send them, and how long the first record of a batch waits for more.\n\
             pub const SYNC_MESSAGE_BYTES: usize = {bytes};\n\
             pub const SYNC_QUEUED_MESSAGES: usize = {queued};\n\
             pub const SYNC_BATCH_MILLIS: u64 = {batch};\n\
             /// Seconds a round of the refresh walk takes at least (every flow with traffic in the\n\
             /// last round is sent again), and the flows it looks at per turn.\n\
             pub const SYNC_REFRESH_SECONDS: u32 = {refresh};\n\
             pub const SYNC_REFRESH_PER_TURN: usize = {refresh_turn};\n\
             /// Messages of a table a peer asked for, sent per turn.\n\
             pub const SYNC_TABLE_MESSAGES_PER_TURN: usize = {table};\n\
             /// Milliseconds between two table requests to a peer that has not answered.\n\
             pub const SYNC_REQUEST_RETRY_MILLIS: u64 = {retry};\n",
            bytes = sync.message_bytes,
            queued = sync.queued_messages,
            batch = sync.batch_millis,
            refresh = sync.refresh_seconds,
            refresh_turn = sync.refresh_per_turn,
            table = sync.table_messages_per_turn,
            retry = sync.request_retry_millis,
        );
    let dest = Path::new(&env::var("OUT_DIR").unwrap()).join("board.rs");
    fs::write(dest, out).unwrap();
}
