"""Tail sampling end to end: the OpenTelemetry Python SDK sends traces of known shapes (errors,
slow, an attribute, 1-span traces, a 5,000-span trace, late spans) to tracepipe (otlp ->
tail_sampling -> debug file). Exactly the traces the policies imply are kept, each whole; late
spans follow the first decision; kept spans say which policy kept them and their adjusted count;
the probabilistic policy picks the same traces as the OTel Collector's algorithm (FNV-1a of the
salt and the trace id, computed here independently). A second test pushes three times
`max_bytes` through the processor and reads the process's peak RSS from /proc."""

import json
import os
import subprocess
import time

import pytest

from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Status, StatusCode

from harness import Tracepipe, free_port, metric_sum, peak_rss, read_jsonl_spans, recording_tracepipe, tracepipe_bin, wait_for
from otlp_wire import post
from sdk import exporter

SALT = b"default-hash-seed"
U64 = (1 << 64) - 1


def fnv1a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & U64
    return h


def kept_by_baseline(trace_id: int, percent: float) -> bool:
    # The Collector: hash <= uint64(MaxUint64 * ratio).
    return fnv1a(SALT + trace_id.to_bytes(16, "big")) <= int(U64 * (percent / 100.0))


GRAPH = """
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{grpc} }} }}
processors:
  sample:
    type: tail_sampling
    inputs: [apps]
    decision_wait: 3s
    shards: 2
    policies:
      - {{ name: errors, type: status_code, status_codes: [ERROR] }}
      - {{ name: slow, type: latency, latency: {{ threshold_ms: 400 }} }}
      - {{ name: vip, type: string_attribute, string_attribute: {{ key: user.tier, values: [gold] }} }}
      - {{ name: baseline, type: probabilistic, probabilistic: {{ sampling_percentage: 10 }} }}
"""


def hexid(i: int, n: int) -> str:
    return format(i, f"0{n * 2}x")


def settled(tp, sink: str = "file", processor: str = "sample") -> bool:
    """Processor `processor` holds nothing and every span it kept (decided or late) reached
    `sink`: with no more input, nothing else can arrive (the positive to wait for before checking
    what did not)."""
    m = tp.metrics()
    p = {"processor": processor}
    kept = metric_sum(m, "tracepipe_processor_tail_sampling_spans_total", decision="sampled", **p) + metric_sum(m, "tracepipe_processor_tail_sampling_late_spans_total", decision="sampled", **p)
    return metric_sum(m, "tracepipe_processor_tail_sampling_traces_held", **p) == 0 and metric_sum(m, "tracepipe_sink_sent_spans_total", sink=sink) == kept


