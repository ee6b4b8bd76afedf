//! TCP connection states as a NAT sees them from the middle, after netfilter's tracker, and the
//! timeout of each state.

use super::{Direction, Timeouts};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not TCP: UDP flows have no state, only "replied or not".
    None,
    SynSent,
    SynRecv,
    Established,
    /// One side sent FIN.
    FinWait,
    /// The FIN was acknowledged; the other side may still send (half close).
    CloseWait,
    /// Both sides sent FIN: the tuple stays reserved so that late segments are not misrouted.
    TimeWait,
    /// Reset.
    Close,
}

impl State {
    pub const fn as_str(self) -> &'static str {
        match self {
            State::None => "NONE",
            State::SynSent => "SYN_SENT",
            State::SynRecv => "SYN_RECV",
            State::Established => "ESTABLISHED",
            State::FinWait => "FIN_WAIT",
            State::CloseWait => "CLOSE_WAIT",
            State::TimeWait => "TIME_WAIT",
            State::Close => "CLOSE",
        }
    }

    /// Not established yet: a full table may evict it.
    pub const fn in_handshake(self) -> bool {
        matches!(self, State::SynSent | State::SynRecv)
    }

    /// The flow is ending: a full table may evict it before a live one.
    pub const fn is_closing(self) -> bool {
        matches!(self, State::TimeWait | State::Close)
    }

    /// Seconds the state may stay idle; `pressure`: the table is more than half full.
    pub const fn timeout(self, replied: bool, pressure: bool, t: &Timeouts) -> u32 {
        match self {
            State::None if replied => t.udp_stream,
            State::None => t.udp,
            State::SynSent | State::SynRecv if pressure => t.tcp_syn_sent_under_pressure,
            State::SynSent => t.tcp_syn_sent,
            State::SynRecv => t.tcp_syn_recv,
            State::Established => t.tcp_established,
            State::FinWait => t.tcp_fin_wait,
            State::CloseWait => t.tcp_close_wait,
            State::TimeWait => t.tcp_time_wait,
            State::Close => t.tcp_close,
        }
    }
}

/// The TCP flags the tracker looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// What the tracker reads of a TCP segment: its flags and where it lies in its sender's
/// sequence space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    pub flags: Flags,
    pub seq: u32,
    /// Sequence numbers it takes: its payload bytes, and one each for SYN and FIN.
    pub len: u32,
}

impl Segment {
    /// The sequence number after this segment.
    pub const fn end(&self) -> u32 {
        self.seq.wrapping_add(self.len)
    }
}

/// The sides that have sent FIN: the original (client) side, the reply (endpoint) side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fins {
    pub original: bool,
    pub reply: bool,
}

impl Fins {
    const fn any(&self) -> bool {
        self.original || self.reply
    }

    const fn both(&self) -> bool {
        self.original && self.reply
    }
}

/// How far from a sender's known sequence a FIN may start or an RST may lie and still be taken
/// as the sender's. The tracker does not learn windows (a flow has no room for them), so it
/// takes one of 1 MiB, wider than most receive windows and 1/4096 of the sequence space: a
/// blind FIN passes once in about 4,000 tries, a blind RST never ends a flow (it must be exact).
pub const WINDOW: u32 = 1 << 20;

/// Where a FIN or RST lies against what its sender is known to have sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// It is the sender's: the state may move.
    InWindow,
    /// An RST near the sender's sequence but not at it: passed on for the endpoint to judge
    /// (RFC 5961 answers it with a challenge ACK), the flow unchanged, as nf_conntrack does.
    ResetNotExact,
    /// Far from anything the sender sent: dropped, the flow unchanged (kube-proxy drops what
    /// nf_conntrack calls invalid).
    OutOfWindow,
}

/// `a` is `b` or after it, in sequence space.
const fn at_or_after(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) < 1 << 31
}

