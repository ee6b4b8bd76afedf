#!/usr/bin/env python3
"""A lab client on the kernel's own TCP/UDP stack.

  lab-client.py http HOST PORT COUNT [TIMEOUT]
                                       COUNT HTTP/1.0 GETs, one connection each; prints each answer
  lab-client.py get HOST PORT [PATH]   one GET (of / by default); prints the status line and the body
  lab-client.py udp HOST PORT MESSAGE [SRCPORT]
                                       one datagram (from SRCPORT, to reuse a 5-tuple); prints the answer;
                                       MESSAGE "@N" sends N bytes of a pattern and prints
                                       "BACKEND: N bytes echoed intact" (or DAMAGED)
  lab-client.py stream HOST PORT SECONDS
                                       one long download (GET /stream/SECONDS); checks every block
                                       arrived in order; prints "stream BACKEND: N blocks intact"
  lab-client.py udpstream HOST PORT SECONDS SRCPORT [INTERVAL_MS]
                                       a datagram every INTERVAL_MS (50) on one 5-tuple, each
                                       waiting for its answer; prints each answer's backend and
                                       "udpstream: N sent, M answered"
  lab-client.py longlived HOST PORT SECONDS CONNECTIONS [INTERVAL_MS]
                                       CONNECTIONS kept-alive HTTP/1.1 connections at once, each
                                       with a GET every INTERVAL_MS (200; 0: back to back) for SECONDS
                                       (an answer may take 5 s); a connection that fails once, or that
                                       http.client opened again (its source port changed), is broken;
                                       prints "via ADDRESS: N connections, B broken" per source the
                                       backends saw (the gateway, with SNAT) and "longlived: N
                                       connections, B broken, R requests"
  lab-client.py hold HOST PORT SECONDS one idle TCP connection held open
  lab-client.py synflood HOST PORT SECONDS A.B [PER_SECOND [COUNT]]
                                       TCP SYNs from spoofed sources A.B.x.y (a block the lab owns)
                                       for SECONDS (or until COUNT are sent), as fast as it can or
                                       at most PER_SECOND (0: no limit); prints "synflood: N sent"
                                       (raw socket, root)
  lab-client.py udpflood HOST PORT SECONDS A.B [PER_SECOND [COUNT]]
                                       the same with one UDP datagram per spoofed source and port
                                       (a new flow each); prints "udpflood: N sent"
  lab-client.py connects HOST PORT SECONDS TIMEOUT
                                       a new connection (one GET, TIMEOUT seconds) started every
                                       100 ms for SECONDS; prints "connect AT ok|FAILED TOOK" per
                                       attempt (AT: its start, Unix time) and a summary
  lab-client.py udpflows HOST PORT COUNT SECONDS
                                       COUNT UDP flows, one socket each: a datagram on each until
                                       each was answered (three tries), then SECONDS later a
                                       second round; prints "udpflows: COUNT flows, A answered,
                                       B answered again"
  lab-client.py synsniff HOST PORT SECONDS
                                       watches this host's eth0 for SECONDS and prints
                                       "syn SPORT SEQ" for each TCP SYN from HOST to PORT
                                       (packet socket, root)
  lab-client.py ping HOST 0 COUNT      ICMP echo (raw socket, root), one a second at most;
                                       succeeds at the first answer

Every request has a timeout; a failed one prints "request N: FAILED (reason)" and the exit
status is 1."""
import socket
import struct
import sys
import time


def icmp_checksum(data):
    """The Internet checksum (ICMP, and TCP with its pseudo-header)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def get_root(host, port, timeout):
    """One HTTP/1.0 GET of / on a connection of its own; the whole answer."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data


mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
failed = 0
if mode == "http":
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 5
    for n in range(1, int(sys.argv[4]) + 1):
        try:
            data = get_root(host, port, timeout)
            body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
            print(f"request {n}: {body}")
        except (OSError, IndexError) as e:
            failed += 1
            print(f"request {n}: FAILED ({e})")
