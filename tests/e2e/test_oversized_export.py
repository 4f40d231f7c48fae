"""The oversized-export stall (issue 18): an agent (OTLP -> batch 8192 -> OTLP sink) exporting to a
gateway whose receiver takes 1 MiB per request. 8,192 spans of ~500 bytes are ~4 MB: before the
fix the gateway answered OUT_OF_RANGE / 413 and the sink resent the same request until
max_elapsed_time while everything behind it waited (0 of 250,000 spans arrived). Now requests are
cut to max_request_bytes before sending, a refused one is halved (and later ones cut to the
learned size), and every span arrives, exactly once."""

import os

import pytest

from harness import Tracepipe, far_end, free_port, metric_sum, read_jsonl_spans, wait_for
from otlp_wire import post
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

REQUESTS = 40
SPANS_PER_REQUEST = 1000


def request(tag: int) -> bytes:
    """1,000 spans of ~500 bytes each (a URL and a user agent, as proxies record them)."""
    spans = []
    for i in range(SPANS_PER_REQUEST):
        spans.append(Span(
            trace_id=os.urandom(16), span_id=(tag * SPANS_PER_REQUEST + i + 1).to_bytes(8, "big"), name=f"GET /api/{tag}/{i}",
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_100_000_000,
            attributes=[
                KeyValue(key="http.url", value=AnyValue(string_value=f"https://shop.example/api/{tag}/{i}?q=" + "x" * 200)),
                KeyValue(key="user_agent.original", value=AnyValue(string_value="Mozilla/5.0 " + "y" * 150)),
            ],
        ))
    rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="shop")))
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_agent_exports_8192_span_batches_to_a_1mib_gateway(protocol):
    gw, gw_grpc, gw_http, out = far_end(max_size="1MiB")
    a_grpc, a_http = free_port(), free_port()
    target = f"http://127.0.0.1:{gw_grpc}" if protocol == "grpc" else f"http://127.0.0.1:{gw_http}"
    agent = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{a_grpc} }}, http: {{ endpoint: 127.0.0.1:{a_http} }} }}
processors:
  batch: {{ type: batch, inputs: [apps], send_batch_size: 8192, timeout: 200ms }}
sinks:
  gateway:
    type: otlp
    inputs: [batch]
    endpoint: {target}
    protocol: {protocol}
    compression: gzip
    retry: {{ initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 60s }}
""", "agent")
    bodies = [request(t) for t in range(REQUESTS)]
    assert len(bodies[0]) > 400_000, "each request ~0.5 MB, so one 8192-span batch is ~4 MB"
    total = REQUESTS * SPANS_PER_REQUEST
    with gw, agent:
        for b in bodies:
            r = post(a_http, b)
            assert r.status_code == 200, r.text
        wait_for(lambda: metric_sum(agent.metrics(), "tracepipe_sink_sent_spans_total", sink="gateway") >= total, timeout=120,
                 what=f"{total} spans sent")
        m = agent.metrics()
        assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink="gateway") == 0
        splits = metric_sum(m, "tracepipe_sink_split_requests_total", sink="gateway")
        # The first too-large request teaches the sink the gateway's size; later batches are cut
        # to it. Four workers may each learn it once, each in up to two halvings.
        assert 1 <= splits <= 8, f"{splits} requests halved"
        wait_for(lambda: len(read_jsonl_spans(out)) >= total, timeout=60, what=f"{total} spans at the gateway")
        got = [int(s["span"]["spanId"], 16) for s in read_jsonl_spans(out)]
        assert len(got) == total and set(got) == set(range(1, total + 1)), "every span arrives exactly once"
        mg = gw.metrics()
        refused = metric_sum(mg, "tracepipe_receiver_malformed_requests_total", receiver="in")
        assert refused == splits, f"the gateway refused {refused} requests, the agent halved {splits}"
        assert agent.stop() == 0
        assert gw.stop() == 0
