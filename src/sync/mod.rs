//! Flow sync between the gateways of a high-availability pair: what the active gateway tells
//! its peers about its flows, so that the one taking over already tracks them.
//!
//! Like the IPVS sync daemon and pfsync, the active gateway batches a record per new flow,
//! state change, removal and affinity pin, and sends the batch over UDP from its own stack to
//! every peer (the site's other nodes). A refresh walk resends, every few seconds, each flow
//! that saw traffic, so a peer's copy never expires while the flow lives. A gateway that starts
//! asks its peers for their whole table.
//!
//! Every message carries an HMAC-SHA256 tag ([`wire`]) and a sequence number in its sender's
//! run (`epoch`). A receiver takes a run only from a message that answers its own table
//! request (the nonce it drew), then each sequence number of that run once ([`replay`]): a
//! recorded message is refused forever after, a forged one never passes its tag. Without the
//! key nobody can install a NAT entry through the sync port.
//!
//! This module holds the state (peers, runs, the outgoing batches, counters); what a record
//! does to the engine's tables is in `engine/sync.rs`.

pub mod replay;
pub mod wire;

use core::net::Ipv4Addr;

use crate::board;
use crate::time::Millis;
use replay::Window;
use wire::{HEADER_LEN, Header, Key, Kind, Record, TAG_LEN};

/// Bytes of records one message holds.
const RECORD_ROOM: usize = board::SYNC_MESSAGE_BYTES - HEADER_LEN - TAG_LEN;

reasons! {
    /// Why a sync message (or one of its records) was not taken.
    pub enum SyncDrop {
        /// A message from an address that is not one of the site's other nodes.
        UnknownPeer => "unknown_peer",
        /// A message too short, of another version or kind, or with records that do not parse.
        Malformed => "malformed",
        /// A message whose tag does not verify: not sent by a holder of the key.
        BadMac => "bad_mac",
        /// A message of the peer's run whose sequence number was taken already (or is too old to
        /// tell), or one of this gateway's own.
        Replayed => "replayed",
        /// A message of a run this gateway has not taken (the peer restarted): dropped, and the
        /// peer is asked for its table.
        UnknownSession => "unknown_session",
        /// A record for a service, port or endpoint this gateway's config does not have.
        Unmatched => "unmatched",
        /// A record whose tuples this active gateway uses for a flow of its own (two actives at
        /// once): its own flow is kept.
        Conflict => "conflict",
        /// A record the connection table had no room for.
        TableFull => "table_full",
        /// A record the outgoing batches had no room for (the loop did not send them in time).
        QueueFull => "queue_full",
    }
}

/// What flow sync did, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct SyncCounters {
    pub messages_sent: u64,
    pub messages_received: u64,
    /// Flow records installed (new or changed flows), removals and pins taken.
    pub flows_installed: u64,
    pub flows_removed: u64,
    pub pins_installed: u64,
    /// Tables sent to peers that asked, and asked for.
    pub tables_sent: u64,
    pub tables_requested: u64,
    dropped: [u64; SyncDrop::ALL.len()],
}

impl SyncCounters {
    pub fn dropped(&self, reason: SyncDrop) -> u64 {
        self.dropped[reason as usize]
    }

    pub fn drop(&mut self, reason: SyncDrop) {
        self.dropped[reason as usize] += 1;
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Every peer.
    Peers,
    Peer(Ipv4Addr),
}

/// One of the site's other gateways.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub address: Ipv4Addr,
    /// The run of its messages this gateway takes.
    pub run: Option<Window>,
    /// A table request waiting for its answer: its nonce, and when it last went.
    pub asking: Option<(u64, Option<Millis>)>,
    /// A table being sent to it: the next slot, and the nonce its answer echoes.
    pub sending_table: Option<(usize, u64)>,
}

/// Records waiting to go, in fixed batches of one message each: filled as flows change,
/// emptied by the loop after its turn.
struct Outbox {
    batches: [[u8; RECORD_ROOM]; board::SYNC_QUEUED_MESSAGES],
    lens: [(u16, u16); board::SYNC_QUEUED_MESSAGES],
    head: usize,
    count: usize,
    /// When the newest batch got its first record.
    opened: Millis,
}

