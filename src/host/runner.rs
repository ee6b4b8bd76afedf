//! The single-threaded loop: poll the TAP, run the engine and smoltcp, keep time, stop on
//! SIGINT/SIGTERM.

use std::boxed::Box;
use std::format;
use std::os::fd::AsRawFd;
use std::string::String;
use std::sync::atomic::Ordering;
use std::vec;

use log::{info, warn};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::wire::{HardwareAddress, IpCidr};

use super::device::NatDevice;
use super::health::{self, Probes};
use super::http::HttpServer;
use super::sys::{self, SHUTDOWN};
use super::tap::Tap;
use crate::board;
use crate::config::Config;
use crate::conntrack::{Flow, Table, buckets_for};
use crate::engine::{DropReason, Engine};
use crate::time::Millis;

/// Longest sleep between two turns: timers (conntrack expiry, ARP refresh) need this often.
const MAX_WAIT_MS: i64 = 100;

/// Runs node `node_name` of `config` until a shutdown signal. `source` names the config.
pub fn run(config: &Config, source: &str, node_name: Option<&str>) -> Result<(), String> {
    let node = config.node(node_name).map_err(|e| format!("{source}: {e}"))?;
    let key = sys::random_key().map_err(|e| format!("cannot read random bytes: {e}"))?;

    // The connection table is the one large allocation, made once here.
    let mut flows = vec![Flow::EMPTY; board::CONNTRACK_CAPACITY];
    let mut buckets = vec![0u32; buckets_for(board::CONNTRACK_CAPACITY)];
    let table = Table::new(&mut flows, &mut buckets, key, board::TIMEOUTS);
    let mut engine =
        Box::new(Engine::new(config, node_name, table, key[0] ^ key[1]).map_err(|e| format!("{source}: {e}"))?);

    let tap = Tap::open(&node.tap, node.bridge.as_deref())?;
    sys::catch_shutdown_signals().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    info!(
        "nodegate {} on board {}: node {} ({}) on TAP {}{}, {} service(s) from {source}",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        node.name,
        node.addresses.iter().map(|a| format!("{a}")).collect::<vec::Vec<_>>().join(", "),
        tap.name(),
        node.bridge.as_ref().map(|b| format!(" in bridge {b}")).unwrap_or_default(),
        config.services.len(),
    );
    for svc in &config.services {
        let ports: vec::Vec<String> = svc.ports.iter().map(|p| format!("{p}->{}", p.target_port)).collect();
        info!(
            "service {}: {} ports {}, {} endpoint(s), externalTrafficPolicy {}{}",
            svc.name,
            svc.kind.as_str(),
            ports.join(" "),
            svc.endpoints.len(),
            svc.external_traffic_policy.as_str(),
            svc.virtual_ips().map(|ip| format!(", on {ip}")).collect::<String>(),
        );
    }

    let fd = tap.as_raw_fd();
    let mut device = NatDevice::new(tap, &mut engine);
    let start = std::time::Instant::now();
    let mut iface = Interface::new(
        IfaceConfig::new(HardwareAddress::Ethernet(node.mac)),
        &mut device,
        smoltcp::time::Instant::ZERO,
    );
    iface.update_ip_addrs(|addrs| {
        for a in &node.addresses {
            let _ = addrs.push(IpCidr::Ipv4(*a));
        }
    });
    if let Some(gw) = node.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gw);
    }
    let mut sockets = SocketSet::new(vec![]);
    let mut probes = Probes::new(config, &mut sockets);
    let mut http = HttpServer::new(config, node, &mut sockets);
    for line in health::describe(config) {
        info!("{line}");
    }

    let result = loop {
        if SHUTDOWN.load(Ordering::Relaxed) {
            break Ok(());
        }
        let now = Millis(start.elapsed().as_millis() as u64);
        let ts = smoltcp::time::Instant::from_millis(now.0 as i64);
        device.set_now(now);
        iface.poll(ts, &mut device, &mut sockets);
        if let Some(e) = device.fatal.take() {
            break Err(format!("TAP {}: {e}", node.tap));
        }
        probes.poll(now, config, &mut iface, &mut sockets, device.engine);
        http.poll(config, &mut sockets, device.engine);
        device.engine.housekeeping(now);
        device.flush_engine_output();
        let wait = iface.poll_delay(ts, &sockets).map_or(MAX_WAIT_MS, |d| d.total_millis() as i64).min(MAX_WAIT_MS);
        if let Err(e) = sys::wait_readable(fd, wait as i32) {
            break Err(format!("poll on TAP {}: {e}", node.tap));
        }
    };
    log_totals(device.engine);
    result
}

fn log_totals(engine: &Engine) {
    let c = engine.counters();
    let drops: vec::Vec<String> = DropReason::ALL
        .iter()
        .filter(|r| c.dropped(**r) > 0)
        .map(|r| format!("{}={}", r.name(), c.dropped(*r)))
        .collect();
    info!(
        "stopping: {} frames forwarded, {} to the node, {} flows created, {} tracked; drops: {}",
        c.forwarded,
        c.to_stack,
        c.new_flows,
        engine.conntrack().len(),
        if drops.is_empty() { "none".into() } else { drops.join(" ") }
    );
    if engine.conntrack().evictions() > 0 {
        warn!("{} flows were evicted from a full connection table", engine.conntrack().evictions());
    }
}
