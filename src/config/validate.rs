//! From [`raw`](super::raw) to [`Config`]: every check that a config file can fail, each error
//! naming the field by its path.

use core::net::Ipv4Addr;
use core::str::FromStr;
use heapless::{String, Vec};
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use super::raw::{
    Bounded, RawBfd, RawConfig, RawEndpoint, RawHealthCheck, RawHighAvailability, RawNode, RawPort, RawService, RawSync,
};
use super::*;

type Result<T> = core::result::Result<T, ConfigError>;

macro_rules! fail {
    ($path:expr, $($msg:tt)+) => {
        return Err(ConfigError::new($path, format_args!($($msg)+)))
    };
}

pub(super) fn config(raw: &RawConfig) -> Result<Config> {
    let node_port_range = match raw.node_port_range {
        None => PortRange::DEFAULT,
        Some(text) => port_range(text)?,
    };
    capacity(format_args!("nodes"), &raw.nodes, board::MAX_NODES)?;
    capacity(format_args!("services"), &raw.services, board::MAX_SERVICES)?;
    if raw.nodes.items.is_empty() {
        fail!(format_args!("nodes"), "at least one node is needed");
    }
    let mut cfg = Config {
        node_port_range,
        nodes: Vec::new(),
        services: Vec::new(),
        high_availability: None,
        bfd: Bfd::default(),
    };
    for (i, n) in raw.nodes.items.iter().enumerate() {
        let node = node(i, n)?;
        if cfg.nodes.iter().any(|o| o.name == node.name) {
            fail!(format_args!("nodes[{i}].name"), "{:?} is used by an earlier node", node.name);
        }
        let _ = cfg.nodes.push(node);
    }
    for (i, s) in raw.services.items.iter().enumerate() {
        let svc = service(i, s, &cfg)?;
        if cfg.services.iter().any(|o| o.name == svc.name) {
            fail!(format_args!("services[{i}].name"), "{:?} is used by an earlier service", svc.name);
        }
        let _ = cfg.services.push(svc);
    }
    if let Some(ha) = &raw.high_availability {
        cfg.high_availability = Some(high_availability(ha, &cfg)?);
    }
    allocate_node_ports(&mut cfg)?;
    if let Some(b) = &raw.bfd {
        cfg.bfd = bfd(b, &cfg)?;
    }
    check_health_check_node_ports(&cfg)?;
    check_ports_apart(&cfg)?;
    check_neighbors(&cfg)?;
    Ok(cfg)
}

/// The ports the node listens on, the SNAT pools and the node's own client ports are apart: a
/// late reply to a SNAT port (or a probe's) that outlived its flow must never reach a service
/// (cilium#33723), and a metrics scrape must never be taken for a NodePort.
fn check_ports_apart(cfg: &Config) -> Result<()> {
    const NOT_FOR_LISTENING: [(&str, PortRange); 2] =
        [("the board's SNAT ports", PortRange::SNAT), ("the node's own client ports", PortRange::NODE_CLIENTS)];
    let range = cfg.node_port_range;
    for (what, other) in NOT_FOR_LISTENING {
        if range.overlaps(&other) {
            fail!(format_args!("nodePortRange"), "{range} overlaps {what} {other}");
        }
    }
    for (i, n) in cfg.nodes.iter().enumerate() {
        let Some(m) = n.metrics_port else { continue };
        let path = format_args!("nodes[{i}].metricsPort");
        for (what, other) in NOT_FOR_LISTENING {
            if other.contains(m) {
                fail!(path, "{m} is one of {what} {other}");
            }
        }
        let owner = cfg.services.iter().find(|s| {
            s.health_check_node_port == Some(m)
                || s.ports.iter().any(|p| p.node_port == Some(m) && p.protocol == Protocol::Tcp)
        });
        if let Some(s) = owner {
            fail!(path, "{m} is already used by service {:?}", s.name);
        }
    }
    Ok(())
}

