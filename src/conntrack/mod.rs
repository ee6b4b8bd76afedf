//! Connection tracking: a fixed-capacity table of NATed flows, each found from both directions.
//!
//! Flows live densely in `flows[..len]` (a removal moves the last flow into the hole), so a sweep
//! or a dump walks only live entries. An open-addressing index with linear probing maps both the
//! original and the reply tuple of every flow to its slot. The index is hashed with a key drawn
//! at start, so a client cannot aim tuples at one probe run. Storage is borrowed from the caller:
//! a `static` on a microcontroller, a start-up allocation on Linux, an array in a test.

mod renumber;
pub mod tcp;

use core::net::Ipv4Addr;

use crate::board;
use crate::config::PortRange;
use crate::hash::sip13;
use crate::time::Millis;
pub use renumber::Renumbering;
pub use tcp::{Check, State};

/// Seconds each kind of flow may stay idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    /// For a flow still in its handshake while the table is more than half full: what keeps a
    /// flood of spoofed SYNs from filling it, as nf_conntrack's early drop does.
    pub tcp_syn_sent_under_pressure: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub udp_stream: u32,
}

/// Which way a packet travels relative to the flow's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to service.
    Original,
    /// Endpoint back to the client (or to the node, when SNATed).
    Reply,
}

/// A 5-tuple as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl Tuple {
    /// The tuple of a packet going the other way.
    pub const fn reversed(self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, src_port: self.dst_port, dst_port: self.src_port, proto: self.proto }
    }
}

/// What the table knows of a flow besides its tuples, state and times: a set of bits, one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Marks(u8);

impl Marks {
    /// The TCP tracker's [`tcp::Fins`]: FIN seen from the original side, from the reply side.
    const FIN_ORIGINAL: u8 = 1 << 0;
    const FIN_REPLY: u8 = 1 << 1;
    /// The flow has seen a packet in the reply direction.
    const REPLIED: u8 = 1 << 2;
    /// The original tuple is in the index. It is taken out when a new SYN reuses the tuple of a
    /// flow in TIME_WAIT: the old flow keeps its reply tuple reserved until it expires.
    const ORIGINAL_INDEXED: u8 = 1 << 3;
    /// `tcp_end[0]` (original) and `tcp_end[1]` (reply) hold a sequence number.
    const TCP_END_KNOWN: [u8; 2] = [1 << 4, 1 << 5];
    /// The renumbering its owner is numbered for ([`Table::renumber`]): flipped by each one.
    const GENERATION: u8 = 1 << 6;

    const fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        self.0 = if on { self.0 | bit } else { self.0 & !bit };
    }

    const fn fins(self) -> tcp::Fins {
        tcp::Fins { original: self.has(Self::FIN_ORIGINAL), reply: self.has(Self::FIN_REPLY) }
    }

    /// The bits another gateway's copy of the flow keeps: the FINs and the reply seen. Not the
    /// sequence ends, which the copy learns afresh from the first segments it sees.
    const SYNCED: u8 = Self::FIN_ORIGINAL | Self::FIN_REPLY | Self::REPLIED;

    fn set_fins(&mut self, fins: tcp::Fins) {
        self.set(Self::FIN_ORIGINAL, fins.original);
        self.set(Self::FIN_REPLY, fins.reply);
    }
}

/// One tracked flow: both directions, the translation, the state and when it was last seen
/// (its deadline follows from that, its state and the table's pressure: [`Table::expires`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub client: Ipv4Addr,
    /// The address the client sent to (a node address).
    pub service_ip: Ipv4Addr,
    pub endpoint: Ipv4Addr,
    /// The source the endpoint sees: the node's address with SNAT, else the client's.
    pub source: Ipv4Addr,
    pub client_port: u16,
    pub service_port: u16,
    pub endpoint_port: u16,
    pub source_port: u16,
    /// Where replies to the client go: the MAC its packets came from (the client or its router).
    pub client_mac: [u8; 6],
    pub proto: u8,
    pub state: State,
    /// Index of the service in the engine's service table.
    pub service_index: u8,
    /// Index of the port in the service's ports.
    pub port_index: u8,
    /// Index of the endpoint in the service's endpoints.
    pub endpoint_index: u8,
    pub(crate) marks: Marks,
    /// When its last packet passed, in quarters of a second since start: fine enough to order
    /// flows seen in the same second (a full SNAT pool gives up the oldest).
    pub(crate) seen: u32,
    /// TCP, per direction (original, reply): the sequence number after what its sender sent,
    /// against which its FINs and RSTs are judged.
    pub(crate) tcp_end: [u32; 2],
}

