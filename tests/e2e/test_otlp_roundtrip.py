"""Real OTLP clients through tracepipe, field for field: the Python SDK over gRPC, HTTP/protobuf
and HTTP/JSON -> tracepipe (otlp receiver -> batch -> otlp sink, each sink protocol) -> a second
tracepipe -> OTLP/JSON file; and the same path through Rotel in both directions."""

import pytest

from harness import Rotel, Tracepipe, far_end, free_port, metric_sum, read_jsonl_spans, wait_for
from sdk import compare_everything, emit_rich_trace, normalise_json, normalise_sdk, provider


def forwarder_graph(grpc_port: int, http_port: int, target: str, protocol: str, compression: str) -> str:
    return f"""
receivers:
  apps:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{grpc_port} }}
    http: {{ endpoint: 127.0.0.1:{http_port} }}
processors:
  batch:
    type: batch
    inputs: [apps]
    send_batch_size: 100
    timeout: 50ms
sinks:
  upstream:
    type: otlp
    inputs: [batch]
    endpoint: {target}
    protocol: {protocol}
    compression: {compression}
    headers: {{ x-tenant: e2e }}
    retry: {{ initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 30s }}
"""


def compare(sent, received_items):
    got = {n["span_id"]: n for n in (normalise_json(i) for i in received_items)}
    want = {n["span_id"]: n for n in (normalise_sdk(s) for s in sent)}
    assert len(received_items) == len(want), f"{len(received_items)} spans arrived, {len(want)} were sent"
    assert set(got) == set(want)
    for sid, w in want.items():
        g = got[sid]
        for field in w:
            assert g[field] == w[field], f"span {w['name']} field {field}: got {g[field]!r}, want {w[field]!r}"


@pytest.mark.parametrize("client", ["grpc", "http-proto", "http-json"])
@pytest.mark.parametrize("sink_protocol,compression", [("grpc", "gzip"), ("http/protobuf", "zstd"), ("http/json", "none")])
def test_sdk_through_tracepipe_field_for_field(client, sink_protocol, compression):
    b, b_grpc, b_http, out = far_end()
    a_grpc, a_http = free_port(), free_port()
    target = f"http://127.0.0.1:{b_grpc}" if sink_protocol == "grpc" else f"http://127.0.0.1:{b_http}"
    with b, Tracepipe(forwarder_graph(a_grpc, a_http, target, sink_protocol, compression), "a") as a:
        endpoint = f"http://127.0.0.1:{a_grpc}" if client == "grpc" else f"http://127.0.0.1:{a_http}/v1/traces"
        tp, memory = provider(client, endpoint)
        emit_rich_trace(tp)
        tp.shutdown()
        sent = memory.get_finished_spans()
        assert len(sent) == 5
        wait_for(lambda: len(read_jsonl_spans(out)) >= 5, what="5 spans at the far end")
        compare(sent, read_jsonl_spans(out))
        compare_everything(sent, out)
        ma = a.metrics()
        transport = "grpc" if client == "grpc" else "http"
        assert metric_sum(ma, "tracepipe_receiver_accepted_spans_total", receiver="apps", transport=transport) == 5
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="upstream") == 5, what="sink sent = 5")
        assert a.stop() == 0
        assert b.stop() == 0


def test_rotel_both_directions():
    """SDK -> tracepipe A -> Rotel -> tracepipe B: tracepipe exports into Rotel and Rotel exports
    into tracepipe; every field survives both hops."""
    b, b_grpc, _, out = far_end()
    with b, Rotel(export_to=f"http://127.0.0.1:{b_grpc}") as rotel:
        a_grpc, a_http = free_port(), free_port()
        with Tracepipe(forwarder_graph(a_grpc, a_http, f"http://127.0.0.1:{rotel.grpc_port}", "grpc", "gzip"), "a") as a:
            tp, memory = provider("grpc", f"http://127.0.0.1:{a_grpc}")
            for i in range(20):
                emit_rich_trace(tp, tag=f"-{i}")
            tp.shutdown()
            sent = memory.get_finished_spans()
            assert len(sent) == 100
            wait_for(lambda: len(read_jsonl_spans(out)) >= 100, timeout=30, what="100 spans through Rotel")
            compare(sent, read_jsonl_spans(out))
            assert a.stop() == 0
        assert b.stop() == 0