/// The endpoints on each node's subnets (and its gateway) fit the board's neighbour table:
/// beyond it, every new flow would wait for ARP.
fn check_neighbors(cfg: &Config) -> Result<()> {
    for node in &cfg.nodes {
        let mut on_link: Vec<Ipv4Addr, { board::NEIGHBOR_CAPACITY }> = Vec::new();
        if let Some(gw) = node.gateway {
            let _ = on_link.push(gw);
        }
        for (i, s) in cfg.services.iter().enumerate() {
            for (j, e) in s.endpoints.iter().enumerate() {
                if node.address_on_link(e.ip).is_none() || on_link.contains(&e.ip) {
                    continue;
                }
                if on_link.push(e.ip).is_err() {
                    fail!(
                        format_args!("services[{i}].endpoints[{j}].ip"),
                        "more than {} endpoints and gateway on node {}'s subnets: board {:?} holds that many neighbours",
                        board::NEIGHBOR_CAPACITY,
                        node.name,
                        board::NAME
                    );
                }
            }
        }
    }
    Ok(())
}

fn capacity<T, const N: usize>(path: fmt::Arguments, list: &Bounded<T, N>, max: usize) -> Result<()> {
    if list.len > max {
        fail!(path, "{} entries, but board {:?} holds at most {max}", list.len, board::NAME);
    }
    Ok(())
}

fn required<T: Copy>(path: fmt::Arguments, value: Option<T>) -> Result<T> {
    match value {
        Some(v) => Ok(v),
        None => fail!(path, "is required"),
    }
}

/// A Kubernetes DNS label: lower-case letters, digits and '-', starting and ending alphanumeric.
fn name(path: fmt::Arguments, text: Option<&str>) -> Result<Name> {
    let text = required(path, text)?;
    let ok = !text.is_empty()
        && text.len() <= NAME_LEN
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if !ok {
        fail!(
            path,
            "{:?} is not a valid name (1-63 of a-z, 0-9 and '-', not starting or ending with '-')",
            Short(text)
        );
    }
    Ok(String::try_from(text).unwrap_or_default())
}

fn if_name(path: fmt::Arguments, text: &str) -> Result<IfName> {
    let ok = !text.is_empty()
        && text.len() <= IFNAME_LEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        fail!(path, "{:?} is not a valid interface name (1-15 of A-Z, a-z, 0-9, '-', '_', '.')", Short(text));
    }
    Ok(String::try_from(text).unwrap_or_default())
}

fn ipv4(path: fmt::Arguments, text: &str) -> Result<Ipv4Addr> {
    match Ipv4Addr::from_str(text) {
        Ok(ip) if !ip.is_unspecified() && !ip.is_broadcast() && !ip.is_multicast() => Ok(ip),
        Ok(_) => fail!(path, "{text:?} is not a unicast address"),
        Err(_) => fail!(path, "{:?} is not an IPv4 address", Short(text)),
    }
}

fn cidr(path: fmt::Arguments, text: &str) -> Result<Ipv4Cidr> {
    let parsed = text.split_once('/').and_then(|(ip, len)| {
        let ip = Ipv4Addr::from_str(ip).ok()?;
        let len = u8::from_str(len).ok().filter(|l| (1..=32).contains(l))?;
        Some(Ipv4Cidr::new(ip, len))
    });
    match parsed {
        Some(c)
            if !c.address().is_unspecified()
                && !c.address().is_multicast()
                && c.address() != c.broadcast().unwrap_or(Ipv4Addr::BROADCAST)
                && (c.prefix_len() == 32 || c.address() != c.network().address()) =>
        {
            Ok(c)
        }
        Some(_) => fail!(path, "{text:?}: the address must be a host address of its subnet"),
        None => fail!(path, "{:?} is not an IPv4 address with a prefix length (like 10.77.0.1/24)", Short(text)),
    }
}

fn mac(path: fmt::Arguments, text: &str) -> Result<EthernetAddress> {
    let mut bytes = [0u8; 6];
    let mut parts = text.split(':');
    for b in bytes.iter_mut() {
        match parts.next().filter(|p| p.len() == 2).and_then(|p| u8::from_str_radix(p, 16).ok()) {
            Some(v) => *b = v,
            None => fail!(path, "{:?} is not a MAC address (like 02:00:00:00:00:01)", Short(text)),
        }
    }
    let mac = EthernetAddress(bytes);
    if parts.next().is_some() {
        fail!(path, "{:?} is not a MAC address (like 02:00:00:00:00:01)", Short(text));
    }
    if !mac.is_unicast() || bytes == [0; 6] {
        fail!(path, "{text:?} is not a unicast MAC address");
    }
    Ok(mac)
}

fn port(path: fmt::Arguments, value: u32) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => fail!(path, "{value} is not a port (1-65535)"),
    }
}

