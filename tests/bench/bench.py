"""Runs tracepipe and Rotel side by side on the same OTLP/gRPC load, each pinned to CPU 1 (the
load generator and the receiving end run on CPU 0), and reports spans/s, CPU-µs per span, peak
RSS and bytes written to the network, then the ratios tracepipe / Rotel.

Scenarios:
  discard  OTLP gRPC -> batch (8192 / 200ms) -> discard (tracepipe: debug sink with verbosity none;
           Rotel: blackhole exporter)
  export   OTLP gRPC -> batch -> OTLP gRPC export with gzip to a receiving tracepipe
  kafka    OTLP gRPC -> batch -> Kafka (tansu on CPU 0), OTLP protobuf records, acks=all, one
           unkeyed record per batch (tracepipe `partition_traces_by_id: false`; Rotel's kafka
           exporter, which has no per-trace keying)
  kafka_keyed  the same, but tracepipe with its default `partition_traces_by_id: true` (one record
           per trace, keyed by trace id; here every span is its own trace: the worst case); Rotel
           runs as in `kafka`
After each Kafka run every record is read back (confluent-kafka) and its spans counted.

usage: python tests/bench/bench.py [--total N] [--scenarios discard,export,kafka,kafka_keyed]"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import PEERS, Tansu, free_port, metric_sum, scratch, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def net_bytes(pid: int) -> int:
    """Bytes the process wrote through write/send syscalls (sockets; logs are off)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def tracepipe_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/tracepipe/target"))
    return os.environ.get("TRACEPIPE_RELEASE_BIN", str(Path(target) / "release" / "tracepipe"))


def start_tracepipe(config: str, cpu: str, workdir: Path, name: str):
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    log = open(workdir / f"{name}.log", "wb")
    env = dict(os.environ, TRACEPIPE_LOG="warn")
    return subprocess.Popen(["taskset", "-c", cpu, tracepipe_bin(), "run", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env)


def sink_config(port: int, mport: int) -> str:
    return f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port}, max_recv_msg_size: 64MiB }} }}
