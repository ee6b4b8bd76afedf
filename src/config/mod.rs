//! The site configuration: one JSON file per site, Kubernetes field names, fixed capacities.
//!
//! [`parse`] reads the bytes into [`raw`] types and [`validate`]s them into a [`Config`], in which
//! every value is known to be good. Errors carry the field path
//! (`services[0].ports[0].nodePort: …`), so an operator sees where a file is wrong.

pub mod diff;
mod raw;
mod validate;

use core::fmt::{self, Write};
use core::net::Ipv4Addr;
use heapless::{String, Vec};
use smoltcp::wire::{EthernetAddress, Ipv4Cidr};

use crate::board;

/// Longest object name: a Kubernetes DNS label.
pub const NAME_LEN: usize = 63;
/// Longest Linux interface name (IFNAMSIZ - 1).
pub const IFNAME_LEN: usize = 15;

pub type Name = String<NAME_LEN>;
pub type IfName = String<IFNAME_LEN>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const DEFAULT: PortRange = PortRange { first: 30000, last: 32767 };
    /// Source ports of the board's SNAT pools.
    pub const SNAT: PortRange = PortRange { first: board::SNAT_PORT_MIN, last: board::SNAT_PORT_MAX };
    /// Source ports of the node's own connections (health probes); build.rs keeps the SNAT
    /// range below them.
    pub const NODE_CLIENTS: PortRange = PortRange { first: board::NODE_CLIENT_PORT_MIN, last: 65535 };

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    pub const fn ports(&self) -> core::ops::RangeInclusive<u16> {
        self.first..=self.last
    }

    /// Ports in the range.
    pub const fn count(&self) -> usize {
        (self.last - self.first) as usize + 1
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    /// Reachable on its clusterIP and externalIPs only.
    ClusterIP,
    /// Also reachable on every node address at its ports' nodePorts.
    NodePort,
}

impl ServiceType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
        }
    }
}

/// `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAffinity {
    None,
    /// Every new connection from one client address goes to the same endpoint until
    /// `timeout_seconds` pass without a new connection.
    ClientIp {
        timeout_seconds: u32,
    },
}

impl SessionAffinity {
    /// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10800;
}

/// Active health checks of each endpoint: a TCP connect, or an HTTP `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval_seconds: u32,
    pub timeout_seconds: u32,
    /// Failed checks in a row that take an endpoint out.
    pub unhealthy_threshold: u32,
    /// Successful checks in a row that bring it back.
    pub healthy_threshold: u32,
    /// The port checked; `None`: the targetPort of the service's first port.
    pub port: Option<u16>,
    pub http: Option<HttpCheck>,
}

/// The longest `healthCheck.path` and `healthCheck.host`, and how many status codes a check
/// may expect.
pub const HTTP_PATH_LEN: usize = 128;
pub const HTTP_HOST_LEN: usize = 64;
pub const HTTP_STATUSES: usize = 8;

/// An HTTP check: `GET path` with `Host: host`, passed by one of the expected statuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub path: String<HTTP_PATH_LEN>,
    /// `None`: the endpoint's `ip:port`.
    pub host: Option<String<HTTP_HOST_LEN>>,
    /// Empty: any of 200-399, as a Kubernetes `httpGet` probe.
    pub statuses: Vec<u16, HTTP_STATUSES>,
}

