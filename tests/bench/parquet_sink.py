"""The parquet sink in the real (release, mimalloc) binary: `otlp -> batch -> parquet` against
`otlp -> batch -> discard` on the same load (tests/bench/loadgen.py, CPU 0; tracepipe on CPU 1);
the difference in CPU-µs per span is what archiving costs. The loadgen resends one request body,
so ids repeat and the bytes on disk are flattered: archive_bench.rs measures size on unique data.

usage: python tests/bench/parquet_sink.py [--total N]"""

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import ROOT, cpu_seconds, free_port, start_tracepipe, wait_port
from harness import scratch


def run(sink, total, workdir):
    port, mport = free_port(), free_port()
    out = workdir / "archive"
    shutil.rmtree(out, ignore_errors=True)
    s = f"{{ type: parquet, inputs: [batch], path: {out} }}" if sink == "parquet" else "{ type: debug, inputs: [batch], verbosity: none }"
    proc = start_tracepipe(f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
processors:
  batch: {{ type: batch, inputs: [in], send_batch_size: 8192, send_batch_max_size: 8192, timeout: 200ms }}
sinks:
  out: {s}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
""", "1", workdir, sink)
    try:
        wait_port(port, what="tracepipe")
        gen = ["taskset", "-c", "0", str(ROOT / "tests/.venv/bin/python"), str(ROOT / "tests/bench/loadgen.py"), "--endpoint", f"127.0.0.1:{port}"]
        subprocess.run(gen + ["--total", "100000"], check=True, capture_output=True)
        time.sleep(0.5)
        cpu0 = cpu_seconds(proc.pid)
        res = json.loads(subprocess.run(gen + ["--total", str(total)], check=True, capture_output=True, text=True).stdout)
        time.sleep(1.0)
        cpu1 = cpu_seconds(proc.pid)
        return {"sink": sink, "spans_per_s": res["spans"] / res["seconds"], "cpu_us_per_span": (cpu1 - cpu0) * 1e6 / res["spans"]}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=1_000_000)
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tp-parquet-bench-"))
    rows = [run(s, a.total, workdir) for s in ("discard", "parquet")]
    for r in rows:
        print(json.dumps(r))
    d, p = rows
    cost = p["cpu_us_per_span"] - d["cpu_us_per_span"]
    print(f"parquet sink: {cost:.2f} CPU-µs/span on top of receive+batch ({1e6 / cost:,.0f} spans/s per core for the sink alone); "
          f"whole pipeline {1e6 / p['cpu_us_per_span']:,.0f} spans/s per core")


if __name__ == "__main__":
    # Every scratch directory (configs, logs, peers' state) under one, removed after a clean run.
    with scratch("tp-parquet-bench-run-"):
        main()
