"""The process-wide memory limit (issue 18): with `memory.limit` set, a flood that the graph
cannot deliver (the upstream is down, the sink queue holds everything) makes tracepipe refuse
with retryable errors once its resident memory passes the soft limit, say so on /readyz, and keep
its peak resident memory under the limit; every span the client sent is either accepted
(counted) or refused to it."""

import os
import time

import requests

from harness import CuttableLink, PacedLoad, Tansu, Tracepipe, far_end, free_port, http_get, metric_sum, peak_rss, read_jsonl_spans, wait_for
from otlp_wire import request


def graph(g: int, h: int, dead: int, limit: str) -> str:
    return f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{g} }}, http: {{ endpoint: 127.0.0.1:{h} }} }}
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{dead}
    protocol: http/protobuf
    retry: {{ initial_interval: 1s, max_interval: 1s, max_elapsed_time: 0s }}
    queue: {{ max_spans: 10000000 }}
memory: {{ limit: {limit}, soft_ratio: 0.8, check_interval: 20ms }}
"""


def test_flood_into_a_dead_upstream_is_refused_at_the_memory_limit():
    g, h, dead = free_port(), free_port(), free_port()
    # The idle debug binary's resident memory, then a limit 60 MiB above it.
    probe = Tracepipe(graph(g, h, dead, "1GiB"), "memprobe")
    with probe:
        idle = peak_rss(probe.proc.pid)
        assert probe.stop() == 0
    limit = idle + (60 << 20)
    tp = Tracepipe(graph(g, h, dead, str(limit)), "memlimit")
    body = request([os.urandom(8) for _ in range(2000)]).SerializeToString()  # ~0.2 MB, 2,000 spans
    accepted_requests = refused = 0
    with tp:
        session = requests.Session()
        for _ in range(1500):  # up to 3,000,000 spans, ~300 MB: far past the limit if all were held
            r = session.post(f"http://127.0.0.1:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)
            if r.status_code == 200:
                accepted_requests += 1
            else:
                assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.text)
                refused += 1
                if refused >= 50:
                    break
        assert refused >= 50, f"never refused: {accepted_requests} requests accepted"
        status, why = http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")
        assert status == 503 and "refusing data: resident memory" in why, why
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in") == accepted_requests * 2000
        refused_spans = metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="in", reason="memory")
        refused_requests = metric_sum(m, "tracepipe_receiver_refused_requests_total", receiver="in", reason="memory")
        assert refused_spans / 2000 + refused_requests == refused, "every refusal counted"
        assert metric_sum(m, "tracepipe_memory_limit_bytes") == limit
        peak = peak_rss(tp.proc.pid)
        print(f"idle {idle >> 20} MiB, limit {limit >> 20} MiB, peak {peak >> 20} MiB, {accepted_requests} requests accepted, {refused} refused")
        assert peak <= limit, f"peak resident memory {peak} over the limit {limit}"
        # SIGTERM: the upstream is still down, so what the sink holds is dropped after its 20 s
        # budget, counted.
        assert tp.stop() == 0
        assert "Shutting down; undeliverable spans dropped." in tp.logs()


# Two-times overload inside a 512 MiB limit: the input offers more bytes than the downstream takes
# (a stalled Kafka broker; an upstream behind a link of half the input's rate). Resident memory
# stays under the limit; the clients' own counts equal the receiver's (answered 200 = accepted,
# refused = refused); once the downstream recovers every accepted span is delivered. The sinks'
# own bounds are set far above the limit (a gateway sized for another machine), so that the
# process-wide limit is what holds: the graph's channels are bounded in bytes (32 MiB each), and
# with the sinks' default bounds the overload is refused (pipeline_full) before memory gets there.
# The Kafka sink keeps at most 64 batches awaiting acknowledgement: its graph batches for 1 s
# (~20 MB batches here) so that those can hold more than the limit.
OVERLOAD_LIMIT = 512 << 20
PAD = 4000          # bytes of attribute per span: ~4.1 kB spans
RATE = 5000         # spans/s offered: ~20 MB/s


def overload_gateway(h: int, sink: str, name: str, batch: str = "") -> Tracepipe:
    return Tracepipe(f"""
receivers:
  in: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{h} }} }}
processors:
  batch: {{ type: batch, inputs: [in]{batch} }}