impl Flow {
    pub const EMPTY: Flow = Flow {
        client: Ipv4Addr::UNSPECIFIED,
        service_ip: Ipv4Addr::UNSPECIFIED,
        endpoint: Ipv4Addr::UNSPECIFIED,
        source: Ipv4Addr::UNSPECIFIED,
        client_port: 0,
        service_port: 0,
        endpoint_port: 0,
        source_port: 0,
        client_mac: [0; 6],
        proto: 0,
        state: State::None,
        service_index: 0,
        port_index: 0,
        endpoint_index: 0,
        marks: Marks(0),
        seen: 0,
        tcp_end: [0; 2],
    };

    pub const fn original(&self) -> Tuple {
        Tuple {
            src: self.client,
            dst: self.service_ip,
            src_port: self.client_port,
            dst_port: self.service_port,
            proto: self.proto,
        }
    }

    pub const fn reply(&self) -> Tuple {
        Tuple {
            src: self.endpoint,
            dst: self.source,
            src_port: self.endpoint_port,
            dst_port: self.source_port,
            proto: self.proto,
        }
    }

    pub const fn replied(&self) -> bool {
        self.marks.has(Marks::REPLIED)
    }

    /// When its last packet passed, in seconds since start.
    pub const fn last_seen(&self) -> u32 {
        self.seen / 4
    }

    /// The endpoint sees the node's address, not the client's.
    pub fn is_snat(&self) -> bool {
        self.source != self.client
    }

    /// Records a packet in `dir`. A TCP segment outside its sender's window changes nothing
    /// (see [`tcp::check`]).
    fn seen(&mut self, dir: Direction, segment: Option<tcp::Segment>, now: Millis) -> Check {
        if let Some(seg) = segment {
            let d = usize::from(dir == Direction::Reply);
            let end = self.marks.has(Marks::TCP_END_KNOWN[d]).then_some(self.tcp_end[d]);
            let check = tcp::check(&seg, end);
            if check != Check::InWindow {
                return check;
            }
            if let Some(e) = tcp::advance_end(&seg, end, self.state.in_handshake()) {
                self.tcp_end[d] = e;
                self.marks.set(Marks::TCP_END_KNOWN[d], true);
            }
            let mut fins = self.marks.fins();
            self.state = tcp::advance(self.state, &mut fins, dir, seg.flags);
            self.marks.set_fins(fins);
        }
        if dir == Direction::Reply {
            self.marks.set(Marks::REPLIED, true);
        }
        self.touch(now);
        Check::InWindow
    }

    /// What flow sync carries of its marks (see [`Marks::SYNCED`]).
    pub(crate) const fn synced_marks(&self) -> u8 {
        self.marks.0 & Marks::SYNCED
    }

    /// The flow with the marks a peer sent (see [`Flow::synced_marks`]).
    pub(crate) const fn with_synced_marks(self, marks: u8) -> Flow {
        Flow { marks: Marks(marks & Marks::SYNCED), ..self }
    }

    fn touch(&mut self, now: Millis) {
        self.seen = (now.0 / 250) as u32;
    }

    /// Where it belongs in the config it is numbered for.
    pub const fn owner(&self) -> Owner {
        Owner { service_index: self.service_index, port_index: self.port_index, endpoint_index: self.endpoint_index }
    }

    const fn with_owner(self, owner: Owner) -> Flow {
        Flow {
            service_index: owner.service_index,
            port_index: owner.port_index,
            endpoint_index: owner.endpoint_index,
            ..self
        }
    }

    /// The SNAT pool its source port comes from: one per service, endpoint and port (the
    /// endpoint's address and target port, from the node's address). `None` without SNAT, or
    /// once its service or port left the config.
    fn pool(&self) -> Option<usize> {
        let pool = pool_index(self.service_index as usize, self.endpoint_index as usize, self.port_index as usize);
        pool.filter(|_| self.is_snat())
    }

