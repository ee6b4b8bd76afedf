//! BFD (RFC 5880 asynchronous mode, RFC 5881 single hop): how the router in front of several
//! gateways learns in well under a second that one is gone, and that one is leaving.
//!
//! nodegate only answers: each configured session is passive (RFC 5880 section 6.1), silent
//! until the router's first packet, then sending at the negotiated rate. A session is
//! `AdminDown` while the gateway cannot serve (no service has a serving endpoint) and when it
//! stops, so the router withdraws it before any connection fails. The packet is in [`wire`];
//! the frames around it (UDP 3784, TTL 255) are in `engine/bfd.rs`.

pub mod wire;

use core::net::Ipv4Addr;

use crate::config::BfdSession;
use crate::time::Millis;
use wire::{Control, Diag};

/// The UDP port of single-hop BFD control packets (RFC 5881 section 4).
pub const PORT: u16 = 3784;
/// The slowest a session may send while it is not up (RFC 5880 section 6.8.3).
const SLOW_TX_US: u32 = 1_000_000;

/// A session's state (RFC 5880 section 4.1, the two bits' values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    pub const fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            State::AdminDown => "admin-down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

reasons! {
    /// Why a BFD packet was not taken.
    pub enum BfdDrop {
        /// Shorter than the mandatory section, or a length field that does not fit.
        BadLength => "bad_length",
        /// A UDP checksum that does not match.
        BadChecksum => "bad_checksum",
        /// Not version 1.
        BadVersion => "bad_version",
        /// A detect multiplier of 0, the multipoint bit, poll and final at once, or no own
        /// discriminator.
        BadField => "bad_field",
        /// Authentication, which nodegate does not do.
        Authenticated => "authenticated",
        /// A discriminator of no session, or a session's from another address.
        BadDiscriminator => "bad_discriminator",
        /// From an address no session is configured for.
        UnknownPeer => "unknown_peer",
        /// A TTL other than 255: not from this link (RFC 5881 section 5).
        BadTtl => "bad_ttl",
    }
}

/// What a session did, for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub received: u64,
    pub sent: u64,
    pub up_transitions: u64,
    pub down_transitions: u64,
}

/// One session with one peer (the router, or a daemon on it).
#[derive(Debug, Clone)]
pub struct Session {
    pub peer: Ipv4Addr,
    /// The node address on the peer's link: the packets' source.
    pub local: Ipv4Addr,
    /// Our UDP source port (RFC 5881: 49152-65535, one per session).
    pub source_port: u16,
    /// Learned from the peer's packets: single hop, so the frame's source is the peer.
    pub peer_mac: Option<[u8; 6]>,
    pub state: State,
    pub remote_state: State,
    pub diag: Diag,
    pub local_disc: u32,
    pub remote_disc: u32,
    desired_min_tx_us: u32,
    required_min_rx_us: u32,
    detect_mult: u8,
    remote_min_rx_us: u32,
    remote_desired_min_tx_us: u32,
    remote_detect_mult: u8,
    /// Our poll sequence (after a change of our timers) is waiting for the peer's final.
    polling: bool,
    /// The peer polled: the next packet carries the final bit, and goes now.
    owe_final: bool,
    /// A packet has come from the peer: a passive session sends from then on.
    heard: bool,
    next_tx: Millis,
    detect_at: Millis,
    pub counters: SessionCounters,
}

impl Session {
    /// A session for `config`, down; `disc` is its own discriminator (random, non-zero).
    pub fn new(config: &BfdSession, local: Ipv4Addr, source_port: u16, disc: u32) -> Session {
        Session {
            peer: config.peer,
            local,
            source_port,
            peer_mac: None,
            state: State::Down,
            remote_state: State::Down,
            diag: Diag::None,
            local_disc: disc.max(1),
            remote_disc: 0,
            desired_min_tx_us: config.desired_min_tx_millis * 1000,
            required_min_rx_us: config.required_min_rx_millis * 1000,
            detect_mult: config.detect_multiplier,
            // RFC 5880 section 6.8.1: 1 µs until the peer says otherwise.
            remote_min_rx_us: 1,
            remote_desired_min_tx_us: SLOW_TX_US,
            remote_detect_mult: 1,
            polling: false,
            owe_final: false,
            heard: false,
            next_tx: Millis(0),
            detect_at: Millis(0),
            counters: SessionCounters::default(),
        }
    }

    /// What we advertise as our desired rate: the configured one only while up.
    fn desired_tx_us(&self) -> u32 {
        if self.state == State::Up { self.desired_min_tx_us } else { self.desired_min_tx_us.max(SLOW_TX_US) }
    }