sinks:
{sink}
memory: {{ limit: {OVERLOAD_LIMIT}, check_interval: 20ms }}
""", name)


def overloaded(tp: Tracepipe, h: int, sink: str, stall, recover, seconds: float):
    """Offers RATE spans/s for `seconds` while the downstream is slow or stalled, then lets it
    recover; returns (load, peak RSS, refused-by-memory seen on /readyz)."""
    load = PacedLoad(h, RATE, per=50, pad=PAD).start()
    time.sleep(3)
    stall()
    end, said_why, held = time.time() + seconds, "", {}
    while time.time() < end:
        status, why = http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")
        if status == 503:
            said_why = why
        m = tp.metrics()
        if metric_sum(m, "tracepipe_memory_held_bytes") > sum(held.values()):
            held = {c: metric_sum(m, "tracepipe_memory_held_bytes", component=c) for c in ("in", "batch", sink)}
        time.sleep(0.5)
    tp.held_at_peak = held
    recover()
    time.sleep(5)
    load.stop()
    assert not load.errors, load.errors[:3]
    wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_sink_queue_spans", sink=sink) == 0, timeout=120, what="the sink queue drained")
    return load, peak_rss(tp.proc.pid), said_why


def counts_match(tp: Tracepipe, load, sink: str):
    m = tp.metrics()
    accepted = metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in")
    refused = metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="in") + 50 * metric_sum(m, "tracepipe_receiver_refused_requests_total", receiver="in")
    assert accepted == len(load.acked), f"client saw {len(load.acked)} spans answered 200, the receiver counts {accepted:.0f} accepted"
    assert refused == load.refused, f"client saw {load.refused} spans refused, the receiver counts {refused:.0f}"
    assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink=sink) == 0, "a sink dropped spans"
    # Every byte a component held was accounted and released: drained, the account is back to 0.
    # (the batch processor's last partial batch leaves at its timeout)
    wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_memory_held_bytes") == 0, what="every held byte released")
    held = tp.held_at_peak
    assert sum(held.values()) > 100 << 20, f"at most {held} bytes accounted while the downstream was stalled"
    assert "largest_holders=" in tp.logs(), "the refusal's log line names no holders"
    return m


def test_twice_overload_through_a_stalled_kafka_sink_stays_under_512_mib(tmp_path):
    from opentelemetry.proto.trace.v1 import trace_pb2
    broker, h = free_port(), free_port()
    link = CuttableLink(broker)
    with Tansu(port=broker, advertise=link.port) as kafka:
        kafka.create_topic("overload", partitions=2)
        link.up()
        tp = overload_gateway(h, f"""
  bus: {{ type: kafka, inputs: [batch], brokers: ["127.0.0.1:{link.port}"], topic: overload, max_buffer_bytes: 2000MiB, librdkafka_options: {{ queue.buffering.max.messages: "10000000" }} }}
""", "overload-kafka", ", timeout: 1s, send_batch_max_bytes: 32MiB")
        with tp:
            load, peak, why = overloaded(tp, h, "bus", link.down, link.up, 60)
            m = counts_match(tp, load, "bus")
            got = set()
            for _, _, value in kafka.records("overload", 1, timeout=180, settle=3):
                d = trace_pb2.TracesData()
                d.ParseFromString(value)
                got |= {s.span_id for rs in d.resource_spans for ss in rs.scope_spans for s in ss.spans}
            print(f"stalled Kafka sink, 60 s at {RATE} spans/s of {PAD // 1000} kB: {len(load.acked)} spans answered 200, "
                  f"{load.refused} refused (retryable), {len(set(load.acked) - got)} of the answered missing from the topic; "
                  f"peak RSS {peak >> 20} MiB of {OVERLOAD_LIMIT >> 20} MiB; held at most (MiB): { {k: v / 2**20 for k, v in tp.held_at_peak.items()} }; /readyz said: {why!r}")
            assert peak <= OVERLOAD_LIMIT, f"peak resident memory {peak >> 20} MiB over the limit"
            # /readyz is polled every 0.5 s and the pressure may come and go between polls: the
            # receiver's count of refusals for memory is the evidence.
            memory = metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="in", reason="memory") + \
                metric_sum(m, "tracepipe_receiver_refused_requests_total", receiver="in", reason="memory")
            assert load.refused > 0 and memory > 0, \
                "the stall never reached the limit: the test proves nothing"
            assert set(load.acked) <= got, f"{len(set(load.acked) - got)} accepted spans never reached the topic"
            assert tp.stop() == 0
        link.down()


def test_twice_overload_through_a_slow_upstream_stays_under_512_mib(tmp_path):
    far, g, _, out = far_end("64MiB")
    h = free_port()
    link = CuttableLink(g, bytes_per_second=RATE * PAD / 2)  # half the input's bytes
    tp = overload_gateway(h, f"""
  up:
    type: otlp
    inputs: [batch]
    endpoint: http://127.0.0.1:{link.port}
    compression: none
    retry: {{ initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 0s }}
    queue: {{ max_spans: 10000000, max_bytes: 2GiB }}
""", "overload-otlp")
    with far, tp:
        link.up()
        load, peak, why = overloaded(tp, h, "up", lambda: None, lambda: setattr(link, "bytes_per_second", None), 60)
        counts_match(tp, load, "up")
        wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(load.acked), timeout=120,
                 what="every accepted span delivered")
        print(f"upstream at half the input's bytes, 60 s at {RATE} spans/s of {PAD // 1000} kB: {len(load.acked)} spans answered 200, "
              f"{load.refused} refused (retryable), all answered delivered; peak RSS {peak >> 20} MiB of {OVERLOAD_LIMIT >> 20} MiB; "
              f"held at most (MiB): { {k: v / 2**20 for k, v in tp.held_at_peak.items()} }; /readyz said: {why!r}")
        assert peak <= OVERLOAD_LIMIT, f"peak resident memory {peak >> 20} MiB over the limit"
        assert load.refused > 0 and "resident memory" in why, "the overload never reached the limit: the test proves nothing"
        assert tp.stop() == 0