    /// How readily a full SNAT pool takes its port back for a new flow: `None` never (an
    /// established flow), else lower first.
    fn port_eviction_rank(&self) -> Option<u8> {
        match self.state {
            _ if !self.replied() => Some(0),
            s if s.in_handshake() => Some(1),
            s if s.is_closing() => Some(2),
            _ => None,
        }
    }
}

/// The pool of a service, endpoint and port; `None` for indices the board has no room for (a
/// flow whose service, endpoint or port left the config).
const fn pool_index(service: usize, endpoint: usize, port: usize) -> Option<usize> {
    if service < board::MAX_SERVICES
        && endpoint < board::MAX_ENDPOINTS_PER_SERVICE
        && port < board::MAX_PORTS_PER_SERVICE
    {
        Some((service * board::MAX_ENDPOINTS_PER_SERVICE + endpoint) * board::MAX_PORTS_PER_SERVICE + port)
    } else {
        None
    }
}

/// SNAT pools: one per service, endpoint and port.
const POOLS: usize = board::MAX_SERVICES * board::MAX_ENDPOINTS_PER_SERVICE * board::MAX_PORTS_PER_SERVICE;
/// Source ports in each pool.
pub const POOL_PORTS: usize = PortRange::SNAT.count();

/// Where a flow belongs in the config: what a reload gives it anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub service_index: u8,
    pub port_index: u8,
    pub endpoint_index: u8,
}

/// Index slots needed for `capacity` flows: two tuples a flow, at most half full.
pub const fn buckets_for(capacity: usize) -> usize {
    (capacity * 4).next_power_of_two()
}

/// Fixed storage for a table of `N` flows and `B` index slots (`B = buckets_for(N)`), for
/// callers that keep it in a `static` or on the stack.
pub struct Storage<const N: usize, const B: usize> {
    pub flows: [Flow; N],
    pub buckets: [u32; B],
}

impl<const N: usize, const B: usize> Storage<N, B> {
    pub const fn new() -> Self {
        const { assert!(B == buckets_for(N), "B must be buckets_for(N)") };
        Storage { flows: [Flow::EMPTY; N], buckets: [0; B] }
    }
}

