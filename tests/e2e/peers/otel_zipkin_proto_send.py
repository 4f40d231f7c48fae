"""Run with tests/.venv-zipkinproto. The OpenTelemetry Zipkin proto exporter (1.45.1) as a real
peer: POSTs a proto3 ListOfSpans to URL. Prints one JSON line with the spans the SDK recorded."""
import json
import sys

from opentelemetry.exporter.zipkin.proto.http import ZipkinExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

mem = InMemorySpanExporter()
tp = TracerProvider(resource=Resource.create({"service.name": "otel-zipkin-proto"}))
tp.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=sys.argv[1])))
tp.add_span_processor(SimpleSpanProcessor(mem))
tr = tp.get_tracer("e2e.zipkin.proto", "0.4")
with tr.start_as_current_span("GET /orders", kind=SpanKind.SERVER, attributes={"http.method": "GET"}):
    with tr.start_as_current_span("load", attributes={"cache": "miss"}) as s:
        s.add_event("cache-miss")
        s.set_status(Status(StatusCode.ERROR, "boom"))
    with tr.start_as_current_span("SELECT", kind=SpanKind.CLIENT):
        pass
tp.shutdown()
print(json.dumps([{"trace_id": format(s.context.trace_id, "032x"), "span_id": format(s.context.span_id, "016x"),
                   "parent": format(s.parent.span_id, "016x") if s.parent else "", "name": s.name, "kind": s.kind.value + 1,
                   "status": [s.status.status_code.value, s.status.description or ""], "attributes": dict(s.attributes),
                   "events": [e.name for e in s.events]} for s in mem.get_finished_spans()]))
