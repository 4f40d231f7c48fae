"""A tiny Bookinfo-like service for the Envoy mesh.

  app.py NAME PORT STEPS_JSON FORWARD LOGFILE [OTLP_GRPC_URL]
STEPS_JSON: [[[callee, sidecar_url], ...], ...] — steps run one after another, the calls of one
step in parallel, each as `GET http://CALLEE:9080/PATH` (Host header) through the app's own
sidecar. FORWARD: all (x-request-id and every tracing header Istio asks apps to propagate), xrid
(only x-request-id), none. Every request's headers are appended to LOGFILE as JSON lines.
With OTLP_GRPC_URL the app is instrumented with the OpenTelemetry SDK, as an app behind an Istio
sidecar: one SERVER span per request, continuing the B3 context its sidecar passed in (so it
shares the fragment's trace id but carries no guid), `app.request_id` = the x-request-id.
A request whose path contains `fail` is answered 500 by the last service of the chain.
Each call's path is the caller's path plus `/CALLEE-STEP` (before any query), so every proxy span
of a request has its own `http.url` and a test can tell which call is which.
With FLAKY (env MESH_FLAKY=1) the first attempt of each call (x-request-id and path) is answered
503 (a proxy retry policy then retries it)."""
import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT, STEPS, MODE, LOG = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
OTLP = sys.argv[6] if len(sys.argv) > 6 else None
tracer = None
if OTLP:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

    provider = TracerProvider(resource=Resource.create({"service.name": NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=OTLP, insecure=True), schedule_delay_millis=300))
    tracer = provider.get_tracer("mesh-app")
    import atexit
    import signal as _signal
    atexit.register(provider.shutdown)
    _signal.signal(_signal.SIGTERM, lambda *a: sys.exit(0))
PROPAGATE = {"x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
             "x-ot-span-context", "traceparent", "tracestate", "baggage"}
lock = threading.Lock()


FLAKY = os.environ.get("MESH_FLAKY") == "1"
seen = set()


def call(callee, url, path, fwd, results, k):
    try:
        req = urllib.request.Request(url + path, headers={**fwd, "Host": f"{callee}:9080"})
        with urllib.request.urlopen(req, timeout=5) as r:
            results[k] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        results[k] = {"svc": callee, "error_status": e.code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        got = {k.lower(): v for k, v in self.headers.items()}
        with lock, open(LOG, "a") as f:
            f.write(json.dumps({"svc": NAME, "path": self.path, "headers": got}) + "\n")
        fwd = {k: v for k, v in got.items() if (MODE == "all" and k in PROPAGATE) or (MODE == "xrid" and k == "x-request-id")}
        if tracer is None:
            return self.answer(fwd)
        ctx = None
        if "x-b3-traceid" in got and "x-b3-spanid" in got:
            parent = SpanContext(trace_id=int(got["x-b3-traceid"], 16), span_id=int(got["x-b3-spanid"], 16), is_remote=True,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED))
            ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        with tracer.start_as_current_span(f"handle {NAME}", context=ctx, kind=SpanKind.SERVER,
                                          attributes={"app.request_id": got.get("x-request-id", "")}) as span:
            code = self.answer(fwd)
            if code >= 500:
                span.set_status(Status(StatusCode.ERROR, f"answered {code}"))

    def answer(self, fwd):
        if FLAKY:
            with lock:
                key = (fwd.get("x-request-id"), self.path)
                first = key not in seen
                seen.add(key)
            if first:
                self.send_response(503)
                self.send_header("content-length", "0")
                self.end_headers()
                return 503
        if "fail" in self.path and not STEPS:
            self.send_response(500)
            self.send_header("content-length", "0")
            self.end_headers()
            return 500
        downstream = []
        base, q, query = self.path.partition("?")
        for n, step in enumerate(STEPS):
            results = [None] * len(step)
            threads = [threading.Thread(target=call, args=(c, u, f"{base}/{c}-{n}{q}{query}", fwd, results, k)) for k, (c, u) in enumerate(step)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            downstream.extend(results)
        # Callers of the chain topology read one downstream answer; several are a list.
        body = json.dumps({"svc": NAME, "downstream": downstream[0] if len(downstream) == 1 else (downstream or None)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return 200


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