elif mode == "get":
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            path = sys.argv[4] if len(sys.argv) > 4 else "/"
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        print(head.split(b"\r\n")[0].decode())
        print(body.decode())
    except (OSError, ValueError) as e:
        failed = 1
        print(f"FAILED ({e})")
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if len(sys.argv) > 5:
        s.bind(("0.0.0.0", int(sys.argv[5])))
    s.settimeout(5)
    try:
        # Connected, so that an ICMP port unreachable surfaces as "Connection refused".
        s.connect((host, port))
        message = sys.argv[4].encode()
        if message.startswith(b"@"):
            message = bytes(48 + i % 10 for i in range(int(message[1:])))
        s.send(message)
        reply = s.recv(65535)
        if sys.argv[4].startswith("@"):
            intact = reply.endswith(message)
            print(f"{reply.split(b' ')[0].decode()}: {len(message)} bytes echoed {'intact' if intact else 'DAMAGED'}")
            failed = 0 if intact else 1
        else:
            print(reply.decode())
    except OSError as e:
        failed += 1
        print(f"FAILED ({e})")
elif mode == "stream":
    seconds = sys.argv[4]
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET /stream/{seconds} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    body = data.split(b"\r\n\r\n", 1)[1]
    name, rest = body.split(b"\n", 1)
    blocks, end = rest[:-1].rsplit(b"END ", 1) if b"END " in rest else (rest, b"-1")
    count = int(end)
    intact = len(blocks) == count * 1024 and all(
        blocks[i * 1024:(i + 1) * 1024] == f"{i:08d}".encode() * 128 for i in range(count))
    print(f"stream {name.decode()}: {count} blocks {'intact' if intact else 'DAMAGED'}")
    failed = 0 if intact and count > 0 else 1
elif mode == "udpstream":
    seconds, sport = float(sys.argv[4]), int(sys.argv[5])
    interval = float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.05
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", sport))
    s.connect((host, port))
    s.settimeout(0.5)
    sent = answered = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.send(f"seq {sent}".encode())
        sent += 1
        try:
            reply = s.recv(65535).decode()
            answered += 1
            print(reply.split(" ")[0], flush=True)
        except OSError:
            print("lost", flush=True)
        time.sleep(interval)
    print(f"udpstream: {sent} sent, {answered} answered")
    failed = 0 if sent == answered else 1
elif mode in ("synflood", "udpflood"):
    seconds, prefix = float(sys.argv[4]), [int(x) for x in sys.argv[5].split(".")]
    batch_every = 256 / float(sys.argv[6]) if len(sys.argv) > 6 and float(sys.argv[6]) > 0 else 0
    most = int(sys.argv[7]) if len(sys.argv) > 7 else None
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    dst = socket.inet_aton(host)
    sent, n = 0, 0
    start = time.monotonic()
    deadline = start + seconds
    while time.monotonic() < deadline and (most is None or n < most):
        if batch_every:  # at most PER_SECOND: each batch of 256 waits for its turn
            time.sleep(max(0.0, start + n / 256 * batch_every - time.monotonic()))
        for _ in range(256 if most is None else min(256, most - n)):
            n += 1
            src = bytes(prefix + [(n >> 8) & 0xFF, n & 0xFF])
            sport = 1024 + n % 60000
            if mode == "synflood":
                proto, l4 = 6, struct.pack("!HHIIBBHHH", sport, port, n, 0, 5 << 4, 0x02, 64240, 0, 0)
                check = icmp_checksum(src + dst + struct.pack("!BBH", 0, 6, len(l4)) + l4)
                l4 = l4[:16] + struct.pack("!H", check) + l4[18:]
            else:  # UDP without a checksum (0), which IPv4 allows
                proto, l4 = 17, struct.pack("!HHHH", sport, port, 9, 0) + b"q"
            # The kernel fills in the IP checksum (and ID) of an IP_HDRINCL packet.
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0, src, dst)
            try:
                s.sendto(ip + l4, (host, 0))
                sent += 1
            except OSError:
                pass
    print(f"{mode}: {sent} sent")
elif mode == "connects":
    import threading

    results = []

    def attempt(at):
        try:
            ok = b"web-frontend-" in get_root(host, port, float(sys.argv[5]))
        except OSError:
            ok = False
        results.append((at, ok, time.time() - at))

    threads = []
    end = time.time() + float(sys.argv[4])
    while time.time() < end:
        t = threading.Thread(target=attempt, args=(time.time(),))
        t.start()
        threads.append(t)
        time.sleep(0.1)
    for t in threads:
        t.join()
    for at, ok, took in sorted(results):
        print(f"connect {at:.3f} {'ok' if ok else 'FAILED'} {took:.3f}")
    print(f"connects: {sum(ok for _, ok, _ in results)} of {len(results)} ok")