impl HttpCheck {
    pub fn passes(&self, status: u16) -> bool {
        if self.statuses.is_empty() { (200..400).contains(&status) } else { self.statuses.contains(&status) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// Any ready endpoint; the client's address is replaced by the node's (SNAT).
    Cluster,
    /// This node's endpoints and those of no node, not another node's; the client's address
    /// is kept.
    Local,
}

impl TrafficPolicy {
    pub const fn as_str(self) -> &'static str {
        match self {
            TrafficPolicy::Cluster => "Cluster",
            TrafficPolicy::Local => "Local",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub name: Name,
    pub tap: IfName,
    pub bridge: Option<IfName>,
    pub mac: EthernetAddress,
    pub addresses: Vec<Ipv4Cidr, { board::MAX_ADDRESSES_PER_NODE }>,
    pub gateway: Option<Ipv4Addr>,
    pub metrics_port: Option<u16>,
}

impl Node {
    /// The node's address on the subnet that holds `ip`, if any.
    pub fn address_on_link(&self, ip: Ipv4Addr) -> Option<Ipv4Addr> {
        self.addresses.iter().find(|c| c.contains_addr(&ip)).map(|c| c.address())
    }

    pub fn owns(&self, ip: Ipv4Addr) -> bool {
        self.addresses.iter().any(|c| c.address() == ip)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub name: Option<Name>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: u16,
    /// `None` for a ClusterIP service. Left out in a NodePort service, it is allocated.
    pub node_port: Option<u16>,
}

impl fmt::Display for ServicePort {
    /// As `kubectl get svc` shows it: `80:30080/TCP`, or `80/TCP` without a nodePort.
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.node_port {
            Some(np) => write!(f, "{}:{np}/{}", self.port, self.protocol.as_str()),
            None => write!(f, "{}/{}", self.port, self.protocol.as_str()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// Index in [`Config::nodes`] of the node the endpoint runs on (`nodeName`).
    pub node: Option<u8>,
    /// Maglev weight, 1-255.
    pub weight: u8,
    pub ready: bool,
    /// Shutting down: used only while no endpoint is ready, as Kubernetes does.
    pub terminating: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: Name,
    pub kind: ServiceType,
    pub external_traffic_policy: TrafficPolicy,
    pub cluster_ip: Option<Ipv4Addr>,
    pub external_ips: Vec<Ipv4Addr, { board::MAX_EXTERNAL_IPS_PER_SERVICE }>,
    pub session_affinity: SessionAffinity,
    /// `loadBalancerSourceRanges`: when not empty, only clients in these ranges get through.
    pub source_ranges: Vec<Ipv4Cidr, { board::MAX_SOURCE_RANGES_PER_SERVICE }>,
    pub health_check_node_port: Option<u16>,
    pub health_check: Option<HealthCheck>,
    pub ports: Vec<ServicePort, { board::MAX_PORTS_PER_SERVICE }>,
    pub endpoints: Vec<Endpoint, { board::MAX_ENDPOINTS_PER_SERVICE }>,
}

impl Service {
    /// Whether `client` may use the service (`loadBalancerSourceRanges`).
    pub fn admits(&self, client: Ipv4Addr) -> bool {
        self.source_ranges.is_empty() || self.source_ranges.iter().any(|r| r.contains_addr(&client))
    }

    /// Whether node `node` (its index in the nodes) sends the service's traffic to `endpoint`:
    /// any endpoint with Cluster policy; with Local, not one of another node's. An endpoint
    /// with no node is off the gateways (a Kubernetes node behind them, a server): every
    /// gateway reaches it alike, and keeps the client's address for it.
    pub fn sends_to(&self, endpoint: &Endpoint, node: u8) -> bool {
        self.external_traffic_policy == TrafficPolicy::Cluster || endpoint.node.is_none_or(|n| n == node)
    }

    /// The addresses the service listens on besides the node's: clusterIP and externalIPs.
    pub fn virtual_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.cluster_ip.iter().chain(self.external_ips.iter()).copied()
    }
}

/// A validated site configuration.
/// Two or more gateways on one segment acting as one, the election left to keepalived: the
/// active one answers ARP for the services' virtual IPs and for these floating addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HighAvailability {
    /// The source endpoints see with `externalTrafficPolicy: Cluster`, so that their replies
    /// follow the active gateway.
    pub snat_address: Ipv4Addr,
    /// The address endpoints of `Local` services route client traffic back through.
    pub endpoint_gateway_address: Option<Ipv4Addr>,
    /// Flow sync between the gateways (the site's nodes); off when `None`.
    pub sync: Option<SyncConfig>,
}

/// Where flow sync listens and where its key is. The key is not in the config (which is shared
/// and shown), only the file's name: the file is the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub port: u16,
    pub key_file: String<{ SyncConfig::KEY_FILE_MAX }>,
}

impl SyncConfig {
    /// The port flow sync uses when the config names none: the IPVS sync daemon's.
    pub const DEFAULT_PORT: u16 = 8848;
    pub const KEY_FILE_MAX: usize = 128;
}

impl HighAvailability {
    /// The addresses that move with the active role.
    pub fn floating(&self) -> impl Iterator<Item = Ipv4Addr> {
        core::iter::once(self.snat_address).chain(self.endpoint_gateway_address)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node_port_range: PortRange,
    pub nodes: Vec<Node, { board::MAX_NODES }>,
    pub services: Vec<Service, { board::MAX_SERVICES }>,
    pub high_availability: Option<HighAvailability>,
    /// BFD sessions each node answers (the routers in front); none configured: no BFD.
    pub bfd: Bfd,
}

/// What the `bfd` section sets: the sessions, and how a stopping gateway leaves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bfd {
    pub sessions: Vec<BfdSession, { board::MAX_BFD_SESSIONS }>,
    /// How long a gateway that was told to stop goes on forwarding after it sent AdminDown,
    /// so that the router moves new flows away before the old ones lose their gateway.
    pub shutdown_drain_millis: u32,
}

impl Bfd {
    /// Enough for the router to hear AdminDown and the connections that were opening to open.
    pub const DEFAULT_SHUTDOWN_DRAIN_MILLIS: u32 = 2000;
}

/// One BFD session: its peer (on a node's subnet: single hop) and its timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdSession {
    pub peer: Ipv4Addr,
    pub desired_min_tx_millis: u32,
    pub required_min_rx_millis: u32,
    pub detect_multiplier: u8,
}

impl BfdSession {
    /// 3 x 100 ms: a dead gateway is out of the router's table in 300 ms.
    pub const DEFAULT_INTERVAL_MILLIS: u32 = 100;
    pub const DEFAULT_DETECT_MULTIPLIER: u8 = 3;
}

impl Config {
    /// The index of `node`, one of this config's nodes, in `nodes`: what an endpoint's `node`
    /// holds.
    pub fn index_of(&self, node: &Node) -> u8 {
        self.nodes.iter().position(|n| n.name == node.name).unwrap_or(0) as u8
    }

    /// The node this gateway runs as: `name`, or the only node when none is given.
    pub fn node(&self, name: Option<&str>) -> Result<&Node, ConfigError> {
        match name {
            Some(name) => self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
                let mut known: String<256> = String::new();
                for (i, n) in self.nodes.iter().enumerate() {
                    let _ = write!(known, "{}{}", if i > 0 { ", " } else { "" }, n.name);
                }
                ConfigError::new(format_args!("--node"), format_args!("no node named {name:?} (nodes: {known})"))
            }),
            None if self.nodes.len() == 1 => Ok(&self.nodes[0]),
            None => Err(ConfigError::new(
                format_args!("--node"),
                format_args!("the config has {} nodes: name one with --node", self.nodes.len()),
            )),
        }
    }
}