fn port_range(text: &str) -> Result<PortRange> {
    let path = format_args!("nodePortRange");
    let parsed = text.split_once('-').and_then(|(a, b)| Some((u16::from_str(a).ok()?, u16::from_str(b).ok()?)));
    match parsed {
        Some((first, last)) if first > 0 && first <= last => Ok(PortRange { first, last }),
        _ => fail!(path, "{:?} is not a port range like \"30000-32767\"", Short(text)),
    }
}

/// A locally administered MAC derived from the node's name, stable across restarts.
fn mac_from_name(name: &str) -> EthernetAddress {
    let h = crate::hash::sip13(
        crate::hash::STABLE_KEY,
        name.len() as u64,
        name.bytes().fold(0u64, |a, b| a.rotate_left(8) ^ b as u64),
    )
    .to_le_bytes();
    EthernetAddress([0x02, h[0], h[1], h[2], h[3], h[4]])
}

fn node(i: usize, raw: &RawNode) -> Result<Node> {
    let name = name(format_args!("nodes[{i}].name"), raw.name)?;
    let tap = if_name(format_args!("nodes[{i}].tap"), required(format_args!("nodes[{i}].tap"), raw.tap)?)?;
    let bridge = match raw.bridge {
        Some(b) => Some(if_name(format_args!("nodes[{i}].bridge"), b)?),
        None => None,
    };
    let mac = match raw.mac {
        Some(m) => mac(format_args!("nodes[{i}].mac"), m)?,
        None => mac_from_name(&name),
    };
    capacity(format_args!("nodes[{i}].addresses"), &raw.addresses, board::MAX_ADDRESSES_PER_NODE)?;
    let mut addresses = Vec::new();
    for (j, text) in raw.addresses.items.iter().enumerate() {
        let _ = addresses.push(cidr(format_args!("nodes[{i}].addresses[{j}]"), text)?);
    }
    if addresses.is_empty() {
        fail!(format_args!("nodes[{i}].addresses"), "at least one address is needed");
    }
    let gateway = match raw.gateway {
        Some(g) => {
            let gw = ipv4(format_args!("nodes[{i}].gateway"), g)?;
            if !addresses.iter().any(|c: &Ipv4Cidr| c.contains_addr(&gw)) {
                fail!(format_args!("nodes[{i}].gateway"), "{gw} is on none of the node's subnets");
            }
            if addresses.iter().any(|c| c.address() == gw) {
                fail!(format_args!("nodes[{i}].gateway"), "{gw} is the node's own address");
            }
            Some(gw)
        }
        None => None,
    };
    let metrics_port = match raw.metrics_port {
        Some(p) => Some(port(format_args!("nodes[{i}].metricsPort"), p)?),
        None => None,
    };
    Ok(Node { name, tap, bridge, mac, addresses, gateway, metrics_port })
}