/// Judges `seg` against `end`, the end of what its sender sent before (`None`: not seen yet).
/// RFC 5961: an RST ends a flow only at the exact sequence; a FIN must end at or after what the
/// sender sent and start within the window.
pub const fn check(seg: &Segment, end: Option<u32>) -> Check {
    let Some(end) = end else { return Check::InWindow };
    if seg.flags.syn {
        return Check::InWindow;
    }
    if seg.flags.rst {
        let distance = seg.seq.wrapping_sub(end);
        return if distance == 0 {
            Check::InWindow
        } else if distance <= WINDOW || distance.wrapping_neg() <= WINDOW {
            Check::ResetNotExact
        } else {
            Check::OutOfWindow
        };
    }
    if seg.flags.fin && !(at_or_after(seg.end(), end) && at_or_after(end.wrapping_add(WINDOW), seg.seq)) {
        return Check::OutOfWindow;
    }
    Check::InWindow
}

/// The sender's new end after `seg` (already judged in window): a SYN of the handshake sets it,
/// a later segment moves it forward by at most the window (so a blind segment, a SYN on an
/// established flow among them, cannot carry it far).
pub const fn advance_end(seg: &Segment, end: Option<u32>, in_handshake: bool) -> Option<u32> {
    match end {
        _ if seg.flags.rst => end,
        None => Some(seg.end()),
        Some(_) if seg.flags.syn && in_handshake => Some(seg.end()),
        Some(e) if at_or_after(seg.end(), e) && seg.end().wrapping_sub(e) <= WINDOW => Some(seg.end()),
        Some(e) => Some(e),
    }
}

/// The state after a segment with `flags` travelling in `dir`. `fins` remembers which sides
/// have sent FIN.
pub fn advance(state: State, fins: &mut Fins, dir: Direction, flags: Flags) -> State {
    if flags.rst {
        return State::Close;
    }
    if flags.fin {
        match dir {
            Direction::Original => fins.original = true,
            Direction::Reply => fins.reply = true,
        }
    }
    match state {
        State::SynSent if dir == Direction::Reply && flags.syn && flags.ack => State::SynRecv,
        State::SynRecv if dir == Direction::Original && flags.ack && !flags.syn => {
            if fins.any() {
                State::FinWait
            } else {
                State::Established
            }
        }
        State::Established | State::FinWait | State::CloseWait | State::SynRecv if fins.both() => State::TimeWait,
        State::Established if flags.fin => State::FinWait,
        State::FinWait if flags.ack && !flags.fin => {
            // The ACK answers the FIN when it comes from the side that did not send it.
            let acked = match dir {
                Direction::Original => fins.reply,
                Direction::Reply => fins.original,
            };
            if acked { State::CloseWait } else { State::FinWait }
        }
        other => other,
    }
}

#[cfg(test)]
mod test {
    use super::*;
    use Direction::{Original as O, Reply as R};

    const SYN: Flags = Flags { syn: true, ack: false, fin: false, rst: false };
    const SYN_ACK: Flags = Flags { syn: true, ack: true, fin: false, rst: false };
    const ACK: Flags = Flags { syn: false, ack: true, fin: false, rst: false };
    const FIN_ACK: Flags = Flags { syn: false, ack: true, fin: true, rst: false };
    const RST: Flags = Flags { syn: false, ack: false, fin: false, rst: true };

    fn seg(flags: Flags, seq: u32, len: u32) -> Segment {
        Segment { flags, seq, len }
    }

    #[test]
    fn a_reset_ends_a_flow_only_at_the_senders_exact_sequence() {
        let end = Some(5000);
        assert_eq!(check(&seg(RST, 5000, 0), end), Check::InWindow);
        assert_eq!(check(&seg(RST, 5001, 0), end), Check::ResetNotExact);
        assert_eq!(check(&seg(RST, 4000, 0), end), Check::ResetNotExact);
        assert_eq!(check(&seg(RST, 5000 + WINDOW + 1, 0), end), Check::OutOfWindow);
        assert_eq!(check(&seg(RST, 5000u32.wrapping_sub(WINDOW + 1), 0), end), Check::OutOfWindow);
        assert_eq!(check(&seg(RST, 0x8000_0000, 0), end), Check::OutOfWindow);
        assert_eq!(check(&seg(RST, 77, 0), None), Check::InWindow, "nothing seen from the sender yet");
    }

