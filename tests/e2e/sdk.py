"""The OpenTelemetry Python SDK as a real OTLP client: emits a trace that exercises every field
(attributes of every type, events, links, status, kinds, resource, scope) and keeps an in-memory
copy of what it produced, normalised for field-by-field comparison with what arrives."""

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode


def exporter(mode: str, endpoint: str, headers=None):
    if mode == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers)
    if mode == "http-proto":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, headers=headers)
    if mode == "http-json":
        from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter(endpoint=endpoint, headers=headers)
    raise ValueError(mode)


def provider(mode: str, endpoint: str, service: str = "e2e-orders", batch: bool = False):
    memory = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test", "host.cores": 2}))
    exp = exporter(mode, endpoint)
    tp.add_span_processor(BatchSpanProcessor(exp, max_export_batch_size=512, schedule_delay_millis=100) if batch else SimpleSpanProcessor(exp))
    tp.add_span_processor(SimpleSpanProcessor(memory))
    return tp, memory


def emit_rich_trace(tp, tag: str = "") -> None:
    tracer = tp.get_tracer("e2e.scope", "1.2.3")
    with tracer.start_as_current_span(f"GET /orders{tag}", kind=SpanKind.SERVER, attributes={
        "http.method": "GET", "http.status_code": 200, "ratio": 0.25, "cached": False,
        "tags": ["a", "b"], "ids": [1, 2, 3], "weights": [0.5, 1.5], "flags": [True, False],
    }) as root:
        with tracer.start_as_current_span("load-order", kind=SpanKind.INTERNAL) as mid:
            mid.add_event("cache.miss", {"key": "order:42", "attempt": 2})
            mid.set_status(Status(StatusCode.ERROR, "order not cached"))
            with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.rows": 5432}):
                pass
        link = Link(root.get_span_context(), {"link.reason": "follow-up"})
        with tracer.start_as_current_span("call-billing", kind=SpanKind.PRODUCER, links=[link]) as s:
            s.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("consume", kind=SpanKind.CONSUMER):
            pass


def _value(v):
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v


def normalise_sdk(span) -> dict:
    ctx = span.get_span_context()
    return {
        "trace_id": f"{ctx.trace_id:032x}",
        "span_id": f"{ctx.span_id:016x}",
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else "",
        "name": span.name,
        "kind": span.kind.value + 1,
        "start": span.start_time,
        "end": span.end_time,
        "attributes": {k: _value(v) for k, v in span.attributes.items()},
        "events": [(e.name, e.timestamp, {k: _value(v) for k, v in e.attributes.items()}) for e in span.events],
        "links": [(f"{l.context.trace_id:032x}", f"{l.context.span_id:016x}", {k: _value(v) for k, v in l.attributes.items()}) for l in span.links],
        "status": (span.status.status_code.value, span.status.description or ""),
        "resource": {k: _value(v) for k, v in span.resource.attributes.items()},
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version or ""),
    }


def _json_value(v: dict):
    if "stringValue" in v:
        return v["stringValue"]
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "arrayValue" in v:
        return [_json_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return {kv["key"]: _json_value(kv.get("value", {})) for kv in v["kvlistValue"].get("values", [])}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _attrs(lst) -> dict:
    return {kv["key"]: _json_value(kv.get("value", {})) for kv in (lst or [])}


def normalise_json(item: dict) -> dict:
    """One span from a debug sink's OTLP/JSON line, in the same shape as normalise_sdk."""
    sp = item["span"]
    st = sp.get("status", {}) or {}
    return {
        "trace_id": sp["traceId"].lower(),
        "span_id": sp["spanId"].lower(),
        "parent_span_id": (sp.get("parentSpanId") or "").lower(),
        "name": sp["name"],
        "kind": int(sp.get("kind", 0)),
        "start": int(sp["startTimeUnixNano"]),
        "end": int(sp["endTimeUnixNano"]),
        "attributes": _attrs(sp.get("attributes")),
        "events": [(e["name"], int(e["timeUnixNano"]), _attrs(e.get("attributes"))) for e in sp.get("events", []) or []],
        "links": [(l["traceId"].lower(), l["spanId"].lower(), _attrs(l.get("attributes"))) for l in sp.get("links", []) or []],
        "status": (int(st.get("code", 0)), st.get("message", "") or ""),
        "resource": _attrs(item["resource"].get("attributes")),
        "scope": (item["scope"].get("name", ""), item["scope"].get("version", "") or ""),
    }