def test_sdk_traces_are_kept_whole_exactly_as_the_policies_say_and_late_spans_follow():
    grpc = free_port()
    tp = Tracepipe("PLACEHOLDER", "ts")
    out, archive = tp.dir / "spans.jsonl", tp.dir / "archive"
    tp.config_path.write_text(GRAPH.format(grpc=grpc) + f"""
sinks:
  file: {{ type: debug, inputs: [sample], verbosity: none, path: {out} }}
  archive: {{ type: parquet, inputs: [apps], path: {archive} }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{tp.metrics_port} }} }}
""")
    with tp:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(BatchSpanProcessor(exporter("grpc", f"http://127.0.0.1:{grpc}"), max_export_batch_size=512, schedule_delay_millis=100, max_queue_size=20000))
        tracer = provider.get_tracer("e2e.tail")
        now = time.time_ns()
        spans_of = {}   # trace id -> span count sent
        must_keep = set()
        contexts = {}

        def make(kind: str, i: int):
            start = now + i * 1000
            dur = 500_000_000 if kind == "slow" else 10_000_000
            root = tracer.start_span(f"{kind}-{i}", start_time=start)
            ctx = otel_trace.set_span_in_context(root)
            n = 1
            if kind != "single":
                for c in range(2):
                    child = tracer.start_span(f"child-{c}", context=ctx, start_time=start + 1000)
                    if kind == "error" and c == 1:
                        child.set_status(Status(StatusCode.ERROR, "boom"))
                    if kind == "vip" and c == 0:
                        child.set_attribute("user.tier", "gold")
                    child.end(end_time=start + 2000)
                    n += 1
            root.end(end_time=start + dur)
            tid = root.get_span_context().trace_id
            spans_of[tid] = n
            contexts[tid] = root.get_span_context()
            if kind in ("error", "slow", "vip"):
                must_keep.add(tid)
            return tid

        plain = [make("plain", i) for i in range(200)]
        errors = [make("error", i) for i in range(10)]
        for i in range(10):
            make("slow", i)
        for i in range(10):
            make("vip", i)
        for i in range(100):
            make("single", i)
        # One 5,000-span trace whose error is its last child.
        big_root = tracer.start_span("big", start_time=now)
        bctx = otel_trace.set_span_in_context(big_root)
        for c in range(4999):
            s = tracer.start_span(f"b{c}", context=bctx, start_time=now + 1)
            if c == 4998:
                s.set_status(Status(StatusCode.ERROR))
            s.end(end_time=now + 2)
        big_root.end(end_time=now + 3)
        big = big_root.get_span_context().trace_id
        spans_of[big] = 5000
        must_keep.add(big)
        provider.force_flush()

        expect = must_keep | {t for t in spans_of if kept_by_baseline(t, 10)}
        want_spans = sum(spans_of[t] for t in expect)
        wait_for(lambda: len(read_jsonl_spans(out)) >= want_spans, timeout=30, what=f"{want_spans} kept spans")
        wait_for(lambda: settled(tp), what="every trace decided and every kept span delivered")
        got = read_jsonl_spans(out)
        by_trace = {}
        for s in got:
            by_trace.setdefault(int(s["span"]["traceId"], 16), []).append(s)
        assert set(by_trace) == expect, f"kept {len(by_trace)} traces, expected {len(expect)}; extra {len(set(by_trace) - expect)}, missing {len(expect - set(by_trace))}"
        for t, spans in by_trace.items():
            assert len(spans) == spans_of[t], f"trace {hexid(t, 16)}: {len(spans)} of {spans_of[t]} spans"
        # Marks: the deciding policy; traces kept only by the 10% policy count 10 each.
        for t, spans in by_trace.items():
            attrs = {a["key"]: a["value"] for a in spans[0]["span"].get("attributes", [])}
            policy = attrs["tracepipe.sampling.policy"]["stringValue"]
            adjusted = attrs["sampling.adjusted_count"]["doubleValue"]
            if t in must_keep:
                assert policy in ("errors", "slow", "vip") and adjusted == 1.0, (policy, adjusted)
            else:
                assert policy == "baseline" and adjusted == 10.0, (policy, adjusted)
        some_baseline = sum(1 for t in plain if t in expect)
        assert 5 <= some_baseline <= 40, some_baseline

        # Late spans: one for a kept error trace, one for a plain trace that was not kept.
        dropped = next(t for t in plain if t not in expect)
        for t in (errors[0], dropped):
            ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(contexts[t]))
            # Timed inside the trace, so the late span does not change what the policies see.
            tracer.start_span("late", context=ctx, start_time=now + 5000).end(end_time=now + 6000)
        provider.force_flush()
        wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_processor_tail_sampling_late_spans_total") >= 2, what="two late spans counted")
        time.sleep(4)  # longer than decision_wait: a late span must not open a new trace
        got = read_jsonl_spans(out)
        late = [s for s in got if s["span"]["name"] == "late"]
        assert [int(s["span"]["traceId"], 16) for s in late] == [errors[0]]
        assert len(got) == want_spans + 1
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_processor_tail_sampling_late_spans_total", decision="sampled") == 1
        assert metric_sum(m, "tracepipe_processor_tail_sampling_late_spans_total", decision="not_sampled") == 1
        assert metric_sum(m, "tracepipe_processor_tail_sampling_traces_total", decision="sampled") == len(expect)
        assert metric_sum(m, "tracepipe_processor_tail_sampling_traces_total", decision="not_sampled") == len(spans_of) - len(expect)
        assert metric_sum(m, "tracepipe_processor_tail_sampling_decisions_total", policy="errors", decision="sampled") == 11
        assert metric_sum(m, "tracepipe_processor_tail_sampling_traces_held") == 0
        provider.shutdown()
        assert tp.stop() == 0
        assert "panicked" not in tp.logs()

    # `tracepipe sample` over the archive of everything the receiver got keeps the same traces.
    p = subprocess.run([tracepipe_bin(), "sample", "--config", str(tp.config_path), "--archive", str(archive), "--format", "json", "--list-kept"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert {int(t, 16) for t in report["kept_trace_ids"]} == expect
    assert report["traces"] == len(spans_of)
    assert report["spans"] == sum(spans_of.values()) + 2  # and the two late spans
    by_policy = {x["name"]: x["traces"] for x in report["policies"]}
    assert by_policy["errors"] == 11 and by_policy["slow"] == 10 and by_policy["vip"] == 10
    assert by_policy["baseline"] == sum(1 for t in spans_of if kept_by_baseline(t, 10))
    # The adjusted counts estimate the spans of the traces the baseline policy stands for.
    assert report["unknown_adjusted_spans"] == 0
    table = subprocess.run([tracepipe_bin(), "sample", "--config", str(tp.config_path), "--archive", str(archive)], capture_output=True, text=True, timeout=120)
    assert table.returncode == 0 and "adjusted span total" in table.stdout, table.stdout + table.stderr
    print(table.stdout)


# Trace shapes for the memory bound: (traces per request, spans per trace, pad bytes per span,
# requests, max_bytes). Each pushes about three times max_bytes of encoded spans.
SHAPES = {
    # 100 traces x 8 spans of ~1 KB per request.
    "8-span traces": (100, 8, 1000, 480, 128 << 20),
    # Five traces of 100,000 spans of ~400 B (40 MB each), sent 2,000 spans per request.
    "100k-span traces": (1, 2000, 400, 250, 64 << 20),
    # A million traces of one ~120-byte span: the per-trace index, not the spans, is the weight.
    "1M one-span traces": (2000, 1, 0, 500, 32 << 20),
}


def _push(http: int, shape) -> tuple:
    """Sends the shape's requests; returns (spans sent, spans per trace)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    per_request, spans_per_trace, pad_len, requests, _ = shape
    pad = "x" * pad_len
    sent = 0
    big_trace = os.urandom(16)
    for r in range(requests):
        spans = []
        for _t in range(per_request):
            if per_request == 1:
                # Long traces: 50 requests of 2,000 spans per trace id.
                tid = big_trace if r % 50 else os.urandom(16)
                big_trace = tid
            else:
                tid = os.urandom(16)
            for _i in range(spans_per_trace):
                attrs = [KeyValue(key="pad", value=AnyValue(string_value=pad))] if pad_len else []
                spans.append(Span(trace_id=tid, span_id=os.urandom(8), name="op", start_time_unix_nano=1, end_time_unix_nano=2, attributes=attrs))
        req = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])])
        resp = post(http, req.SerializeToString())
        assert resp.status_code == 200, resp.status_code
        sent += len(spans)
    return sent


# The bound each shape is held to, as a multiple of max_bytes. Issue 26's goal is 1.3 for every
# shape. Measured on 2026-12-04 with held spans in shared chunks of <= 64 KiB per batch, the trace
# table in fixed pages (trace.rs, table.rs) and transparent huge pages off (main.rs): 8-span
# 1.05x (five runs); 100k-span 1.05-1.23x (four runs); one-span 1.66-1.84x over eight runs, one
# outlier at 2.78x. Before: 1.16-1.30x, 1.22-1.39x and 3.0-3.1x. With huge pages the kernel keeps
# freed memory resident in 2 MiB units (one-span 1.88-1.97x with the chunks and table alone). A
# counting allocator showed the live heap equal to the held-bytes gauge for the one-span shape:
# what is left there is the allocator's. Later the same day, with each decider making room before
# it takes a batch in, inside max_bytes / shards: 8-span 1.03-1.06x, 100k-span 0.70-0.73x (its 40 MB
# traces are decided at a decider's 32 MiB share), one-span 1.44-1.50x (seven runs each). The
# one-span bound (goal 1.3, not met) catches a return towards the old 3x. On 2026-12-04 the decision
# caches became fixed tables reserved from max_bytes (cache.rs; they had cost 4-5 MiB above the
# held-bytes count here, growing by doublings): one-span with always_sample 1.25-1.28x (three
# runs), and with the 50% policy it now runs (both caches filling) 1.28, 1.38, 1.28x. On
# 2026-12-04 (later) the trace table's index became open addressing without tombstones
# (table.rs, SlotIndex): hashbrown's removals used up its room, it grew past half full although
# the traces held had not increased, and the decider decided up to half its traces early to make
# room for the growth every few seconds (held traces swung 82k -> 36k -> 82k). Since: held traces
# steady at ~80k, and one-span 1.16-1.19x over six runs, 8-span 0.96-0.98x, 100k-span 0.66-0.75x
# (three runs each). Every shape is held to the goal.
BOUND = {"8-span traces": 1.3, "100k-span traces": 1.3, "1M one-span traces": 1.3}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_three_times_max_bytes_through_the_processor_stays_within_the_bound(shape):
    """About three times `max_bytes` of traces of one shape, with a 60 s wait: the oldest traces
    are decided early (counted, reason memory), every span is delivered or still held, the
    held-bytes gauge never passes the bound, and the process's peak RSS above idle exceeds that
    of the same load through the same graph without the processor (the receiver's and channels'
    own buffers) by at most BOUND[shape] x max_bytes."""
    max_bytes = SHAPES[shape][4]

    def run(graph_middle: str, sink_input: str):
        http = free_port()
        tp = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http}, max_request_body_size: 64MiB }} }}
{graph_middle}
sinks:
  out: {{ type: debug, inputs: [{sink_input}], verbosity: none }}
""", "tsmem")
        tp.start()
        time.sleep(0.5)
        idle = peak_rss(tp.proc.pid)
        sent = _push(http, SHAPES[shape])
        return tp, idle, sent

    base, base_idle, _ = run("", "apps")
    try:
        base_extra = peak_rss(base.proc.pid) - base_idle
        assert base.stop() == 0
    finally:
        base.__exit__(None, None, None)

    # One-span traces: half kept, half not, so that both decision caches fill (they are reserved
    # from max_bytes; this checks the pages they touch stay inside the bound too).
    one_span = SHAPES[shape][1] == 1
    policy = "{ name: half, type: probabilistic, sampling_percentage: 50 }" if one_span else "{ name: all, type: always_sample }"
    tp, idle, sent = run(f"""processors:
  sample:
    type: tail_sampling
    inputs: [apps]
    decision_wait: 60s
    max_bytes: {max_bytes}
    max_trace_spans: 200000
    max_trace_bytes: {max_bytes}
    policies: [ {policy} ]""", "sample")
    try:
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_processor_tail_sampling_early_decisions_total", reason="memory") > 0
        assert metric_sum(m, "tracepipe_processor_tail_sampling_bytes_held") <= max_bytes
        # Every span is delivered or still held: none lost. Fixed-size traces: exactly; the long
        # traces (decided early while still arriving, their later spans following the decision):
        # what is missing fits in the traces still held.
        spt = SHAPES[shape][1] if SHAPES[shape][0] > 1 else 100_000

        def accounted():
            m = tp.metrics()
            delivered = metric_sum(m, "tracepipe_sink_sent_spans_total", sink="out")
            delivered += metric_sum(m, "tracepipe_processor_tail_sampling_spans_total", decision="not_sampled")
            held = metric_sum(m, "tracepipe_processor_tail_sampling_traces_held")
            return delivered + spt * held == sent if SHAPES[shape][0] > 1 else 0 <= sent - delivered <= spt * held
        wait_for(accounted, what="sent = delivered + held")
        extra = peak_rss(tp.proc.pid) - idle
        print(f"{shape}: sent {sent} spans; peak above idle {extra >> 20} MiB with the processor, {base_extra >> 20} MiB without; max_bytes {max_bytes >> 20} MiB")
        assert extra - base_extra <= BOUND[shape] * max_bytes, f"{(extra - base_extra) >> 20} MiB over the graph without the processor"
        # SIGTERM decides what is held: then every span sent has been delivered.
        assert tp.stop() == 0
    finally:
        tp.__exit__(None, None, None)
    assert "panicked" not in tp.logs()


def test_kill_9_behind_the_kafka_receiver_loses_nothing():
    """Records are read by a gateway (kafka -> tail_sampling with a 60 s wait) that is killed
    with SIGKILL while it holds every trace undecided: no offset was committed, because a held
    batch's acknowledgement is released only once its traces are decided and delivered. The next
    gateway of the group reads the records again and keeps exactly the error traces, whole."""
    from confluent_kafka import Producer
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status as PbStatus
    from harness import Tansu

    errors, spans_sent = set(), 0
    with Tansu() as kafka:
        kafka.create_topic("in", 1)
        prod = Producer({"bootstrap.servers": kafka.bootstrap})
        for r in range(20):
            spans = []
            for t in range(5):
                tid = os.urandom(16)
                root = os.urandom(8)
                for i in range(3):
                    sp = Span(trace_id=tid, span_id=root if i == 0 else os.urandom(8), parent_span_id=b"" if i == 0 else root,
                              name=f"op{i}", start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_001_000_000)
                    if t == 0 and i == 2:
                        sp.status.CopyFrom(PbStatus(code=PbStatus.STATUS_CODE_ERROR))
                        errors.add(tid.hex())
                    spans.append(sp)
            spans_sent += len(spans)
            prod.produce("in", ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString())
        assert prod.flush(10) == 0

        def gateway(wait: str, name: str):
            tp = Tracepipe("PLACEHOLDER", name)
            out = tp.dir / "spans.jsonl"
            tp.config_path.write_text(f"""
receivers:
  bus: {{ type: kafka, brokers: ["{kafka.bootstrap}"], topic: in, group_id: gateway, initial_offset: earliest, session_timeout: 6s, heartbeat_interval: 1s }}
processors:
  sample:
    type: tail_sampling
    inputs: [bus]
    decision_wait: {wait}
    policies: [ {{ name: errors, type: status_code, status_codes: [ERROR] }} ]
sinks:
  file: {{ type: debug, inputs: [sample], verbosity: none, path: {out} }}
telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{tp.metrics_port} }} }}
""")
            return tp, out

        first, first_out = gateway("60s", "gw1")
        with first:
            wait_for(lambda: metric_sum(first.metrics(), "tracepipe_processor_tail_sampling_traces_held") == 100, timeout=90, what="every trace held")
            first.stop(sig=9)
        assert read_jsonl_spans(first_out) == []
        second, out = gateway("1s", "gw2")
        with second:
            wait_for(lambda: len(read_jsonl_spans(out)) >= 60, timeout=90, what="the error traces after the restart")
            time.sleep(2)
            got = read_jsonl_spans(out)
            by_trace = {}
            for s in got:
                by_trace.setdefault(s["span"]["traceId"], []).append(s["span"]["spanId"])
            assert set(by_trace) == errors
            assert all(len(v) == 3 and len(set(v)) == 3 for v in by_trace.values()), "each kept trace whole, once"
            m = second.metrics()
            assert metric_sum(m, "tracepipe_processor_tail_sampling_traces_total") == 100
            assert second.stop() == 0


def test_sigterm_decides_held_traces_or_saves_them_to_state_dir():
    """Without `state_dir` SIGTERM decides every held trace on what it has and flushes it; with
    `state_dir` it writes them (and the decision caches) and the next start decides them when
    the rest of their wait is over, and late spans follow decisions of the previous run."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status as PbStatus

    def req(traces):
        spans = []
        for tid, error in traces:
            sp = Span(trace_id=tid, span_id=os.urandom(8), name="op", start_time_unix_nano=1, end_time_unix_nano=2)
            if error:
                sp.status.CopyFrom(PbStatus(code=PbStatus.STATUS_CODE_ERROR))
            spans.append(sp)
        return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()

    import tempfile
    state = tempfile.mkdtemp(prefix="ts-state-")
    for with_state in (False, True):
        http = free_port()
        graph = f"""
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http} }} }}
processors:
  sample:
    type: tail_sampling
    inputs: [apps]
    decision_wait: 6s
    {"state_dir: " + state if with_state else ""}
    policies: [ {{ name: errors, type: status_code, status_codes: [ERROR] }} ]
