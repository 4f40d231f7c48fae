"""Cost of guid inference (issue "Guid-based parent inference"): the same tracepipe graph with
and without `guid_inference` between the OTLP receiver and the batch processor, on spans
without a guid (the cost should be near zero: a memmem over each received buffer) and on mesh
traffic (x-request-id-only fragments, 3 traces per request rebuilt into one, a new guid per
request). tracepipe (release) on CPU 1, the load generator on CPU 0. Reports CPU-µs per span,
spans/s and, while the processor holds spans, bytes held per span (from its gauges).

usage: python tests/bench/guid.py [--total N] [--wait 2s]"""

import argparse
import json
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench import ROOT, cpu_seconds, free_port, peak_rss_mib, start_tracepipe, wait_port
from harness import http_get, metric_sum, parse_metrics, scratch


def graph(port, mport, with_guid, wait):
    proc = f"  rebuild: {{ type: guid_inference, inputs: [in], wait: {wait} }}\n" if with_guid else ""
    return f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
processors:
{proc}  batch: {{ type: batch, inputs: [{'rebuild' if with_guid else 'in'}], send_batch_size: 8192, timeout: 200ms }}
sinks:
  drop: {{ type: debug, inputs: [batch], verbosity: none }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""


def run(shape, with_guid, total, wait, workdir):
    port, mport = free_port(), free_port()
    proc = start_tracepipe(graph(port, mport, with_guid, wait), "1", workdir, f"{shape}-{with_guid}")
    try:
        wait_port(port, what="tracepipe")
        py = str(ROOT / "tests/.venv/bin/python")
        gen = ["taskset", "-c", "0", py, str(ROOT / "tests/bench/loadgen.py"), "--endpoint", f"127.0.0.1:{port}", "--shape", shape]
        subprocess.run(gen + ["--total", "50000"], check=True, capture_output=True)
        time.sleep(float(wait.rstrip("s")) + 1)
        held = []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    m = parse_metrics(http_get(f"http://127.0.0.1:{mport}/metrics")[1])
                    held.append((metric_sum(m, "tracepipe_processor_guid_bytes_held"), metric_sum(m, "tracepipe_processor_guid_spans_held")))
                except OSError:
                    pass
                time.sleep(0.25)
        t = threading.Thread(target=sample)
        t.start()
        cpu0 = cpu_seconds(proc.pid)
        res = json.loads(subprocess.run(gen + ["--total", str(total)], check=True, capture_output=True, text=True).stdout)
        time.sleep(float(wait.rstrip("s")) + 1)  # held spans are released and processed too
        cpu1 = cpu_seconds(proc.pid)
        stop.set()
        t.join()
        m = parse_metrics(http_get(f"http://127.0.0.1:{mport}/metrics")[1])
        peak = max(held, key=lambda x: x[1]) if held else (0, 0)
        return {"shape": shape, "guid_inference": with_guid, "spans": res["spans"], "spans_per_s": res["spans"] / res["seconds"],
                "cpu_us_per_span": (cpu1 - cpu0) * 1e6 / res["spans"], "peak_rss_mib": peak_rss_mib(proc.pid),
                "peak_spans_held": peak[1], "bytes_held_per_span": peak[0] / peak[1] if peak[1] else 0.0,
                "edges": metric_sum(m, "tracepipe_processor_guid_edges_inferred_total"),
                "evicted_early": metric_sum(m, "tracepipe_processor_guid_evicted_early_total")}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=1_000_000)
    ap.add_argument("--wait", default="2s")
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tp-guid-bench-"))
    rows = []
    for shape in ("noguid", "mesh"):
        for with_guid in (False, True):
            r = run(shape, with_guid, a.total, a.wait, workdir)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print()
    print("| spans | guid_inference | spans/s | CPU-µs/span | peak RSS MiB | peak spans held | bytes held/span | edges inferred |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {'yes' if r['guid_inference'] else 'no'} | {r['spans_per_s']:,.0f} | {r['cpu_us_per_span']:.2f} | {r['peak_rss_mib']:.1f} | "
              f"{r['peak_spans_held']:,.0f} | {r['bytes_held_per_span']:.0f} | {r['edges']:,.0f} |")
    for shape in ("noguid", "mesh"):
        off = next(r for r in rows if r["shape"] == shape and not r["guid_inference"])
        on = next(r for r in rows if r["shape"] == shape and r["guid_inference"])
        print(f"{shape}: guid inference costs {on['cpu_us_per_span'] - off['cpu_us_per_span']:+.2f} CPU-µs/span ({on['cpu_us_per_span'] / off['cpu_us_per_span']:.2f}x)")


if __name__ == "__main__":
    # Every scratch directory (configs, logs, peers' state) under one, removed after a clean run.
    with scratch("tp-guid-bench-run-"):
        main()