    /// How long without a packet from the peer before it is declared down.
    pub fn detection_time_us(&self) -> u64 {
        u64::from(self.remote_detect_mult) * u64::from(self.required_min_rx_us.max(self.remote_desired_min_tx_us))
    }

    /// Takes `c`, a checked packet from the peer at `now`. A poll or a change of state makes the
    /// next packet due at once.
    pub fn receive(&mut self, c: &Control, now: Millis) {
        self.counters.received += 1;
        self.heard = true;
        self.remote_disc = c.my_disc;
        self.remote_state = c.state;
        self.remote_min_rx_us = c.required_min_rx_us;
        self.remote_desired_min_tx_us = c.desired_min_tx_us;
        self.remote_detect_mult = c.detect_mult;
        if c.final_ {
            self.polling = false;
        }
        self.detect_at = after_micros(now, self.detection_time_us());
        if self.state == State::AdminDown {
            return;
        }
        let next = match (self.state, c.state) {
            (State::Down | State::Init | State::Up, State::AdminDown) => State::Down,
            (State::Down, State::Down) => State::Init,
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => State::Up,
            (State::Up, State::Down) => State::Down,
            (s, _) => s,
        };
        let changed = next != self.state;
        if changed {
            self.enter(next, if next == State::Down { Diag::NeighborSignaledDown } else { Diag::None });
        }
        self.owe_final |= c.poll;
        if self.owe_final || changed {
            self.next_tx = now;
        }
    }

    fn enter(&mut self, state: State, diag: Diag) {
        let was = self.state;
        self.state = state;
        self.diag = diag;
        match (was, state) {
            // Up: the fast rate we now advertise is a timer change, announced by a poll.
            (_, State::Up) => {
                self.counters.up_transitions += 1;
                self.polling = true;
            }
            (State::Up, _) => self.counters.down_transitions += 1,
            _ => {}
        }
    }

    /// The detection timer: a peer silent for a detection time is down.
    pub fn tick(&mut self, now: Millis) {
        if matches!(self.state, State::Init | State::Up) && now >= self.detect_at {
            self.enter(State::Down, Diag::DetectionTimeExpired);
            self.remote_disc = 0;
            self.polling = false;
            self.next_tx = now;
        }
    }

    /// Takes the session administratively down (the gateway cannot serve, or stops), or back.
    pub fn set_admin_down(&mut self, down: bool, now: Millis) {
        match (down, self.state) {
            (true, State::AdminDown) | (false, State::Down | State::Init | State::Up) => return,
            (true, _) => self.enter(State::AdminDown, Diag::AdministrativelyDown),
            (false, State::AdminDown) => self.enter(State::Down, Diag::AdministrativelyDown),
        }
        self.polling = false;
        self.next_tx = now;
    }

    /// Whether the session sends at all: passive until the peer speaks (and its MAC is known),
    /// silent while the peer asks for no packets (required min RX 0) but a final it is owed.
    fn sends(&self) -> bool {
        self.heard && self.peer_mac.is_some() && (self.remote_min_rx_us > 0 || self.owe_final)
    }

    /// The packet due at `now`, if one is; `jitter` (random, drawn only then) spaces the next
    /// one at 75-100 % of the interval (75-90 % with a multiplier of 1), as RFC 5880 section
    /// 6.8.7 asks.
    pub fn transmit(&mut self, now: Millis, jitter: impl FnOnce() -> u32) -> Option<Control> {
        if !self.sends() || now < self.next_tx {
            return None;
        }
        let interval = u64::from(self.desired_tx_us().max(self.remote_min_rx_us));
        let (low, high) = if self.detect_mult == 1 { (75, 90) } else { (75, 100) };
        let percent = low + u64::from(jitter()) % (high - low + 1);
        self.next_tx = after_micros(now, interval * percent / 100);
        let final_ = core::mem::take(&mut self.owe_final);
        self.counters.sent += 1;
        Some(Control {
            diag: self.diag as u8,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            demand: false,
            detect_mult: self.detect_mult,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx_us: self.desired_tx_us(),
            required_min_rx_us: self.required_min_rx_us,
        })
    }

    /// When [`Session::transmit`] or [`Session::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        let tx = self.sends().then_some(self.next_tx);
        let detect = matches!(self.state, State::Init | State::Up).then_some(self.detect_at);
        tx.into_iter().chain(detect).min()
    }
}

/// `now` plus `us` microseconds, rounded up to the engine's milliseconds (a timer that fires
/// late, never early).
fn after_micros(now: Millis, us: u64) -> Millis {
    Millis(now.0.saturating_add(us.div_ceil(1000)))
}

#[cfg(test)]
mod test;
