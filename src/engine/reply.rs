//! Frames the engine writes itself: TCP RST and ICMP errors back to a sender, ARP requests for
//! next hops. Each writes into the caller's `out` buffer and returns the length (0 when `out` is
//! too small, which the caller's fixed buffers never are).

use core::net::Ipv4Addr;
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetProtocol};

use super::checksum;
use super::packet::{ETH_HEADER, Ipv4Frame, PROTO_ICMP, PROTO_TCP, PROTO_UDP, set_macs, src_mac};

/// TTL of the packets the node originates.
const TTL: u8 = 64;
/// Bytes of the offending datagram an ICMP error quotes beyond its IP header (RFC 792).
const QUOTED_PAYLOAD: usize = 8;

/// Writes an IPv4 header for `payload_len` bytes of `proto`, sent with `ttl`, at
/// `out[ETH_HEADER..]`.
fn ipv4_header(out: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload_len: usize, ttl: u8) {
    let h = &mut out[ETH_HEADER..ETH_HEADER + 20];
    h.fill(0);
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = ttl;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum::finish(checksum::sum(h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A UDP datagram of `payload` from `src` to `dst` (address and port each), sent with `ttl`
/// to `to_mac`.
pub fn udp_datagram(
    (our_mac, to_mac): ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    ttl: u8,
    payload: &[u8],
    out: &mut [u8],
) -> usize {
    let udp_len = 8 + payload.len();
    let len = ETH_HEADER + 20 + udp_len;
    if out.len() < len {
        return 0;
    }
    set_macs(out, our_mac, to_mac);
    out[12..ETH_HEADER].copy_from_slice(&u16::from(EthernetProtocol::Ipv4).to_be_bytes());
    ipv4_header(out, src.0, dst.0, PROTO_UDP, udp_len, ttl);
    let u = &mut out[ETH_HEADER + 20..len];
    u[0..2].copy_from_slice(&src.1.to_be_bytes());
    u[2..4].copy_from_slice(&dst.1.to_be_bytes());
    u[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    u[6..8].fill(0);
    u[8..].copy_from_slice(payload);
    let sum = checksum::pseudo_header(src.0.octets(), dst.0.octets(), PROTO_UDP, udp_len as u16) + checksum::sum(u);
    // 0 means "no checksum" in UDP: a sum that folds to it is sent as all ones (RFC 768).
    let c = match checksum::finish(sum) {
        0 => 0xffff,
        c => c,
    };
    u[6..8].copy_from_slice(&c.to_be_bytes());
    len
}

/// A RST answering the TCP segment `p`, as from its destination (RFC 9293 3.10.7.1).
pub fn tcp_reset(p: &Ipv4Frame<'_>, our_mac: [u8; 6], out: &mut [u8]) -> usize {
    let (frame, f) = (p.bytes(), &**p);
    let len = ETH_HEADER + 20 + 20;
    let (Some((sport, dport)), Some(segment)) = (f.ports, f.tcp) else { return 0 };
    if out.len() < len {
        return 0;
    }
    let seg = &frame[f.l4..f.end];
    let ack = u32::from_be_bytes([seg[8], seg[9], seg[10], seg[11]]);
    set_macs(out, our_mac, src_mac(frame));
    out[12..ETH_HEADER].copy_from_slice(&u16::from(EthernetProtocol::Ipv4).to_be_bytes());
    ipv4_header(out, f.dst, f.src, PROTO_TCP, 20, TTL);
    let t = &mut out[ETH_HEADER + 20..len];
    t.fill(0);
    t[0..2].copy_from_slice(&dport.to_be_bytes());
    t[2..4].copy_from_slice(&sport.to_be_bytes());
    if segment.flags.ack {
        // <SEQ=SEG.ACK><CTL=RST>
        t[4..8].copy_from_slice(&ack.to_be_bytes());
        t[13] = 0x04;
    } else {
        // <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>
        t[8..12].copy_from_slice(&segment.end().to_be_bytes());
        t[13] = 0x14;
    }
    t[12] = 5 << 4;
    let c = checksum::finish(checksum::pseudo_header(f.dst.octets(), f.src.octets(), PROTO_TCP, 20) + checksum::sum(t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    len
}

/// An ICMP error of `icmp_type`/`code` about the packet `p`, from `from`, quoting its IP
/// header and the first 8 bytes of its payload.
pub fn icmp_error(
    p: &Ipv4Frame<'_>,
    icmp_type: u8,
    code: u8,
    from: Ipv4Addr,
    our_mac: [u8; 6],
    out: &mut [u8],
) -> usize {
    let (frame, f) = (p.bytes(), &**p);
    let quoted = &frame[ETH_HEADER..f.end.min(f.l4 + QUOTED_PAYLOAD)];
    let icmp_len = 8 + quoted.len();
    let len = ETH_HEADER + 20 + icmp_len;
    if out.len() < len {
        return 0;
    }
    set_macs(out, our_mac, src_mac(frame));
    out[12..ETH_HEADER].copy_from_slice(&u16::from(EthernetProtocol::Ipv4).to_be_bytes());
    ipv4_header(out, from, f.src, PROTO_ICMP, icmp_len, TTL);
    let m = &mut out[ETH_HEADER + 20..len];
    m[..8].fill(0);
    m[0] = icmp_type;
    m[1] = code;
    m[8..].copy_from_slice(quoted);
    let c = checksum::finish(checksum::sum(m));
    m[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// A broadcast ARP request: who has `target`? tell `sender` (at `our_mac`).
pub fn arp_request(our_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr, out: &mut [u8]) -> usize {
    arp(ArpOperation::Request, our_mac, sender, [0xff; 6], [0; 6], target, out)
}

/// A gratuitous ARP: a broadcast request for `ip` from `ip` at `our_mac`, which every host on the
/// segment takes as the new place of `ip`.
pub fn gratuitous_arp(our_mac: [u8; 6], ip: Ipv4Addr, out: &mut [u8]) -> usize {
    arp(ArpOperation::Request, our_mac, ip, [0xff; 6], [0; 6], ip, out)
}

/// An ARP reply: `ip` is at `our_mac`, to the asker at `to_mac`/`to_ip`.
pub fn arp_reply(our_mac: [u8; 6], ip: Ipv4Addr, to_mac: [u8; 6], to_ip: Ipv4Addr, out: &mut [u8]) -> usize {
    arp(ArpOperation::Reply, our_mac, ip, to_mac, to_mac, to_ip, out)
}

/// An ARP frame from `mac`/`ip`, sent to `dst_mac`, about `target_mac`/`target_ip`.
fn arp(
    operation: ArpOperation,
    mac: [u8; 6],
    ip: Ipv4Addr,
    dst_mac: [u8; 6],
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
    out: &mut [u8],
) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: ip,
        target_hardware_addr: EthernetAddress(target_mac),
        target_protocol_addr: target_ip,
    };
    let len = ETH_HEADER + repr.buffer_len();
    let Some(frame) = out.get_mut(..len) else { return 0 };
    set_macs(frame, mac, dst_mac);
    frame[12..ETH_HEADER].copy_from_slice(&u16::from(EthernetProtocol::Arp).to_be_bytes());
    repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETH_HEADER..]));
    len
}
