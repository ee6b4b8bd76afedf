//! Flow sync on the node's own smoltcp stack: the key read from its file, one UDP socket on
//! the sync port, the engine's messages sent to its peers and theirs handed to it.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::string::{String, ToString};
use std::vec;

use log::warn;
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::udp;
use smoltcp::wire::{IpAddress, IpEndpoint};

use crate::board;
use crate::config::{Config, ConfigError};
use crate::engine::Engine;
use crate::sync::wire::{KEY_MAX, KEY_MIN, Key};
use crate::sync::{Destination, SyncDrop};
use crate::time::Millis;

/// Datagrams each way the socket holds between two turns: more than a turn's batches and
/// table slices.
const QUEUED_DATAGRAMS: usize = 4 * board::SYNC_QUEUED_MESSAGES + 2 * board::SYNC_TABLE_MESSAGES_PER_TURN;

/// Why flow sync could not start; each names the file or field.
#[derive(Debug)]
pub enum SyncError {
    KeyFile { file: String, error: io::Error },
    KeyLength { file: String, len: usize },
    Config(std::boxed::Box<ConfigError>),
}

impl std::error::Error for SyncError {}

impl fmt::Display for SyncError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SyncError::KeyFile { file, error } => write!(f, "highAvailability.sync.keyFile {file}: {error}"),
            SyncError::KeyLength { file, len } => write!(
                f,
                "highAvailability.sync.keyFile {file}: holds {len} bytes (trailing whitespace left out); a key is {KEY_MIN} to {KEY_MAX}"
            ),
            SyncError::Config(e) => write!(f, "{e}"),
        }
    }
}

/// The sync key of `config`, read from its file; `None` without flow sync. Read at start,
/// before the gateway gives up its privileges.
pub fn key_of(config: &Config) -> Result<Option<Key>, SyncError> {
    match config.high_availability.as_ref().and_then(|ha| ha.sync.as_ref()) {
        Some(sync) => read_key(Path::new(sync.key_file.as_str())).map(Some),
        None => Ok(None),
    }
}

/// Reads the key in `path`: its bytes, trailing whitespace left out (a key written by
/// `openssl rand -hex 32 > FILE` is its 64 characters). Warns when others may read it.
pub fn read_key(path: &Path) -> Result<Key, SyncError> {
    let file = path.display().to_string();
    let failed = |error| SyncError::KeyFile { file: file.clone(), error };
    let f = fs::File::open(path).map_err(failed)?;
    if f.metadata().map_err(failed)?.permissions().mode() & 0o077 != 0 {
        warn!("highAvailability.sync.keyFile {file}: readable by others than its owner (chmod 600 it)");
    }
    let mut bytes = vec::Vec::new();
    f.take(KEY_MAX as u64 + 64).read_to_end(&mut bytes).map_err(failed)?;
    let len = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    Key::new(&bytes[..len]).ok_or(SyncError::KeyLength { file, len })
}

/// The sync socket of a running gateway.
pub struct SyncSocket {
    handle: SocketHandle,
    port: u16,
    out: vec::Vec<u8>,
}

impl SyncSocket {
    /// Starts flow sync in `engine` as `config` says, with `key` (read by [`key_of`]).
    pub fn start(
        config: &Config,
        key: Key,
        engine: &mut Engine,
        sockets: &mut SocketSet<'_>,
    ) -> Result<Self, SyncError> {
        engine.start_sync(config, key).map_err(|e| SyncError::Config(std::boxed::Box::new(e)))?;
        let port = engine.sync_port().unwrap_or(crate::config::SyncConfig::DEFAULT_PORT);
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; QUEUED_DATAGRAMS],
                vec![0; QUEUED_DATAGRAMS * board::SYNC_MESSAGE_BYTES],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        // A fresh socket on a port no other socket of the node uses: bind cannot fail.
        let _ = socket.bind(port);
        Ok(SyncSocket { handle: sockets.add(socket), port, out: vec![0; board::SYNC_MESSAGE_BYTES] })
    }

    /// Hands what arrived to the engine, then sends what it has for its peers.
    pub fn poll(&mut self, now: Millis, sockets: &mut SocketSet<'_>, engine: &mut Engine) {
        let socket = sockets.get_mut::<udp::Socket>(self.handle);
        while let Ok((bytes, meta)) = socket.recv() {
            match meta.endpoint.addr {
                IpAddress::Ipv4(from) => engine.sync_receive(from, bytes, now),
            }
        }
        let peers: heapless::Vec<_, { board::MAX_NODES }> =
            engine.sync_state().map(|s| s.peers().collect()).unwrap_or_default();
        while let Some((to, len)) = engine.sync_output(now, &mut self.out) {
            let one;
            let destinations = match to {
                Destination::Peers => &peers[..],
                Destination::Peer(ip) => {
                    one = [ip];
                    &one[..]
                }
            };
            for &ip in destinations {
                let to = IpEndpoint::new(IpAddress::Ipv4(ip), self.port);
                if socket.send_slice(&self.out[..len], to).is_err() {
                    engine.count_sync_drop(SyncDrop::QueueFull);
                }
            }
        }
    }
}
