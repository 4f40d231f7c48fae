"""OTLP/gRPC load generator for the benchmark: sends the same pre-encoded
ExportTraceServiceRequest (SPANS_PER_REQUEST spans of ~430 bytes, ~10 attributes each, as the
Rotel reference measurement) from several concurrent streams until TOTAL spans were accepted.
Prints one JSON line: spans sent, requests, refused requests, seconds."""

import argparse
import json
import os
import threading
import time
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def build_mesh_request(n: int) -> bytes:
    """n/5 requests of the Envoy x-request-id-only shape (3 fragments each: productpage SERVER;
    productpage CLIENT -> reviews SERVER; reviews CLIENT -> ratings SERVER), every guid starting
    with the 8-byte marker RRRRRRRR that the sender replaces per request."""
    per_service = {}
    for r in range(n // 5):
        guid = f"RRRRRRRR-{r:04x}-4a1b-9c2e-6d2a0b9e7c55"
        t0 = 1_700_000_000_000_000_000 + r * 10_000
        frags = [os.urandom(16) for _ in range(3)]
        ids = [os.urandom(8) for _ in range(5)]
        shape = [  # service, node, kind, trace, id, parent, start, end, upstream
            ("productpage", 2, 0, 0, None, 0, 9000, "inbound|9080||"),
            ("productpage", 3, 1, 1, None, 1000, 8000, "outbound|9080||reviews.default.svc.cluster.local"),
            ("reviews", 2, 1, 2, 1, 1100, 7900, "inbound|9080||"),
            ("reviews", 3, 2, 3, None, 2000, 7000, "outbound|9080||ratings.default.svc.cluster.local"),
            ("ratings", 2, 2, 4, 3, 2100, 6900, "inbound|9080||"),
        ]
        for svc, kind, frag, sid, parent, start, end, upstream in shape:
            attrs = [
                KeyValue(key="guid:x-request-id", value=AnyValue(string_value=guid)),
                KeyValue(key="node_id", value=AnyValue(string_value=f"sidecar~10.12.4.17~{svc}-v1-1.default~default.svc.cluster.local")),
                KeyValue(key="upstream_cluster", value=AnyValue(string_value=upstream)),
                KeyValue(key="http.url", value=AnyValue(string_value=f"http://{svc}:9080/{svc}/{r}")),
                KeyValue(key="http.method", value=AnyValue(string_value="GET")),
                KeyValue(key="http.status_code", value=AnyValue(string_value="200")),
                KeyValue(key="component", value=AnyValue(string_value="proxy")),
                KeyValue(key="response_flags", value=AnyValue(string_value="-")),
            ]
            per_service.setdefault(svc, []).append(Span(
                trace_id=frags[frag], span_id=ids[sid], parent_span_id=ids[parent] if parent is not None else b"",
                name=f"{svc}.default.svc.cluster.local:9080/*", kind=kind, start_time_unix_nano=t0 + start * 1000,
                end_time_unix_nano=t0 + end * 1000, attributes=attrs))
    out = []
    for svc, spans in per_service.items():
        rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
        rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=f"{svc}.default")))
        out.append(rs)
    return ExportTraceServiceRequest(resource_spans=out).SerializeToString()


