"""OTLP/gRPC load generator for the benchmark: sends the same pre-encoded
ExportTraceServiceRequest (SPANS_PER_REQUEST spans of ~430 bytes, ~10 attributes each, as the
Rotel reference measurement) from several concurrent streams until TOTAL spans were accepted.
Prints one JSON line: spans sent, requests, refused requests, seconds."""

import argparse
import json
import os
import threading
import time

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def build_request(n: int) -> bytes:
    spans = []
    for i in range(n):
        attrs = [
            KeyValue(key="http.method", value=AnyValue(string_value="GET")),
            KeyValue(key="http.url", value=AnyValue(string_value=f"http://reviews.default.svc.cluster.local:9080/reviews/{i}")),
            KeyValue(key="http.status_code", value=AnyValue(int_value=200)),
            KeyValue(key="http.user_agent", value=AnyValue(string_value="python-requests/2.34.2")),
            KeyValue(key="net.peer.ip", value=AnyValue(string_value="10.12.4.17")),
            KeyValue(key="component", value=AnyValue(string_value="proxy")),
            KeyValue(key="node_id", value=AnyValue(string_value="sidecar~10.12.4.17~reviews-v1-1.default~default.svc.cluster.local")),
            KeyValue(key="guid:x-request-id", value=AnyValue(string_value="3f0a6c1e-9b7d-9c2e-8f41-6d2a0b9e7c55")),
            KeyValue(key="response_size", value=AnyValue(int_value=1843)),
            KeyValue(key="cached", value=AnyValue(bool_value=False)),
        ]
        spans.append(Span(trace_id=os.urandom(16), span_id=os.urandom(8), parent_span_id=os.urandom(8), name="reviews.default.svc.cluster.local:9080/*",
                          kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_000 + i, end_time_unix_nano=1_700_000_000_004_000_000 + i,
                          attributes=attrs))
    rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="reviews")))
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--total", type=int, default=2_000_000)
    ap.add_argument("--spans-per-request", type=int, default=500)
    ap.add_argument("--streams", type=int, default=8)
    a = ap.parse_args()
    body = build_request(a.spans_per_request)
    per_request = a.spans_per_request
    need = a.total // per_request
    lock = threading.Lock()
    state = {"ok": 0, "refused": 0, "issued": 0}
    channel = grpc.insecure_channel(a.endpoint)
    call = channel.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def worker():
        while True:
            with lock:
                if state["issued"] >= need:
                    return
                state["issued"] += 1
            while True:
                try:
                    call(body, timeout=30)
                    with lock:
                        state["ok"] += 1
                    break
                except grpc.RpcError as e:
                    with lock:
                        state["refused"] += 1
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                        raise
                    time.sleep(0.01)

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(a.streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - t0
    print(json.dumps({"spans": state["ok"] * per_request, "requests": state["ok"], "refused_requests": state["refused"],
                      "seconds": secs, "request_bytes": len(body), "span_bytes": len(body) / per_request}))


if __name__ == "__main__":
    main()
