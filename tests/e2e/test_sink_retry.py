"""The OTLP sink's retry rules against a scripted OTLP/HTTP endpoint: 429 and 503 are retried
(honouring Retry-After), 400 is permanent (counted, never retried)."""

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Tracepipe, free_port, metric_sum, wait_for
from otlp_wire import post, request


class Scripted:
    """Answers POST /v1/traces with the next status of `script` (then 200), recording times;
    a 200's body is `ok_body` (an ExportTraceServiceResponse)."""

    def __init__(self, script, ok_body: bytes = b""):
        self.script = list(script)
        self.calls = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls.append((time.time(), self.headers.get("Content-Encoding")))
                status = outer.script.pop(0) if outer.script else 200
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("Retry-After", "1")
                body = ok_body if status == 200 else b""
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H)

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *e):
        self.httpd.shutdown()


def graph(a_g, a_h, port):
    return f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{a_g} }}, http: {{ endpoint: 127.0.0.1:{a_h} }} }}
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{port}
    protocol: http/protobuf
    compression: gzip
    retry: {{ initial_interval: 50ms, max_interval: 100ms, max_elapsed_time: 30s }}
"""


def test_retryable_statuses_are_retried_honouring_retry_after():
    with Scripted([429, 503]) as srv:
        a_g, a_h = free_port(), free_port()
        with Tracepipe(graph(a_g, a_h, srv.port), "retry") as a:
            assert post(a_h, request([os.urandom(8) for _ in range(4)]).SerializeToString()).status_code == 200
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="up") == 4, what="sent after retries")
            assert len(srv.calls) == 3
            gaps = [b[0] - a_[0] for a_, b in zip(srv.calls, srv.calls[1:])]
            assert all(g >= 0.75 for g in gaps), f"Retry-After: 1 not honoured: {gaps}"
            assert all(enc == "gzip" for _, enc in srv.calls)
            m = a.metrics()
            assert metric_sum(m, "tracepipe_sink_retries_total", sink="up") == 2
            assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink="up") == 0
            assert a.stop() == 0


def test_permanent_status_is_counted_not_retried():
    with Scripted([400]) as srv:
        a_g, a_h = free_port(), free_port()
        with Tracepipe(graph(a_g, a_h, srv.port), "perm") as a:
            assert post(a_h, request([os.urandom(8) for _ in range(3)]).SerializeToString()).status_code == 200
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="up", reason="permanent") == 3, what="permanent failure")
            from harness import http_get
            status, body = http_get(f"http://127.0.0.1:{a.metrics_port}/readyz")
            assert status == 503 and "sink up is failing" in body
            # The next good export clears it.
            assert post(a_h, request([os.urandom(8)]).SerializeToString()).status_code == 200
            wait_for(lambda: http_get(f"http://127.0.0.1:{a.metrics_port}/readyz")[0] == 200, what="ready again")
            # Seen after the next export went through (retries here are 50 ms apart): the refused
            # request was sent once, never retried.
            assert len(srv.calls) == 2, len(srv.calls)
            assert a.stop() == 0


def test_partial_success_is_counted_rejected_by_server():
    """An upstream that takes a request but rejects some spans (`partial_success`): those are
    counted `rejected_by_server`, the rest sent; nothing is retried."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
    resp = ExportTraceServiceResponse()
    resp.partial_success.rejected_spans = 2
    resp.partial_success.error_message = "2 spans too old"
    with Scripted([], ok_body=resp.SerializeToString()) as srv:
        a_g, a_h = free_port(), free_port()
        with Tracepipe(graph(a_g, a_h, srv.port), "partial") as a:
            assert post(a_h, request([os.urandom(8) for _ in range(5)]).SerializeToString()).status_code == 200
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="up", reason="rejected_by_server") == 2, what="2 rejected")
            m = a.metrics()
            assert metric_sum(m, "tracepipe_sink_sent_spans_total", sink="up") == 3
            assert metric_sum(m, "tracepipe_sink_retries_total", sink="up") == 0
            assert len(srv.calls) == 1
            assert "Server rejected part of a batch." in a.logs()
            assert a.stop() == 0