"""
        tp, out = recording_tracepipe(graph, ["sample"], name="tsstate")
        decided_err, decided_ok = os.urandom(16), os.urandom(16)
        held_err, held_ok = os.urandom(16), os.urandom(16)
        with tp:
            assert post(http, req([(decided_err, True), (decided_ok, False)])).status_code == 200
            wait_for(lambda: len(read_jsonl_spans(out)) == 1, timeout=15, what="the first error trace decided")
            assert post(http, req([(held_err, True), (held_ok, False)])).status_code == 200
            wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_processor_tail_sampling_traces_held") == 2, what="two traces held")
            time.sleep(1)
            assert tp.stop() == 0
        ids = [s["span"]["traceId"] for s in read_jsonl_spans(out)]
        if not with_state:
            assert ids == [decided_err.hex(), held_err.hex()], "SIGTERM decides what is held"
            assert "panicked" not in tp.logs()
            continue
        assert ids == [decided_err.hex()], "with state_dir the held traces wait for the next start"
        assert any(f.endswith(".tailsampling") for f in os.listdir(state)), os.listdir(state)
        out.unlink()
        restarted = time.time()
        with tp:
            # Late spans for the previous run's decisions: the error trace's is kept, the other's not.
            assert post(http, req([(decided_err, False), (decided_ok, True)])).status_code == 200
            wait_for(lambda: len(read_jsonl_spans(out)) >= 2, timeout=15, what="the saved error trace and a late span")
            took = time.time() - restarted
            assert 3 <= took <= 8, f"saved trace decided {took:.1f}s after the restart (about 5 s of its wait were left)"
            time.sleep(1)
            got = sorted(s["span"]["traceId"] for s in read_jsonl_spans(out))
            assert got == sorted([decided_err.hex(), held_err.hex()])
            m = tp.metrics()
            assert metric_sum(m, "tracepipe_processor_tail_sampling_late_spans_total", decision="sampled") == 1
            assert metric_sum(m, "tracepipe_processor_tail_sampling_late_spans_total", decision="not_sampled") == 1
            assert tp.stop() == 0
        assert "panicked" not in tp.logs()


def test_envoy_mesh_xrid_an_error_in_one_fragment_keeps_the_whole_request():
    """The real Envoy mesh (bookinfo: details -> inventory fails with 503 in every request) with
    apps forwarding only x-request-id: each request arrives as several traces, the error in the
    inventory fragment. Behind guid inference, tail sampling keeps every request whole, in one
    trace; the same policy on the raw fragments keeps only the fragments with the error."""
    from mesh.mesh import Mesh

    port = free_port()
    tp, out = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{port} }}
processors:
  rebuild: {{ type: guid_inference, inputs: [mesh], wait: 2s }}
  sample: {{ type: tail_sampling, inputs: [rebuild], decision_wait: 4s, policies: [ {{ name: errors, type: status_code, status_codes: [ERROR] }} ] }}
  fragments: {{ type: tail_sampling, inputs: [mesh], decision_wait: 4s, policies: [ {{ name: errors, type: status_code, status_codes: [ERROR] }} ] }}
""", ["sample"], "tsmesh", also={"frag": ["fragments"]})
    n = 20
    with tp, Mesh("zipkin-proto", port, forward="xrid", topology="bookinfo") as mesh:
        per = mesh.spans_per_request()
        for _ in range(n):
            status, _ = mesh.request()
            assert status == 200
        wait_for(lambda: len(read_jsonl_spans(out)) >= per * n, timeout=60, what=f"{per * n} kept spans")
        wait_for(lambda: settled(tp) and settled(tp, "frag", "fragments"), what="every trace decided and every kept span delivered, in both")

        def by_guid(items):
            g = {}
            for s in items:
                attrs = {a["key"]: a["value"].get("stringValue") for a in s["span"].get("attributes", [])}
                g.setdefault(attrs["guid:x-request-id"], []).append(s["span"]["traceId"])
            return g

        whole = by_guid(read_jsonl_spans(out))
        assert len(whole) == n
        for guid, traces in whole.items():
            assert len(traces) == per and len(set(traces)) == 1, f"request {guid}: {len(traces)} spans in {len(set(traces))} traces"
        frags = by_guid(read_jsonl_spans(tp.dir / "frag.jsonl"))
        assert len(frags) == n
        assert all(0 < len(t) < per for t in frags.values()), "without inference only the error's fragment is kept"
        assert tp.stop() == 0