fn service(i: usize, raw: &RawService, cfg: &Config) -> Result<Service> {
    let name = name(format_args!("services[{i}].name"), raw.name)?;
    let kind = match raw.kind.unwrap_or("NodePort") {
        "NodePort" => ServiceType::NodePort,
        "ClusterIP" => ServiceType::ClusterIP,
        other => fail!(format_args!("services[{i}].type"), "{:?} is not one of NodePort, ClusterIP", Short(other)),
    };
    let external_traffic_policy = match raw.external_traffic_policy.unwrap_or("Cluster") {
        "Cluster" => TrafficPolicy::Cluster,
        "Local" => TrafficPolicy::Local,
        other => {
            fail!(
                format_args!("services[{i}].externalTrafficPolicy"),
                "{:?} is not one of Cluster, Local",
                Short(other)
            )
        }
    };
    let cluster_ip = match raw.cluster_ip {
        Some(text) => Some(ipv4(format_args!("services[{i}].clusterIP"), text)?),
        None => None,
    };
    capacity(format_args!("services[{i}].externalIPs"), &raw.external_ips, board::MAX_EXTERNAL_IPS_PER_SERVICE)?;
    let mut external_ips = Vec::new();
    for (j, text) in raw.external_ips.items.iter().enumerate() {
        let _ = external_ips.push(ipv4(format_args!("services[{i}].externalIPs[{j}]"), text)?);
    }
    let session_affinity = match raw.session_affinity.unwrap_or("None") {
        "None" => SessionAffinity::None,
        "ClientIP" => {
            let path = format_args!("services[{i}].sessionAffinityConfig.clientIP.timeoutSeconds");
            let timeout =
                raw.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
            match timeout.unwrap_or(SessionAffinity::DEFAULT_TIMEOUT_SECONDS) {
                t @ 1..=86400 => SessionAffinity::ClientIp { timeout_seconds: t },
                t => fail!(path, "{t} is outside 1-86400"),
            }
        }
        other => {
            fail!(format_args!("services[{i}].sessionAffinity"), "{:?} is not one of None, ClientIP", Short(other))
        }
    };
    capacity(
        format_args!("services[{i}].loadBalancerSourceRanges"),
        &raw.load_balancer_source_ranges,
        board::MAX_SOURCE_RANGES_PER_SERVICE,
    )?;
    let mut source_ranges = Vec::new();
    for (j, text) in raw.load_balancer_source_ranges.items.iter().enumerate() {
        let _ = source_ranges.push(network(format_args!("services[{i}].loadBalancerSourceRanges[{j}]"), text)?);
    }
    let health_check_node_port = match raw.health_check_node_port {
        None => None,
        Some(_) if external_traffic_policy != TrafficPolicy::Local => {
            fail!(format_args!("services[{i}].healthCheckNodePort"), "is only valid with externalTrafficPolicy: Local")
        }
        Some(p) => Some(node_port(format_args!("services[{i}].healthCheckNodePort"), p, cfg.node_port_range)?),
    };
    let health_check = match &raw.health_check {
        None => None,
        Some(h) => Some(health_check(i, h)?),
    };
    capacity(format_args!("services[{i}].ports"), &raw.ports, board::MAX_PORTS_PER_SERVICE)?;
    capacity(format_args!("services[{i}].endpoints"), &raw.endpoints, board::MAX_ENDPOINTS_PER_SERVICE)?;
    if raw.ports.items.is_empty() {
        fail!(format_args!("services[{i}].ports"), "at least one port is needed");
    }
    let mut ports: Vec<ServicePort, { board::MAX_PORTS_PER_SERVICE }> = Vec::new();
    for (j, p) in raw.ports.items.iter().enumerate() {
        let sp = service_port(i, j, p, raw.ports.items.len() > 1, kind, cfg)?;
        if ports.iter().any(|o| o.name.is_some() && o.name == sp.name) {
            fail!(
                format_args!("services[{i}].ports[{j}].name"),
                "{:?} is used by an earlier port",
                sp.name.as_deref().unwrap_or("")
            );
        }
        if let Some(k) = ports.iter().position(|o| o.port == sp.port && o.protocol == sp.protocol) {
            fail!(
                format_args!("services[{i}].ports[{j}].port"),
                "{}/{} is already ports[{k}] of this service",
                sp.port,
                sp.protocol.as_str()
            );
        }
        if sp.node_port.is_some() {
            let same = |o: &ServicePort| o.node_port == sp.node_port && o.protocol == sp.protocol;
            let owner = cfg.services.iter().find(|s| s.ports.iter().any(same)).map(|s| s.name.as_str());
            if let Some(owner) = owner.or_else(|| ports.iter().any(same).then_some(name.as_str())) {
                fail!(
                    format_args!("services[{i}].ports[{j}].nodePort"),
                    "{}/{} is already used by service {owner:?}",
                    sp.node_port.unwrap_or(0),
                    sp.protocol.as_str()
                );
            }
        }
        let _ = ports.push(sp);
    }
    let mut endpoints: Vec<Endpoint, { board::MAX_ENDPOINTS_PER_SERVICE }> = Vec::new();
    for (j, e) in raw.endpoints.items.iter().enumerate() {
        let ep = endpoint(i, j, e, cfg)?;
        if endpoints.iter().any(|o| o.ip == ep.ip) {
            fail!(format_args!("services[{i}].endpoints[{j}].ip"), "{} is listed twice", ep.ip);
        }
        let _ = endpoints.push(ep);
    }
    let svc = Service {
        name,
        kind,
        external_traffic_policy,
        cluster_ip,
        external_ips,
        session_affinity,
        source_ranges,
        health_check_node_port,
        health_check,
        ports,
        endpoints,
    };
    virtual_ips(i, &svc, cfg)?;
    Ok(svc)
}

