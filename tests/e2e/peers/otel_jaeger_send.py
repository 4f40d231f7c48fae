"""Run with tests/.venv-oteljaeger. opentelemetry-exporter-jaeger-thrift 1.21.0 as a real peer.

  otel_jaeger_send.py agent PORT        UDP thrift compact emitBatch
  otel_jaeger_send.py collector URL     POST URL (thrift binary Batch, application/x-thrift)
Prints, as one JSON line, every span as the SDK recorded it."""
import json
import sys
import time

from opentelemetry.exporter.jaeger.thrift import JaegerExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

mode = sys.argv[1]
exp = JaegerExporter(agent_host_name="127.0.0.1", agent_port=int(sys.argv[2])) if mode == "agent" else JaegerExporter(collector_endpoint=sys.argv[2])
mem = InMemorySpanExporter()
tp = TracerProvider(resource=Resource.create({"service.name": f"otel-jaeger-{mode}", "deployment.environment": "test"}))
tp.add_span_processor(SimpleSpanProcessor(exp))
tp.add_span_processor(SimpleSpanProcessor(mem))
tr = tp.get_tracer("e2e.jaeger", "0.1")
with tr.start_as_current_span("GET /api/orders", kind=SpanKind.SERVER, attributes={"http.method": "GET", "http.status_code": 200, "ok": True, "ratio": 0.25}) as root:
    with tr.start_as_current_span("load-order") as inner:
        inner.add_event("cache-miss", {"key": "order:42"})
        inner.set_status(Status(StatusCode.ERROR, "boom"))
    with tr.start_as_current_span("call-billing", kind=SpanKind.CLIENT, links=[Link(inner.get_span_context())]):
        time.sleep(0.002)
tp.shutdown()
def usec(ns):
    return (ns + 500) // 1000


out = []
for s in mem.get_finished_spans():
    c = s.get_span_context()
    out.append({
        "trace_id": format(c.trace_id, "032x"), "span_id": format(c.span_id, "016x"),
        "parent_span_id": format(s.parent.span_id, "016x") if s.parent else "",
        "name": s.name, "kind": s.kind.value + 1,
        # The exporter rounds ns to µs: start and duration separately.
        "start_us": usec(s.start_time), "end_us": usec(s.start_time) + usec(s.end_time - s.start_time),
        "attributes": dict(s.attributes), "events": [(e.name, usec(e.timestamp), dict(e.attributes)) for e in s.events],
        "links": [(format(l.context.trace_id, "032x"), format(l.context.span_id, "016x")) for l in s.links],
        "status": [s.status.status_code.value, s.status.description or ""],
    })
print(json.dumps(out))
