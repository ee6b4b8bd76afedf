//! The `nodegate` command: `run` the gateway, or `check` a config.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use nodegate::board;
use nodegate::config::{Config, Node, SessionAffinity, diff};

use nodegate::host::{control, load, memory, runner};

#[derive(Parser)]
#[command(name = "nodegate", about = "NodePort gateway on a TAP device: kube-proxy's NodePort semantics on smoltcp")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway on the node's TAP device until SIGINT or SIGTERM (SIGHUP reloads).
    Run {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        control: Control,
        /// Switch to this user once the TAP and the control socket are open.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Microseconds to keep looking at the TAP after a turn with traffic before sleeping
        /// (0: sleep at once); the board's spinMicros by default.
        #[arg(long, value_name = "MICROS", default_value_t = board::SPIN_MICROS)]
        spin_micros: u32,
    },
    /// Validate a config and show its services as `kubectl get svc` does; with --diff, what a
    /// reload from RUNNING to NEW would change.
    Check {
        #[command(flatten)]
        target: Target,
        /// Compare two config files instead: the running one and the next.
        #[arg(long, num_args = 2, value_names = ["RUNNING", "NEW"])]
        diff: Option<Vec<PathBuf>>,
    },
    /// Show the running gateway: uptime, role, services, endpoints, counters, table fill.
    Status {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        control: Control,
        /// Print nothing and exit 0 only when the gateway is fit to be active: its loop answers
        /// and every service has an endpoint taking new flows (keepalived's `vrrp_script`).
        #[arg(long)]
        check: bool,
    },
    /// Make the running gateway the active or the standby one of its high-availability pair
    /// (keepalived's notify scripts call this).
    Ha {
        #[arg(value_parser = ["active", "standby"])]
        role: String,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        control: Control,
    },
    /// Drain an endpoint of a service on the running gateway: it takes no new flows (affinity
    /// pins move), its tracked flows go on; a reload keeps it drained.
    Drain(EndpointOf),
    /// Take a drained endpoint back: it takes new flows again.
    Undrain(EndpointOf),
    /// List the tracked flows of the running gateway, as `conntrack -L` does.
    Conntrack {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        control: Control,
        /// Only the flows of this service.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
    },
    /// Have the running gateway re-read and apply its config file (as SIGHUP does).
    Reload {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        control: Control,
    },
}

#[derive(clap::Args)]
struct Control {
    /// The control socket [default: /run/nodegate/NODE.sock].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
}

/// An endpoint of a service on the running gateway.
#[derive(clap::Args)]
struct EndpointOf {
    /// The service's name.
    service: String,
    /// The endpoint's address.
    endpoint: std::net::Ipv4Addr,
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    control: Control,
}

