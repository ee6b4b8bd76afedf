//! The BFD control packet (RFC 5880 section 4.1), mandatory section only: nodegate does not
//! authenticate BFD (single hop, TTL 255 checked instead, as RFC 5881 section 5 allows).
//!
//! ```text
//! 0       1       2       3
//! |V|Diag |Sta|PFCADM| Mult | Length |
//! | My Discriminator                 |
//! | Your Discriminator               |
//! | Desired Min TX Interval (µs)     |
//! | Required Min RX Interval (µs)    |
//! | Required Min Echo RX Interval    |
//! ```

use super::{BfdDrop, State};

pub const VERSION: u8 = 1;
/// The mandatory section; longer packets carry authentication, which nodegate refuses.
pub const LEN: usize = 24;

mod field {
    use core::ops::Range;
    pub const VERS_DIAG: usize = 0;
    pub const STATE_FLAGS: usize = 1;
    pub const DETECT_MULT: usize = 2;
    pub const LENGTH: usize = 3;
    pub const MY_DISC: Range<usize> = 4..8;
    pub const YOUR_DISC: Range<usize> = 8..12;
    pub const DESIRED_MIN_TX: Range<usize> = 12..16;
    pub const REQUIRED_MIN_RX: Range<usize> = 16..20;
    pub const REQUIRED_MIN_ECHO_RX: Range<usize> = 20..24;
}

const POLL: u8 = 0x20;
const FINAL: u8 = 0x10;
const AUTH: u8 = 0x04;
const DEMAND: u8 = 0x02;
const MULTIPOINT: u8 = 0x01;

/// Why a session went down (RFC 5880 section 4.1, Diagnostic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Diag {
    None = 0,
    DetectionTimeExpired = 1,
    NeighborSignaledDown = 3,
    AdministrativelyDown = 7,
}

/// A control packet, as sent or as received and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    pub desired_min_tx_us: u32,
    pub required_min_rx_us: u32,
}

impl Control {
    /// Checks `bytes` (a UDP payload) by RFC 5880 section 6.8.6's first rules: the ones that
    /// need no session.
    pub fn parse(bytes: &[u8]) -> Result<Control, BfdDrop> {
        if bytes.len() < LEN {
            return Err(BfdDrop::BadLength);
        }
        if bytes[field::VERS_DIAG] >> 5 != VERSION {
            return Err(BfdDrop::BadVersion);
        }
        let length = bytes[field::LENGTH] as usize;
        if length < LEN || length > bytes.len() {
            return Err(BfdDrop::BadLength);
        }
        let flags = bytes[field::STATE_FLAGS];
        if flags & AUTH != 0 {
            return Err(BfdDrop::Authenticated);
        }
        if flags & MULTIPOINT != 0 || bytes[field::DETECT_MULT] == 0 {
            return Err(BfdDrop::BadField);
        }
        let be32 = |r: core::ops::Range<usize>| {
            u32::from_be_bytes([bytes[r.start], bytes[r.start + 1], bytes[r.start + 2], bytes[r.start + 3]])
        };
        let c = Control {
            diag: bytes[field::VERS_DIAG] & 0x1f,
            state: State::from_bits(flags >> 6),
            poll: flags & POLL != 0,
            final_: flags & FINAL != 0,
            demand: flags & DEMAND != 0,
            detect_mult: bytes[field::DETECT_MULT],
            my_disc: be32(field::MY_DISC),
            your_disc: be32(field::YOUR_DISC),
            desired_min_tx_us: be32(field::DESIRED_MIN_TX),
            required_min_rx_us: be32(field::REQUIRED_MIN_RX),
        };
        // Both set is a protocol error; a zero own discriminator too; and a zero "your
        // discriminator" is allowed only before the sender has heard from us.
        if (c.poll && c.final_) || c.my_disc == 0 {
            return Err(BfdDrop::BadField);
        }
        if c.your_disc == 0 && !matches!(c.state, State::Down | State::AdminDown) {
            return Err(BfdDrop::BadDiscriminator);
        }
        Ok(c)
    }

    /// Writes the packet into `buf[..LEN]`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::VERS_DIAG] = VERSION << 5 | (self.diag & 0x1f);
        buf[field::STATE_FLAGS] = (self.state as u8) << 6
            | if self.poll { POLL } else { 0 }
            | if self.final_ { FINAL } else { 0 }
            | if self.demand { DEMAND } else { 0 };
        buf[field::DETECT_MULT] = self.detect_mult;
        buf[field::LENGTH] = LEN as u8;
        buf[field::MY_DISC].copy_from_slice(&self.my_disc.to_be_bytes());
        buf[field::YOUR_DISC].copy_from_slice(&self.your_disc.to_be_bytes());
        buf[field::DESIRED_MIN_TX].copy_from_slice(&self.desired_min_tx_us.to_be_bytes());
        buf[field::REQUIRED_MIN_RX].copy_from_slice(&self.required_min_rx_us.to_be_bytes());
        // No echo function.
        buf[field::REQUIRED_MIN_ECHO_RX].fill(0);
    }
}

#[cfg(test)]
mod test {
    use super::*;

    const UP: Control = Control {
        diag: 0,
        state: State::Up,
        poll: true,
        final_: false,
        demand: false,
        detect_mult: 3,
        my_disc: 0x1234_5678,
        your_disc: 9,
        desired_min_tx_us: 100_000,
        required_min_rx_us: 200_000,
    };

    #[test]
    fn a_packet_reads_back_as_it_was_written() {
        let mut buf = [0xffu8; LEN];
        UP.emit(&mut buf);
        assert_eq!(&buf[..4], &[0x20, 0xe0, 3, 24]);
        assert_eq!(Control::parse(&buf), Ok(UP));
    }

    #[test]
    fn hostile_packets_are_refused_with_their_reason() {
        let mut good = [0u8; LEN];
        UP.emit(&mut good);
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            Control::parse(&b)
        };
        assert_eq!(Control::parse(&good[..23]), Err(BfdDrop::BadLength));
        assert_eq!(with(field::LENGTH, 23), Err(BfdDrop::BadLength));
        assert_eq!(with(field::LENGTH, 25), Err(BfdDrop::BadLength), "longer than the datagram");
        assert_eq!(with(field::VERS_DIAG, 0x40), Err(BfdDrop::BadVersion));
        assert_eq!(with(field::DETECT_MULT, 0), Err(BfdDrop::BadField));
        assert_eq!(with(field::STATE_FLAGS, 0xc1), Err(BfdDrop::BadField), "multipoint");
        assert_eq!(with(field::STATE_FLAGS, 0xc4), Err(BfdDrop::Authenticated));
        assert_eq!(with(field::STATE_FLAGS, 0xf0), Err(BfdDrop::BadField), "poll and final");
        let mut no_disc = good;
        no_disc[field::MY_DISC].fill(0);
        assert_eq!(Control::parse(&no_disc), Err(BfdDrop::BadField));
        let mut unknown_you = good;
        unknown_you[field::YOUR_DISC].fill(0);
        assert_eq!(Control::parse(&unknown_you), Err(BfdDrop::BadDiscriminator), "Up without our discriminator");
        unknown_you[field::STATE_FLAGS] = 0x40;
        assert!(Control::parse(&unknown_you).is_ok(), "Down may not know it yet");
    }
}
