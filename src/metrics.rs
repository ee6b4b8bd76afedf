//! Prometheus text exposition (format 0.0.4) of the engine's counters, written into a caller's
//! buffer: no allocation, and the same text whatever serves it.

use core::fmt::{self, Write};

use crate::bfd::{BfdDrop, SessionCounters};
use crate::board;
use crate::config::ServicePort;
use crate::conntrack::POOL_PORTS;
use crate::engine::{DropReason, Engine, PortTraffic, Role};
use crate::sync::{Sync, SyncDrop};
use crate::time::Turns;

/// A port's label: its name, or its number when it has none.
struct PortLabel<'a>(&'a ServicePort);

impl fmt::Display for PortLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.0.name {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0.port),
        }
    }
}

/// Microseconds, written as seconds.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

fn header(w: &mut impl Write, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(w, "# HELP {name} {help}")?;
    writeln!(w, "# TYPE {name} {kind}")
}

/// Directions of a flow, as labels: original is client to endpoint.
const DIRECTIONS: [&str; 2] = ["original", "reply"];

/// A counter family with a series per service port and direction.
fn per_direction(
    w: &mut impl Write,
    engine: &Engine,
    name: &str,
    help: &str,
    of: fn(&PortTraffic) -> [u64; 2],
) -> fmt::Result {
    header(w, name, "counter", help)?;
    for (svc, c) in engine.services() {
        for (p, port) in svc.ports.iter().enumerate() {
            for (n, dir) in of(&c.ports[p]).iter().zip(DIRECTIONS) {
                let port = PortLabel(port);
                writeln!(w, "{name}{{service=\"{}\",port=\"{port}\",direction=\"{dir}\"}} {n}", svc.name)?;
            }
        }
    }
    Ok(())
}

/// A gauge with a series per endpoint of each service (`ip:targetPort` of its first port).
fn per_endpoint(
    w: &mut impl Write,
    engine: &Engine,
    name: &str,
    help: &str,
    of: fn(&Engine, usize, usize) -> u64,
) -> fmt::Result {
    header(w, name, "gauge", help)?;
    for (s, (svc, _)) in engine.services().enumerate() {
        let target = svc.ports.first().map_or(0, |p| p.target_port);
        for (e, ep) in svc.endpoints.iter().enumerate() {
            writeln!(w, "{name}{{service=\"{}\",endpoint=\"{}:{target}\"}} {}", svc.name, ep.ip, of(engine, s, e))?;
        }
    }
    Ok(())
}