#[derive(clap::Args)]
struct Target {
    /// The site's config file; without it, the built-in config/default.json.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Which node of the config this gateway is; may be left out when there is one.
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

/// `--version`: the build's board, what its tables hold, and the memory they take.
fn version() -> String {
    let parts: Vec<String> =
        memory::parts().iter().map(|(part, bytes)| format!("{part} {} KiB", bytes.div_ceil(1024))).collect();
    format!(
        "{} (board {}: {} flows x {} bytes, {} services x {} ports x {} endpoints, Maglev table {}, {} neighbours; memory: {} = {} KiB of the board's {} KiB)",
        env!("CARGO_PKG_VERSION"),
        board::NAME,
        board::CONNTRACK_CAPACITY,
        memory::bytes_per_flow(),
        board::MAX_SERVICES,
        board::MAX_PORTS_PER_SERVICE,
        board::MAX_ENDPOINTS_PER_SERVICE,
        board::MAGLEV_TABLE_SIZE,
        board::NEIGHBOR_CAPACITY,
        parts.join(", "),
        memory::total().div_ceil(1024),
        board::RAM_BUDGET_BYTES / 1024,
    )
}

fn main() -> ExitCode {
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Check { target, diff: None } => check(&target),
        Command::Check { target, diff: Some(files) } => diff(&target, &files),
        Command::Run { target, control, user, spin_micros } => run(&target, control, user, spin_micros),
        Command::Status { target, control, check: false } => ask(&target, &control, "status"),
        Command::Status { target, control, check: true } => ask(&target, &control, "check"),
        Command::Ha { role, target, control } => ask(&target, &control, &format!("ha {role}")),
        Command::Conntrack { target, control, service } => {
            ask(&target, &control, &format!("conntrack {}", service.unwrap_or_default()))
        }
        Command::Reload { target, control } => ask(&target, &control, "reload"),
        Command::Drain(e) => ask(&e.target, &e.control, &format!("drain {} {}", e.service, e.endpoint)),
        Command::Undrain(e) => ask(&e.target, &e.control, &format!("undrain {} {}", e.service, e.endpoint)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(t: &Target, control: Control, user: Option<String>, spin_micros: u32) -> Result<(), Box<dyn Error>> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let (source, config) = load::load(t.config.as_deref())?;
    let options = runner::Options {
        config_path: t.config.clone(),
        node: t.node.clone(),
        control: control.control,
        user,
        spin_micros,
    };
    Ok(runner::run(config, &source, &options)?)
}

/// Sends `command` to the running gateway and prints its answer.
fn ask(t: &Target, c: &Control, command: &str) -> Result<(), Box<dyn Error>> {
    let path = match (&c.control, &t.node) {
        (Some(path), _) => path.clone(),
        (None, Some(node)) => control::default_path(node),
        (None, None) => {
            let (source, config) = load::load(t.config.as_deref())?;
            control::default_path(&config.node(None).map_err(|e| format!("{source}: {e}"))?.name)
        }
    };
    print!("{}", control::client(&path, command.trim())?);
    Ok(())
}

fn check(t: &Target) -> Result<(), Box<dyn Error>> {
    let (source, config) = load::load(t.config.as_deref())?;
    let node = config.node(t.node.as_deref()).map_err(|e| format!("{source}: {e}"))?;
    print!("{}", service_table(&config, node));
    Ok(())
}

/// What a reload from `files[0]` to `files[1]` would change, or why it would be refused.
fn diff(t: &Target, files: &[PathBuf]) -> Result<(), Box<dyn Error>> {
    let [running, next] = files else { return Err("--diff takes two files: RUNNING NEW".into()) };
    let (running_source, running) = load::load(Some(running))?;
    let (next_source, next) = load::load(Some(next))?;
    for (source, config) in [(&running_source, &running), (&next_source, &next)] {
        config.node(t.node.as_deref()).map_err(|e| format!("{source}: {e}"))?;
    }
    diff::reload_refuses(&running, &next, t.node.as_deref())
        .map_err(|e| format!("{next_source}: a reload would be refused: {e}"))?;
    let mut out = String::new();
    if diff::write_changes(&running, &next, &mut out)? == 0 {
        out.push_str("no change\n");
    }
    print!("{out}");
    Ok(())
}

/// The services as `kubectl get svc -o wide` shows them, with the effective values: allocated
/// nodePorts, policy, affinity, and the endpoints this node sends to.
fn service_table(config: &Config, node: &Node) -> String {
    let none = || "<none>".to_string();
    let list = |items: Vec<String>| if items.is_empty() { none() } else { items.join(",") };
    let mut rows = vec![
        ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "POLICY", "AFFINITY", "ENDPOINTS"].map(String::from),
    ];
    let node_index = config.index_of(node);
    for svc in &config.services {
        let target = svc.ports.first().map_or(0, |p| p.target_port);
        let endpoints = svc
            .endpoints
            .iter()
            .filter(|e| svc.sends_to(e, node_index))
            .map(|e| format!("{}:{target}", e.ip))
            .collect();
        let policy = match svc.health_check_node_port {
            Some(hc) => format!("{} (health {hc})", svc.external_traffic_policy.as_str()),
            None => svc.external_traffic_policy.as_str().into(),
        };
        rows.push([
            svc.name.to_string(),
            svc.kind.as_str().into(),
            svc.cluster_ip.map_or_else(none, |ip| ip.to_string()),
            list(svc.external_ips.iter().map(|ip| ip.to_string()).collect()),
            list(svc.ports.iter().map(|p| p.to_string()).collect()),
            policy,
            match svc.session_affinity {
                SessionAffinity::None => "None".into(),
                SessionAffinity::ClientIp { timeout_seconds } => format!("ClientIP ({timeout_seconds}s)"),
            },
            list(endpoints),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}
