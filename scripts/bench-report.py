#!/usr/bin/env python3
"""Turns scripts/bench's raw results ("TARGET METRIC VALUE" lines) into a Markdown table:
medians with min-max per target, and the ratios nodegate/kernel (the better of the two
nftables variants), nodegate/HAProxy and nodegate/nodegate-nospin (what the spin after
traffic changes)."""
import math
import statistics
import sys
from collections import defaultdict

path, rounds, secs = sys.argv[1], sys.argv[2], sys.argv[3]
values = defaultdict(list)
for line in open(path):
    parts = line.split()
    if len(parts) != 3:
        continue
    try:
        v = float(parts[2])
    except ValueError:
        continue
    if not math.isnan(v):
        values[(parts[0], parts[1])].append(v)

targets = ["direct", "nodegate", "nodegate-nospin", "nft-random", "nft-plain", "haproxy"]
# metric, label, higher is better
metrics = [
    ("bulk_gbps", "TCP bulk, Gbit/s", True),
    ("keepalive_rps", "HTTP keep-alive, req/s", True),
    ("keepalive_p99_ms", "HTTP keep-alive p99, ms", False),
    ("newconn_cps", "new connections/s", True),
    ("udp_p50_us", "UDP round trip p50, µs", False),
    ("udp_p99_us", "UDP round trip p99, µs", False),
    ("udp64_kpps", "64-byte UDP delivered, kpps", True),
    ("udp64_loss_pct", "64-byte UDP loss, %", False),
    ("rss_kib", "RSS under load, KiB", False),
]


def median(t, m):
    v = values.get((t, m))
    return statistics.median(v) if v else None


def cell(t, m):
    v = values.get((t, m))
    if not v:
        return "n/a"
    fmt = (lambda x: f"{x:.3g}") if max(v) < 100 else (lambda x: f"{x:,.0f}")
    return f"{fmt(statistics.median(v))} ({fmt(min(v))}–{fmt(max(v))})"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "n/a"


print(f"{rounds} rounds, {secs} s per workload; median (min–max)\n")
print("| workload | " + " | ".join(targets) + " | nodegate / kernel | nodegate / HAProxy | spin / no spin |")
print("|---" * (len(targets) + 4) + "|")
for m, label, higher in metrics:
    kernel = [median(t, m) for t in ("nft-random", "nft-plain")]
    kernel = [k for k in kernel if k is not None]
    best = (max(kernel) if higher else min(kernel)) if kernel else None
    ng = median("nodegate", m)
    row = [label] + [cell(t, m) for t in targets]
    row += [ratio(ng, best), ratio(ng, median("haproxy", m)), ratio(ng, median("nodegate-nospin", m))]
    print("| " + " | ".join(row) + " |")