/// Writes every metric of `engine` and of the loop that runs it (`turns`). Fails
/// (`fmt::Error`) only when `w` is full.
pub fn render(engine: &Engine, turns: &Turns, w: &mut impl Write) -> fmt::Result {
    header(w, "nodegate_build_info", "gauge", "The running gateway's version and board.")?;
    writeln!(w, "nodegate_build_info{{version=\"{}\",board=\"{}\"}} 1", env!("CARGO_PKG_VERSION"), board::NAME)?;

    per_direction(w, engine, "nodegate_packets_total", "Packets forwarded, per service port and direction.", |t| {
        t.packets
    })?;
    per_direction(w, engine, "nodegate_bytes_total", "IP bytes forwarded, per service port and direction.", |t| {
        t.bytes
    })?;
    header(w, "nodegate_connections_total", "counter", "Flows created, per service port.")?;
    for (svc, c) in engine.services() {
        for (p, port) in svc.ports.iter().enumerate() {
            let n = c.ports[p].connections;
            writeln!(w, "nodegate_connections_total{{service=\"{}\",port=\"{}\"}} {n}", svc.name, PortLabel(port))?;
        }
    }
    per_endpoint(
        w,
        engine,
        "nodegate_endpoint_ready",
        "1 while the endpoint takes new flows (ready, healthy, eligible, not drained).",
        |engine, s, e| u64::from(engine.endpoint_serving(s, e)),
    )?;
    per_endpoint(
        w,
        engine,
        "nodegate_endpoint_drained",
        "1 while the endpoint is drained (nodegate drain).",
        |engine, s, e| u64::from(engine.endpoint_drained(s, e)),
    )?;
    per_endpoint(
        w,
        engine,
        "nodegate_endpoint_snat_ports_in_use",
        "SNAT source ports held towards the endpoint, all service ports together (each port's pool holds nodegate_snat_pool_ports).",
        |engine, s, e| engine.conntrack().endpoint_snat_ports(s, e) as u64,
    )?;
    let ct = engine.conntrack();
    header(w, "nodegate_snat_pool_ports", "gauge", "SNAT source ports per endpoint and service port (board).")?;
    writeln!(w, "nodegate_snat_pool_ports {}", POOL_PORTS)?;
    header(
        w,
        "nodegate_snat_port_evictions_total",
        "counter",
        "Flows not yet established that gave their SNAT port to a new flow in a full pool.",
    )?;
    writeln!(w, "nodegate_snat_port_evictions_total {}", ct.port_evictions())?;
    header(w, "nodegate_conntrack_entries", "gauge", "Flows tracked now.")?;
    writeln!(w, "nodegate_conntrack_entries {}", ct.len())?;
    header(w, "nodegate_conntrack_capacity", "gauge", "Flows the connection table holds (board).")?;
    writeln!(w, "nodegate_conntrack_capacity {}", ct.capacity())?;
    header(w, "nodegate_conntrack_evictions_total", "counter", "Flows evicted from a full table.")?;
    writeln!(w, "nodegate_conntrack_evictions_total {}", ct.evictions())?;
    header(w, "nodegate_snat_ports_in_use", "gauge", "SNAT source ports held by tracked flows.")?;
    writeln!(w, "nodegate_snat_ports_in_use {}", ct.snat_ports_in_use())?;

    let c = engine.counters();
    header(w, "nodegate_drops_total", "counter", "Frames dropped, per reason.")?;
    for r in DropReason::ALL {
        writeln!(w, "nodegate_drops_total{{reason=\"{}\"}} {}", r.name(), c.dropped(*r))?;
    }
    header(w, "nodegate_frames_received_total", "counter", "Frames read from the wire.")?;
    writeln!(w, "nodegate_frames_received_total {}", c.received)?;
    header(w, "nodegate_frames_forwarded_total", "counter", "Frames translated and sent on.")?;
    writeln!(w, "nodegate_frames_forwarded_total {}", c.forwarded)?;
    header(w, "nodegate_frames_to_node_total", "counter", "Frames for the node's own stack (ARP, ping, its sockets).")?;
    writeln!(w, "nodegate_frames_to_node_total {}", c.to_stack)?;
    header(w, "nodegate_frames_answered_total", "counter", "ARP requests for virtual IPs answered.")?;
    writeln!(w, "nodegate_frames_answered_total {}", c.answered)?;
    header(
        w,
        "nodegate_tcp_resets_not_exact_total",
        "counter",
        "RSTs near but not at their sender's sequence: passed on, the flow kept (RFC 5961).",
    )?;
    writeln!(w, "nodegate_tcp_resets_not_exact_total {}", c.resets_not_exact)?;
    header(
        w,
        "nodegate_replies_suppressed_total",
        "counter",
        "RSTs and ICMP errors not sent: over the board's rate limit (the frames count as dropped).",
    )?;
    writeln!(w, "nodegate_replies_suppressed_total {}", c.replies_suppressed)?;
    header(w, "nodegate_frames_waiting", "gauge", "Frames waiting for their next hop's ARP answer.")?;
    writeln!(w, "nodegate_frames_waiting {}", engine.frames_waiting())?;
    header(
        w,
        "nodegate_udp_flows_flushed_total",
        "counter",
        "UDP flows taken out because their endpoint stopped taking new flows (health, reload).",
    )?;
    writeln!(w, "nodegate_udp_flows_flushed_total {}", c.udp_flows_flushed)?;
    header(
        w,
        "nodegate_affinity_evictions_total",
        "counter",
        "ClientIP pins pushed out of a full affinity set by newer ones (the client may move).",
    )?;
    writeln!(w, "nodegate_affinity_evictions_total {}", engine.affinity_evictions())?;
    header(w, "nodegate_conntrack_flows_to_renumber", "gauge", "Flows not yet renumbered for the last reload.")?;
    writeln!(w, "nodegate_conntrack_flows_to_renumber {}", engine.flows_to_renumber())?;

    header(
        w,
        "nodegate_flows_picked_up_total",
        "counter",
        "Mid-stream TCP segments of untracked flows taken up as established (high availability).",
    )?;
    writeln!(w, "nodegate_flows_picked_up_total {}", c.flows_picked_up)?;
    header(
        w,
        "nodegate_ha_active",
        "gauge",
        "1 while this gateway is the active one (always, without highAvailability); 0 while standby.",
    )?;
    writeln!(w, "nodegate_ha_active {}", u8::from(engine.role() == Role::Active))?;
    if let Some(sync) = engine.sync_state() {
        sync_metrics(w, sync)?;
    }
    if !engine.bfd_sessions().is_empty() {
        bfd_metrics(w, engine)?;
    }

    header(w, "nodegate_loop_turns_total", "counter", "Turns of the packet loop (wake up, work, wait).")?;
    writeln!(w, "nodegate_loop_turns_total {}", turns.count)?;
    header(
        w,
        "nodegate_loop_turns_over_budget_total",
        "counter",
        "Turns of the packet loop longer than 1 ms (Turns::BUDGET_MICROS).",
    )?;
    writeln!(w, "nodegate_loop_turns_over_budget_total {}", turns.over_budget)?;
    header(w, "nodegate_loop_turn_longest_seconds", "gauge", "The longest turn of the packet loop since start.")?;
    writeln!(w, "nodegate_loop_turn_longest_seconds {}", Seconds(turns.longest_micros))?;
    header(w, "nodegate_loop_turn_longest_cpu_seconds", "gauge", "The most CPU time one turn of the loop used.")?;
    writeln!(w, "nodegate_loop_turn_longest_cpu_seconds {}", Seconds(turns.longest_cpu_micros))?;
    header(
        w,
        "nodegate_tap_queue_drops_total",
        "counter",
        "Frames the kernel dropped in front of the TAP, its queue to the gateway full (not in frames received).",
    )?;
    writeln!(w, "nodegate_tap_queue_drops_total {}", turns.queue_drops)?;
    Ok(())
}

