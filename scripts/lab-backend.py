#!/usr/bin/env python3
"""A lab backend: HTTP on :3000 and UDP on :5353, each answering with the backend's name and
the address the request came from, so a test can see who served it and whom it saw.

GET /health answers as the file HEALTH (the second argument) says: 200 without it, else the
status code it holds, "hang" (no answer, the connection kept open), or "big" (200 after a
64 KiB header block)."""
import http.server
import socket
import sys
import threading
import time

NAME = sys.argv[1]
HEALTH = sys.argv[2] if len(sys.argv) > 2 else None


class Handler(http.server.BaseHTTPRequestHandler):
    # Keeps a connection open for the next request when the client asks for that (HTTP/1.1);
    # HTTP/1.0 requests, the stream's among them, still get one answer and the close.
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/stream/"):
            return self.stream(float(self.path.split("/")[2]))
        if self.path == "/health":
            return self.health()
        body = f"{NAME} saw {self.client_address[0]}:{self.client_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def health(self):
        try:
            with open(HEALTH) as f:
                say = f.read().strip()
        except (OSError, TypeError):
            say = "200"
        if say == "hang":
            time.sleep(30)
            return
        self.send_response(200 if say == "big" else int(say))
        if say == "big":
            for i in range(64):
                self.send_header(f"X-Padding-{i}", "x" * 1000)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    def stream(self, seconds):
        """Streams numbered 1 KiB blocks, 8 KiB a write, for `seconds`, then the block count: a client can check
        that every byte arrived, in order."""
        self.send_response(200)
        self.end_headers()
        self.wfile.write(f"{NAME}\n".encode())
        deadline, n = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            # 8 blocks a write: full-size segments, as a real transfer sends them.
            self.wfile.write(b"".join(f"{n + i:08d}".encode() * 128 for i in range(8)))
            n += 8
            time.sleep(0.005)
        self.wfile.write(f"END {n}\n".encode())

    def log_message(self, *args):
        pass


def udp_echo():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5353))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(f"{NAME} saw {peer[0]}:{peer[1]} ".encode() + data, peer)


threading.Thread(target=udp_echo, daemon=True).start()
class Server(http.server.ThreadingHTTPServer):
    # socketserver listens with a backlog of 5: a burst of connections (hundreds at once in the
    # scale-out test) would overflow it, and the kernel would drop handshakes for seconds.
    request_queue_size = 1024


server = Server(("0.0.0.0", 3000), Handler)
server.daemon_threads = True
server.serve_forever()
