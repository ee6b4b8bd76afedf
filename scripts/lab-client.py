#!/usr/bin/env python3
"""A lab client on the kernel's own TCP/UDP stack.

  lab-client.py http HOST PORT COUNT   COUNT HTTP/1.0 GETs, one connection each; prints each answer
  lab-client.py udp HOST PORT MESSAGE  one datagram; prints the answer

Every request has a timeout; a failed one prints "request N: FAILED (reason)" and the exit
status is 1."""
import socket
import sys

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
failed = 0
if mode == "http":
    for n in range(1, int(sys.argv[4]) + 1):
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            body = data.split(b"\r\n\r\n", 1)[1].decode().strip()
            print(f"request {n}: {body}")
        except (OSError, IndexError) as e:
            failed += 1
            print(f"request {n}: FAILED ({e})")
elif mode == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    try:
        s.sendto(sys.argv[4].encode(), (host, port))
        print(s.recvfrom(65535)[0].decode())
    except OSError as e:
        failed += 1
        print(f"FAILED ({e})")
sys.exit(1 if failed else 0)
