"""Jaeger compact UDP scenario: tracepipe (release) pinned to CPU 1 receives emitBatch datagrams
(jaeger -> batch -> discard) from a paced sender on CPU 0, at increasing rates. Reports, per
rate: spans accepted, spans tracepipe dropped and counted (queue full), datagrams the kernel
dropped before tracepipe read them (Udp RcvbufErrors), CPU-µs per span and spans/s per core.

usage: python tests/bench/jaeger_udp.py [--rates 50000,100000,200000,400000] [--seconds 5]"""

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from bench import ROOT, cpu_seconds, peak_rss_mib, start_tracepipe  # noqa: E402
from harness import free_port, http_get, metric_sum, parse_metrics, scratch  # noqa: E402


def udp_rcvbuf_errors() -> int:
    lines = [l.split() for l in Path("/proc/net/snmp").read_text().splitlines() if l.startswith("Udp:")]
    head, vals = lines[0], lines[1]
    return int(vals[head.index("RcvbufErrors")])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="50000,100000,200000,400000")
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mport = free_port()
    cfg = f"""
receivers:
  jaeger: {{ type: jaeger, thrift_compact: {{ endpoint: 127.0.0.1:{port}, workers: 2, queue_packets: 1000 }} }}
processors:
  batch: {{ type: batch, inputs: [jaeger], send_batch_size: 8192, timeout: 200ms }}
sinks:
  drop: {{ type: debug, inputs: [batch], verbosity: none }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""
    work = Path(tempfile.mkdtemp(prefix="tp-jaeger-bench-"))
    proc = start_tracepipe(cfg, "1", work, "jaeger")
    time.sleep(1)
    py = str(ROOT / "tests/.venv-jaegerclient/bin/python")
    rows = []
    try:
        for rate in [int(r) for r in a.rates.split(",")]:
            m0 = parse_metrics(http_get(f"http://127.0.0.1:{mport}/metrics")[1])
            cpu0, k0 = cpu_seconds(proc.pid), udp_rcvbuf_errors()
            out = subprocess.run(["taskset", "-c", "0", py, str(ROOT / "tests/bench/jaeger_loadgen.py"), "--port", str(port), "--rate", str(rate), "--seconds", str(a.seconds)],
                                 check=True, capture_output=True, text=True).stdout
            sent = json.loads(out)
            time.sleep(1.0)
            m1 = parse_metrics(http_get(f"http://127.0.0.1:{mport}/metrics")[1])
            cpu1, k1 = cpu_seconds(proc.pid), udp_rcvbuf_errors()
            acc = metric_sum(m1, "tracepipe_receiver_accepted_spans_total") - metric_sum(m0, "tracepipe_receiver_accepted_spans_total")
            ref = metric_sum(m1, "tracepipe_receiver_refused_spans_total") - metric_sum(m0, "tracepipe_receiver_refused_spans_total")
            cpu = cpu1 - cpu0
            row = {"offered_spans_per_s": sent["spans"] / sent["seconds"], "sent_spans": sent["spans"], "accepted": int(acc), "dropped_counted": int(ref),
                   "kernel_dropped_datagrams": k1 - k0, "cpu_us_per_span": cpu * 1e6 / max(acc, 1), "spans_per_core_s": acc / max(cpu, 1e-9),
                   "datagram_bytes": sent["datagram_bytes"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        print()
        print("| offered spans/s | accepted | dropped (counted) | kernel-dropped datagrams | CPU-µs/span | spans/s per core |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['offered_spans_per_s']:,.0f} | {r['accepted']:,} | {r['dropped_counted']:,} | {r['kernel_dropped_datagrams']:,} | {r['cpu_us_per_span']:.2f} | {r['spans_per_core_s']:,.0f} |")
        print(f"peak RSS {peak_rss_mib(proc.pid):.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    # Every scratch directory (configs, logs, peers' state) under one, removed after a clean run.
    with scratch("tp-jaeger-bench-run-"):
        main()