sinks:
  drop: {{ type: debug, inputs: [in], verbosity: none }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""


def run_one(collector: str, scenario: str, total: int, workdir: Path) -> dict:
    port, mport = free_port(), free_port()
    far = None
    kafka = None
    topic = f"bench-{collector}-{scenario}"
    if scenario.startswith("kafka"):
        kafka = Tansu(cpu="0")
        kafka.__enter__()
        kafka.create_topic(topic, 4)
    if scenario == "export":
        far_port = free_port()
        far = start_tracepipe(sink_config(far_port, free_port()), "0", workdir, f"far-{collector}")
        wait_port(far_port, what="receiving tracepipe")
    if collector == "tracepipe":
        if scenario == "discard":
            sink = "  drop: { type: debug, inputs: [batch], verbosity: none }"
        elif scenario.startswith("kafka"):
            sink = (f"  k: {{ type: kafka, inputs: [batch], brokers: ['{kafka.bootstrap}'], topic: {topic}, max_message_bytes: 16000000, "
                    f"partition_traces_by_id: {str(scenario == 'kafka_keyed').lower()} }}")
        else:
            sink = f"  up: {{ type: otlp, inputs: [batch], endpoint: 'http://127.0.0.1:{far_port}', compression: gzip }}"
        cfg = f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
processors:
  batch: {{ type: batch, inputs: [in], send_batch_size: 8192, send_batch_max_size: 8192, timeout: 200ms }}
sinks:
{sink}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""
        proc = start_tracepipe(cfg, "1", workdir, f"tp-{scenario}")
    else:
        args = ["taskset", "-c", "1", str(PEERS / "rotel-agent"), "start",
                "--otlp-grpc-endpoint", f"127.0.0.1:{port}", "--otlp-http-endpoint", f"127.0.0.1:{free_port()}",
                "--traces-batch-max-size", "8192", "--batch-timeout", "200ms",
                "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(workdir / "rotel.log")]
        if scenario == "discard":
            args += ["--exporter", "blackhole"]
        elif scenario.startswith("kafka"):
            args += ["--exporter", "kafka", "--kafka-exporter-brokers", kafka.bootstrap, "--kafka-exporter-traces-topic", topic,
                     "--kafka-exporter-format", "protobuf", "--kafka-exporter-acks", "all", "--kafka-exporter-max-message-bytes", "16000000"]
        else:
            args += ["--exporter", "otlp", "--otlp-exporter-endpoint", f"http://127.0.0.1:{far_port}", "--otlp-exporter-protocol", "grpc"]
        proc = subprocess.Popen(args, stdout=open(workdir / f"rotel-{scenario}.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(port, what=collector)
        time.sleep(0.5)
        # Warm-up, then the measured run.
        py = str(ROOT / "tests/.venv/bin/python")
        gen = ["taskset", "-c", "0", py, str(ROOT / "tests/bench/loadgen.py"), "--endpoint", f"127.0.0.1:{port}"]
        subprocess.run(gen + ["--total", "100000"], check=True, capture_output=True)
        time.sleep(0.5)
        cpu0, net0 = cpu_seconds(proc.pid), net_bytes(proc.pid)
        res = json.loads(subprocess.run(gen + ["--total", str(total)], check=True, capture_output=True, text=True).stdout)
        time.sleep(1.0)  # let the last batch (200ms timeout) leave
        cpu1, net1 = cpu_seconds(proc.pid), net_bytes(proc.pid)
        delivered = None
        if kafka:
            delivered = kafka_spans(kafka, topic)
        out = {
            "collector": collector,
            "scenario": scenario,
            "spans": res["spans"],
            "spans_per_s": res["spans"] / res["seconds"],
            "cpu_us_per_span": (cpu1 - cpu0) * 1e6 / res["spans"],
            "peak_rss_mib": peak_rss_mib(proc.pid),
            "net_bytes_per_span": (net1 - net0) / res["spans"],
            "refused_requests": res["refused_requests"],
            "span_bytes": res["span_bytes"],
            "kafka_spans": delivered,
        }
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if far:
            far.terminate()
            far.wait(timeout=60)
        if kafka:
            kafka.__exit__(None, None, None)


def kafka_spans(kafka, topic: str) -> int:
    """Spans in every record of the topic (warm-up included), read back after the run."""
    from opentelemetry.proto.trace.v1 import trace_pb2
    n = 0
    for _, _, value in kafka.records(topic, 1, timeout=120, settle=3.0):
        n += sum(len(ss.spans) for rs in trace_pb2.TracesData.FromString(value).resource_spans for ss in rs.scope_spans)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--total", type=int, default=2_000_000)
    ap.add_argument("--scenarios", default="discard,export")
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tp-bench-"))
    rows = []
    for scenario in a.scenarios.split(","):
        for collector in ("tracepipe", "rotel"):
            r = run_one(collector, scenario, a.total, workdir)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print()
    print(f"| scenario | collector | spans/s | CPU-µs/span | peak RSS MiB | net bytes/span | spans in Kafka |")
    print(f"|---|---|---|---|---|---|---|")
    for r in rows:
        k = "" if r["kafka_spans"] is None else f"{r['kafka_spans']:,}"
        print(f"| {r['scenario']} | {r['collector']} | {r['spans_per_s']:,.0f} | {r['cpu_us_per_span']:.2f} | {r['peak_rss_mib']:.1f} | {r['net_bytes_per_span']:.1f} | {k} |")
    print()
    for scenario in a.scenarios.split(","):
        tp = next(r for r in rows if r["scenario"] == scenario and r["collector"] == "tracepipe")
        ro = next(r for r in rows if r["scenario"] == scenario and r["collector"] == "rotel")
        print(f"{scenario}: tracepipe/rotel  CPU per span {tp['cpu_us_per_span'] / ro['cpu_us_per_span']:.2f}x, "
              f"throughput {tp['spans_per_s'] / ro['spans_per_s']:.2f}x, peak RSS {tp['peak_rss_mib'] / ro['peak_rss_mib']:.2f}x"
              + (f", net bytes {tp['net_bytes_per_span'] / ro['net_bytes_per_span']:.2f}x" if ro['net_bytes_per_span'] else ""))


if __name__ == "__main__":
    # Every scratch directory (configs, logs, peers' state) under one, removed after a clean run.
    with scratch("tp-bench-run-"):
        main()
