#!/usr/bin/python3
"""Hostile frames for the gateway, sent raw from a lab namespace (root; Debian's python3 with
python3-scapy, which builds the frames).

  lab-frames.py hostile IFACE GW_MAC NODE_IP TCP_PORT UDP_PORT
      sends a set of malformed, truncated, oversized and odd frames, each once, and prints what
      the gateway must make of them: "expect REASON N" for each drop reason (nodegate_drops_total)
      and "expect forwarded N" for the odd but legal ones it translates
  lab-frames.py capture-sync IFACE PORT SECONDS
      waits (at most SECONDS) for a flow-sync update with records on its way to UDP port PORT,
      and prints the whole frame in hex
  lab-frames.py send IFACE HEX [forge]
      sends the frame HEX as it is (a replay), or with "forge" one byte of its tag changed and
      its UDP checksum left out (a forgery without the key)
  lab-frames.py replay IFACE GW_MAC CORPUS_DIR
      sends every frame of the engine's fuzz corpus (files of [u16 big-endian length][bytes]),
      addressed from IFACE to the gateway, and prints "replayed N frames"

The frames go to GW_MAC (or, for a few, to an unknown MAC or broadcast, which the lab's bridge
floods to the gateway too) and never leave the lab: the only host they reach is the bridge."""
import collections
import logging
import os
import socket
import sys
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # it warns about interfaces it will not use
from scapy.all import ARP, IP, TCP, UDP, Dot1Q, Ether, IPv6, Raw, get_if_addr, get_if_hwaddr

# Client ports the hostile frames use, away from the kernel's ephemeral range.
CLIENT_PORT = 20000


def hostile(iface, gw_mac, node, tcp_port, udp_port):
    """(expected verdict, description, frame) for every frame of the set."""
    me = get_if_addr(iface)
    eth = Ether(src=get_if_hwaddr(iface), dst=gw_mac)
    ip = IP(src=me, dst=node)
    syn = TCP(sport=CLIENT_PORT, dport=tcp_port, flags="S")
    udp = UDP(sport=CLIENT_PORT, dport=udp_port) / b"hostile"
    return [
        ("truncated", "a TCP header cut after 10 bytes", eth / IP(src=me, dst=node, proto=6) / Raw(b"\0" * 10)),
        ("truncated", "a UDP header cut after 4 bytes", eth / IP(src=me, dst=node, proto=17) / Raw(b"\0" * 4)),
        ("malformed", "IHL 4", eth / IP(src=me, dst=node, ihl=4) / udp),
        ("malformed", "IP version 6 in an IPv4 frame", eth / IP(src=me, dst=node, version=6) / udp),
        ("malformed", "total length past the frame", eth / IP(src=me, dst=node, len=1000) / udp),
        ("malformed", "total length below the header", eth / IP(src=me, dst=node, len=12) / udp),
        ("malformed", "ARP for hardware type 6", Ether(src=eth.src, dst="ff:ff:ff:ff:ff:ff") / ARP(hwtype=6, pdst=node)),
        ("malformed", "ARP cut after 20 bytes", bytes(Ether(src=eth.src, dst="ff:ff:ff:ff:ff:ff", type=0x0806)) + bytes(ARP(pdst=node))[:20]),
        ("bad_checksum", "IPv4 header checksum wrong", eth / IP(src=me, dst=node, chksum=0xDEAD) / udp),
        ("oversized", "an IPv4 packet of 1504 bytes", eth / ip / UDP(sport=CLIENT_PORT, dport=udp_port) / (b"x" * 1476)),
        ("zero_port", "UDP from port 0", eth / ip / UDP(sport=0, dport=udp_port) / b"x"),
        ("zero_port", "TCP to port 0", eth / ip / TCP(sport=CLIENT_PORT, dport=0, flags="S")),
        ("bad_tcp_flags", "SYN+FIN", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="SF")),
        ("bad_tcp_flags", "SYN+RST", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="SR")),
        ("bad_tcp_flags", "no flags (null scan)", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="")),
        ("bad_tcp_flags", "FIN+PSH+URG (Christmas tree)", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="FPU")),
        ("bad_tcp_flags", "FIN without ACK", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="F")),
        ("tcp_no_flow", "ACK for no flow", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="A")),
        ("tcp_no_flow", "RST for no flow", eth / ip / TCP(sport=CLIENT_PORT, dport=tcp_port, flags="R")),
        ("other_mac", "unicast to a MAC nobody has", Ether(src=eth.src, dst="02:00:00:00:99:99") / ip / syn),
        ("other_address", "IPv4 to an address not the node's", eth / IP(src=me, dst="10.77.0.200") / udp),
        ("unsupported_ethertype", "IPv6", eth / IPv6() / UDP(dport=udp_port)),
        ("unsupported_ethertype", "an 802.1Q tag", eth / Dot1Q(vlan=7) / ip / udp),
        ("martian_source", "broadcast source address", eth / IP(src="255.255.255.255", dst=node) / udp),
        ("martian_source", "multicast source address", eth / IP(src="224.0.0.5", dst=node) / udp),
        ("martian_source", "source 0.0.0.0", eth / IP(src="0.0.0.0", dst=node) / syn),
        ("fragment", "a later fragment whose first never came", eth / IP(src=me, dst=node, proto=17, id=4242, frag=100) / Raw(b"x" * 64)),
        ("ttl_exceeded", "a SYN with TTL 1", eth / IP(src=me, dst=node, ttl=1) / syn),
        ("forwarded", "a SYN with IP options (four NOPs)", eth / IP(src=me, dst=node, options=b"\x01\x01\x01\x01") / TCP(sport=CLIENT_PORT + 1, dport=tcp_port, flags="S")),
        ("forwarded", "a SYN with PSH and ECE", eth / ip / TCP(sport=CLIENT_PORT + 2, dport=tcp_port, flags="SPE")),
        # Transport checksums are the endpoint's to check: the incremental update keeps a bad one
        # bad, and the endpoint drops the segment, as behind any router.
        ("forwarded", "a SYN with a bad TCP checksum", eth / ip / TCP(sport=CLIENT_PORT + 3, dport=tcp_port, flags="S", chksum=0xBAD)),
    ]


