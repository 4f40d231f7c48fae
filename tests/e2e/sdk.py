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


def provider(mode: str, endpoint: str, service: str = "e2e-orders", batch: bool = False, full: bool = False):
    """A TracerProvider exporting to `endpoint` and to memory. `full`: a resource schema URL and
    span limits low enough that the SDK drops (and counts) attributes, events and links."""
    memory = InMemorySpanExporter()
    resource = Resource.create({"service.name": service, "deployment.environment": "test", "host.cores": 2},
                               schema_url="https://opentelemetry.io/schemas/1.26.0" if full else None)
    if full:
        from opentelemetry.sdk.trace import SpanLimits
        tp = TracerProvider(resource=resource, span_limits=SpanLimits(max_span_attributes=6, max_events=1, max_links=1,
                                                                      max_event_attributes=1, max_link_attributes=1))
    else:
        tp = TracerProvider(resource=resource)
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


def emit_full_trace(tp, tag: str = "") -> None:
    """`emit_rich_trace` plus every other field the SDK can set: a remote parent (flags 0x300 and
    its tracestate on every span), scope schema URL and attributes, and (with `provider(full=True)`)
    dropped attribute, event and link counts."""
    import os
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState, set_span_in_context
    parent = SpanContext(trace_id=int.from_bytes(os.urandom(16), "big") | 1, span_id=int.from_bytes(os.urandom(8), "big") | 1, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED), trace_state=TraceState([("vendor", "abc"), ("ot", "th:8")]))
    tracer = tp.get_tracer("e2e.scope", "1.2.3", schema_url="https://opentelemetry.io/schemas/1.21.0",
                           attributes={"scope.team": "orders", "scope.n": 7})
    with tracer.start_as_current_span(f"GET /orders{tag}", context=set_span_in_context(NonRecordingSpan(parent)), kind=SpanKind.SERVER, attributes={
        "http.method": "GET", "http.status_code": 200, "ratio": 0.25, "cached": False,
        "tags": ["a", "b"], "ids": [1, 2, 3], "weights": [0.5, 1.5], "flags": [True, False],
    }) as root:
        with tracer.start_as_current_span("load-order", kind=SpanKind.INTERNAL) as mid:
            mid.add_event("cache.miss", {"key": "order:42", "attempt": 2})
            mid.add_event("cache.retry", {"key": "order:42"})
            mid.set_status(Status(StatusCode.ERROR, "order not cached"))
        links = [Link(root.get_span_context(), {"link.reason": "follow-up", "link.n": 1}), Link(parent, {"x": 1})]
        with tracer.start_as_current_span("call-billing", kind=SpanKind.PRODUCER, links=links) as s:
            s.set_status(Status(StatusCode.OK))


def _hex_ids_to_base64(d):
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping wants base64."""
    import base64
    if isinstance(d, list):
        return [_hex_ids_to_base64(x) for x in d]
    if not isinstance(d, dict):
        return d
    out = {}
    for k, v in d.items():
        if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
            out[k] = base64.b64encode(bytes.fromhex(v)).decode()
        else:
            out[k] = _hex_ids_to_base64(v)
    return out


def spans_by_id(req) -> dict:
    """span id -> (ResourceSpans without its scopes, ScopeSpans without its spans, Span) of an
    ExportTraceServiceRequest."""
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
    out = {}
    for rs in req.resource_spans:
        r = ResourceSpans()
        r.CopyFrom(rs)
        del r.scope_spans[:]
        for ss in rs.scope_spans:
            sc = ScopeSpans()
            sc.CopyFrom(ss)
            del sc.spans[:]
            for sp in ss.spans:
                # An empty status and none are the same (unset): the SDK writes the empty one.
                if sp.HasField("status") and sp.status.ByteSize() == 0:
                    sp.ClearField("status")
                out[sp.span_id.hex()] = (r, sc, sp)
    return out


def compare_everything(sent, jsonl_path) -> None:
    """Every field of every span as the SDK's own OTLP encoder writes it (flags, trace_state,
    dropped counts, schema URLs, scope and resource attributes included), against the OTLP/JSON
    lines a debug sink wrote: protobuf messages compared whole."""
    import json
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    want = spans_by_id(encode_spans(sent))
    got = {}
    for line in open(jsonl_path):
        if line.strip():
            got.update(spans_by_id(json_format.ParseDict(_hex_ids_to_base64(json.loads(line)), ExportTraceServiceRequest())))
    assert set(got) == set(want), f"{len(got)} spans arrived, {len(want)} were sent"
    for sid, (wr, ws, wsp) in want.items():
        gr, gs, gsp = got[sid]
        for what, w, g in (("span", wsp, gsp), ("scope", ws, gs), ("resource", wr, gr)):
            assert g == w, f"span {wsp.name}: {what} differs:\ngot  {json_format.MessageToDict(g)}\nwant {json_format.MessageToDict(w)}"


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
