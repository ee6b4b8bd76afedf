//! The node's HTTP servers on its own smoltcp sockets: each service's healthCheckNodePort, and
//! `/metrics` and `/healthz` on the node's metricsPort.
//!
//! smoltcp has no listen backlog, so each port listens with a few sockets, each serving one
//! connection at a time. A response is rendered once into the connection's fixed buffer and
//! sent as the socket drains, so a slow client holds one socket and never the loop. Every
//! connection has deadlines (its handshake, its request, the whole exchange), so that clients
//! that connect and vanish, or spoofed SYNs, hold a socket for seconds, never for good.

use std::vec;
use std::vec::Vec;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

use crate::config::{Config, Node};
use crate::engine::Engine;
use crate::health::render_response;
use crate::metrics;
use crate::text::SliceWriter;
use crate::time::{Millis, Turns};

/// Sockets per port: concurrent clients (scrapers, load-balancer health checks).
const SOCKETS_PER_PORT: usize = 4;
/// Longest request read; the requests served here are one line and a few headers.
const MAX_REQUEST: usize = 1024;
/// Send buffers: a metrics answer streams through 16 KiB; a health answer fits in one.
const METRICS_SEND_BUFFER: usize = 16 * 1024;
const HEALTH_SEND_BUFFER: usize = 512;
/// Largest answers: the metrics text with its status line and headers; a health answer.
const METRICS_RESPONSE: usize = metrics::MAX_TEXT + 256;
const HEALTH_RESPONSE: usize = 512;
/// How long a connection may take, from its SYN: to finish the handshake (a SYN from a spoofed
/// source never does), to send its whole request, and for the whole exchange, closing included
/// (a client that vanishes mid-answer, or never sends its last FIN).
const HANDSHAKE_MS: u64 = 2_000;
const REQUEST_MS: u64 = 5_000;
const CONNECTION_MS: u64 = 10_000;

#[derive(Clone, Copy)]
enum Site {
    /// The healthCheckNodePort of service `.0`.
    Health(usize),
    Metrics,
}

struct Conn {
    site: Site,
    port: u16,
    socket: SocketHandle,
    request: Vec<u8>,
    /// Room for the largest answer of the site, zeroed at start (so its pages are mapped only
    /// when a response is that large); the answer is `response[..response_len]`.
    response: Vec<u8>,
    response_len: usize,
    /// Bytes of the answer sent; `None` while the request is being read.
    sent: Option<usize>,
    /// When the socket's connection began (its SYN came), while it has one.
    since: Option<Millis>,
}

/// The most the servers reserve: sockets and response buffers of the metrics port and of a
/// healthCheckNodePort for every service the board holds.
pub const fn static_bytes() -> usize {
    let request = 2 * MAX_REQUEST;
    let metrics = SOCKETS_PER_PORT * (request + METRICS_SEND_BUFFER + METRICS_RESPONSE);
    let health = crate::board::MAX_SERVICES * SOCKETS_PER_PORT * (request + HEALTH_SEND_BUFFER + HEALTH_RESPONSE);
    metrics + health
}

pub struct HttpServer {
    conns: Vec<Conn>,
}

impl HttpServer {
    pub fn new(config: &Config, node: &Node, sockets: &mut SocketSet<'_>) -> HttpServer {
        let mut sites: Vec<(Site, u16, usize, usize)> = Vec::new();
        for (s, svc) in config.services.iter().enumerate() {
            if let Some(port) = svc.health_check_node_port {
                sites.push((Site::Health(s), port, HEALTH_RESPONSE, HEALTH_SEND_BUFFER));
            }
        }
        if let Some(port) = node.metrics_port {
            sites.push((Site::Metrics, port, METRICS_RESPONSE, METRICS_SEND_BUFFER));
        }
        let mut conns = Vec::new();
        for (site, port, response_size, send_buffer) in sites {
            for _ in 0..SOCKETS_PER_PORT {
                let rx = tcp::SocketBuffer::new(vec![0; MAX_REQUEST]);
                let tx = tcp::SocketBuffer::new(vec![0; send_buffer]);
                let socket = sockets.add(tcp::Socket::new(rx, tx));
                let request = Vec::with_capacity(MAX_REQUEST);
                let response = vec![0; response_size];
                conns.push(Conn { site, port, socket, request, response, response_len: 0, sent: None, since: None });
            }
        }
        HttpServer { conns }
    }