def test_on_full_refuse_pushes_back_to_the_sender_and_loses_nothing():
    """`on_full: refuse` with a 2 MiB bound and a 30 s wait: once the bound is reached the
    processor leaves its input unread, the graph fills and the OTLP receiver answers 503
    (retryable); no trace is decided early, and at SIGTERM every accepted span is delivered."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

    http = free_port()
    tp = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http} }}, admission_timeout: 200ms }}
processors:
  sample:
    type: tail_sampling
    inputs: [apps]
    decision_wait: 30s
    max_bytes: 2MiB
    max_trace_bytes: 1MiB
    on_full: refuse
    policies: [ {{ name: all, type: always_sample }} ]
sinks:
  out: {{ type: debug, inputs: [sample], verbosity: none, path: {{out}} }}
""".replace("{out}", "OUT_PATH"), "tsrefuse")
    out = tp.dir / "spans.jsonl"
    tp.config_path.write_text(tp.config_path.read_text().replace("OUT_PATH", str(out)))
    pad = "z" * 1000
    statuses = []
    with tp:
        for _ in range(200):
            spans = [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="op", start_time_unix_nano=1, end_time_unix_nano=2,
                          attributes=[KeyValue(key="pad", value=AnyValue(string_value=pad))]) for _ in range(100)]
            body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()
            statuses.append(post(http, body).status_code)
            if statuses.count(503) >= 3:
                break
        assert 503 in statuses, f"never refused: {statuses}"
        assert set(statuses) <= {200, 503}, statuses
        m = tp.metrics()
        accepted = metric_sum(m, "tracepipe_receiver_accepted_spans_total")
        assert accepted == 100 * statuses.count(200)
        assert metric_sum(m, "tracepipe_receiver_refused_spans_total", reason="pipeline_full") > 0
        assert metric_sum(m, "tracepipe_processor_tail_sampling_early_decisions_total") == 0, "refuse never decides early"
        held = metric_sum(m, "tracepipe_processor_tail_sampling_bytes_held")
        assert held <= 2 * 1024 * 1024 + 200 * 1024, held  # the bound, plus at most the batch read while under it
        assert tp.stop() == 0
    assert len(read_jsonl_spans(out)) == accepted, "SIGTERM drained the unread input and decided everything held"
    assert "panicked" not in tp.logs()