impl<const N: usize, const B: usize> Default for Storage<N, B> {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`Table::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The live flow in this slot, seen from this direction.
    Live(usize, Direction),
    /// A flow past its deadline that still holds the tuple.
    Expired(usize),
    Absent,
}

impl Lookup {
    pub const fn live(self) -> Option<(usize, Direction)> {
        match self {
            Lookup::Live(slot, dir) => Some((slot, dir)),
            _ => None,
        }
    }
}

/// Why a flow could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

pub struct Table<'a> {
    flows: &'a mut [Flow],
    buckets: &'a mut [u32],
    len: usize,
    key: [u64; 2],
    timeouts: Timeouts,
    /// The slot the sweep and the eviction search go on from: one hand round the table.
    cursor: usize,
    evictions: u64,
    /// Live flows whose source is translated: the SNAT ports in use.
    snat: usize,
    /// SNAT ports in use per pool ([`Flow::pool`]).
    pool_use: [u16; POOLS],
    /// Flows that gave up their SNAT port to a new flow.
    port_evictions: u64,
    /// A reload's new numbering, while flows numbered for the config before it remain.
    renumbering: Option<Renumbering>,
    /// The [`Marks::GENERATION`] of flows numbered for the running config.
    generation: bool,
    /// Flows still numbered for the config before, and the slot the renumbering goes on from.
    stale: usize,
    renumber_cursor: usize,
}

/// What a [`Table::sweep`] took out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Flows past their deadline.
    pub expired: usize,
    /// Flows the caller no longer wanted (UDP flows to an endpoint that stopped serving).
    pub flushed: usize,
}

impl<'a> Table<'a> {
    /// A table over caller storage; `buckets.len()` must be `buckets_for(flows.len())`.
    /// `key` seeds the index hash: draw it from a random source at start.
    pub fn new(flows: &'a mut [Flow], buckets: &'a mut [u32], key: [u64; 2], timeouts: Timeouts) -> Self {
        // A sizing mistake of the caller, found at start-up; no packet can reach it.
        assert!(!flows.is_empty() && buckets.len() == buckets_for(flows.len()), "conntrack storage mis-sized");
        buckets.fill(0);
        Table {
            flows,
            buckets,
            len: 0,
            key,
            timeouts,
            cursor: 0,
            evictions: 0,
            snat: 0,
            pool_use: [0; POOLS],
            port_evictions: 0,
            renumbering: None,
            generation: false,
            stale: 0,
            renumber_cursor: 0,
        }
    }

    pub fn from_storage<const N: usize, const B: usize>(
        s: &'a mut Storage<N, B>,
        key: [u64; 2],
        timeouts: Timeouts,
    ) -> Self {
        Self::new(&mut s.flows, &mut s.buckets, key, timeouts)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// SNAT source ports held by live flows (TIME_WAIT included).
    pub fn snat_ports_in_use(&self) -> usize {
        self.snat
    }

    /// SNAT ports held towards endpoint `endpoint` of service `service`, on port `port`.
    pub fn pool_use(&self, service: usize, endpoint: usize, port: usize) -> usize {
        pool_index(service, endpoint, port).map_or(0, |p| usize::from(self.pool_use[p]))
    }

    /// SNAT ports held towards endpoint `endpoint` of service `service`, all its ports together.
    pub fn endpoint_snat_ports(&self, service: usize, endpoint: usize) -> usize {
        (0..board::MAX_PORTS_PER_SERVICE).map(|p| self.pool_use(service, endpoint, p)).sum()
    }

    /// Flows that gave up their SNAT port to a new flow ([`Table::take_port`]).
    pub fn port_evictions(&self) -> u64 {
        self.port_evictions
    }

    /// The live flows, each numbered for the running config.
    pub fn flows(&self) -> impl Iterator<Item = Flow> + '_ {
        (0..self.len).map(|slot| self.flow(slot))
    }

    /// The flow in `slot`, numbered for the running config (a flow the renumbering after a
    /// reload has not reached yet is renumbered in the copy).
    pub fn flow(&self, slot: usize) -> Flow {
        let flow = self.flows[slot];
        match &self.renumbering {
            Some(map) if self.is_stale(&flow) => flow.with_owner(map.owner(flow.owner())),
            _ => flow,
        }
    }

    fn is_stale(&self, flow: &Flow) -> bool {
        self.renumbering.is_some() && flow.marks.has(Marks::GENERATION) != self.generation
    }

    /// Numbers every flow for a new config: `map` says where each service, port and endpoint
    /// went. Nothing moves here: [`Table::flow`] renumbers a flow not reached yet as it reads it,
    /// and [`Table::renumber_some`] goes through the table a slice at a time. A renumbering
    /// still under way when the next one comes is finished first, in one step (3-4 ms for the
    /// host board's full table; the runner waits for it to end instead).
    pub fn renumber(&mut self, map: Renumbering) {
        while self.renumber_some(self.len) > 0 {}
        if self.len == 0 {
            return;
        }
        self.renumbering = Some(map);
        self.generation = !self.generation;
        self.stale = self.len;
        self.renumber_cursor = 0;
    }

    /// Flows not renumbered yet for the last reload.
    pub fn stale(&self) -> usize {
        self.stale
    }

    /// Renumbers the flows in up to `budget` slots; returns how many flows are left to renumber.
    pub fn renumber_some(&mut self, budget: usize) -> usize {
        let Some(map) = self.renumbering else { return 0 };
        for _ in 0..budget {
            if self.stale == 0 {
                break;
            }
            if self.renumber_cursor >= self.len {
                self.renumber_cursor = 0;
            }
            let slot = self.renumber_cursor;
            if self.is_stale(&self.flows[slot]) {
                self.set_owner(slot, map.owner(self.flows[slot].owner()));
                self.flows[slot].marks.set(Marks::GENERATION, self.generation);
                self.stale -= 1;
            }
            self.renumber_cursor += 1;
        }
        if self.stale == 0 {
            self.renumbering = None;
        }
        self.stale
    }

    /// Gives the flow in `slot` a new owner; its SNAT port moves to the owner's pool.
    fn set_owner(&mut self, slot: usize, owner: Owner) {
        let flow = &mut self.flows[slot];
        if let Some(p) = flow.pool() {
            self.pool_use[p] = self.pool_use[p].saturating_sub(1);
        }
        *flow = flow.with_owner(owner);
        if let Some(p) = flow.pool() {
            self.pool_use[p] = self.pool_use[p].saturating_add(1);
        }
    }

    /// Records a packet of the flow in `slot` travelling in `dir`: state and deadline move on,
    /// unless it is a TCP segment outside its sender's window (the answer says which).
    pub fn seen(&mut self, slot: usize, dir: Direction, segment: Option<tcp::Segment>, now: Millis) -> Check {
        self.flows[slot].seen(dir, segment, now)
    }

    /// The table, or the SNAT pool of `flow`, is more than half full: flows still in their
    /// handshake get the short timeout.
    fn under_pressure(&self, flow: &Flow) -> bool {
        self.len * 2 > self.capacity() || flow.pool().is_some_and(|p| usize::from(self.pool_use[p]) * 2 > POOL_PORTS)
    }

    /// When the flow in `slot` expires (seconds since start): the timeout of its state after it
    /// was last seen. Pressure applies at once to every flow in its handshake, the old ones too,
    /// as nf_conntrack's early drop does.
    pub fn expires(&self, slot: usize) -> u32 {
        let f = &self.flows[slot];
        f.last_seen().saturating_add(f.state.timeout(f.replied(), self.under_pressure(f), &self.timeouts))
    }

    /// What holds `tuple`: a live flow (the one a packet with it belongs to, and its
    /// direction), an expired one the sweep has not taken out yet, or nothing. A query: the
    /// caller decides what to do with an expired flow.
    pub fn lookup(&self, tuple: &Tuple, now: u32) -> Lookup {
        match self.find(tuple) {
            Some((_, slot, dir)) if self.expires(slot) > now => Lookup::Live(slot, dir),
            Some((_, slot, _)) => Lookup::Expired(slot),
            None => Lookup::Absent,
        }
    }

    /// Makes `tuple` free for a new flow, if no live flow holds it: an expired holder is taken
    /// out. False when a live flow holds it.
    pub fn claim(&mut self, tuple: &Tuple, now: u32) -> bool {
        match self.lookup(tuple, now) {
            Lookup::Live(..) => false,
            Lookup::Expired(slot) => {
                self.remove(slot);
                true
            }
            Lookup::Absent => true,
        }
    }

    /// Adds `flow`, seen at `now`. Both its tuples must be held by no flow, live or expired
    /// ([`Table::claim`] them, or have found them [`Lookup::Absent`]). A full table takes the
    /// slot of an expired flow the sweep has not reached yet, else gives up a flow (the order is
    /// `victim`'s); never a live one.
    ///
    /// The new flow takes the evicted one's slot, and the cursor moves past it (or past the whole
    /// window when nothing in it could go): the search goes round the table like a clock hand, so
    /// the flows it gives up are the ones it has passed least recently, and a new flow (a real
    /// client's among a flood's) lives a whole turn.
    pub fn insert(&mut self, flow: Flow, now: Millis) -> Result<usize, Full> {
        let full = self.len == self.capacity();
        let slot = if let Some(slot) = full.then(|| self.expired_in_window(now.secs())).flatten() {
            self.unlink(slot);
            self.cursor = slot + 1;
            slot
        } else if full {
            let Some(victim) = self.victim() else {
                // The next search looks at the next window.
                self.cursor = (self.cursor + board::CONNTRACK_EVICTION_WINDOW) % self.len;
                return Err(Full);
            };
            self.unlink(victim);
            self.evictions += 1;
            self.cursor = victim + 1;
            victim
        } else {
            self.len += 1;
            self.len - 1
        };
        self.snat += usize::from(flow.is_snat());
        if let Some(p) = flow.pool() {
            self.pool_use[p] = self.pool_use[p].saturating_add(1);
        }
        let mut marks = flow.marks;
        marks.set(Marks::ORIGINAL_INDEXED, true);
        marks.set(Marks::GENERATION, self.generation);
        self.flows[slot] = Flow { marks, ..flow };
        self.flows[slot].touch(now);
        self.index(&flow.original(), encode(slot, Direction::Original));
        self.index(&flow.reply(), encode(slot, Direction::Reply));
        Ok(slot)
    }

    /// Takes the original tuple of the flow in `slot` out of the index, so that a new flow can
    /// use it; the reply tuple stays reserved until the old flow expires.
    pub fn detach_original(&mut self, slot: usize) {
        if self.flows[slot].marks.has(Marks::ORIGINAL_INDEXED) {
            self.flows[slot].marks.set(Marks::ORIGINAL_INDEXED, false);
            let tuple = self.flows[slot].original();
            self.unindex(&tuple, encode(slot, Direction::Original));
        }
    }

    /// Removes the flow in `slot`. The last flow moves into the slot.
    pub fn remove(&mut self, slot: usize) {
        self.unlink(slot);
        let last = self.len - 1;
        if slot != last {
            let moved = self.flows[last];
            self.flows[slot] = moved;
            if moved.marks.has(Marks::ORIGINAL_INDEXED) {
                self.repoint(&moved.original(), encode(last, Direction::Original), encode(slot, Direction::Original));
            }
            self.repoint(&moved.reply(), encode(last, Direction::Reply), encode(slot, Direction::Reply));
        }
        self.len = last;
    }

    /// Takes the flow in `slot` out of the index and the SNAT count; the slot keeps its bytes
    /// until it is filled or the last flow moves in.
    fn unlink(&mut self, slot: usize) {
        let flow = self.flows[slot];
        self.snat -= usize::from(flow.is_snat());
        if let Some(p) = flow.pool() {
            self.pool_use[p] = self.pool_use[p].saturating_sub(1);
        }
        if self.is_stale(&flow) {
            self.stale -= 1;
        }
        if flow.marks.has(Marks::ORIGINAL_INDEXED) {
            self.unindex(&flow.original(), encode(slot, Direction::Original));
        }
        self.unindex(&flow.reply(), encode(slot, Direction::Reply));
    }

    /// Looks at up to `budget` slots and removes the flows there that expired or that `keep`
    /// (shown each flow numbered for the running config) no longer wants. Called every few
    /// milliseconds, so that neither expiry nor a flush ever stalls the datapath.
    pub fn sweep(&mut self, now: u32, budget: usize, keep: impl Fn(&Flow) -> bool) -> Swept {
        let mut swept = Swept::default();
        for _ in 0..budget {
            if self.len == 0 {
                break;
            }
            if self.cursor >= self.len {
                self.cursor = 0;
            }
            let expired = self.expires(self.cursor) <= now;
            if expired || !keep(&self.flow(self.cursor)) {
                // The last flow moves into the cursor's slot: look at it next.
                self.remove(self.cursor);
                if expired { swept.expired += 1 } else { swept.flushed += 1 }
            } else {
                self.cursor += 1;
            }
        }
        swept
    }

    /// Of the flows holding the SNAT tuples `reply` gives for each of `ports` (a full pool's
    /// ports, as a new flow tried them), the one that gives its port up: the one seen longest
    /// ago among those not established, at equal ages the one that never saw a reply, then one
    /// in its handshake, then one closing. Age comes first because a real client's new flow has
    /// not seen its reply yet for a round trip, while a SYN flood's flows were answered: the
    /// oldest go first, and a new flow lives until its handshake is through.
    /// Returns the port, its flow removed and counted; `None` when every one is established.
    pub fn take_port(&mut self, ports: &[u16], reply: impl Fn(u16) -> Tuple, now: u32) -> Option<u16> {
        let mut best: Option<((u32, u8), u16)> = None;
        for &port in ports {
            let Some((slot, _)) = self.lookup(&reply(port), now).live() else { continue };
            let flow = &self.flows[slot];
            let Some(rank) = flow.port_eviction_rank() else { continue };
            let order = (flow.seen, rank);
            if best.is_none_or(|(o, _)| order < o) {
                best = Some((order, port));
            }
        }
        let (_, port) = best?;
        let (slot, _) = self.lookup(&reply(port), now).live()?;
        self.remove(slot);
        self.port_evictions += 1;
        Some(port)
    }

    /// An expired flow in the eviction window.
    fn expired_in_window(&self, now: u32) -> Option<usize> {
        let window = board::CONNTRACK_EVICTION_WINDOW.min(self.len);
        (0..window).map(|i| (self.cursor + i) % self.len).find(|&slot| self.expires(slot) <= now)
    }

    /// The flow a full table gives up: one that never saw a reply, else one still in its
    /// handshake (a SYN flood's flows, answered by the endpoint), else one that is closing.
    fn victim(&self) -> Option<usize> {
        let window = board::CONNTRACK_EVICTION_WINDOW.min(self.len);
        let at = |i: usize| (self.cursor + i) % self.len;
        let first = |p: &dyn Fn(&Flow) -> bool| (0..window).map(at).find(|&s| p(&self.flows[s]));
        first(&|f| !f.replied())
            .or_else(|| first(&|f| f.state.in_handshake()))
            .or_else(|| first(&|f| f.state.is_closing()))
    }

    fn hash(&self, t: &Tuple) -> usize {
        let ips = (u32::from(t.src) as u64) << 32 | u32::from(t.dst) as u64;
        let rest = (t.src_port as u64) << 32 | (t.dst_port as u64) << 16 | t.proto as u64;
        sip13(self.key, ips, rest) as usize & (self.buckets.len() - 1)
    }

    fn tuple_of(&self, code: u32) -> Tuple {
        let (slot, dir) = decode(code);
        match dir {
            Direction::Original => self.flows[slot].original(),
            Direction::Reply => self.flows[slot].reply(),
        }
    }

    /// The bucket, slot and direction of `tuple`. The probe ends at an empty bucket, and the
    /// index is at most half full, so one always exists.
    fn find(&self, tuple: &Tuple) -> Option<(usize, usize, Direction)> {
        let mask = self.buckets.len() - 1;
        let mut b = self.hash(tuple);
        loop {
            let code = self.buckets[b];
            if code == 0 {
                return None;
            }
            if self.tuple_of(code) == *tuple {
                let (slot, dir) = decode(code);
                return Some((b, slot, dir));
            }
            b = (b + 1) & mask;
        }
    }

    fn index(&mut self, tuple: &Tuple, code: u32) {
        let mask = self.buckets.len() - 1;
        let mut b = self.hash(tuple);
        while self.buckets[b] != 0 {
            b = (b + 1) & mask;
        }
        self.buckets[b] = code;
    }

    /// Index slots a lookup of `tuple` visits.
    #[cfg(test)]
    fn probe_length(&self, tuple: &Tuple) -> usize {
        let mask = self.buckets.len() - 1;
        let mut b = self.hash(tuple);
        for visited in 1..=self.buckets.len() {
            let code = self.buckets[b];
            if code == 0 || self.tuple_of(code) == *tuple {
                return visited;
            }
            b = (b + 1) & mask;
        }
        self.buckets.len()
    }

    fn bucket_holding(&self, tuple: &Tuple, code: u32) -> Option<usize> {
        let mask = self.buckets.len() - 1;
        let mut b = self.hash(tuple);
        loop {
            match self.buckets[b] {
                0 => return None,
                c if c == code => return Some(b),
                _ => b = (b + 1) & mask,
            }
        }
    }

    fn repoint(&mut self, tuple: &Tuple, from: u32, to: u32) {
        if let Some(b) = self.bucket_holding(tuple, from) {
            self.buckets[b] = to;
        }
    }

    /// Backward-shift deletion: later members of the probe run move up, so no tombstones build
    /// up and lookups stay short however long the gateway runs.
    fn unindex(&mut self, tuple: &Tuple, code: u32) {
        let Some(mut hole) = self.bucket_holding(tuple, code) else { return };
        let mask = self.buckets.len() - 1;
        self.buckets[hole] = 0;
        let mut b = hole;
        loop {
            b = (b + 1) & mask;
            let c = self.buckets[b];
            if c == 0 {
                return;
            }
            let home = self.hash(&self.tuple_of(c));
            // The entry may move into the hole unless its home lies cyclically in (hole, b].
            let stays = if hole <= b { hole < home && home <= b } else { hole < home || home <= b };
            if !stays {
                self.buckets[hole] = c;
                self.buckets[b] = 0;
                hole = b;
            }
        }
    }
}

const fn encode(slot: usize, dir: Direction) -> u32 {
    ((slot as u32) << 1 | matches!(dir, Direction::Reply) as u32) + 1
}

const fn decode(code: u32) -> (usize, Direction) {
    let v = code - 1;
    ((v >> 1) as usize, if v & 1 == 1 { Direction::Reply } else { Direction::Original })
}

#[cfg(test)]
mod test;