/// Why a config was rejected: the field's path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String<96>,
    pub message: String<192>,
}

impl ConfigError {
    pub fn new(path: fmt::Arguments, message: fmt::Arguments) -> Self {
        let mut e = ConfigError { path: String::new(), message: String::new() };
        // Both buffers are sized for the longest path and message this module writes.
        let _ = e.path.write_fmt(path);
        let _ = e.message.write_fmt(message);
        e
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Deepest nesting of objects and arrays a config may have. The real shape needs five levels;
/// the parser recurses once per level, so a hostile file must not choose the depth.
pub const MAX_NESTING: usize = 16;

/// Parses and validates a config file's bytes.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    check_nesting(bytes)?;
    let mut raw = raw::RawConfig::default();
    parse_raw(bytes, &mut raw)?;
    validate::config(&raw)
}

/// Rejects JSON nested deeper than [`MAX_NESTING`], before the recursive parser sees it.
fn check_nesting(bytes: &[u8]) -> Result<(), ConfigError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (at, &b) in bytes.iter().enumerate() {
        match (in_string, b) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'{' | b'[') => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(ConfigError::new(
                        format_args!(""),
                        format_args!("invalid JSON: nested deeper than {MAX_NESTING} levels at byte {at}"),
                    ));
                }
            }
            (false, b'}' | b']') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Parses `bytes` into `raw`, in place: the lists of a config are a few hundred KiB at the
/// board's capacities, which a parse by value would copy from frame to frame.
fn parse_raw<'a>(bytes: &'a [u8], raw: &mut raw::RawConfig<'a>) -> Result<(), ConfigError> {
    let invalid = |e: serde_json_core::de::Error| ConfigError::new(format_args!(""), format_args!("invalid JSON: {e}"));
    let mut de = serde_json_core::de::Deserializer::new(bytes, None);
    serde::Deserialize::deserialize_in_place(&mut de, raw).map_err(invalid)?;
    de.end().map(|_| ()).map_err(invalid)
}

#[cfg(test)]
mod test;
