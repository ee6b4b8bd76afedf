//! Reading and rewriting the headers of an Ethernet/IPv4/TCP|UDP frame in place.
//!
//! [`Ipv4Frame::parse`] checks every length once (with smoltcp's `wire` types), so the setters
//! after it index only inside checked bounds; the checksums are updated incrementally.

use core::net::Ipv4Addr;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet};

use super::checksum;
use super::counters::DropReason;
use crate::conntrack::tcp;

pub const ETH_HEADER: usize = 14;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Offsets and fields of a checked IPv4 frame.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Frame {
    /// Offset of the transport header.
    pub l4: usize,
    /// End of the IP packet (Ethernet padding excluded).
    pub end: usize,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// A fragment (more-fragments set, or offset not zero).
    pub fragment: bool,
    /// Ports, for an unfragmented TCP or UDP packet long enough to hold its header.
    pub ports: Option<(u16, u16)>,
    /// TCP flags, for TCP.
    pub tcp: Option<tcp::Flags>,
}

impl Ipv4Frame {
    /// Checks an Ethernet frame that carries IPv4: version, header and total lengths, header
    /// checksum, and the transport header's length.
    pub fn parse(frame: &[u8]) -> Result<Ipv4Frame, DropReason> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
        debug_assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
        if ip.version() != 4 {
            return Err(DropReason::Malformed);
        }
        if !ip.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        let l4 = ETH_HEADER + ip.header_len() as usize;
        let end = ETH_HEADER + ip.total_len() as usize;
        let fragment = ip.more_frags() || ip.frag_offset() != 0;
        let proto = u8::from(ip.next_header());
        let seg = &frame[l4..end];
        let (ports, tcp) = match proto {
            _ if fragment => (None, None),
            PROTO_TCP
                if seg.len() >= 20 && (seg[12] >> 4) as usize * 4 >= 20 && (seg[12] >> 4) as usize * 4 <= seg.len() =>
            {
                let f = seg[13];
                let flags =
                    tcp::Flags { fin: f & 0x01 != 0, syn: f & 0x02 != 0, rst: f & 0x04 != 0, ack: f & 0x10 != 0 };
                (Some(ports_of(seg)), Some(flags))
            }
            PROTO_UDP
                if seg.len() >= 8 && (8..=seg.len()).contains(&(u16::from_be_bytes([seg[4], seg[5]]) as usize)) =>
            {
                (Some(ports_of(seg)), None)
            }
            PROTO_TCP | PROTO_UDP => return Err(DropReason::Truncated),
            _ => (None, None),
        };
        Ok(Ipv4Frame {
            l4,
            end,
            proto,
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            ttl: ip.hop_limit(),
            fragment,
            ports,
            tcp,
        })
    }
}

fn ports_of(seg: &[u8]) -> (u16, u16) {
    (u16::from_be_bytes([seg[0], seg[1]]), u16::from_be_bytes([seg[2], seg[3]]))
}

/// The new addresses and ports of a translated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

const IP_TTL: usize = ETH_HEADER + 8;
const IP_CHECKSUM: usize = ETH_HEADER + 10;
const IP_SRC: usize = ETH_HEADER + 12;
const IP_DST: usize = ETH_HEADER + 16;

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Translates a checked TCP/UDP frame in place: addresses, ports, TTL - 1, and the IP and
/// transport checksums, each updated for just the words that changed.
pub fn rewrite(frame: &mut [u8], f: &Ipv4Frame, to: Rewrite) {
    let old_src: [u8; 4] = f.src.octets();
    let old_dst: [u8; 4] = f.dst.octets();
    let (new_src, new_dst) = (to.src.octets(), to.dst.octets());
    let (old_sport, old_dport) = f.ports.unwrap_or_default();

    // IP header: addresses and TTL (the high byte of the TTL/protocol word).
    let ttl_word = get16(frame, IP_TTL);
    let new_ttl_word = ttl_word.wrapping_sub(0x0100);
    let mut ip_check = get16(frame, IP_CHECKSUM);
    ip_check = checksum::update32(ip_check, old_src, new_src);
    ip_check = checksum::update32(ip_check, old_dst, new_dst);
    ip_check = checksum::update(ip_check, ttl_word, new_ttl_word);
    put16(frame, IP_TTL, new_ttl_word);
    put16(frame, IP_CHECKSUM, ip_check);
    frame[IP_SRC..IP_SRC + 4].copy_from_slice(&new_src);
    frame[IP_DST..IP_DST + 4].copy_from_slice(&new_dst);

    // Transport: ports, and the pseudo-header's addresses in its checksum.
    let check_at = f.l4 + if f.proto == PROTO_TCP { 16 } else { 6 };
    let old_check = get16(frame, check_at);
    put16(frame, f.l4, to.src_port);
    put16(frame, f.l4 + 2, to.dst_port);
    if f.proto == PROTO_UDP && old_check == 0 {
        return; // UDP without a checksum stays without one.
    }
    let mut check = checksum::update32(old_check, old_src, new_src);
    check = checksum::update32(check, old_dst, new_dst);
    check = checksum::update(check, old_sport, to.src_port);
    check = checksum::update(check, old_dport, to.dst_port);
    if f.proto == PROTO_UDP && check == 0 {
        check = 0xffff; // 0 means "no checksum" in UDP.
    }
    put16(frame, check_at, check);
}

/// Sets the Ethernet addresses of an outgoing frame.
pub fn set_macs(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

pub fn src_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0; 6];
    m.copy_from_slice(&frame[6..12]);
    m
}