    #[test]
    fn a_fin_must_end_at_or_after_what_its_sender_sent() {
        let end = Some(u32::MAX - 10); // across the wrap
        assert_eq!(check(&seg(FIN_ACK, u32::MAX - 10, 1), end), Check::InWindow, "FIN right after the data");
        assert_eq!(check(&seg(FIN_ACK, u32::MAX - 110, 101), end), Check::InWindow, "FIN with the last data");
        assert_eq!(check(&seg(FIN_ACK, 500, 1), end), Check::InWindow, "ahead, within the window");
        assert_eq!(check(&seg(FIN_ACK, u32::MAX - 500, 1), end), Check::OutOfWindow, "behind what was sent");
        assert_eq!(check(&seg(FIN_ACK, WINDOW, 1), end), Check::OutOfWindow, "past the window");
        assert_eq!(check(&seg(ACK, 0x8000_0000, 100), end), Check::InWindow, "data is not judged");
    }

    #[test]
    fn the_end_moves_forward_by_at_most_the_window() {
        assert_eq!(advance_end(&seg(SYN, 100, 1), None, true), Some(101));
        assert_eq!(advance_end(&seg(ACK, 101, 500), Some(101), false), Some(601));
        assert_eq!(advance_end(&seg(ACK, 50, 10), Some(601), false), Some(601), "a retransmission");
        assert_eq!(advance_end(&seg(ACK, 601 + WINDOW, 10), Some(601), false), Some(601), "a blind segment far ahead");
        assert_eq!(advance_end(&seg(RST, 601, 0), Some(601), false), Some(601));
        assert_eq!(advance_end(&seg(SYN, 9, 1), Some(601), true), Some(10), "a SYN of the handshake starts it anew");
        assert_eq!(advance_end(&seg(SYN, 0x8000_0000, 1), Some(601), false), Some(601), "a SYN on an established flow");
    }

    /// A segment: its direction and flags.
    type Step = (Direction, Flags);

    fn run(steps: &[Step]) -> State {
        let mut fins = Fins::default();
        steps.iter().fold(State::SynSent, |s, (d, f)| advance(s, &mut fins, *d, *f))
    }

    #[test]
    fn transitions() {
        let cases: &[(&str, &[Step], State)] = &[
            ("a SYN alone stays SYN_SENT", &[(O, SYN)], State::SynSent),
            ("SYN-ACK from the endpoint", &[(R, SYN_ACK)], State::SynRecv),
            ("SYN-ACK from the client is not an answer", &[(O, SYN_ACK)], State::SynSent),
            ("three-way handshake", &[(R, SYN_ACK), (O, ACK)], State::Established),
            ("client closes first", &[(R, SYN_ACK), (O, ACK), (O, FIN_ACK)], State::FinWait),
            ("endpoint acknowledges the FIN", &[(R, SYN_ACK), (O, ACK), (O, FIN_ACK), (R, ACK)], State::CloseWait),
            ("both FINs", &[(R, SYN_ACK), (O, ACK), (O, FIN_ACK), (R, FIN_ACK)], State::TimeWait),
            (
                "both FINs after half close",
                &[(R, SYN_ACK), (O, ACK), (O, FIN_ACK), (R, ACK), (R, FIN_ACK), (O, ACK)],
                State::TimeWait,
            ),
            ("endpoint closes first", &[(R, SYN_ACK), (O, ACK), (R, FIN_ACK), (O, ACK)], State::CloseWait),
            ("reset from either side", &[(R, SYN_ACK), (O, ACK), (R, RST)], State::Close),
            ("reset during the handshake", &[(R, RST)], State::Close),
        ];
        for (what, steps, want) in cases {
            assert_eq!(run(steps), *want, "{what}");
        }
    }
}