impl Outbox {
    const fn new() -> Self {
        Outbox {
            batches: [[0; RECORD_ROOM]; board::SYNC_QUEUED_MESSAGES],
            lens: [(0, 0); board::SYNC_QUEUED_MESSAGES],
            head: 0,
            count: 0,
            opened: Millis(0),
        }
    }

    fn has_room(&self) -> bool {
        self.count < board::SYNC_QUEUED_MESSAGES || self.room_in_last() >= wire::FLOW_LEN
    }

    fn room_in_last(&self) -> usize {
        match self.count {
            0 => 0,
            n => RECORD_ROOM - self.lens[(self.head + n - 1) % board::SYNC_QUEUED_MESSAGES].0 as usize,
        }
    }

    /// Appends `record`; `false` when every batch is full.
    fn push(&mut self, record: &Record, now: Millis) -> bool {
        if self.room_in_last() < record.wire_len() {
            if self.count == board::SYNC_QUEUED_MESSAGES {
                return false;
            }
            self.lens[(self.head + self.count) % board::SYNC_QUEUED_MESSAGES] = (0, 0);
            self.count += 1;
            self.opened = now;
        }
        let last = (self.head + self.count - 1) % board::SYNC_QUEUED_MESSAGES;
        let (len, records) = &mut self.lens[last];
        record.emit(&mut self.batches[last][*len as usize..]);
        *len += record.wire_len() as u16;
        *records += 1;
        true
    }

    /// Moves the oldest batch behind a header's room in `out` when it is due (full, or older
    /// than the board's batch time): its records' end and count.
    fn take_due(&mut self, now: Millis, out: &mut [u8]) -> Option<(usize, u16)> {
        let due = self.count > 1
            || (self.count == 1
                && (self.room_in_last() < wire::FLOW_LEN || now.0 >= self.opened.0 + board::SYNC_BATCH_MILLIS));
        if !due {
            return None;
        }
        let (len, records) = self.lens[self.head];
        let end = HEADER_LEN + len as usize;
        out[HEADER_LEN..end].copy_from_slice(&self.batches[self.head][..len as usize]);
        self.head = (self.head + 1) % board::SYNC_QUEUED_MESSAGES;
        self.count -= 1;
        Some((end, records))
    }
}

/// The refresh walk: goes round the table once every [`board::SYNC_REFRESH_SECONDS`], sending
/// every flow seen since the last round began.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Refresh {
    pub cursor: usize,
    pub round_started: u32,
    pub previous_round_started: u32,
}

/// A gateway's flow-sync state.
pub struct Sync {
    key: Key,
    pub port: u16,
    /// This run of the gateway: drawn at start, so that a peer tells it from the last one.
    epoch: u64,
    seq: u64,
    pub(crate) peers: heapless::Vec<Peer, { board::MAX_NODES }>,
    outbox: Outbox,
    pub(crate) refresh: Refresh,
    /// Table messages still allowed this turn.
    pub(crate) table_budget: usize,
    pub counters: SyncCounters,
}

impl Sync {
    /// Sync with `peers` on `port`, this run named `epoch`; every peer is asked for its table,
    /// with nonces drawn by `nonce`.
    pub fn new(key: Key, port: u16, epoch: u64, peers: &[Ipv4Addr], mut nonce: impl FnMut() -> u64) -> Self {
        let mut sync = Sync {
            key,
            port,
            epoch,
            seq: 0,
            peers: heapless::Vec::new(),
            outbox: Outbox::new(),
            refresh: Refresh::default(),
            table_budget: board::SYNC_TABLE_MESSAGES_PER_TURN,
            counters: SyncCounters::default(),
        };
        for &address in peers {
            let asking = Some((nonce() | 1, None));
            let _ = sync.peers.push(Peer { address, run: None, asking, sending_table: None });
        }
        sync
    }

    pub fn peers(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.peers.iter().map(|p| p.address)
    }

    /// Peers whose run this gateway takes (they answered its table request).
    pub fn peers_in_sync(&self) -> usize {
        self.peers.iter().filter(|p| p.run.is_some()).count()
    }

    pub(crate) fn has_room(&self) -> bool {
        self.outbox.has_room()
    }

