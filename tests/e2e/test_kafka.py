"""Kafka sink end to end, against a real Kafka-protocol broker (tansu) read back with
confluent-kafka: the Python OTel SDK -> tracepipe -> Kafka, one record per trace keyed by the
trace id, every field as sent, in OTLP protobuf and OTLP/JSON; SIGTERM right after sending loses
nothing; a broker that comes up late still gets every span; a broker that never comes is
counted; and `tracepipe replay --to kafka://` sends an archive into a topic."""

import base64
import json
import re
import subprocess

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.trace.v1 import trace_pb2

from harness import Tansu, Tracepipe, free_port, http_get, metric_sum, tracepipe_bin, wait_for
from sdk import emit_rich_trace, provider
from test_archive import archive_sdk_spans
from test_otlp_roundtrip import compare


def kafka_graph(grpc_port: int, bootstrap: str, extra: str = "") -> str:
    return f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{grpc_port} }} }}
processors:
  batch: {{ type: batch, inputs: [apps], send_batch_size: 50, timeout: 50ms }}
sinks:
  proto: {{ type: kafka, inputs: [batch], brokers: ["{bootstrap}"], topic: spans-proto{extra} }}
  json: {{ type: kafka, inputs: [batch], brokers: ["{bootstrap}"], topic: spans-json, encoding: otlp_json{extra} }}
"""


def _hex_ids(d: dict) -> dict:
    """MessageToDict writes bytes as base64; OTLP/JSON writes trace and span ids as hex."""
    for k, v in list(d.items()):
        if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
            d[k] = base64.b64decode(v).hex()
        elif isinstance(v, dict):
            _hex_ids(v)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, dict):
                    _hex_ids(x)
    return d


def items(payload: bytes, encoding: str) -> list:
    """A record's spans as the debug sink writes them: {resource, scope, span} in OTLP/JSON."""
    if encoding == "json":
        doc = json.loads(payload)
    else:
        doc = _hex_ids(MessageToDict(trace_pb2.TracesData.FromString(payload), use_integers_for_enums=True))
    return [{"resource": rs.get("resource", {}), "scope": ss.get("scope", {}), "span": sp}
            for rs in doc.get("resourceSpans", []) for ss in rs.get("scopeSpans", []) for sp in ss.get("spans", [])]


def check_records(records: list, encoding: str) -> list:
    """Every record holds one trace, keyed by its hex trace id; one key, one partition."""
    partition_of, out = {}, []
    for partition, key, value in records:
        spans = items(value, encoding)
        assert spans and {s["span"]["traceId"] for s in spans} == {key}, (key, [s["span"]["traceId"] for s in spans])
        assert partition_of.setdefault(key, partition) == partition, f"trace {key} in partitions {partition_of[key]} and {partition}"
        out += spans
    return out


def test_sdk_to_kafka_one_record_per_trace_field_for_field_and_sigterm_flushes():
    port = free_port()
    with Tansu() as kafka:
        kafka.create_topic("spans-proto", 4)
        kafka.create_topic("spans-json", 4)
        with Tracepipe(kafka_graph(port, kafka.bootstrap), "kafka-sink") as tp:
            sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")
            for i in range(20):
                emit_rich_trace(sdk, f"-{i}")
            sdk.shutdown()
            sent = memory.get_finished_spans()
            # SIGTERM at once: the batch processor and both sinks drain before the process exits.
            assert tp.stop() == 0, tp.logs()
        traces = {s.context.trace_id for s in sent}
        assert len(sent) == 100 and len(traces) == 20
        for topic, encoding in (("spans-proto", "proto"), ("spans-json", "json")):
            # One record per trace per batch: a trace the batch processor cut in two is two
            # records with one key (and so one partition).
            records = kafka.records(topic, len(traces))
            assert {k for _, k, _ in records} == {format(t, "032x") for t in traces}
            compare(sent, check_records(records, encoding))
            assert len({p for p, _, _ in records}) > 1, "20 traces keyed by id spread over 4 partitions"


