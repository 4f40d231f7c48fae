"""Real Zipkin clients into tracepipe's zipkin receiver: py_zipkin (v2 JSON, v2 proto3, v1 JSON)
and the OpenTelemetry Zipkin JSON exporter (field for field); bad input on every endpoint."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from harness import ROOT, free_port, metric_sum, read_jsonl_spans, recording_tracepipe, wait_for
from sdk import normalise_json, normalise_sdk

PEERS = Path(__file__).parent / "peers"


class ZipkinTP:
    def __init__(self, envoy_ids="auto"):
        self.port = free_port()
        self.tp, self.out = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{self.port}, envoy_proto_ids: {envoy_ids}, max_request_body_size: 1MiB }}
""", ["mesh"], "zipkin")

    def __enter__(self):
        self.tp.start()
        return self

    def __exit__(self, *e):
        self.tp.__exit__(*e)


@pytest.mark.parametrize("encoding", ["V2_JSON", "V2_PROTO3", "V1_JSON", "V1_THRIFT"])
def test_py_zipkin(encoding):
    # py_zipkin 1.x cannot emit v1 Thrift; 0.20.2 (own venv) can.
    python = str(ROOT / "tests/.venv-pyzipkin-old/bin/python") if encoding == "V1_THRIFT" else sys.executable
    if not Path(python).exists():
        raise RuntimeError(f"peer not installed: {python}; run tests/install-peers.sh")
    with ZipkinTP() as z:
        r = subprocess.run([python, str(PEERS / "py_zipkin_send.py"), encoding, str(z.port), "5"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout.strip().splitlines()[-1])
        wait_for(lambda: len(read_jsonl_spans(z.out)) >= 10, what="10 spans")
        got = {normalise_json(i)["span_id"]: (normalise_json(i), i) for i in read_jsonl_spans(z.out)}
        assert len(got) == 10
        for w in sent:
            g, raw = got[w["span_id"]]
            assert g["trace_id"] == w["trace_id"].rjust(32, "0")
            assert g["parent_span_id"] == w["parent"]
            assert g["name"] == w["name"]
            assert g["kind"] == {"SERVER": 2, "CLIENT": 3}[w["kind"]]
            assert g["end"] > g["start"] > 0
            svc = [a["value"]["stringValue"] for a in raw["resource"]["attributes"] if a["key"] == "service.name"]
            assert svc == [f"pyz-{encoding.lower()}"]
            if w["kind"] == "CLIENT":
                assert g["attributes"]["db.type"] == "sql"
                assert g["attributes"]["net.peer.name"] == "postgres"
                assert g["attributes"]["net.peer.ip"] == "127.0.0.5"
                assert g["attributes"]["net.peer.port"] == 5432
            else:
                assert g["attributes"]["guid:x-request-id"].startswith("req-")
                assert [e[0] for e in g["events"]] == ["cache-miss"]
        assert metric_sum(z.tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver="mesh") == 10
        assert z.tp.stop() == 0


def test_otel_zipkin_json_exporter_field_for_field():
    from opentelemetry.exporter.zipkin.json import ZipkinExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with ZipkinTP() as z:
        mem = InMemorySpanExporter()
        tp = TracerProvider(resource=Resource.create({"service.name": "otel-zipkin"}))
        tp.add_span_processor(SimpleSpanProcessor(ZipkinExporter(endpoint=f"http://127.0.0.1:{z.port}/api/v2/spans")))
        tp.add_span_processor(SimpleSpanProcessor(mem))
        tr = tp.get_tracer("e2e.zipkin", "0.3")
        with tr.start_as_current_span("GET /orders", kind=SpanKind.SERVER, attributes={"http.method": "GET"}):
            with tr.start_as_current_span("load", attributes={"cache": "miss"}) as s:
                s.set_status(Status(StatusCode.ERROR, "boom"))
            with tr.start_as_current_span("SELECT", kind=SpanKind.CLIENT):
                pass
        tp.shutdown()
        wait_for(lambda: len(read_jsonl_spans(z.out)) >= 3, what="3 spans")
        got = {normalise_json(i)["span_id"]: normalise_json(i) for i in read_jsonl_spans(z.out)}
        finished = mem.get_finished_spans()
        assert len(finished) == 3 and len(read_jsonl_spans(z.out)) == 3 and set(got) == {normalise_sdk(s)["span_id"] for s in finished}
        assert metric_sum(z.tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver="mesh") == 3
        for s in finished:
            w = normalise_sdk(s)
            g = got[w["span_id"]]
            # Zipkin carries the resource as the local endpoint's service name only.
            assert g["resource"] == {"service.name": "otel-zipkin"}, g["resource"]
            for f in ("trace_id", "parent_span_id", "name", "scope", "status"):
                assert g[f] == w[f], (f, g[f], w[f])
            assert g["kind"] == (0 if w["kind"] == 1 else w["kind"]), "Zipkin has no INTERNAL kind"
            # The exporter rounds start and duration to µs separately.
            assert g["start"] == (w["start"] + 500) // 1000 * 1000
            assert g["end"] - g["start"] == (w["end"] - w["start"] + 500) // 1000 * 1000
            for k, v in w["attributes"].items():
                assert g["attributes"][k] == str(v)


def test_bad_input_on_every_endpoint():
    with ZipkinTP() as z:
        base = f"http://127.0.0.1:{z.port}"
        cases = [
            ("/api/v2/spans", b"[{", "application/json", None, 400),
            ("/api/v2/spans", b'[{"traceId": "zz", "id": "01"}]', "application/json", None, 400),
            ("/api/v2/spans", b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", None, 400),
            ("/api/v1/spans", b'[{"traceId": 5}]', "application/json", None, 400),
            ("/api/v1/spans", b"\x0c\x00\x00\x00\x01", "application/x-thrift", None, 400),
            ("/api/v1/spans", b"\x0c\x7f\xff\xff\xff", "application/x-thrift", None, 400),
            ("/api/v2/spans", b"\x0c\x00\x00\x00\x01", "application/x-thrift", None, 415),
            ("/api/v2/spans", b"[]", "text/plain", None, 415),
            ("/api/v2/spans", b"\x1f\x8bgarbage", "application/json", "gzip", 400),
            ("/api/v2/spans", gzip.compress(b"[" + b" " * (8 << 20) + b"]"), "application/json", "gzip", 413),
            ("/api/v2/spans", b"[" + b" " * (2 << 20) + b"]", "application/json", None, 413),
            ("/api/v2/spans", ("[" * 100000).encode(), "application/json", None, 400),
        ]
        for path, body, ct, enc, status in cases:
            h = {"Content-Type": ct}
            if enc:
                h["Content-Encoding"] = enc
            r = requests.post(base + path, data=body, headers=h, timeout=10)
            assert r.status_code == status, (path, ct, r.status_code, r.text)
        ok = json.dumps([{"traceId": "0af7651916cd43dd8448eb211c80319c", "id": "b7ad6b7169203331", "name": "ok", "timestamp": 1, "duration": 1,
                          "localEndpoint": {"serviceName": "s"}}]).encode()
        r = requests.post(base + "/api/v2/spans", data=gzip.compress(ok), headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 202
        wait_for(lambda: len(read_jsonl_spans(z.out)) == 1, what="the good span")
        assert metric_sum(z.tp.metrics(), "tracepipe_receiver_malformed_requests_total", receiver="mesh") == len(cases)
        assert z.tp.stop() == 0


def test_otel_zipkin_proto_exporter():
    """The proto exporter is not Envoy: its ids are big-endian and must not be reversed under
    `envoy_proto_ids: auto`."""
    py = ROOT / "tests/.venv-zipkinproto/bin/python"
    if not py.exists():
        raise RuntimeError(f"peer not installed: {py}; run tests/install-peers.sh")
    with ZipkinTP() as z:
        r = subprocess.run([str(py), str(PEERS / "otel_zipkin_proto_send.py"), f"http://127.0.0.1:{z.port}/api/v2/spans"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout.strip().splitlines()[-1])
        wait_for(lambda: len(read_jsonl_spans(z.out)) >= 3, what="3 spans")
        got = {normalise_json(i)["span_id"]: normalise_json(i) for i in read_jsonl_spans(z.out)}
        for w in sent:
            g = got[w["span_id"]]
            assert (g["trace_id"], g["parent_span_id"], g["name"]) == (w["trace_id"], w["parent"], w["name"])
            assert g["kind"] == (0 if w["kind"] == 1 else w["kind"])
            assert g["status"] == tuple(w["status"])
            assert [e[0] for e in g["events"]] == w["events"]
            for k, v in w["attributes"].items():
                assert g["attributes"][k] == str(v)
        assert z.tp.stop() == 0