/// A clusterIP or externalIP is no node's address, and each `ip:port/protocol` belongs to one
/// service.
fn virtual_ips(i: usize, svc: &Service, cfg: &Config) -> Result<()> {
    for (k, vip) in svc.virtual_ips().enumerate() {
        let path = |k: usize| {
            if svc.cluster_ip.is_some() && k == 0 { "clusterIP" } else { "externalIPs" }
        };
        if cfg.nodes.iter().any(|n| n.owns(vip)) {
            fail!(format_args!("services[{i}].{}", path(k)), "{vip} is a node address");
        }
        for p in &svc.ports {
            let clash = cfg.services.iter().find(|o| {
                o.virtual_ips().any(|v| v == vip)
                    && o.ports.iter().any(|q| q.port == p.port && q.protocol == p.protocol)
            });
            if let Some(o) = clash {
                fail!(
                    format_args!("services[{i}].{}", path(k)),
                    "{vip}:{}/{} is already used by service {:?}",
                    p.port,
                    p.protocol.as_str(),
                    o.name
                );
            }
        }
    }
    Ok(())
}

/// The floating addresses: on a subnet of every node (each gateway must be able to hold them),
/// and none of the site's other addresses.
fn high_availability(raw: &RawHighAvailability, cfg: &Config) -> Result<HighAvailability> {
    let floating = |field: &str, text: &str| -> Result<Ipv4Addr> {
        let path = format_args!("highAvailability.{field}");
        let ip = ipv4(path, text)?;
        if let Some(n) = cfg.nodes.iter().find(|n| n.address_on_link(ip).is_none()) {
            fail!(path, "{ip} is on none of node {}'s subnets", n.name);
        }
        if cfg.nodes.iter().any(|n| n.owns(ip) || n.gateway == Some(ip)) {
            fail!(path, "{ip} is a node address or gateway");
        }
        if let Some(s) =
            cfg.services.iter().find(|s| s.virtual_ips().any(|v| v == ip) || s.endpoints.iter().any(|e| e.ip == ip))
        {
            fail!(path, "{ip} is a virtual IP or an endpoint of service {:?}", s.name);
        }
        Ok(ip)
    };
    let Some(snat) = raw.snat_address else {
        fail!(format_args!("highAvailability.snatAddress"), "is required");
    };
    let snat_address = floating("snatAddress", snat)?;
    let endpoint_gateway_address = match raw.endpoint_gateway_address {
        Some(text) => Some(floating("endpointGatewayAddress", text)?),
        None => None,
    };
    if endpoint_gateway_address == Some(snat_address) {
        fail!(format_args!("highAvailability.endpointGatewayAddress"), "{snat_address} is the snatAddress too");
    }
    let sync = match &raw.sync {
        Some(s) => Some(sync(s, cfg)?),
        None => None,
    };
    Ok(HighAvailability { snat_address, endpoint_gateway_address, sync })
}

/// The sync port must be free on the node addresses: no service's UDP nodePort.
fn sync(raw: &RawSync, cfg: &Config) -> Result<SyncConfig> {
    let key_file = match raw.key_file {
        None | Some("") => fail!(format_args!("highAvailability.sync.keyFile"), "is required"),
        Some(path) if !path.starts_with('/') => {
            fail!(format_args!("highAvailability.sync.keyFile"), "{path:?} is not an absolute path")
        }
        Some(path) => String::try_from(path).map_err(|_| {
            ConfigError::new(
                format_args!("highAvailability.sync.keyFile"),
                format_args!("longer than {} bytes", SyncConfig::KEY_FILE_MAX),
            )
        })?,
    };
    let port = match raw.port {
        None => SyncConfig::DEFAULT_PORT,
        Some(p @ 1..=65535) => p as u16,
        Some(p) => fail!(format_args!("highAvailability.sync.port"), "{p} is outside 1-65535"),
    };
    let taken = |s: &Service| s.ports.iter().any(|p| p.protocol == Protocol::Udp && p.node_port == Some(port));
    if let Some(s) = cfg.services.iter().find(|s| taken(s)) {
        fail!(format_args!("highAvailability.sync.port"), "{port} is the UDP nodePort of service {:?}", s.name);
    }
    Ok(SyncConfig { port, key_file })
}