    /// Takes the servers' sockets out of the set (before a reload builds new ones).
    pub fn remove(self, sockets: &mut SocketSet<'_>) {
        for c in self.conns {
            sockets.remove(c.socket);
        }
    }

    /// Reads requests, renders answers, sends what the sockets take, and takes back the
    /// sockets of connections past their deadline.
    pub fn poll(&mut self, now: Millis, config: &Config, sockets: &mut SocketSet<'_>, engine: &Engine, turns: &Turns) {
        for c in &mut self.conns {
            let socket = sockets.get_mut::<tcp::Socket>(c.socket);
            if socket.state() == tcp::State::TimeWait {
                // Both FINs are through: free the socket for the next client now.
                socket.abort();
            }
            if socket.is_listening() {
                c.since = None;
            } else if socket.is_open() {
                let since = *c.since.get_or_insert(now);
                let limit = match (socket.state(), c.sent) {
                    (tcp::State::SynReceived, _) => HANDSHAKE_MS,
                    (_, None) => REQUEST_MS,
                    _ => CONNECTION_MS,
                };
                if now.0.saturating_sub(since.0) > limit {
                    socket.abort();
                }
            }
            if !socket.is_open() {
                c.request.clear();
                c.sent = None;
                c.since = None;
                let _ = socket.listen(c.port);
                continue;
            }
            if c.sent.is_none() {
                let mut chunk = [0u8; 256];
                while let Ok(n @ 1..) = socket.recv_slice(&mut chunk) {
                    let room = MAX_REQUEST - c.request.len();
                    c.request.extend_from_slice(&chunk[..n.min(room)]);
                }
                let complete = c.request.windows(4).any(|w| w == b"\r\n\r\n") || c.request.len() == MAX_REQUEST;
                if complete {
                    respond(c, config, engine, turns);
                    c.sent = Some(0);
                } else if socket.state() == tcp::State::CloseWait {
                    // The client left without a whole request.
                    socket.close();
                    continue;
                }
            }
            if let Some(sent) = c.sent {
                if let Ok(n) = socket.send_slice(&c.response[sent..c.response_len]) {
                    c.sent = Some(sent + n);
                }
                if c.sent == Some(c.response_len) {
                    socket.close();
                }
            }
        }
    }
}

/// Renders the answer to `c.request` into `c.response`.
fn respond(c: &mut Conn, config: &Config, engine: &Engine, turns: &Turns) {
    let path = request_path(&c.request);
    let len = match (c.site, path) {
        (Site::Health(s), _) => {
            let name = config.services.get(s).map_or("", |svc| svc.name.as_str());
            render_response(name, engine.ready_endpoints(s), &mut c.response)
        }
        (Site::Metrics, Some("/metrics")) => {
            const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nConnection: close\r\n\r\n";
            c.response[..HEAD.len()].copy_from_slice(HEAD);
            let mut w = SliceWriter::new(&mut c.response[HEAD.len()..]);
            metrics::render(engine, turns, &mut w).ok().map(|()| HEAD.len() + w.len())
        }
        (Site::Metrics, Some("/healthz")) => {
            fixed(&mut c.response, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
        }
        (Site::Metrics, _) => fixed(
            &mut c.response,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
        ),
    };
    let fallback = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    c.response_len = len.unwrap_or_else(|| fixed(&mut c.response, fallback).unwrap_or(0));
}

fn fixed(out: &mut [u8], text: &[u8]) -> Option<usize> {
    out.get_mut(..text.len())?.copy_from_slice(text);
    Some(text.len())
}

/// The path of a `GET PATH HTTP/1.x` request line.
fn request_path(request: &[u8]) -> Option<&str> {
    let line = request.split(|&b| b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) => Some(path.split('?').next().unwrap_or(path)),
        _ => None,
    }
}
