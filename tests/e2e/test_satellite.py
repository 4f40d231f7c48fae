"""The satellite sink with real peers: the LightStep Python tracer and the OTel Python SDK into one
tracepipe, out through the satellite sink (every protocol, TLS from a CA the test makes) into a
second tracepipe (its LightStep receiver with an access-token allow-list, or its OTLP receiver),
span for span; tokens by service against a grpcio server that records each request's token;
a wrong token; a satellite that is down for a while."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from harness import ROOT, Tracepipe, free_port, metric_sum, read_jsonl_spans, wait_for
from pki import Ca
from sdk import emit_rich_trace, normalise_json, provider

LS_PY = ROOT / "tests/.venv-lightstep/bin/python"


@pytest.fixture
def pki(tmp_path):
    ca = Ca(tmp_path, "sat-ca")
    ca.issue("satellite", "localhost", server=True)
    return tmp_path


def tls(d: Path) -> str:
    return f"{{ cert_file: {d / 'satellite.pem'}, key_file: {d / 'satellite.key'} }}"


def graph(receiver: str, sinks: str, name: str, recv_name: str):
    """A tracepipe (not started): `receiver` (named `recv_name`) into a debug file and `sinks`;
    returns it and the file."""
    tp = Tracepipe("PLACEHOLDER", name)
    out = tp.dir / "spans.jsonl"
    tp.config_path.write_text(f"""
receivers:
  {recv_name}: {receiver}
sinks:
  file: {{ type: debug, inputs: [{recv_name}], verbosity: none, path: {out} }}{sinks}
telemetry:
  metrics: {{ endpoint: 127.0.0.1:{tp.metrics_port} }}
""")
    return tp, out


def forwarder(receiver: str, sink: str, name: str):
    """Tracepipe A: `receiver` (named `in`) into a file and into the satellite sink `ls`."""
    return graph(receiver, f"\n  ls: {sink}", name, "in")


def satellite(port: int, d: Path, protocol: str, token: str, extra: str = "") -> str:
    return (f"{{ type: satellite, inputs: [in], endpoint: 'localhost:{port}', protocol: {protocol}, access_token: {token}, "
            f"tls: {{ ca_file: {d / 'sat-ca.pem'} }}{extra} }}")


def receiving(receiver: str, name: str):
    """Tracepipe B: `receiver` (named `sat`) into a file."""
    return graph(receiver, "", name, "sat")


def by_span_id(path: Path) -> dict:
    return {s["span_id"]: s for s in (normalise_json(i) for i in read_jsonl_spans(path))}


def ls_send(port: int, token: str, n: int):
    if not LS_PY.exists():
        raise RuntimeError(f"peer not installed: {LS_PY}; run tests/install-peers.sh")
    p = subprocess.run([str(LS_PY), str(Path(__file__).parent / "peers/lightstep_send.py"), str(port), token, str(n)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("protocol", ["report_grpc", "report_http", "otlp_grpc", "otlp_http"])
def test_lightstep_tracer_through_the_satellite_sink_arrives_span_for_span(pki, protocol):
    """LightStep tracer → A's LightStep receiver → satellite sink over TLS → B (its LightStep
    receiver with an allow-list for the Report protocols, its OTLP receiver for OTLP): B's spans
    equal A's, field for field, resource included."""
    d = pki
    port = free_port()
    if protocol.startswith("report"):
        transport = "grpc" if protocol == "report_grpc" else "http"
        b_recv = f"{{ type: lightstep, {transport}: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }}, access_tokens: [proj-token] }}"
    elif protocol == "otlp_grpc":
        b_recv = f"{{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }} }}"
    else:
        b_recv = f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{port}, traces_url_path: /traces/otlp/v0.9, tls: {tls(d)} }} }}"
    a_http = free_port()
    b, got = receiving(b_recv, "satb")
    a, sent = forwarder(f"{{ type: lightstep, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", satellite(port, d, protocol, "proj-token"), "sata")
    with b, a:
        ls_send(a_http, "any-token", 5)
        wait_for(lambda: len(read_jsonl_spans(sent)) == 10, what="10 spans into A")
        wait_for(lambda: len(read_jsonl_spans(got)) == 10, what="10 spans through the satellite sink")
        want, have = by_span_id(sent), by_span_id(got)
        assert want.keys() == have.keys()
        for sid, w in want.items():
            assert have[sid] == w, (protocol, sid, have[sid], w)
        assert metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="ls") == 10
        assert metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="ls") == 0
        assert a.stop() == 0 and b.stop() == 0


def test_otel_sdk_through_the_satellite_sink_otlp_grpc_is_equal(pki):
    """The OTel SDK's rich trace (every field it sets) → A → satellite `otlp_grpc` over TLS → B."""
    d = pki
    port, a_http = free_port(), free_port()
    b, got = receiving(f"{{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }} }}", "satb")
    a, sent = forwarder(f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", satellite(port, d, "otlp_grpc", "proj-token"), "sata")
    with b, a:
        tp, _ = provider("http-proto", f"http://127.0.0.1:{a_http}/v1/traces")
        emit_rich_trace(tp)
        tp.shutdown()
        wait_for(lambda: len(read_jsonl_spans(got)) == 5, what="5 SDK spans through the satellite sink")
        assert by_span_id(got) == by_span_id(sent)
        assert a.stop() == 0 and b.stop() == 0


def _request(services: list) -> bytes:
    rss = []
    for service, n in services:
        spans = [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"{service}-op", start_time_unix_nano=1_700_000_000_000_000_000,
                      end_time_unix_nano=1_700_000_000_001_000_000) for _ in range(n)]
        rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
        rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=service)))
        rss.append(rs)
    return ExportTraceServiceRequest(resource_spans=rss).SerializeToString()


