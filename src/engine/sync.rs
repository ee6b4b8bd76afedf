//! Flow sync in the engine: the records the active gateway queues as its flows change, and
//! what a peer's records do to this gateway's tables (see [`crate::sync`] for the protocol).

use core::net::Ipv4Addr;

use super::packet::{PROTO_TCP, PROTO_UDP};
use super::{Engine, Role};
use crate::board;
use crate::config::{Config, ConfigError, SessionAffinity};
use crate::conntrack::{Flow, Lookup, State};
use crate::sync::wire::{FlowKey, FlowRecord, Key, Kind, PinRecord, Record};
use crate::sync::{Destination, Sync, SyncCounters, SyncDrop};
use crate::time::Millis;

impl Engine<'_> {
    /// Starts flow sync as `config`'s `highAvailability.sync` says, with `key` (read from its
    /// key file): the peers are the config's other nodes, at their address on one of this
    /// node's subnets. Each is asked for its table.
    pub fn start_sync(&mut self, config: &Config, key: Key) -> Result<(), ConfigError> {
        let Some(port) = config.high_availability.as_ref().and_then(|ha| ha.sync.as_ref()).map(|s| s.port) else {
            return Err(ConfigError::new(format_args!("highAvailability.sync"), format_args!("is not set")));
        };
        let node = &self.services.node;
        let mut peers: heapless::Vec<Ipv4Addr, { board::MAX_NODES }> = heapless::Vec::new();
        for other in config.nodes.iter().filter(|n| n.name != node.name) {
            match other.addresses.iter().map(|a| a.address()).find(|a| node.address_on_link(*a).is_some()) {
                Some(address) => {
                    let _ = peers.push(address);
                }
                None => {
                    return Err(ConfigError::new(
                        format_args!("nodes"),
                        format_args!("node {} shares no subnet with node {}: it cannot sync", other.name, node.name),
                    ));
                }
            }
        }
        // Random, and the node's own besides: two gateways never share a run's name.
        let own = node.addresses.first().map_or(0, |a| u32::from(a.address()));
        let epoch = (self.rng.next_u64() ^ u64::from(own)) | 1;
        let rng = &mut self.rng;
        self.sync = Some(Sync::new(key, port, epoch, &peers, || rng.next_u64()));
        Ok(())
    }

    /// The port flow sync listens on, once started.
    pub fn sync_port(&self) -> Option<u16> {
        self.sync.as_ref().map(|s| s.port)
    }

    pub fn sync_state(&self) -> Option<&Sync> {
        self.sync.as_ref()
    }

    pub fn sync_counters(&self) -> Option<&SyncCounters> {
        self.sync.as_ref().map(|s| &s.counters)
    }

    /// Counts a sync message the host could not send.
    pub fn count_sync_drop(&mut self, reason: SyncDrop) {
        if let Some(sync) = self.sync.as_mut() {
            sync.counters.drop(reason);
        }
    }

    /// A message to send to the peers (or one of them), sealed in `out`: a table request that
    /// is due, a batch of records, a slice of a table a peer asked for. Call until `None`;
    /// `out` must hold [`board::SYNC_MESSAGE_BYTES`].
    pub fn sync_output(&mut self, now: Millis, out: &mut [u8]) -> Option<(Destination, usize)> {
        let sync = self.sync.as_mut()?;
        if let Some((to, len)) = sync.take_request(now, out) {
            return Some((Destination::Peer(to), len));
        }
        if let Some(len) = sync.take_batch(now, out) {
            return Some((Destination::Peers, len));
        }
        if sync.table_budget == 0 {
            return None;
        }
        let p = sync.peers.iter().position(|p| p.sending_table.is_some())?;
        let (mut slot, echo) = sync.peers[p].sending_table?;
        let (mut end, mut records) = (crate::sync::wire::HEADER_LEN, 0u16);
        let room = board::SYNC_MESSAGE_BYTES - crate::sync::wire::TAG_LEN;
        while slot < self.conntrack.len() && end + crate::sync::wire::FLOW_LEN <= room {
            let flow = self.conntrack.flow(slot);
            slot += 1;
            if self.services.moves_with_role(flow.service_ip) {
                Record::Flow(flow_record(&flow, now)).emit(&mut out[end..]);
                end += crate::sync::wire::FLOW_LEN;
                records += 1;
            }
        }
        let done = slot >= self.conntrack.len();
        sync.peers[p].sending_table = if done { None } else { Some((slot, echo)) };
        sync.counters.tables_sent += u64::from(done);
        sync.table_budget -= 1;
        let to = sync.peers[p].address;
        Some((Destination::Peer(to), sync.seal(out, end, records, Kind::Update, echo)))
    }

    /// Takes a sync message `bytes` that arrived from `from`: installs its records if it is
    /// authentic, new, and from a peer; else counts why not and changes nothing.
    pub fn sync_receive(&mut self, from: Ipv4Addr, bytes: &[u8], now: Millis) {
        let Some(sync) = self.sync.as_mut() else { return };
        let rng = &mut self.rng;
        let Ok((_, message)) = sync.accept(from, bytes, || rng.next_u64()) else { return };
        for record in message.records() {
            let result = match record {
                Record::Flow(r) => self.install(&r, now),
                Record::Removal(key) => self.remove_synced(&key, now),
                Record::Pin(pin) => self.pin_synced(&pin, now),
            };
            if let (Some(sync), Err(reason)) = (self.sync.as_mut(), result) {
                sync.counters.drop(reason);
            }
        }
    }

    /// A flow the peers should know: one to a virtual IP, which moves with the active role (a
    /// flow to this node's own address cannot move to another gateway).
    fn syncs(&self, flow: &Flow) -> bool {
        self.services.moves_with_role(flow.service_ip)
    }

    /// Queues the flow in `slot` (new, or its state changed) for the peers.
    pub(super) fn sync_flow(&mut self, slot: usize, now: Millis) {
        let flow = self.conntrack.flow(slot);
        if self.sync.is_some() && self.syncs(&flow) {
            let record = Record::Flow(flow_record(&flow, now));
            if let Some(sync) = self.sync.as_mut() {
                sync.queue(&record, now);
            }
        }
    }

    /// Queues the flow in `slot` if its packet changed its state or brought its first reply
    /// (`was`: the flow before the packet).
    pub(super) fn sync_if_changed(&mut self, slot: usize, was: &Flow, now: Millis) {
        if self.sync.is_some() {
            let flow = self.conntrack.flow(slot);
            if (flow.state, flow.replied()) != (was.state, was.replied()) {
                self.sync_flow(slot, now);
            }
        }
    }

    /// Queues the removal of `flow` (taken out before it expired) for the peers.
    pub(super) fn sync_removal(&mut self, flow: &Flow, now: Millis) {
        if self.sync.is_some() && self.syncs(flow) {
            let record = Record::Removal(FlowKey { original: flow.original(), reply: flow.reply() });
            if let Some(sync) = self.sync.as_mut() {
                sync.queue(&record, now);
            }
        }
    }

    /// Queues the ClientIP pin the flow `flow` just made (or refreshed) for the peers.
    pub(super) fn sync_pin(&mut self, flow: &Flow, timeout_seconds: u32, now: Millis) {
        if self.sync.is_some() && self.syncs(flow) {
            let record = Record::Pin(PinRecord {
                proto: flow.proto,
                listener: (flow.service_ip, flow.service_port),
                client: flow.client,
                endpoint: flow.endpoint,
                remaining: timeout_seconds,
            });
            if let Some(sync) = self.sync.as_mut() {
                sync.queue(&record, now);
            }
        }
    }

    /// The refresh walk, a bounded slice a turn (active gateways only): resends every flow that
    /// saw traffic since the last round began, so a peer's copy lives as long as the flow.
    pub(super) fn sync_refresh(&mut self, now: Millis) {
        let Some(sync) = self.sync.as_mut() else { return };
        sync.table_budget = board::SYNC_TABLE_MESSAGES_PER_TURN;
        if self.role != Role::Active {
            return;
        }
        let secs = now.secs();
        for _ in 0..board::SYNC_REFRESH_PER_TURN {
            let Some(sync) = self.sync.as_mut() else { return };
            let r = sync.refresh;
            if r.cursor >= self.conntrack.len() {
                if secs >= r.round_started + board::SYNC_REFRESH_SECONDS {
                    sync.refresh.previous_round_started = r.round_started;
                    sync.refresh.round_started = secs;
                    sync.refresh.cursor = 0;
                }
                return;
            }
            if !sync.has_room() {
                return;
            }
            sync.refresh.cursor += 1;
            if self.conntrack.flow(r.cursor).last_seen() >= r.previous_round_started {
                self.sync_flow(r.cursor, now);
            }
        }
    }

    /// Installs a peer's flow, numbered for this gateway's config, replacing its older copy.
    /// A flow of this gateway's own that holds one of its tuples goes if this gateway is standby
    /// (the active peer's word is the one that counts); an active gateway keeps its own (two
    /// actives at once: neither table is corrupted).
    fn install(&mut self, r: &FlowRecord, now: Millis) -> Result<(), SyncDrop> {
        let (o, reply) = (r.key.original, r.key.reply);
        let listener = self.services.listener(o.proto, o.dst, o.dst_port).ok_or(SyncDrop::Unmatched)?;
        let svc = &self.services.list[listener.service_index as usize];
        let endpoint_index = svc.config.endpoints.iter().position(|e| e.ip == reply.src).ok_or(SyncDrop::Unmatched)?;
        let target_port = svc.config.ports[listener.port_index as usize].target_port;
        let snat_address = self.services.high_availability.as_ref().map(|ha| ha.snat_address);
        let source_known = (reply.dst == o.src && reply.dst_port == o.src_port) || Some(reply.dst) == snat_address;
        let state_fits = match o.proto {
            PROTO_TCP => r.state != State::None,
            PROTO_UDP => r.state == State::None,
            _ => false,
        };
        if reply.src_port != target_port || !source_known || !state_fits || !self.services.moves_with_role(o.dst) {
            return Err(SyncDrop::Unmatched);
        }
        let secs = now.secs();
        for tuple in [o, reply] {
            let slot = match self.conntrack.lookup(&tuple, secs) {
                Lookup::Live(slot, _) => slot,
                Lookup::Expired(slot) => {
                    self.conntrack.remove(slot);
                    continue;
                }
                Lookup::Absent => continue,
            };
            let held = self.conntrack.flow(slot);
            let same = held.original() == o && held.reply() == reply;
            if !same && self.role == Role::Active {
                return Err(SyncDrop::Conflict);
            }
            self.conntrack.remove(slot);
        }
        let flow = Flow {
            client: o.src,
            service_ip: o.dst,
            endpoint: reply.src,
            source: reply.dst,
            client_port: o.src_port,
            service_port: o.dst_port,
            endpoint_port: reply.src_port,
            source_port: reply.dst_port,
            client_mac: r.client_mac,
            proto: o.proto,
            state: r.state,
            service_index: listener.service_index,
            port_index: listener.port_index,
            endpoint_index: endpoint_index as u8,
            ..Flow::EMPTY
        }
        .with_synced_marks(r.marks);
        let seen = Millis(now.0.saturating_sub(u64::from(r.idle) * 1000));
        self.conntrack.insert(flow, seen).map_err(|_| SyncDrop::TableFull)?;
        if let Some(sync) = self.sync.as_mut() {
            sync.counters.flows_installed += 1;
        }
        Ok(())
    }

    /// Removes the peer's flow `key`, if this gateway holds that very flow.
    fn remove_synced(&mut self, key: &FlowKey, now: Millis) -> Result<(), SyncDrop> {
        if let Lookup::Live(slot, _) | Lookup::Expired(slot) = self.conntrack.lookup(&key.original, now.secs()) {
            let held = self.conntrack.flow(slot);
            if held.original() == key.original && held.reply() == key.reply {
                self.conntrack.remove(slot);
                if let Some(sync) = self.sync.as_mut() {
                    sync.counters.flows_removed += 1;
                }
            }
        }
        Ok(())
    }

    /// Takes a peer's ClientIP pin.
    fn pin_synced(&mut self, pin: &PinRecord, now: Millis) -> Result<(), SyncDrop> {
        let (ip, port) = pin.listener;
        let listener = self.services.listener(pin.proto, ip, port).ok_or(SyncDrop::Unmatched)?;
        let svc = &self.services.list[listener.service_index as usize];
        let endpoint = svc.config.endpoints.iter().position(|e| e.ip == pin.endpoint).ok_or(SyncDrop::Unmatched)?;
        let SessionAffinity::ClientIp { timeout_seconds } = svc.config.session_affinity else {
            return Err(SyncDrop::Unmatched);
        };
        let timeout = pin.remaining.min(timeout_seconds);
        self.affinity.pin(listener.service_index, pin.client, endpoint as u8, now.secs(), timeout);
        if let Some(sync) = self.sync.as_mut() {
            sync.counters.pins_installed += 1;
        }
        Ok(())
    }
}

/// `flow` as its record: its tuples, state, marks and how long it has been idle.
fn flow_record(flow: &Flow, now: Millis) -> FlowRecord {
    FlowRecord {
        key: FlowKey { original: flow.original(), reply: flow.reply() },
        state: flow.state,
        marks: flow.synced_marks(),
        client_mac: flow.client_mac,
        idle: now.secs().saturating_sub(flow.last_seen()).min(u32::from(u16::MAX)) as u16,
    }
}
