"""A downstream that goes away for 60 s under steady load, then comes back (issue 18's fault
tests): with a disk queue and end-to-end acknowledgements, every span a client got a 200 for
arrives (lost = 0, duplicates counted), resident memory stays under `memory.limit` while the
backlog grows on disk, and once the downstream is back the backlog drains at least twice as fast
as the input arrives.

Two downstreams: the OTLP sink's upstream (another tracepipe, stopped and started again) and the
Kafka sink's broker (tansu behind a link that is cut: tansu keeps its topics in memory, so the
broker process stays up and its clients see connections reset and refused, as in a partition)."""

import time

from harness import CuttableLink, PacedLoad, Tansu, Tracepipe, far_end, free_port, metric_sum, peak_rss, read_jsonl_spans, wait_for

RATE = 2000           # spans/s offered by the client
OUTAGE = 60           # seconds the downstream is away
LIMIT = 256 << 20     # memory.limit of the gateway


def gateway(http_port: int, sink: str, name: str) -> Tracepipe:
    return Tracepipe(f"""
receivers:
  in: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http_port} }}, acknowledgements: {{ enabled: true }} }}
processors:
  batch: {{ type: batch, inputs: [in] }}
sinks:
{sink}
memory: {{ limit: {LIMIT} }}
""", name)


def outage(gw: Tracepipe, sink: str, cut, restore) -> tuple:
    """Runs the load through an outage of the downstream; returns (load, input rate, drain rate,
    backlog at the end of the outage, drain seconds)."""
    load = PacedLoad(gw_port(gw), RATE).start()
    time.sleep(10)
    cut()
    time.sleep(OUTAGE)
    m = gw.metrics()
    backlog = metric_sum(m, "tracepipe_sink_queue_spans", sink=sink)
    sent0, t0 = metric_sum(m, "tracepipe_sink_sent_spans_total", sink=sink), time.time()
    restore()
    # Drained: the queue is back to less than a second of input.
    wait_for(lambda: metric_sum(gw.metrics(), "tracepipe_sink_queue_spans", sink=sink) < RATE, timeout=OUTAGE * 2, interval=0.2,
             what="the backlog drained")
    took = time.time() - t0
    drain = (metric_sum(gw.metrics(), "tracepipe_sink_sent_spans_total", sink=sink) - sent0) / took
    time.sleep(3)
    rate = load.stop()
    assert not load.errors, f"non-retryable answers: {load.errors[:3]}"
    return load, rate, drain, backlog, took


def gw_port(gw: Tracepipe) -> int:
    return gw.http_port


def check(name, gw, load, rate, drain, backlog, took, got):
    peak = peak_rss(gw.proc.pid)
    lost = set(load.acked) - set(got)
    print(f"{name}: {len(load.acked)} spans acknowledged at {rate:.0f}/s; backlog after {OUTAGE} s down {backlog:.0f} spans; "
          f"drained in {took:.1f} s at {drain:.0f} spans/s ({drain / rate:.1f}x the input); lost {len(lost)}, "
          f"{len(got) - len(set(got))} delivered twice; peak RSS {peak >> 20} MiB (limit {LIMIT >> 20} MiB)")
    assert not lost, f"{len(lost)} acknowledged spans lost"
    assert backlog >= RATE * OUTAGE * 0.5, f"the queue held only {backlog:.0f} spans: the input stalled during the outage"
    assert rate >= RATE * 0.8, f"the client got only {rate:.0f} spans/s through"
    assert drain >= 2 * rate, f"drained at {drain:.0f} spans/s, under twice the input rate {rate:.0f}"
    assert peak <= LIMIT, f"peak resident memory {peak >> 20} MiB over the limit"


def test_otlp_upstream_down_60s_under_load_loses_nothing(tmp_path):
    far, g, _, out = far_end()
    http_port = free_port()
    gw = gateway(http_port, f"""
  up:
    type: otlp
    inputs: [batch]
    endpoint: http://127.0.0.1:{g}
    retry: {{ initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 0s }}
    queue: {{ storage: {{ path: {tmp_path / 'queue'} }} }}
""", "outage-otlp")
    gw.http_port = http_port
    with far, gw:
        load, rate, drain, backlog, took = outage(gw, "up", lambda: far.stop(), lambda: far.start())
        wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(load.acked), timeout=60,
                 what="every acknowledged span delivered")
        got = [bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)]
        check("OTLP upstream down 60 s", gw, load, rate, drain, backlog, took, got)
        assert gw.stop() == 0, gw.logs()


def test_kafka_broker_unreachable_60s_under_load_loses_nothing(tmp_path):
    from opentelemetry.proto.trace.v1 import trace_pb2

    broker = free_port()
    link = CuttableLink(broker)
    http_port = free_port()
    with Tansu(port=broker, advertise=link.port) as kafka:
        kafka.create_topic("outage", partitions=2)
        link.up()
        gw = gateway(http_port, f"""
  bus:
    type: kafka
    inputs: [batch]
    brokers: ["127.0.0.1:{link.port}"]
    topic: outage
    queue: {{ storage: {{ path: {tmp_path / 'queue'} }} }}
""", "outage-kafka")
        gw.http_port = http_port
        with gw:
            load, rate, drain, backlog, took = outage(gw, "bus", link.down, link.up)
            got = []
            for _, _, value in kafka.records("outage", 1, timeout=120, settle=3):
                d = trace_pb2.TracesData()
                d.ParseFromString(value)
                got += [s.span_id for rs in d.resource_spans for ss in rs.scope_spans for s in ss.spans]
            check("Kafka broker unreachable 60 s", gw, load, rate, drain, backlog, took, got)
            assert gw.stop() == 0, gw.logs()
        link.down()
