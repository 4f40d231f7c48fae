"""Runs tracepipe and Rotel side by side on the same OTLP/gRPC load, each pinned to CPU 1 (the
load generator and the receiving end run on CPU 0), and reports spans/s, CPU-µs per span, peak
RSS and bytes written to the network, then the ratios tracepipe / Rotel.

Scenarios:
  discard  OTLP gRPC -> batch (8192 / 200ms) -> discard (tracepipe: debug sink with verbosity none;
           Rotel: blackhole exporter)
  export   OTLP gRPC -> batch -> OTLP gRPC export with gzip to a receiving tracepipe
  export_disk  the same with tracepipe's disk queue (`queue.storage`: each batch written and
           synced, read back, removed after delivery); Rotel runs as in `export`
  kafka    OTLP gRPC -> batch -> Kafka (tansu on CPU 0), OTLP protobuf records, acks=all, one
           unkeyed record per batch (tracepipe `partition_traces_by_id: false`; Rotel's kafka
           exporter, which has no per-trace keying)
  kafka_keyed  the same, but tracepipe with its default `partition_traces_by_id: true` (one record
           per trace, keyed by trace id; here every span is its own trace: the worst case); Rotel
           runs as in `kafka`
  satellite_otlp / satellite_report  OTLP gRPC -> batch -> the satellite sink (`otlp_grpc` /
           `report_grpc`, plaintext) into a receiving tracepipe (OTLP / LightStep receiver); Rotel
           runs as in `export`. The Report path re-encodes every span: the two rows' CPU per span
           differ by what that costs (goal: at most 2 µs per span)
  discard_tls  discard with the OTLP gRPC receiver over TLS (a P-256 certificate the bench makes;
           the load generator's channel verifies it); Rotel's build has no TLS receiver, so its row
           is its plaintext discard, and the TLS cost is read against tracepipe's `discard`
After each Kafka run every record is read back (confluent-kafka) and its spans counted.

  tail     (tracepipe only; Rotel has no tail sampling) OTLP gRPC -> tail_sampling (errors +
           latency 500 ms + 10% probabilistic + one string_attribute; decision_wait 5s) ->
           discard, 10-span traces with new ids per request, against the same graph without the
           processor; then with one `sql` policy added; then shards 1 and 2 on both cores. Reports
           the processor's own CPU per span, held bytes per held wire byte, and the kept
           fraction against what the policies imply.

usage: python tests/bench/bench.py [--total N] [--scenarios discard,export,export_disk,kafka,kafka_keyed,tail]
(export_disk: tracepipe's OTLP sink with `queue.storage`; Rotel as in export, it has no disk queue)"""

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


