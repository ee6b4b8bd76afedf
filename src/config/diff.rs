//! What a reload from one config to the next would change, and whether it can: services matched
//! by name, their ports by name, protocol and port, their endpoints by address, as the running
//! gateway matches them (`engine/services.rs`, `Services::prepare`).

use core::fmt::{self, Write};

use super::{Config, ConfigError, Endpoint, Service, ServicePort, SessionAffinity};

/// A change a reload cannot apply (the node itself, flow sync, BFD are set up at start).
pub fn reload_refuses(running: &Config, next: &Config, node_name: Option<&str>) -> Result<(), ConfigError> {
    let (was, node) = (running.node(node_name)?, next.node(node_name)?);
    if (&node.tap, &node.bridge, node.mac, &node.addresses) != (&was.tap, &was.bridge, was.mac, &was.addresses) {
        return Err(ConfigError::new(
            format_args!("nodes"),
            format_args!(
                "node {} changed its TAP, bridge, MAC or addresses: restart nodegate to apply that",
                node.name
            ),
        ));
    }
    let sync_of = |c: &Config| c.high_availability.as_ref().and_then(|ha| ha.sync.clone());
    if sync_of(running) != sync_of(next) {
        // Its socket, key and peers are set up at start.
        return Err(ConfigError::new(
            format_args!("highAvailability.sync"),
            format_args!("changed: restart nodegate to apply that"),
        ));
    }
    if running.bfd != next.bfd {
        // Its sessions (discriminators, ports) are set up at start.
        return Err(ConfigError::new(format_args!("bfd"), format_args!("changed: restart nodegate to apply that")));
    }
    Ok(())
}

/// Writes a line per change from `running` to `next` (services, their settings, ports and
/// endpoints added, removed or changed); returns how many.
pub fn write_changes(running: &Config, next: &Config, out: &mut impl Write) -> Result<usize, fmt::Error> {
    let mut n = 0;
    let mut line = |out: &mut dyn Write, args: fmt::Arguments| -> fmt::Result {
        n += 1;
        out.write_fmt(args)?;
        out.write_char('\n')
    };
    for s in &next.services {
        if !running.services.iter().any(|r| r.name == s.name) {
            line(
                out,
                format_args!("service {}: added ({} ports, {} endpoints)", s.name, s.ports.len(), s.endpoints.len()),
            )?;
        }
    }
    for was in &running.services {
        let Some(now) = next.services.iter().find(|s| s.name == was.name) else {
            line(out, format_args!("service {}: removed", was.name))?;
            continue;
        };
        let name = &was.name;
        if settings(was) != settings(now) {
            line(out, format_args!("service {name}: {} -> {}", Settings(was), Settings(now)))?;
        }
        let same_port = |a: &ServicePort, b: &ServicePort| {
            (a.name.as_ref(), a.protocol, a.port) == (b.name.as_ref(), b.protocol, b.port)
        };
        for p in &now.ports {
            match was.ports.iter().find(|o| same_port(o, p)) {
                None => line(out, format_args!("service {name}: port {} added", Port(p)))?,
                Some(o) if o != p => line(out, format_args!("service {name}: port {} -> {}", Port(o), Port(p)))?,
                Some(_) => {}
            }
        }
        for o in was.ports.iter().filter(|o| !now.ports.iter().any(|p| same_port(o, p))) {
            line(out, format_args!("service {name}: port {} removed", Port(o)))?;
        }
        for e in &now.endpoints {
            match was.endpoints.iter().find(|o| o.ip == e.ip) {
                None => line(out, format_args!("service {name}: endpoint {} added", Ep(e, next)))?,
                Some(o) if Ep(o, running).to_key() != Ep(e, next).to_key() => {
                    line(out, format_args!("service {name}: endpoint {} -> {}", Ep(o, running), Ep(e, next)))?
                }
                Some(_) => {}
            }
        }
        for o in was.endpoints.iter().filter(|o| !now.endpoints.iter().any(|e| e.ip == o.ip)) {
            line(out, format_args!("service {name}: endpoint {} removed", o.ip))?;
        }
    }
    Ok(n)
}

/// A service's own settings, compared as a whole.
fn settings(s: &Service) -> impl PartialEq + '_ {
    (
        s.kind,
        s.external_traffic_policy,
        s.cluster_ip,
        &s.external_ips,
        s.session_affinity,
        &s.source_ranges,
        s.health_check_node_port,
        &s.health_check,
    )
}

struct Settings<'a>(&'a Service);

impl fmt::Display for Settings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let s = self.0;
        write!(f, "{} {}", s.kind.as_str(), s.external_traffic_policy.as_str())?;
        if let Some(ip) = s.cluster_ip {
            write!(f, " clusterIP {ip}")?;
        }
        for ip in &s.external_ips {
            write!(f, " externalIP {ip}")?;
        }
        if let SessionAffinity::ClientIp { timeout_seconds } = s.session_affinity {
            write!(f, " ClientIP {timeout_seconds}s")?;
        }
        for r in &s.source_ranges {
            write!(f, " from {r}")?;
        }
        if let Some(p) = s.health_check_node_port {
            write!(f, " healthCheckNodePort {p}")?;
        }
        if let Some(h) = &s.health_check {
            match &h.http {
                Some(http) => write!(f, " HTTP checks of {} every {}s", http.path, h.interval_seconds)?,
                None => write!(f, " checks every {}s", h.interval_seconds)?,
            }
        }
        Ok(())
    }
}

/// A port with its name and target: `http 80:30080/TCP->3000`.
struct Port<'a>(&'a ServicePort);

impl fmt::Display for Port<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if let Some(name) = &self.0.name {
            write!(f, "{name} ")?;
        }
        write!(f, "{}->{}", self.0, self.0.target_port)
    }
}

/// An endpoint with what a reload can change of it; its node by name (indices may move).
struct Ep<'a>(&'a Endpoint, &'a Config);

impl Ep<'_> {
    fn to_key(&self) -> (u8, bool, bool, Option<&str>) {
        (self.0.weight, self.0.ready, self.0.terminating, self.node())
    }

    fn node(&self) -> Option<&str> {
        self.0.node.and_then(|i| self.1.nodes.get(usize::from(i))).map(|n| n.name.as_str())
    }
}

impl fmt::Display for Ep<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let e = self.0;
        write!(f, "{} (weight {}, {}", e.ip, e.weight, if e.ready { "ready" } else { "not ready" })?;
        if e.terminating {
            f.write_str(", terminating")?;
        }
        if let Some(node) = self.node() {
            write!(f, ", on {node}")?;
        }
        f.write_str(")")
    }
}