/// Single hop: every peer is on a subnet of every node (each gateway answers each router).
fn bfd(raw: &RawBfd, cfg: &Config) -> Result<Bfd> {
    capacity(format_args!("bfd.sessions"), &raw.sessions, board::MAX_BFD_SESSIONS)?;
    let mut out = Bfd { sessions: Vec::new(), shutdown_drain_millis: Bfd::DEFAULT_SHUTDOWN_DRAIN_MILLIS };
    if let Some(ms) = raw.shutdown_drain_millis {
        if ms > 60_000 {
            fail!(format_args!("bfd.shutdownDrainMillis"), "{ms} is longer than 60000");
        }
        out.shutdown_drain_millis = ms;
    }
    for (i, r) in raw.sessions.items.iter().enumerate() {
        let interval = |field: &str, value: Option<u32>| -> Result<u32> {
            match value.unwrap_or(BfdSession::DEFAULT_INTERVAL_MILLIS) {
                v @ 10..=10_000 => Ok(v),
                v => fail!(format_args!("bfd.sessions[{i}].{field}"), "{v} is outside 10-10000 milliseconds"),
            }
        };
        let path = format_args!("bfd.sessions[{i}].peer");
        let peer = ipv4(path, required(path, r.peer)?)?;
        if let Some(n) = cfg.nodes.iter().find(|n| n.address_on_link(peer).is_none()) {
            fail!(path, "{peer} is on none of node {}'s subnets (BFD is single hop)", n.name);
        }
        if cfg.nodes.iter().any(|n| n.owns(peer)) || cfg.services.iter().any(|s| s.virtual_ips().any(|v| v == peer)) {
            fail!(path, "{peer} is a node address or a virtual IP");
        }
        if out.sessions.iter().any(|s| s.peer == peer) {
            fail!(path, "{peer} has an earlier session");
        }
        let detect_multiplier = match r.detect_multiplier.unwrap_or(BfdSession::DEFAULT_DETECT_MULTIPLIER.into()) {
            m @ 1..=255 => m as u8,
            m => fail!(format_args!("bfd.sessions[{i}].detectMultiplier"), "{m} is outside 1-255"),
        };
        let session = BfdSession {
            peer,
            desired_min_tx_millis: interval("desiredMinTxMillis", r.desired_min_tx_millis)?,
            required_min_rx_millis: interval("requiredMinRxMillis", r.required_min_rx_millis)?,
            detect_multiplier,
        };
        let _ = out.sessions.push(session);
    }
    let taken =
        |s: &Service| s.ports.iter().any(|p| p.protocol == Protocol::Udp && p.node_port == Some(crate::bfd::PORT));
    if let Some(s) = cfg.services.iter().find(|s| !out.sessions.is_empty() && taken(s)) {
        fail!(format_args!("bfd"), "UDP port {} (BFD) is the nodePort of service {:?}", crate::bfd::PORT, s.name);
    }
    Ok(out)
}

fn health_check(i: usize, raw: &RawHealthCheck) -> Result<HealthCheck> {
    let within = |field: &str, value: Option<u32>, default: u32, max: u32| -> Result<u32> {
        match value.unwrap_or(default) {
            v if (1..=max).contains(&v) => Ok(v),
            v => fail!(format_args!("services[{i}].healthCheck.{field}"), "{v} is outside 1-{max}"),
        }
    };
    let d = board::HEALTH_CHECK_DEFAULTS;
    let http = match raw.kind.unwrap_or("TCP") {
        "TCP" => None,
        "HTTP" => Some(http_check(i, raw)?),
        other => fail!(format_args!("services[{i}].healthCheck.type"), "{:?} is not one of TCP, HTTP", Short(other)),
    };
    if http.is_none() {
        for (field, given) in [("path", raw.path.is_some()), ("host", raw.host.is_some())] {
            if given {
                fail!(format_args!("services[{i}].healthCheck.{field}"), "is only valid with type: HTTP");
            }
        }
        if raw.expected_statuses.len > 0 {
            fail!(format_args!("services[{i}].healthCheck.expectedStatuses"), "is only valid with type: HTTP");
        }
    }
    let h = HealthCheck {
        interval_seconds: within("intervalSeconds", raw.interval_seconds, d.interval_seconds, 3600)?,
        timeout_seconds: within("timeoutSeconds", raw.timeout_seconds, d.timeout_seconds, 3600)?,
        unhealthy_threshold: within("unhealthyThreshold", raw.unhealthy_threshold, d.unhealthy_threshold, 100)?,
        healthy_threshold: within("healthyThreshold", raw.healthy_threshold, d.healthy_threshold, 100)?,
        port: match raw.port {
            Some(p) => Some(port(format_args!("services[{i}].healthCheck.port"), p)?),
            None => None,
        },
        http,
    };
    if h.timeout_seconds > h.interval_seconds {
        fail!(
            format_args!("services[{i}].healthCheck.timeoutSeconds"),
            "{} is longer than intervalSeconds {}",
            h.timeout_seconds,
            h.interval_seconds
        );
    }
    Ok(h)
}