/// Flow sync's counters (with `highAvailability.sync` only).
fn sync_metrics(w: &mut impl Write, sync: &Sync) -> fmt::Result {
    let c = &sync.counters;
    for (name, help, n) in [
        (
            "nodegate_sync_messages_sent_total",
            "Flow-sync messages sealed (each goes to every peer it is for).",
            c.messages_sent,
        ),
        ("nodegate_sync_messages_received_total", "Flow-sync messages received, taken or not.", c.messages_received),
        (
            "nodegate_sync_flows_installed_total",
            "Peers' flow records installed (new or changed flows).",
            c.flows_installed,
        ),
        ("nodegate_sync_flows_removed_total", "Flows removed as a peer said.", c.flows_removed),
        ("nodegate_sync_pins_installed_total", "Peers' ClientIP affinity pins taken.", c.pins_installed),
        ("nodegate_sync_tables_sent_total", "Whole tables sent to peers that asked.", c.tables_sent),
        ("nodegate_sync_tables_requested_total", "Table requests sent to peers.", c.tables_requested),
    ] {
        header(w, name, "counter", help)?;
        writeln!(w, "{name} {n}")?;
    }
    header(w, "nodegate_sync_dropped_total", "counter", "Flow-sync messages or records not taken, per reason.")?;
    for r in SyncDrop::ALL {
        writeln!(w, "nodegate_sync_dropped_total{{reason=\"{}\"}} {}", r.name(), c.dropped(*r))?;
    }
    header(w, "nodegate_sync_peers_in_sync", "gauge", "Peers whose flow-sync messages this gateway takes.")?;
    writeln!(w, "nodegate_sync_peers_in_sync {}", sync.peers_in_sync())
}

/// BFD sessions' state and counters, labelled by peer (with `bfd.sessions` only).
fn bfd_metrics(w: &mut impl Write, engine: &Engine) -> fmt::Result {
    header(w, "nodegate_bfd_session_state", "gauge", "A BFD session's state: 0 admin-down, 1 down, 2 init, 3 up.")?;
    for s in engine.bfd_sessions() {
        writeln!(w, "nodegate_bfd_session_state{{peer=\"{}\"}} {}", s.peer, s.state as u8)?;
    }
    type Counter = fn(&SessionCounters) -> u64;
    let counters: [(&str, &str, Counter); 4] = [
        ("nodegate_bfd_packets_received_total", "BFD control packets a session took.", |c| c.received),
        ("nodegate_bfd_packets_sent_total", "BFD control packets a session sent.", |c| c.sent),
        ("nodegate_bfd_session_up_total", "Times a BFD session came up.", |c| c.up_transitions),
        ("nodegate_bfd_session_down_total", "Times a BFD session went down from up.", |c| c.down_transitions),
    ];
    for (name, help, value) in counters {
        header(w, name, "counter", help)?;
        for s in engine.bfd_sessions() {
            writeln!(w, "{name}{{peer=\"{}\"}} {}", s.peer, value(&s.counters))?;
        }
    }
    header(w, "nodegate_bfd_dropped_total", "counter", "BFD packets refused, per reason.")?;
    for r in BfdDrop::ALL {
        writeln!(w, "nodegate_bfd_dropped_total{{reason=\"{}\"}} {}", r.name(), engine.bfd_dropped(*r))?;
    }
    Ok(())
}

/// A buffer that holds the metrics of the largest config the board allows.
pub const MAX_TEXT: usize = 4096
    + board::MAX_SERVICES * board::MAX_PORTS_PER_SERVICE * 5 * 192
    + board::MAX_SERVICES * board::MAX_ENDPOINTS_PER_SERVICE * 3 * 160
    + DropReason::ALL.len() * 80
    + board::MAX_BFD_SESSIONS * 5 * 96
    + BfdDrop::ALL.len() * 80
    + 2048;