def build_tail_request(n: int) -> bytes:
    """n/10 traces of 10 spans each (a root and nine children) for the tail-sampling benchmark:
    trace k % 20 == 0 has an error span, k % 20 == 1 is slow (600 ms root), k % 50 == 2 has
    user.tier=gold; every trace id starts with the 8-byte marker TTTTTTTT that the sender
    replaces per request, so every request brings new traces."""
    spans = []
    for k in range(n // 10):
        tid = b"TTTTTTTT" + os.urandom(8)
        root = os.urandom(8)
        t0 = 1_700_000_000_000_000_000 + k * 1000
        for i in range(10):
            attrs = [
                KeyValue(key="http.method", value=AnyValue(string_value="GET")),
                KeyValue(key="http.route", value=AnyValue(string_value="/checkout" if k % 7 == 3 else "/cart")),
                KeyValue(key="http.url", value=AnyValue(string_value=f"http://shop.default.svc.cluster.local:8080/cart/{k}/{i}")),
                KeyValue(key="http.status_code", value=AnyValue(int_value=500 if (k % 20 == 0 and i == 9) else 200)),
                KeyValue(key="net.peer.ip", value=AnyValue(string_value="10.12.4.17")),
                KeyValue(key="component", value=AnyValue(string_value="proxy")),
                KeyValue(key="response_size", value=AnyValue(int_value=1843)),
            ]
            if k % 50 == 2 and i == 3:
                attrs.append(KeyValue(key="user.tier", value=AnyValue(string_value="gold")))
            sp = Span(trace_id=tid, span_id=root if i == 0 else os.urandom(8), parent_span_id=b"" if i == 0 else root,
                      name=f"GET /cart/{i}", kind=Span.SPAN_KIND_SERVER if i == 0 else Span.SPAN_KIND_CLIENT,
                      start_time_unix_nano=t0 + i * 1000, end_time_unix_nano=t0 + (600_000_000 if (k % 20 == 1 and i == 0) else 4_000_000 + i),
                      attributes=attrs)
            if k % 20 == 0 and i == 9:
                sp.status.code = sp.status.STATUS_CODE_ERROR
            spans.append(sp)
    rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="shop")))
    return ExportTraceServiceRequest(resource_spans=[rs]).SerializeToString()


def build_request(n: int, guid: bool = True) -> bytes:
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
        ] + ([KeyValue(key="guid:x-request-id", value=AnyValue(string_value="3f0a6c1e-9b7d-9c2e-8f41-6d2a0b9e7c55"))] if guid else
             [KeyValue(key="x-request-hash", value=AnyValue(string_value="3f0a6c1e-9b7d-9c2e-8f41-6d2a0b9e7c55"))]) + [
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
    ap.add_argument("--ca", help="a PEM CA file: connect over TLS (the endpoint's host must match the certificate)")
    ap.add_argument("--spans-per-request", type=int, default=500)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rate", type=float, default=0, help="spans/s offered in all streams (0: as fast as answers come)")
    ap.add_argument("--first-seq", type=int, default=0, help="request numbering starts after this (new trace ids for the tail shape)")
    ap.add_argument("--shape", choices=["plain", "noguid", "mesh", "tail"], default="plain",
                    help="plain: the Rotel reference spans; noguid: the same without a guid attribute; mesh: x-request-id-only fragments, a new guid per request; "
                         "tail: 10-span traces with 5%% errors, 5%% slow, 2%% gold, new trace ids per request")
    a = ap.parse_args()
    if a.shape == "mesh":
        body = build_mesh_request(a.spans_per_request)
    elif a.shape == "tail":
        body = build_tail_request(a.spans_per_request)
    else:
        body = build_request(a.spans_per_request, a.shape == "plain")
    per_request = a.spans_per_request
    need = a.total // per_request
    lock = threading.Lock()
    state = {"ok": 0, "refused": 0, "issued": 0}
    channel = grpc.secure_channel(a.endpoint, grpc.ssl_channel_credentials(Path(a.ca).read_bytes())) if a.ca else grpc.insecure_channel(a.endpoint)
    call = channel.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    def worker():
        while True:
            with lock:
                if state["issued"] >= need:
                    return
                state["issued"] += 1
                seq = state["issued"] + a.first_seq
                due = started + (state["issued"] - 1) * per_request / a.rate if a.rate else 0
            if due > time.time():
                time.sleep(due - time.time())
            if a.shape == "mesh":
                req = body.replace(b"RRRRRRRR", b"%08x" % seq)
            elif a.shape == "tail":
                req = body.replace(b"TTTTTTTT", seq.to_bytes(8, "big"))
            else:
                req = body
            while True:
                try:
                    call(req, timeout=30)
                    with lock:
                        state["ok"] += 1
                    break
                except grpc.RpcError as e:
                    with lock:
                        state["refused"] += 1
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                        raise
                    time.sleep(0.01)

    t0 = started = time.time()
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