/// An HTTP check's request line and header: visible ASCII only, so that nothing in the config
/// can end the line or add a header.
fn http_check(i: usize, raw: &RawHealthCheck) -> Result<HttpCheck> {
    let visible = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic());
    let path = raw.path.unwrap_or("/");
    if !path.starts_with('/') || !visible(path) {
        fail!(
            format_args!("services[{i}].healthCheck.path"),
            "{:?} is not a path (starting with '/', visible ASCII, no spaces)",
            Short(path)
        );
    }
    let Ok(path) = String::try_from(path) else {
        fail!(format_args!("services[{i}].healthCheck.path"), "is longer than {HTTP_PATH_LEN} bytes");
    };
    let host = match raw.host {
        None => None,
        Some(h) if !visible(h) => {
            fail!(
                format_args!("services[{i}].healthCheck.host"),
                "{:?} is not a host (visible ASCII, no spaces)",
                Short(h)
            )
        }
        Some(h) => match String::try_from(h) {
            Ok(h) => Some(h),
            Err(_) => fail!(format_args!("services[{i}].healthCheck.host"), "is longer than {HTTP_HOST_LEN} bytes"),
        },
    };
    if raw.expected_statuses.len > HTTP_STATUSES {
        fail!(format_args!("services[{i}].healthCheck.expectedStatuses"), "at most {HTTP_STATUSES} codes");
    }
    let mut statuses = Vec::new();
    for (j, &code) in raw.expected_statuses.items.iter().enumerate() {
        if !(100..=599).contains(&code) {
            fail!(
                format_args!("services[{i}].healthCheck.expectedStatuses[{j}]"),
                "{code} is not an HTTP status (100-599)"
            );
        }
        let _ = statuses.push(code as u16);
    }
    Ok(HttpCheck { path, host, statuses })
}

fn node_port(path: fmt::Arguments, value: u32, range: PortRange) -> Result<u16> {
    match u16::try_from(value) {
        Ok(p) if range.contains(p) => Ok(p),
        _ => fail!(path, "{value} is outside nodePortRange {range}"),
    }
}

fn service_port(
    i: usize,
    j: usize,
    raw: &RawPort,
    named: bool,
    kind: ServiceType,
    cfg: &Config,
) -> Result<ServicePort> {
    let name = match raw.name {
        Some(n) => Some(super::validate::name(format_args!("services[{i}].ports[{j}].name"), Some(n))?),
        None if named => {
            fail!(format_args!("services[{i}].ports[{j}].name"), "is required when a service has several ports")
        }
        None => None,
    };
    let protocol = match raw.protocol.unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => fail!(format_args!("services[{i}].ports[{j}].protocol"), "{:?} is not one of TCP, UDP", Short(other)),
    };
    let svc_port = port(
        format_args!("services[{i}].ports[{j}].port"),
        required(format_args!("services[{i}].ports[{j}].port"), raw.port)?,
    )?;
    let target_port = match raw.target_port {
        Some(p) => port(format_args!("services[{i}].ports[{j}].targetPort"), p)?,
        None => svc_port,
    };
    let node_port = match (kind, raw.node_port) {
        (ServiceType::ClusterIP, Some(_)) => {
            fail!(format_args!("services[{i}].ports[{j}].nodePort"), "a ClusterIP service has no nodePort")
        }
        (_, Some(p)) => Some(node_port(format_args!("services[{i}].ports[{j}].nodePort"), p, cfg.node_port_range)?),
        (_, None) => None,
    };
    Ok(ServicePort { name, protocol, port: svc_port, target_port, node_port })
}

