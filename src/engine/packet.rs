//! Reading and rewriting the headers of an Ethernet/IPv4/TCP|UDP frame in place.
//!
//! [`Ipv4Frame::parse`] checks every length once (with smoltcp's `wire` types) and keeps what it
//! read ([`Ipv4Fields`]) with the bytes, so the setters after it index only inside checked
//! bounds; the checksums are updated incrementally (RFC 1624).

use core::net::Ipv4Addr;
use core::ops::Deref;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, Ipv4Packet, TcpPacket, UdpPacket};

use super::checksum;
use super::counters::DropReason;
use crate::conntrack::{Tuple, tcp};

pub const ETH_HEADER: usize = 14;
/// The link's MTU: the largest IPv4 packet the node takes or sends.
pub const MTU: usize = 1500;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// The ICMP message types and codes the engine reads or writes (RFC 792).
pub mod icmp {
    pub const ECHO_REPLY: u8 = 0;
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    /// Code of DESTINATION_UNREACHABLE.
    pub const PORT_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
    /// The types whose message quotes the packet that caused it.
    pub const ERRORS: [u8; 3] = [DESTINATION_UNREACHABLE, TIME_EXCEEDED, PARAMETER_PROBLEM];
}

/// What the kernel left undone on a frame read from a TAP with offloads (its virtio-net
/// header), to finish once nodegate sends the frame on: a frame from a local sender, whether a
/// VM, a container or the host itself, comes this way, unsegmented and without its checksum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offload {
    /// The TCP/UDP checksum field holds only the sum of the pseudo-header, not complemented
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM`): the data is summed in when the frame leaves.
    pub partial_checksum: bool,
    /// A TCP super-frame that the kernel cuts into segments of this many bytes of payload when
    /// it leaves (GSO); 0 for a single packet.
    pub segment_size: u16,
}

impl Offload {
    /// A frame as it is on the wire.
    pub const NONE: Offload = Offload { partial_checksum: false, segment_size: 0 };
}

/// What [`Ipv4Frame::parse`] read from a frame: offsets and fields.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Fields {
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
    /// A fragment after the first: it carries no transport header.
    pub later_fragment: bool,
    /// The IP identification, which ties a datagram's fragments together.
    pub ident: u16,
    /// Ports, for a TCP or UDP packet (or first fragment) long enough to hold its header.
    pub ports: Option<(u16, u16)>,
    /// TCP flags and sequence, for TCP.
    pub tcp: Option<tcp::Segment>,
    pub offload: Offload,
    /// The packets this frame leaves as: 1, or the segments of a super-frame.
    pub packets: u16,
}

/// A checked Ethernet/IPv4 frame: its bytes and what was read from them, travelling together.
/// The fields read through [`Deref`]; the bytes change only through its rewrites.
pub struct Ipv4Frame<'b> {
    bytes: &'b mut [u8],
    fields: Ipv4Fields,
}

impl Deref for Ipv4Frame<'_> {
    type Target = Ipv4Fields;

    fn deref(&self) -> &Ipv4Fields {
        &self.fields
    }
}

impl<'b> Ipv4Frame<'b> {
    /// Checks an Ethernet frame that carries IPv4 (see [`Ipv4Fields::parse`]).
    pub fn parse(bytes: &'b mut [u8], offload: Offload) -> Result<Self, DropReason> {
        let fields = Ipv4Fields::parse(bytes, offload)?;
        Ok(Ipv4Frame { bytes, fields })
    }

    pub fn bytes(&self) -> &[u8] {
        self.bytes
    }

    /// The Ethernet header is the caller's to set; the IP packet is not.
    pub fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) {
        set_macs(self.bytes, src, dst);
    }

    /// Translates a TCP/UDP frame in place: addresses, ports, TTL - 1, and the IP and
    /// transport checksums, each updated for just the words that changed. For a first fragment
    /// the transport checksum (of the whole datagram) is updated just the same.
    pub fn rewrite(&mut self, to: Rewrite) {
        let f = self.fields;
        rewrite_ports(self.bytes, ETH_HEADER, f.l4, f.end, f.proto, to, f.offload.partial_checksum);
        rewrite_ip(self.bytes, ETH_HEADER, to.src, to.dst, true);
    }

    /// Translates a fragment after the first: addresses and TTL - 1 (its datagram's ports and
    /// transport checksum travel in the first fragment).
    pub fn rewrite_addresses(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        rewrite_ip(self.bytes, ETH_HEADER, src, dst, true);
    }

    /// Finishes a partial TCP/UDP checksum (see [`Offload`]): for a frame that leaves without
    /// its offload (parked, or for the node's own stack).
    pub fn complete_checksum(&mut self) {
        let f = self.fields;
        let check_at = checksum_at(f.l4, f.proto);
        if f.ports.is_none() || check_at + 2 > f.end {
            return;
        }
        // The field holds the pseudo-header's sum: summing the segment over it adds in the rest.
        let check = checksum::finish(checksum::sum(&self.bytes[f.l4..f.end]));
        put16(self.bytes, check_at, if f.proto == PROTO_UDP && check == 0 { 0xffff } else { check });
    }

    /// The quoted packet of an ICMP error about TCP or UDP, if this is one.
    pub fn quoted(&self) -> Option<Quoted> {
        let (frame, f) = (&*self.bytes, &self.fields);
        if f.proto != PROTO_ICMP || f.fragment || f.end < f.l4 + 8 + 20 || !icmp::ERRORS.contains(&frame[f.l4]) {
            return None;
        }
        let ip = f.l4 + 8;
        let ihl = (frame[ip] & 0x0f) as usize * 4;
        let proto = frame[ip + 9];
        if frame[ip] >> 4 != 4 || ihl < 20 || ip + ihl + 8 > f.end || !matches!(proto, PROTO_TCP | PROTO_UDP) {
            return None;
        }
        let l4 = ip + ihl;
        let tuple = Tuple {
            src: Ipv4Addr::from(get_ip(frame, ip + IP_SRC)),
            dst: Ipv4Addr::from(get_ip(frame, ip + IP_DST)),
            src_port: get16(frame, l4),
            dst_port: get16(frame, l4 + 2),
            proto,
        };
        Some(Quoted { ip, l4, tuple })
    }

    /// The ICMP message's checksum is right.
    pub fn icmp_checksum_ok(&self) -> bool {
        checksum::finish(checksum::sum(&self.bytes[self.l4..self.end])) == 0
    }

    /// Translates an ICMP error in place: the outer header to `outer_src` -> `outer_dst` (TTL -
    /// 1), the quoted packet `q` to `inner` (addresses, ports, its checksums), and the ICMP
    /// checksum.
    pub fn rewrite_icmp_error(&mut self, q: &Quoted, outer_src: Ipv4Addr, outer_dst: Ipv4Addr, inner: Rewrite) {
        let (frame, f) = (&mut *self.bytes, self.fields);
        rewrite_ports(frame, q.ip, q.l4, f.end, q.tuple.proto, inner, false);
        rewrite_ip(frame, q.ip, inner.src, inner.dst, false);
        rewrite_ip(frame, ETH_HEADER, outer_src, outer_dst, true);
        put16(frame, f.l4 + 2, 0);
        let check = checksum::finish(checksum::sum(&frame[f.l4..f.end]));
        put16(frame, f.l4 + 2, check);
    }

    /// Turns an ICMP echo request into its reply, in place: addresses and MACs swapped, type 0,
    /// checksums updated. False (frame untouched) for anything but an echo request.
    pub fn echo_reply(&mut self, our_mac: [u8; 6]) -> bool {
        let (frame, f) = (&mut *self.bytes, self.fields);
        if f.proto != PROTO_ICMP
            || f.fragment
            || f.end < f.l4 + 8
            || frame[f.l4] != icmp::ECHO_REQUEST
            || frame[f.l4 + 1] != 0
        {
            return false;
        }
        let client_mac = src_mac(frame);
        set_macs(frame, our_mac, client_mac);
        // Same addresses swapped: the IP checksum does not change; a fresh TTL does.
        let (src, dst) = (get_ip(frame, ETH_HEADER + IP_SRC), get_ip(frame, ETH_HEADER + IP_DST));
        frame[ETH_HEADER + IP_SRC..ETH_HEADER + IP_SRC + 4].copy_from_slice(&dst);
        frame[ETH_HEADER + IP_DST..ETH_HEADER + IP_DST + 4].copy_from_slice(&src);
        let ttl_word = get16(frame, ETH_HEADER + IP_TTL);
        let new_ttl_word = (64 << 8) | (ttl_word & 0x00ff);
        let check = checksum::update(get16(frame, ETH_HEADER + IP_CHECKSUM), ttl_word, new_ttl_word);
        put16(frame, ETH_HEADER + IP_TTL, new_ttl_word);
        put16(frame, ETH_HEADER + IP_CHECKSUM, check);
        let type_word = get16(frame, f.l4);
        frame[f.l4] = icmp::ECHO_REPLY;
        let icmp_check = checksum::update(get16(frame, f.l4 + 2), type_word, get16(frame, f.l4));
        put16(frame, f.l4 + 2, icmp_check);
        true
    }
}

impl Ipv4Fields {
    /// Checks an Ethernet frame that carries IPv4: version, header and total lengths, header
    /// checksum, and the transport header's length; a super-frame (`offload`) must be TCP
    /// whose segments fit the MTU.
    pub fn parse(frame: &[u8], offload: Offload) -> Result<Ipv4Fields, DropReason> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Truncated)?;
        debug_assert_eq!(eth.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropReason::Malformed)?;
        if ip.version() != 4 {
            return Err(DropReason::Malformed);
        }
        if !ip.verify_checksum() {
            return Err(DropReason::BadChecksum);
        }
        let super_frame = offload.segment_size > 0;
        if ip.total_len() as usize > MTU && !super_frame {
            return Err(DropReason::Oversized);
        }
        let l4 = ETH_HEADER + ip.header_len() as usize;
        let end = ETH_HEADER + ip.total_len() as usize;
        let fragment = ip.more_frags() || ip.frag_offset() != 0;
        let later_fragment = ip.frag_offset() != 0;
        let proto = u8::from(ip.next_header());
        let seg = &frame[l4..end];
        let mut packets = 1;
        let (ports, tcp) = match proto {
            _ if later_fragment => (None, None),
            PROTO_TCP => {
                let Ok(t) = TcpPacket::new_checked(seg) else { return Err(DropReason::Truncated) };
                let checked = [(t.fin(), 0x01), (t.syn(), 0x02), (t.rst(), 0x04), (t.ack(), 0x10), (t.urg(), 0x20)];
                let bits = checked.iter().filter(|(set, _)| *set).fold(0, |bits, (_, bit)| bits | bit);
                if !TCP_VALID_FLAGS.contains(&bits) {
                    return Err(DropReason::BadTcpFlags);
                }
                let tcp_header = usize::from(t.header_len());
                if ip.header_len() as usize + tcp_header + offload.segment_size as usize > MTU {
                    return Err(DropReason::Oversized);
                }
                if super_frame {
                    packets = (seg.len() - tcp_header).div_ceil(offload.segment_size as usize).max(1) as u16;
                }
                let flags = tcp::Flags { fin: t.fin(), syn: t.syn(), rst: t.rst(), ack: t.ack() };
                let len = (seg.len() - tcp_header) as u32 + u32::from(flags.syn) + u32::from(flags.fin);
                let segment = tcp::Segment { flags, seq: t.seq_number().0 as u32, len };
                (Some((t.src_port(), t.dst_port())), Some(segment))
            }
            // A first fragment holds only the start of the datagram its UDP length counts, so
            // only its header is checked.
            PROTO_UDP if fragment && seg.len() >= 8 => {
                let u = UdpPacket::new_unchecked(seg);
                (Some((u.src_port(), u.dst_port())), None)
            }
            PROTO_UDP if !fragment => {
                let Ok(u) = UdpPacket::new_checked(seg) else { return Err(DropReason::Truncated) };
                (Some((u.src_port(), u.dst_port())), None)
            }
            PROTO_UDP => return Err(DropReason::Truncated),
            _ => (None, None),
        };
        if super_frame && tcp.is_none() {
            return Err(DropReason::Malformed); // the TAP offers the kernel TCP segmentation only
        }
        if ports.is_some_and(|(src, dst)| src == 0 || dst == 0) {
            return Err(DropReason::ZeroPort);
        }
        Ok(Ipv4Fields {
            l4,
            end,
            proto,
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            ttl: ip.hop_limit(),
            fragment,
            later_fragment,
            ident: ip.ident(),
            ports,
            tcp,
            offload,
            packets,
        })
    }
}

/// The combinations of FIN (0x01), SYN (0x02), RST (0x04), ACK (0x10) and URG (0x20) a TCP
/// stack sends (PSH, ECE and CWR go with any of them), as nf_conntrack's `tcp_valid_flags`
/// lists them: SYN, SYN+URG, SYN+ACK, RST, RST+ACK, FIN+ACK, FIN+ACK+URG, ACK, ACK+URG.
const TCP_VALID_FLAGS: [u8; 9] = [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30];

/// Where the checksum of a TCP or UDP header at `l4` is.
fn checksum_at(l4: usize, proto: u8) -> usize {
    l4 + if proto == PROTO_TCP { 16 } else { 6 }
}

/// The new addresses and ports of a translated packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl From<Tuple> for Rewrite {
    /// The addresses and ports of a packet with tuple `t`.
    fn from(t: Tuple) -> Rewrite {
        Rewrite { src: t.src, src_port: t.src_port, dst: t.dst, dst_port: t.dst_port }
    }
}

// Offsets within an IPv4 header.
const IP_TTL: usize = 8;
const IP_CHECKSUM: usize = 10;
const IP_SRC: usize = 12;
const IP_DST: usize = 16;

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get_ip(b: &[u8], at: usize) -> [u8; 4] {
    [b[at], b[at + 1], b[at + 2], b[at + 3]]
}

/// Sets the addresses of the IPv4 header at `ip` (and decrements its TTL when `forward`),
/// updating its checksum for just those words.
fn rewrite_ip(frame: &mut [u8], ip: usize, src: Ipv4Addr, dst: Ipv4Addr, forward: bool) {
    let (old_src, old_dst) = (get_ip(frame, ip + IP_SRC), get_ip(frame, ip + IP_DST));
    let mut check = get16(frame, ip + IP_CHECKSUM);
    check = checksum::update32(check, old_src, src.octets());
    check = checksum::update32(check, old_dst, dst.octets());
    if forward {
        let ttl_word = get16(frame, ip + IP_TTL);
        let new_ttl_word = ttl_word.wrapping_sub(0x0100);
        check = checksum::update(check, ttl_word, new_ttl_word);
        put16(frame, ip + IP_TTL, new_ttl_word);
    }
    put16(frame, ip + IP_CHECKSUM, check);
    frame[ip + IP_SRC..ip + IP_SRC + 4].copy_from_slice(&src.octets());
    frame[ip + IP_DST..ip + IP_DST + 4].copy_from_slice(&dst.octets());
}

/// Sets the ports of the TCP/UDP header at `l4` (of the IPv4 header at `ip`, whose addresses
/// are still the old ones), and updates its checksum for the new addresses and ports, when the
/// checksum field lies before `end` (an ICMP error quotes only the first 8 bytes of a segment).
/// A `partial` checksum covers the pseudo-header only: it follows the addresses alone.
fn rewrite_ports(frame: &mut [u8], ip: usize, l4: usize, end: usize, proto: u8, to: Rewrite, partial: bool) {
    let (old_src, old_dst) = (get_ip(frame, ip + IP_SRC), get_ip(frame, ip + IP_DST));
    let (old_sport, old_dport) = (get16(frame, l4), get16(frame, l4 + 2));
    put16(frame, l4, to.src_port);
    put16(frame, l4 + 2, to.dst_port);
    let check_at = checksum_at(l4, proto);
    if check_at + 2 > end {
        return;
    }
    let old_check = get16(frame, check_at);
    if partial {
        // The field is the (uncomplemented) sum itself: update its complement.
        let check = checksum::update32(!old_check, old_src, to.src.octets());
        put16(frame, check_at, !checksum::update32(check, old_dst, to.dst.octets()));
        return;
    }
    if proto == PROTO_UDP && old_check == 0 {
        return; // UDP without a checksum stays without one.
    }
    let mut check = checksum::update32(old_check, old_src, to.src.octets());
    check = checksum::update32(check, old_dst, to.dst.octets());
    check = checksum::update(check, old_sport, to.src_port);
    check = checksum::update(check, old_dport, to.dst_port);
    if proto == PROTO_UDP && check == 0 {
        check = 0xffff; // 0 means "no checksum" in UDP.
    }
    put16(frame, check_at, check);
}

/// The packet an ICMP error quotes (its IP header and at least the first 8 bytes of its TCP or
/// UDP header): where it lies in the frame, and its addresses and ports.
#[derive(Debug, Clone, Copy)]
pub struct Quoted {
    ip: usize,
    l4: usize,
    pub tuple: Tuple,
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