def test_broker_that_comes_up_late_gets_every_span():
    """librdkafka keeps the records and reconnects: nothing is lost while the broker is away."""
    port, kafka_port = free_port(), free_port()
    with Tracepipe(kafka_graph(port, f"127.0.0.1:{kafka_port}"), "kafka-late") as tp:
        sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")
        for i in range(5):
            emit_rich_trace(sdk, f"-{i}")
        sdk.shutdown()
        wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_receiver_accepted_spans_total") >= 25, what="spans accepted")
        assert metric_sum(tp.metrics(), "tracepipe_sink_sent_spans_total") == 0
        with Tansu(kafka_port) as kafka:  # topics are created on first use (tansu auto-creates)
            wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_sink_sent_spans_total") >= 50, timeout=60, what="both sinks delivered")
            assert metric_sum(tp.metrics(), "tracepipe_sink_failed_spans_total") == 0
            compare(memory.get_finished_spans(), check_records(kafka.records("spans-json", 5), "json"))
            assert tp.stop() == 0, tp.logs()


def test_broker_that_never_comes_is_counted_not_silent():
    port = free_port()
    dead = f"127.0.0.1:{free_port()}"
    with Tracepipe(kafka_graph(port, dead, ", message_timeout: 2s"), "kafka-dead") as tp:
        sdk, _ = provider("grpc", f"http://127.0.0.1:{port}")
        emit_rich_trace(sdk)
        sdk.shutdown()
        m = wait_for(lambda: (lambda m: m if metric_sum(m, "tracepipe_sink_failed_spans_total") >= 10 else None)(tp.metrics()), timeout=30,
                     what="failed spans counted")
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total") == 5
        for sink in ("proto", "json"):
            assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink=sink, reason="retries_exhausted") == 5
            assert metric_sum(m, "tracepipe_sink_sent_spans_total", sink=sink) == 0
        status, body = http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")
        assert status == 503 and "timed out" in body, (status, body)
        assert tp.stop() == 0, tp.logs()


def test_replay_archive_into_kafka(tmp_path):
    archive = tmp_path / "traces"
    sent = archive_sdk_spans(archive, 10)
    with Tansu() as kafka:
        kafka.create_topic("replayed", 3)
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"kafka://{kafka.bootstrap}/replayed?encoding=otlp_json"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        assert "replay: 50/50 spans sent" in p.stderr, p.stderr
        compare(sent, check_records(kafka.records("replayed", 10), "json"))
    # A bad option and a missing broker are config errors (exit 78), before anything runs.
    for url, why in ((f"kafka://127.0.0.1:9/t?format=x", "unknown `kafka://` option `format=x`"), ("kafka:///t", "needs at least one broker")):
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", url], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        assert p.returncode == 78 and why in p.stderr, (p.returncode, p.stderr)


def consumer_graph(bootstrap: str, topic: str, out_path, extra: str = "") -> str:
    return f"""
receivers:
  bus: {{ type: kafka, brokers: ["{bootstrap}"], topic: {topic}, group_id: gateway, initial_offset: earliest,
         session_timeout: 6s, heartbeat_interval: 1s{extra} }}
sinks:
  file: {{ type: debug, inputs: [bus], verbosity: none, path: {out_path} }}
"""


def assigned(tp) -> list:
    """The partitions a consumer replica's last rebalance assigned it (from its log)."""
    lines = [l for l in tp.logs().splitlines() if "Kafka partitions assigned." in l]
    return re.findall(r"\d+", lines[-1].split("partitions=")[1]) if lines else []


def settled(replicas) -> bool:
    """Every replica owns partitions and together they own all 4, each once."""
    parts = [assigned(r) for r in replicas]
    return all(parts) and sorted(p for ps in parts for p in ps) == ["0", "1", "2", "3"]


def test_gateway_tier_behind_kafka_whole_traces_per_replica_exactly_once():
    """Agent tier -> Kafka (keyed by trace id) -> two consumer replicas in one group: every span
    arrives once, and every trace whole at one replica."""
    from harness import read_jsonl_spans
    port = free_port()
    with Tansu() as kafka:
        kafka.create_topic("gw", 4)
        agent = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
processors:
  batch: {{ type: batch, inputs: [apps], send_batch_size: 20, timeout: 20ms }}
sinks:
  bus: {{ type: kafka, inputs: [batch], brokers: ["{kafka.bootstrap}"], topic: gw }}