def test_tokens_by_service_each_request_carries_one_projects_token(tmp_path):
    """Three services in one request, one of them with its own project token: the satellite (a
    grpcio server over TLS that records each request's metadata) gets no request that mixes
    tokens, and counts each project's spans."""
    from test_tls import TlsCollector, make_pki
    make_pki(tmp_path)
    a_http = free_port()
    with TlsCollector(tmp_path, require_client_auth=False) as sat:
        sink = (f"{{ type: satellite, inputs: [in], endpoint: 'localhost:{sat.port}', access_token: default-token, "
                f"access_tokens_by_service: {{ checkout: checkout-token }}, tls: {{ ca_file: {tmp_path / 'ca.pem'} }} }}")
        a, _ = forwarder(f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", sink, "sattok")
        with a:
            for _ in range(3):
                r = requests.post(f"http://127.0.0.1:{a_http}/v1/traces", data=_request([("checkout", 3), ("cart", 2), ("checkout", 1), ("search", 4)]),
                                  headers={"Content-Type": "application/x-protobuf"})
                assert r.status_code == 200
            per_token = {}

            def tally():
                per_token.clear()
                for body, md in zip(list(sat.received), list(sat.metadata)):
                    token = md.get("lightstep-access-token")
                    for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                        service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
                        assert token == ("checkout-token" if service == "checkout" else "default-token"), (service, token)
                        per_token[token] = per_token.get(token, 0) + sum(len(ss.spans) for ss in rs.scope_spans)
                return sum(per_token.values()) == 30
            wait_for(tally, what="30 spans at the satellite")
            assert per_token == {"checkout-token": 12, "default-token": 18}, per_token
            assert a.stop() == 0


def test_a_wrong_token_is_permanent_logged_once_per_service_and_shown_by_readyz(pki):
    d = pki
    port, a_http = free_port(), free_port()
    b, got = receiving(f"{{ type: lightstep, http: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }}, access_tokens: [right-token] }}", "satb")
    a, _ = forwarder(f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", satellite(port, d, "report_http", "wrong-token"), "satwrong")
    with b, a:
        for _ in range(4):
            r = requests.post(f"http://127.0.0.1:{a_http}/v1/traces", data=_request([("checkout", 5)]), headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="ls", reason="permanent") == 20, what="20 spans failed permanently")
        status, why = a.telemetry_get("/readyz")
        assert status == 503 and "ls" in why, (status, why)
        lines = [l for l in a.logs().splitlines() if "Export failed permanently" in l and "ERROR" in l]
        assert len(lines) == 1 and "checkout" in lines[0] and "401" in lines[0], lines
        assert "wrong-token" not in a.logs()
        # Nothing was retried, nothing arrived.
        assert metric_sum(a.metrics(), "tracepipe_sink_retries_total", sink="ls") == 0
        assert metric_sum(b.metrics(), "tracepipe_receiver_accepted_spans_total") == 0
        assert a.stop() == 0 and b.stop() == 0


def test_a_satellite_down_for_a_while_then_back_loses_nothing(pki):
    """The satellite is down for 30 s (connection refused), then starts: everything queued in the
    meantime is delivered once, nothing is counted as failed."""
    d = pki
    port, a_http = free_port(), free_port()
    b, got = receiving(f"{{ type: lightstep, grpc: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }}, access_tokens: [proj-token] }}", "satb")
    retry = ", retry: { initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 2m }"
    a, _ = forwarder(f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", satellite(port, d, "report_grpc", "proj-token", retry), "satdown")
    with a:
        for _ in range(5):
            r = requests.post(f"http://127.0.0.1:{a_http}/v1/traces", data=_request([("checkout", 2), ("cart", 1)]), headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_retries_total", sink="ls") >= 3, what="retries while the satellite is down")
        time.sleep(30)
        with b:
            wait_for(lambda: len(read_jsonl_spans(got)) == 15, timeout=30, what="15 spans once the satellite is up")
            time.sleep(1)
            assert len(read_jsonl_spans(got)) == 15
            assert metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="ls") == 0
            assert metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="ls") == 15
            assert b.stop() == 0
        assert a.stop() == 0


def test_a_satellite_with_a_certificate_from_another_ca_is_refused_and_counted(pki, tmp_path):
    """The sink trusts another CA: every attempt fails the handshake, is retried until
    `max_elapsed_time`, then counted (`retries_exhausted`); nothing reaches the satellite."""
    d = pki
    other = Ca(tmp_path, "other-ca")
    port, a_http = free_port(), free_port()
    b, got = receiving(f"{{ type: lightstep, grpc: {{ endpoint: 127.0.0.1:{port}, tls: {tls(d)} }}, access_tokens: [proj-token] }}", "satb")
    sink = (f"{{ type: satellite, inputs: [in], endpoint: 'localhost:{port}', protocol: report_grpc, access_token: proj-token, "
            f"tls: {{ ca_file: {other.pem} }}, retry: {{ initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 2s }} }}")
    a, _ = forwarder(f"{{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_http} }} }}", sink, "satca")
    with b, a:
        r = requests.post(f"http://127.0.0.1:{a_http}/v1/traces", data=_request([("checkout", 3)]), headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 200
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="ls", reason="retries_exhausted") == 3, what="3 spans failed after retries")
        assert metric_sum(b.metrics(), "tracepipe_receiver_tls_handshake_failures_total") >= 1
        assert metric_sum(b.metrics(), "tracepipe_receiver_accepted_spans_total") == 0
        assert "certificate" in a.logs().lower(), a.logs()[-2000:]
        assert a.stop() == 0 and b.stop() == 0