def sink_config(port: int, mport: int, lightstep: bool = False) -> str:
    recv = (f"{{ type: lightstep, grpc: {{ endpoint: 127.0.0.1:{port} }}, max_request_size: 64MiB }}" if lightstep
            else f"{{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port}, max_recv_msg_size: 64MiB }} }}")
    return f"""
receivers:
  in: {recv}
sinks:
  drop: {{ type: debug, inputs: [in], verbosity: none }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""


def run_one(collector: str, scenario: str, total: int, workdir: Path, rate: float = 0) -> dict:
    port, mport = free_port(), free_port()
    far = None
    kafka = None
    topic = f"bench-{collector}-{scenario}"
    if scenario.startswith("kafka"):
        kafka = Tansu(cpu="0")
        kafka.__enter__()
        kafka.create_topic(topic, 4)
    if scenario in ("export", "export_disk", "satellite_otlp", "satellite_report"):
        far_port = free_port()
        far = start_tracepipe(sink_config(far_port, free_port(), scenario == "satellite_report" and collector == "tracepipe"), "0", workdir, f"far-{collector}")
        wait_port(far_port, what="receiving tracepipe")
    tls_ca = None
    if scenario == "discard_tls" and collector == "tracepipe":
        from pki import Ca  # tests/e2e/pki.py
        ca = Ca(workdir, "bench-ca")
        cert, key, _ = ca.issue("bench-server", "localhost", server=True)
        tls_ca = str(ca.pem)
    if collector == "tracepipe":
        if scenario in ("discard", "discard_tls"):
            sink = "  drop: { type: debug, inputs: [batch], verbosity: none }"
        elif scenario.startswith("kafka"):
            sink = (f"  k: {{ type: kafka, inputs: [batch], brokers: ['{kafka.bootstrap}'], topic: {topic}, max_message_bytes: 16000000, "
                    f"partition_traces_by_id: {str(scenario == 'kafka_keyed').lower()} }}")
        elif scenario.startswith("satellite_"):
            # The satellite sink, plaintext, into a tracepipe with an OTLP or a LightStep receiver.
            protocol = "report_grpc" if scenario == "satellite_report" else "otlp_grpc"
            sink = (f"  up: {{ type: satellite, inputs: [batch], endpoint: '127.0.0.1:{far_port}', protocol: {protocol}, "
                    f"access_token: bench-token, tls: {{ insecure: true }} }}")
        elif scenario == "export_disk":
            # The same export through the disk queue (every batch written, synced, read back).
            sink = (f"  up: {{ type: otlp, inputs: [batch], endpoint: 'http://127.0.0.1:{far_port}', compression: gzip, "
                    f"queue: {{ storage: {{ path: '{workdir / 'queue'}', max_bytes: 4GiB }} }} }}")
        else:
            sink = f"  up: {{ type: otlp, inputs: [batch], endpoint: 'http://127.0.0.1:{far_port}', compression: gzip }}"
        cfg = f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port}{f", tls: {{ cert_file: {cert}, key_file: {key} }}" if tls_ca else ""} }} }}
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
        if scenario in ("discard", "discard_tls"):
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
        gen = ["taskset", "-c", "0", py, str(ROOT / "tests/bench/loadgen.py"), "--endpoint", f"{'localhost' if tls_ca else '127.0.0.1'}:{port}", "--rate", str(rate)]
        if tls_ca:
            gen += ["--ca", tls_ca]
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


TAIL_POLICIES = """
      - { name: errors, type: status_code, status_codes: [ERROR] }
      - { name: slow, type: latency, threshold_ms: 500 }
      - { name: baseline, type: probabilistic, sampling_percentage: 10 }
      - { name: vip, type: string_attribute, key: user.tier, values: [gold] }"""
TAIL_SQL = """
      - { name: checkout, type: sql, where: "attributes['http.route'] = '/checkout' AND duration_ns > 2e8" }"""


def metrics_of(mport: int) -> dict:
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
    from harness import parse_metrics
    return parse_metrics(text)


def run_tail(variant: str, total: int, workdir: Path) -> dict:
    """One tail-sampling benchmark run; variant: none | tail | tail_sql | shards1 | shards2."""
    port, mport = free_port(), free_port()
    cpus = "0,1" if variant.startswith("shards") else "1"
    if variant == "none":
        middle, inp = "", "in"
    else:
        policies = TAIL_POLICIES + (TAIL_SQL if variant == "tail_sql" else "")
        shards = {"shards1": "\n    shards: 1", "shards2": "\n    shards: 2"}.get(variant, "")
        middle = f"""processors:
  sample:
    type: tail_sampling
    inputs: [in]
    decision_wait: 5s{shards}
    policies:{policies}