def paced(sock, frames):
    """Sends `frames`, a few at a time, so that the TAP's queue never overflows."""
    sent = 0
    for n, frame in enumerate(frames):
        sock.send(frame)
        sent += 1
        if n % 32 == 31:
            time.sleep(0.01)
    return sent


def corpus_frames(directory, src_mac, dst_mac, src_ip):
    """The corpus's frames, each from `src_mac` to `dst_mac` (the bridge drops frames with a
    multicast source and delivers by destination). ARP frames are made to speak for this host
    only (its MAC, its IP): the corpus would otherwise tell the gateway that the lab's backends
    are elsewhere, as an ARP spoofer could, and that is not what this test is about."""
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        while len(data) >= 2:
            # The length's two top bits are the fuzz harness's offload flags, not length.
            length = min(int.from_bytes(data[:2], "big") & 0x3FFF, len(data) - 2)
            frame, data = bytearray(data[2:2 + length]), data[2 + length:]
            if not 14 <= len(frame) <= 1514:
                continue
            frame[0:6], frame[6:12] = dst_mac, src_mac
            if frame[12:14] == b"\x08\x06" and len(frame) >= 14 + 28:
                frame[22:28], frame[28:32] = src_mac, src_ip
            yield bytes(frame)


mode, iface = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((iface, 0))
if mode == "hostile":
    rows = hostile(iface, sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    paced(sock, [bytes(frame) for _, _, frame in rows])
    for reason, count in sorted(collections.Counter(reason for reason, _, _ in rows).items()):
        print(f"expect {reason} {count}")
    for reason, what, _ in rows:
        print(f"# {reason}: {what}")
elif mode == "replay":
    src = bytes.fromhex(get_if_hwaddr(iface).replace(":", ""))
    dst = bytes.fromhex(sys.argv[3].replace(":", ""))
    sent = paced(sock, corpus_frames(sys.argv[4], src, dst, socket.inet_aton(get_if_addr(iface))))
    print(f"replayed {sent} frames")
elif mode == "capture-sync":
    port, deadline = int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
    listen = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    listen.bind((iface, 0))
    listen.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            frame = listen.recv(65535)
        except TimeoutError:
            continue
        ihl = (frame[14] & 0x0F) * 4 if len(frame) > 14 else 0
        udp = 14 + ihl
        payload = frame[udp + 8:]
        # IPv4, UDP, to the sync port, an update (kind 1) with at least one record.
        if (frame[12:14] == b"\x08\x00" and frame[23] == 17 and len(payload) > 8
                and int.from_bytes(frame[udp + 2:udp + 4], "big") == port
                and payload[:4] == b"NGSY" and payload[5] == 1 and payload[6:8] != b"\0\0"):
            print(frame.hex())
            break
    else:
        sys.exit("no sync update seen")
elif mode == "send":
    frame = bytearray(bytes.fromhex(sys.argv[3]))
    if len(sys.argv) > 4 and sys.argv[4] == "forge":
        udp = 14 + (frame[14] & 0x0F) * 4
        frame[-1] ^= 0x5A
        frame[udp + 6:udp + 8] = b"\0\0"
    sock.send(bytes(frame))
    print("sent")
else:
    sys.exit(f"unknown mode {mode}")