""", "agent")
        replicas = []
        for i in range(2):
            t = Tracepipe("PLACEHOLDER", f"gw{i}")
            t.config_path.write_text(consumer_graph(kafka.bootstrap, "gw", t.dir / "spans.jsonl") +
                                     f"telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{t.metrics_port} }} }}\n")
            replicas.append(t)
        with agent, replicas[0], replicas[1]:
            wait_for(lambda: settled(replicas), timeout=60, what="both replicas assigned partitions")
            sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")
            for i in range(30):
                emit_rich_trace(sdk, f"-{i}")
            sdk.shutdown()
            sent = memory.get_finished_spans()
            files = [r.dir / "spans.jsonl" for r in replicas]
            wait_for(lambda: sum(len(read_jsonl_spans(f)) for f in files) >= len(sent), timeout=60, what="every span at the gateway tier")
            # Committed to the end: nothing can be read again, so counting now is final.
            wait_for(lambda: kafka.committed_to_end("gw", "gateway"), timeout=30, what="the group committed every partition to its end")
            got = [read_jsonl_spans(f) for f in files]
            compare(sent, got[0] + got[1])  # exactly once: as many spans as were sent, each span id once
            assert got[0] and got[1], "both replicas got partitions"
            traces = [{s["span"]["traceId"] for s in g} for g in got]
            assert not traces[0] & traces[1], "a trace was split between replicas"
            for r in replicas:
                m = r.metrics()
                assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", transport="kafka") == len(read_jsonl_spans(r.dir / "spans.jsonl"))
            # Consumer lag (librdkafka statistics every 5 s, commits every 5 s): every one of the 4
            # partitions reported by the replica that owns it, and all delivered and committed.
            def lag():
                series = {ls: v for r in replicas for (n, ls), v in r.metrics().items() if n == "tracepipe_receiver_kafka_lag_records"}
                owned = {dict(ls)["partition"] for ls, v in series.items()}
                return series if owned == {"0", "1", "2", "3"} and sum(series.values()) == 0 else None
            wait_for(lag, timeout=40, what="lag gauges for every partition, at 0")


def test_consumer_commits_what_it_delivered_and_skips_malformed_records(tmp_path):
    """A restart reads only what came after the last delivered record; a record that is not
    OTLP is counted and skipped, never stops the partition."""
    from confluent_kafka import Producer
    from harness import read_jsonl_spans
    port = free_port()
    with Tansu() as kafka:
        kafka.create_topic("in", 1)
        prod = Producer({"bootstrap.servers": kafka.bootstrap})

        def produce(values):
            for v in values:
                prod.produce("in", v)
            assert prod.flush(10) == 0

        sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")  # only to make real SDK spans
        with Tracepipe(kafka_graph(port, kafka.bootstrap).replace("topic: spans-proto", "topic: in").replace(
                "  json: { type: kafka, inputs: [batch], brokers: [\"" + kafka.bootstrap + "\"], topic: spans-json, encoding: otlp_json }\n", ""), "writer") as w:
            emit_rich_trace(sdk, "-a")
            wait_for(lambda: metric_sum(w.metrics(), "tracepipe_sink_sent_spans_total") >= 5, what="first trace in Kafka")
            produce([b"\x0a\xff\xff\xff garbage"])
            first = list(memory.get_finished_spans())
            consumer = Tracepipe("PLACEHOLDER", "consumer")
            out = consumer.dir / "spans.jsonl"
            consumer.config_path.write_text(consumer_graph(kafka.bootstrap, "in", out) + f"telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{consumer.metrics_port} }} }}\n")
            with consumer:
                wait_for(lambda: len(read_jsonl_spans(out)) >= 5, timeout=60, what="first trace consumed")
                m = wait_for(lambda: (lambda m: m if metric_sum(m, "tracepipe_receiver_malformed_requests_total", transport="kafka") else None)(consumer.metrics()),
                             what="malformed record counted")
                assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", transport="kafka", reason="protobuf") == 1
                assert consumer.stop() == 0, consumer.logs()
            emit_rich_trace(sdk, "-b")
            wait_for(lambda: metric_sum(w.metrics(), "tracepipe_sink_sent_spans_total") >= 10, what="second trace in Kafka")
            sdk.shutdown()
            out.unlink()
            with consumer:  # same group: starts after the committed offset
                wait_for(lambda: len(read_jsonl_spans(out)) >= 5, timeout=60, what="second trace consumed")
                wait_for(lambda: kafka.committed_to_end("in", "gateway"), timeout=30, what="the group committed the partition to its end")
                second = [s for s in memory.get_finished_spans() if s not in first]
                compare(second, read_jsonl_spans(out))  # only the new trace: nothing read twice
                assert consumer.stop() == 0, consumer.logs()