"""
        inp = "sample"
    cfg = f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
{middle}
sinks:
  drop: {{ type: debug, inputs: [{inp}], verbosity: none }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{mport} }}, logs: {{ level: warn }} }}
"""
    proc = start_tracepipe(cfg, cpus, workdir, f"tp-tail-{variant}")
    try:
        wait_port(port, what="tracepipe")
        time.sleep(0.5)
        py = str(ROOT / "tests/.venv/bin/python")
        gen = ["taskset", "-c", "0", py, str(ROOT / "tests/bench/loadgen.py"), "--endpoint", f"127.0.0.1:{port}", "--shape", "tail"]
        subprocess.run(gen + ["--total", "100000", "--first-seq", str(1 << 40)], check=True, capture_output=True)
        time.sleep(6.0)  # the warm-up's traces decided
        cpu0 = cpu_seconds(proc.pid)
        m0 = metrics_of(mport)
        lg = subprocess.Popen(gen + ["--total", str(total)], stdout=subprocess.PIPE, text=True)
        held_ratio, held_max, at_peak = 0.0, 0.0, 0.0
        while lg.poll() is None:
            time.sleep(0.5)
            if variant != "none":
                m = metrics_of(mport)
                b, t = metric_sum(m, "tracepipe_processor_tail_sampling_bytes_held"), metric_sum(m, "tracepipe_processor_tail_sampling_traces_held")
                if t > 1000:
                    held_ratio = max(held_ratio, b / t)
                    if b > held_max:
                        held_max, at_peak = b, b / t
        res = json.loads(lg.stdout.read())
        time.sleep(6.0)  # every trace decided
        cpu1 = cpu_seconds(proc.pid)
        m1 = metrics_of(mport)
        out = {"variant": variant, "spans": res["spans"], "spans_per_s": res["spans"] / res["seconds"],
               "cpu_us_per_span": (cpu1 - cpu0) * 1e6 / res["spans"], "peak_rss_mib": peak_rss_mib(proc.pid),
               "span_bytes": res["span_bytes"], "refused_requests": res["refused_requests"]}
        if variant != "none":
            d = lambda name, **l: metric_sum(m1, name, **l) - metric_sum(m0, name, **l)
            kept = d("tracepipe_processor_tail_sampling_traces_total", decision="sampled")
            all_ = d("tracepipe_processor_tail_sampling_traces_total")
            per_req = 50
            det = sum(1 for k in range(per_req) if k % 20 in (0, 1) or k % 50 == 2) / per_req
            out.update({"kept_fraction": kept / all_ if all_ else 0.0, "expected_fraction": det + (1 - det) * 0.10, "traces": all_,
                        # held bytes per held span over the span's bytes on the wire (10 spans a trace)
                        "held_bytes_per_wire_byte": held_ratio / (10 * res["span_bytes"]) if held_ratio else None,
                        "held_bytes_per_wire_byte_at_peak": at_peak / (10 * res["span_bytes"]) if at_peak else None,
                        "held_max_mib": held_max / 2**20})
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def tail_report(rows: list) -> None:
    by = {r["variant"]: r for r in rows}
    print("| variant | spans/s | CPU-µs/span | peak RSS MiB | held bytes / wire byte (at peak held; worst) | kept fraction (expected) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        hb = f"{r['held_bytes_per_wire_byte_at_peak']:.2f}; {r['held_bytes_per_wire_byte']:.2f}" if r.get("held_bytes_per_wire_byte") else ""
        kf = f"{r['kept_fraction']:.4f} ({r['expected_fraction']:.4f})" if "kept_fraction" in r else ""
        print(f"| {r['variant']} | {r['spans_per_s']:,.0f} | {r['cpu_us_per_span']:.2f} | {r['peak_rss_mib']:.1f} | {hb} | {kf} |")
    if "none" in by and "tail" in by:
        print(f"tail_sampling's own cost: {by['tail']['cpu_us_per_span'] - by['none']['cpu_us_per_span']:.2f} CPU-µs per span")
    if "tail" in by and "tail_sql" in by:
        print(f"one sql policy adds {by['tail_sql']['cpu_us_per_span'] - by['tail']['cpu_us_per_span']:.2f} CPU-µs per span")
    if "shards1" in by and "shards2" in by:
        print(f"shards 2 / shards 1 throughput on 2 cores: {by['shards2']['spans_per_s'] / by['shards1']['spans_per_s']:.2f}x")


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
    ap.add_argument("--tail-variants", default="none,tail,tail_sql,shards1,shards2")
    ap.add_argument("--rate", type=float, default=0,
                    help="offer this many spans/s to both collectors (0: as fast as each answers); compares memory at the same span rate")
    a = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tp-bench-"))
    scenarios = a.scenarios.split(",")
    if "tail" in scenarios:
        scenarios.remove("tail")
        tail_rows = []
        for v in a.tail_variants.split(","):
            r = run_tail(v, a.total, workdir)
            tail_rows.append(r)
            print(json.dumps(r), flush=True)
        tail_report(tail_rows)
        if not scenarios:
            return
    a.scenarios = ",".join(scenarios)
    rows = []
    for scenario in a.scenarios.split(","):
        for collector in ("tracepipe", "rotel"):
            r = run_one(collector, scenario, a.total, workdir, a.rate)
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
    sat = {r["scenario"]: r for r in rows if r["scenario"].startswith("satellite_") and r["collector"] == "tracepipe"}
    if len(sat) == 2:
        o, rp = sat["satellite_otlp"], sat["satellite_report"]
        print(f"satellite: report_grpc - otlp_grpc  CPU per span +{rp['cpu_us_per_span'] - o['cpu_us_per_span']:.2f} µs "
              f"({rp['cpu_us_per_span'] / o['cpu_us_per_span']:.2f}x), throughput {rp['spans_per_s'] / o['spans_per_s']:.2f}x")
    plain = next((r for r in rows if r["scenario"] == "discard" and r["collector"] == "tracepipe"), None)
    tls = next((r for r in rows if r["scenario"] == "discard_tls" and r["collector"] == "tracepipe"), None)
    if plain and tls:
        print(f"TLS: tracepipe discard_tls/discard  CPU per span {tls['cpu_us_per_span'] / plain['cpu_us_per_span']:.2f}x "
              f"(+{tls['cpu_us_per_span'] - plain['cpu_us_per_span']:.2f} µs), throughput {tls['spans_per_s'] / plain['spans_per_s']:.2f}x")


if __name__ == "__main__":
    # Every scratch directory (configs, logs, peers' state) under one, removed after a clean run.
    with scratch("tp-bench-run-"):
        main()
