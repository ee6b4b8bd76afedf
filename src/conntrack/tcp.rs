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

/// FIN seen from the original (client) side and from the reply (endpoint) side.
pub const FIN_ORIGINAL: u8 = 1 << 0;
pub const FIN_REPLY: u8 = 1 << 1;

/// The state after a segment with `flags` travelling in `dir`. `fins` remembers which sides
/// have sent FIN.
pub fn advance(state: State, fins: &mut u8, dir: Direction, flags: Flags) -> State {
    if flags.rst {
        return State::Close;
    }
    if flags.fin {
        *fins |= match dir {
            Direction::Original => FIN_ORIGINAL,
            Direction::Reply => FIN_REPLY,
        };
    }
    match state {
        State::SynSent if dir == Direction::Reply && flags.syn && flags.ack => State::SynRecv,
        State::SynRecv if dir == Direction::Original && flags.ack && !flags.syn => {
            if *fins != 0 {
                State::FinWait
            } else {
                State::Established
            }
        }
        State::Established | State::FinWait | State::CloseWait | State::SynRecv
            if *fins == FIN_ORIGINAL | FIN_REPLY =>
        {
            State::TimeWait
        }
        State::Established if flags.fin => State::FinWait,
        State::FinWait if flags.ack && !flags.fin => {
            // The ACK answers the FIN when it comes from the side that did not send it.
            let acked = match dir {
                Direction::Original => *fins & FIN_REPLY != 0,
                Direction::Reply => *fins & FIN_ORIGINAL != 0,
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

    /// A segment: its direction and flags.
    type Step = (Direction, Flags);

    fn run(steps: &[Step]) -> State {
        let mut fins = 0;
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
