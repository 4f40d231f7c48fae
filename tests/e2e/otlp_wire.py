"""Builds raw OTLP requests with the opentelemetry-proto Python classes (independent of tracepipe's
Rust code) and posts them, for tests that need exact control over bytes and ids."""

import gzip
import os

import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span


def request(span_ids, trace_id: bytes = None, service: str = "wire", pad: int = 0) -> ExportTraceServiceRequest:
    """One request with a span per id (8-byte ids); all in one trace unless trace_id is None;
    `pad` adds an attribute of that many bytes to each span."""
    spans = []
    for sid in span_ids:
        spans.append(Span(
            trace_id=trace_id or os.urandom(16), span_id=sid, name="op",
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=1_700_000_000_000_000_000, end_time_unix_nano=1_700_000_000_100_000_000,
            attributes=[KeyValue(key="http.method", value=AnyValue(string_value="GET"))]
            + ([KeyValue(key="pad", value=AnyValue(string_value="x" * pad))] if pad else []),
        ))
    rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
    return ExportTraceServiceRequest(resource_spans=[rs])


def post(port: int, body: bytes, content_type="application/x-protobuf", encoding=None, timeout=10):
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    return requests.post(f"http://127.0.0.1:{port}/v1/traces", data=body, headers=headers, timeout=timeout)


def parse_response(body: bytes) -> ExportTraceServiceResponse:
    r = ExportTraceServiceResponse()
    r.ParseFromString(body)
    return r


def gzip_bytes(b: bytes) -> bytes:
    return gzip.compress(b)