    /// Queues `record` for every peer; counted when there is no room.
    pub(crate) fn queue(&mut self, record: &Record, now: Millis) {
        if !self.peers.is_empty() && !self.outbox.push(record, now) {
            self.counters.drop(SyncDrop::QueueFull);
        }
    }

    /// Seals the message whose records end at `end` in `out`.
    pub(crate) fn seal(&mut self, out: &mut [u8], end: usize, records: u16, kind: Kind, echo: u64) -> usize {
        self.seq += 1;
        self.counters.messages_sent += 1;
        let header = Header { kind, epoch: self.epoch, seq: self.seq, echo };
        wire::seal(out, end, records, &header, &self.key)
    }

    /// The next batch of records that is due, sealed in `out`.
    pub(crate) fn take_batch(&mut self, now: Millis, out: &mut [u8]) -> Option<usize> {
        let (end, records) = self.outbox.take_due(now, out)?;
        Some(self.seal(out, end, records, Kind::Update, 0))
    }

    /// A table request to the first peer one is due for, sealed in `out`.
    pub(crate) fn take_request(&mut self, now: Millis, out: &mut [u8]) -> Option<(Ipv4Addr, usize)> {
        let retry = board::SYNC_REQUEST_RETRY_MILLIS;
        let peer = self
            .peers
            .iter_mut()
            .find(|p| matches!(p.asking, Some((_, sent)) if sent.is_none_or(|t| now.0 >= t.0 + retry)))?;
        let (nonce, _) = peer.asking?;
        peer.asking = Some((nonce, Some(now)));
        let address = peer.address;
        self.counters.tables_requested += 1;
        Some((address, self.seal(out, HEADER_LEN, 0, Kind::TableRequest, nonce)))
    }

    /// Checks a message from `from`: the peer it is from and its verified contents, or why it
    /// is refused (counted). Its run is taken here: a message that answers this gateway's
    /// table request starts a run, any other must belong to the run taken and be new in it.
    pub(crate) fn accept<'b>(
        &mut self,
        from: Ipv4Addr,
        bytes: &'b [u8],
        nonce: impl FnOnce() -> u64,
    ) -> Result<(usize, wire::Message<'b>), SyncDrop> {
        self.counters.messages_received += 1;
        let refuse = |counters: &mut SyncCounters, reason| {
            counters.drop(reason);
            Err(reason)
        };
        let Some(p) = self.peers.iter().position(|p| p.address == from) else {
            return refuse(&mut self.counters, SyncDrop::UnknownPeer);
        };
        let message = match wire::Message::parse(bytes, &self.key) {
            Ok(m) => m,
            Err(wire::Rejected::BadMac) => return refuse(&mut self.counters, SyncDrop::BadMac),
            Err(wire::Rejected::Malformed) => return refuse(&mut self.counters, SyncDrop::Malformed),
        };
        let h = message.header;
        if h.epoch == self.epoch {
            // Its own message sent back to it.
            return refuse(&mut self.counters, SyncDrop::Replayed);
        }
        let peer = &mut self.peers[p];
        let run_taken = peer.run.is_some_and(|r| r.epoch == h.epoch);
        if h.kind == Kind::TableRequest {
            // Answered whatever its run: a replayed request costs one table sent to a peer. A
            // peer in a run not taken yet has restarted: its table is asked for in turn.
            peer.sending_table = Some((0, h.echo));
            if !run_taken && peer.asking.is_none() {
                peer.asking = Some((nonce() | 1, None));
            }
            return Ok((p, message));
        }
        let answers_request = h.echo != 0 && peer.asking.is_some_and(|(n, _)| n == h.echo);
        match &mut peer.run {
            Some(run) if run.epoch == h.epoch => {
                if !run.take(h.seq) {
                    return refuse(&mut self.counters, SyncDrop::Replayed);
                }
            }
            _ if answers_request => {
                peer.run = Some(Window::starting_at(h.epoch, h.seq));
                peer.asking = None;
            }
            _ => {
                if peer.asking.is_none() {
                    peer.asking = Some((nonce() | 1, None));
                }
                return refuse(&mut self.counters, SyncDrop::UnknownSession);
            }
        }
        Ok((p, message))
    }
}