elif mode == "udpflows":
    import resource
    import selectors
    count, seconds = int(sys.argv[4]), float(sys.argv[5])
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
    socks = []
    for _ in range(count):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setblocking(False)
        u.connect((host, port))
        socks.append(u)

    def round_trip(label):
        """A datagram on every socket, in paced batches, until each is answered (three tries)."""
        waiting = set(range(count))
        sel = selectors.DefaultSelector()
        for i, u in enumerate(socks):
            sel.register(u, selectors.EVENT_READ, i)
        for _ in range(3):
            for k, i in enumerate(sorted(waiting)):
                try:
                    socks[i].send(f"{label} {i}".encode())
                except OSError:
                    pass
                if k % 64 == 63:
                    time.sleep(0.005)
            deadline = time.monotonic() + 2
            while waiting and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=0.2):
                    try:
                        key.fileobj.recv(2048)
                        waiting.discard(key.data)
                    except OSError:
                        pass
            if not waiting:
                break
        sel.close()
        return count - len(waiting)

    first = round_trip("first")
    print(f"udpflows: first round {first} answered", flush=True)
    time.sleep(seconds)
    again = round_trip("again")
    print(f"udpflows: {count} flows, {first} answered, {again} answered again")
    failed = 0 if first == again == count else 1
elif mode == "longlived":
    import http.client
    import resource
    import threading
    seconds, count = float(sys.argv[4]), int(sys.argv[5])
    interval = float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.2
    resource.setrlimit(resource.RLIMIT_NOFILE, (count + 64, count + 64))
    deadline = time.monotonic() + seconds
    results = [None] * count
    requests = [0] * count

    def run(i):
        via, broken = None, None
        c = http.client.HTTPConnection(host, port, timeout=5)
        try:
            c.connect()
            source = c.sock.getsockname()[1]
            while time.monotonic() < deadline:
                c.request("GET", "/")
                answer = c.getresponse()
                body = answer.read().decode()
                if answer.status != 200 or " saw " not in body:
                    raise OSError(f"answer {answer.status}")
                if c.sock is None or c.sock.getsockname()[1] != source:
                    raise OSError("reconnected")
                via = via or body.split(" saw ")[1].split(":")[0]
                requests[i] += 1
                time.sleep(interval)
        except (OSError, http.client.HTTPException) as e:
            broken = f"{type(e).__name__} after {requests[i]} requests"
        c.close()
        results[i] = (via, broken)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_via = {}
    for via, broken in results:
        n, b = by_via.get(via, (0, 0))
        by_via[via] = (n + 1, b + (broken is not None))
    for via, (n, b) in sorted(by_via.items(), key=lambda kv: str(kv[0])):
        print(f"via {via}: {n} connections, {b} broken")
    for i, (via, broken) in enumerate(results):
        if broken:
            print(f"connection {i} via {via} broken: {broken}")
    total_broken = sum(b for _, b in by_via.values())
    print(f"longlived: {count} connections, {total_broken} broken, {sum(requests)} requests")
    failed = 1 if total_broken else 0
elif mode == "hold":
    with socket.create_connection((host, port), timeout=5):
        time.sleep(float(sys.argv[4]))
elif mode == "synsniff":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind(("eth0", 0))
    s.settimeout(0.2)
    src = socket.inet_aton(host)
    end = time.monotonic() + float(sys.argv[4])
    while time.monotonic() < end:
        try:
            frame = s.recv(2048)
        except socket.timeout:
            continue
        ip = frame[14:]
        if len(ip) < 40 or ip[9] != 6 or ip[12:16] != src:
            continue
        tcp = ip[(ip[0] & 0x0F) * 4:]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        if dport == port and tcp[13] & 0x12 == 0x02:
            print(f"syn {sport} {seq}", flush=True)
elif mode == "ping":
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(1)
    ident = 0x4E47
    failed = 1
    for seq in range(1, int(sys.argv[4]) + 1):
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"nodegate"
        body = body[:2] + struct.pack("!H", icmp_checksum(body)) + body[4:]
        sent = time.monotonic()
        s.sendto(body, (host, 0))
        try:
            while time.monotonic() - sent < 1:
                packet, peer = s.recvfrom(2048)
                icmp = packet[(packet[0] & 0x0F) * 4:]
                if peer[0] == host and icmp[0] == 0 and struct.unpack("!HH", icmp[4:8]) == (ident, seq):
                    print(f"reply from {host}: seq={seq} time={(time.monotonic() - sent) * 1000:.1f} ms")
                    failed = 0
                    break
        except socket.timeout:
            pass
        if not failed:
            break
    if failed:
        print(f"no echo reply from {host}")
sys.exit(1 if failed else 0)