fn endpoint(i: usize, j: usize, raw: &RawEndpoint, cfg: &Config) -> Result<Endpoint> {
    let path = format_args!("services[{i}].endpoints[{j}].ip");
    let ip = ipv4(format_args!("services[{i}].endpoints[{j}].ip"), required(path, raw.ip)?)?;
    if let Some(n) = cfg.nodes.iter().find(|n| n.owns(ip)) {
        fail!(format_args!("services[{i}].endpoints[{j}].ip"), "{ip} is an address of node {}", n.name);
    }
    let node = match raw.node_name {
        Some(n) => match cfg.nodes.iter().position(|node| node.name == n) {
            Some(k) => Some(k as u8),
            None => {
                fail!(format_args!("services[{i}].endpoints[{j}].nodeName"), "{:?} is not one of the nodes", Short(n))
            }
        },
        None => None,
    };
    let weight = match raw.weight.unwrap_or(1) {
        w @ 1..=255 => w as u8,
        w => fail!(format_args!("services[{i}].endpoints[{j}].weight"), "{w} is outside 1-255"),
    };
    Ok(Endpoint { ip, node, weight, ready: raw.ready.unwrap_or(true), terminating: raw.terminating.unwrap_or(false) })
}

/// Gives every NodePort port left without a nodePort one from the range: a hash of the
/// service's and port's names picks where to start looking, so the same config always gets the
/// same ports, and adding a service at the end of the file never moves another's.
fn allocate_node_ports(cfg: &mut Config) -> Result<()> {
    let range = cfg.node_port_range;
    let span = (range.last - range.first) as u64 + 1;
    for i in 0..cfg.services.len() {
        if cfg.services[i].kind != ServiceType::NodePort {
            continue;
        }
        for j in 0..cfg.services[i].ports.len() {
            let p = &cfg.services[i].ports[j];
            if p.node_port.is_some() {
                continue;
            }
            let protocol = p.protocol;
            let key = name_hash(cfg.services[i].name.as_bytes())
                ^ name_hash(p.name.as_deref().unwrap_or("").as_bytes()).rotate_left(17);
            let start = key % span;
            let free = (0..span).map(|k| range.first + ((start + k) % span) as u16).find(|&candidate| {
                !cfg.services.iter().any(|s| {
                    s.ports.iter().any(|o| o.node_port == Some(candidate) && o.protocol == protocol)
                        || (protocol == Protocol::Tcp && s.health_check_node_port == Some(candidate))
                })
            });
            match free {
                Some(port) => cfg.services[i].ports[j].node_port = Some(port),
                None => fail!(
                    format_args!("services[{i}].ports[{j}].nodePort"),
                    "no free port left in nodePortRange {range}"
                ),
            }
        }
    }
    Ok(())
}

/// A healthCheckNodePort is a TCP port of its own: no nodePort, no other service's.
fn check_health_check_node_ports(cfg: &Config) -> Result<()> {
    for (i, s) in cfg.services.iter().enumerate() {
        let Some(hc) = s.health_check_node_port else { continue };
        let clash = cfg.services.iter().enumerate().find(|(k, o)| {
            o.ports.iter().any(|p| p.node_port == Some(hc) && p.protocol == Protocol::Tcp)
                || (*k != i && o.health_check_node_port == Some(hc))
        });
        if let Some((_, o)) = clash {
            fail!(format_args!("services[{i}].healthCheckNodePort"), "{hc} is already used by service {:?}", o.name);
        }
    }
    Ok(())
}

fn name_hash(bytes: &[u8]) -> u64 {
    // FNV-1a: stable across builds and releases, which is all allocation needs.
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A source range: any network with a prefix length, like `192.168.0.0/16`.
fn network(path: fmt::Arguments, text: &str) -> Result<Ipv4Cidr> {
    let parsed = text.split_once('/').and_then(|(ip, len)| {
        let ip = Ipv4Addr::from_str(ip).ok()?;
        let len = u8::from_str(len).ok().filter(|l| *l <= 32)?;
        Some(Ipv4Cidr::new(ip, len).network())
    });
    match parsed {
        Some(c) => Ok(c),
        None => fail!(path, "{:?} is not an IPv4 network with a prefix length (like 192.168.0.0/16)", Short(text)),
    }
}

/// Quotes at most 40 characters of a rejected value, so that one bad value cannot flood a log
/// line or overflow the fixed-size error message.
struct Short<'a>(&'a str);

impl fmt::Debug for Short<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0.char_indices().nth(40) {
            None => fmt::Debug::fmt(self.0, f),
            Some((cut, _)) => write!(f, "{:?}...", &self.0[..cut]),
        }
    }
}
