"""TLS, mutual TLS and bearer tokens on tracepipe's listeners, against real clients: the OTel
Python SDK's gRPC and HTTP exporters with a CA the test makes, the LightStep Python tracer over
HTTPS, grpcio and requests/ssl for the refusals; certificate rotation under load; hostile
handshakes (garbage, stalled, never finished)."""

import json
import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
import requests

from harness import ROOT, Tracepipe, free_port, metric_sum, peak_rss, read_jsonl_spans, recording_tracepipe, wait_for
from otlp_wire import request
from pki import Ca, serial_of

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LS_PY = ROOT / "tests/.venv-lightstep/bin/python"


@pytest.fixture
def pki(tmp_path, monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (set system-wide on some machines) replace
    # a session's `verify`, which is how the SDK's HTTP exporter passes `certificate_file`.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    ca = Ca(tmp_path, "test-ca")
    other = Ca(tmp_path, "other-ca")
    ca.issue("server", "localhost", server=True)
    ca.issue("expired-server", "localhost", server=True, expired=True)
    ca.issue("client", "tracepipe-client", server=False)
    ca.issue("expired-client", "tracepipe-client", server=False, expired=True)
    other.issue("stranger", "stranger", server=False)
    return tmp_path


def tls_block(d: Path, cert="server", mtls=False, extra="") -> str:
    ca = f", client_ca_file: {d / 'test-ca.pem'}" if mtls else ""
    return f"{{ cert_file: {d / (cert + '.pem')}, key_file: {d / (cert + '.key')}{ca}{extra} }}"


def otlp_tls(name: str, grpc_tls: str = None, http_tls: str = None, extra: str = ""):
    """A tracepipe (not started) with an OTLP receiver `in` (the transports given a `tls:` block)
    into a discarding sink; returns it and the (grpc, http) ports."""
    g, h = free_port(), free_port()
    listeners = "".join(f"\n    {k}: {{ endpoint: 127.0.0.1:{p}, tls: {t} }}" for k, p, t in (("grpc", g, grpc_tls), ("http", h, http_tls)) if t)
    tp = Tracepipe(f"""
receivers:
  in:
    type: otlp{listeners}{extra}
sinks:
  out: {{ type: debug, inputs: [in], verbosity: none }}
""", name)
    return tp, g, h


def accepted(tp, transport, receiver="in"):
    return metric_sum(tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver=receiver, transport=transport)


def failures(tp, reason, transport=None):
    labels = {"reason": reason} | ({"transport": transport} if transport else {})
    return metric_sum(tp.metrics(), "tracepipe_receiver_tls_handshake_failures_total", **labels)


def grpc_export(port, d, body, token=None, ca="test-ca.pem", cert=None):
    creds = grpc.ssl_channel_credentials(root_certificates=(d / ca).read_bytes(),
                                         private_key=(d / f"{cert}.key").read_bytes() if cert else None,
                                         certificate_chain=(d / f"{cert}.pem").read_bytes() if cert else None)
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        call = ch.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        md = [("authorization", f"Bearer {token}")] if token else None
        return call(body, metadata=md, timeout=10)


def sdk_export(mode, port, d, token, n=3):
    """Exports n spans with the OTel SDK's own exporter; returns its result."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    headers = {"authorization": f"Bearer {token}"} if token else None
    if mode == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=f"localhost:{port}", credentials=grpc.ssl_channel_credentials((d / "test-ca.pem").read_bytes()), headers=headers, timeout=5)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exp = OTLPSpanExporter(endpoint=f"https://localhost:{port}/v1/traces", certificate_file=str(d / "test-ca.pem"), headers=headers, timeout=5)
    mem = InMemorySpanExporter()
    tp = TracerProvider(resource=Resource.create({"service.name": "tls-client"}))
    tp.add_span_processor(SimpleSpanProcessor(mem))
    tracer = tp.get_tracer("tls")
    for i in range(n):
        with tracer.start_as_current_span(f"op-{i}"):
            pass
    result = exp.export(mem.get_finished_spans())
    exp.shutdown()
    return result == SpanExportResult.SUCCESS


def test_otel_sdk_over_tls_with_bearer_tokens_on_grpc_and_http(pki):
    d = pki
    tp, g, h = otlp_tls("tlssdk", tls_block(d), tls_block(d, extra=", min_version: 1.2"), '\n    auth: { bearer_tokens: [token-one, "${env:SECOND_TOKEN}"] }')
    tp.env = {**os.environ, "SECOND_TOKEN": "token-two"}
    with tp:
        # The SDK's exporters, each token, each transport.
        assert sdk_export("grpc", g, d, "token-one") and sdk_export("grpc", g, d, "token-two")
        assert sdk_export("http", h, d, "token-one") and sdk_export("http", h, d, "token-two")
        assert accepted(tp, "grpc") == 6 and accepted(tp, "http") == 6
        # Wrong and missing tokens: UNAUTHENTICATED / 401, counted, nothing admitted.
        body = request([os.urandom(8)]).SerializeToString()
        for token in ("wrong", None):
            with pytest.raises(grpc.RpcError) as e:
                grpc_export(g, d, body, token)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
            headers = {"Content-Type": "application/x-protobuf"} | ({"Authorization": f"Bearer {token}"} if token else {})
            r = requests.post(f"https://localhost:{h}/v1/traces", data=body, headers=headers, verify=str(d / "test-ca.pem"), timeout=10)
            assert r.status_code == 401 and r.headers.get("WWW-Authenticate") == "Bearer", (r.status_code, r.headers)
        # Another scheme with a right token is not a bearer token.
        r = requests.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Authorization": "Basic token-one"}, verify=str(d / "test-ca.pem"))
        assert r.status_code == 401
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_unauthenticated_requests_total", receiver="in", transport="grpc") == 2
        assert metric_sum(m, "tracepipe_receiver_unauthenticated_requests_total", receiver="in", transport="http") == 3
        assert accepted(tp, "grpc") == 6 and accepted(tp, "http") == 6
        # The SDK refused as well (its exporter does not retry UNAUTHENTICATED / 401).
        assert not sdk_export("grpc", g, d, "wrong") and not sdk_export("http", h, d, None)
        assert tp.stop() == 0
    # Tokens never appear in the log.
    assert "token-one" not in tp.logs() and "token-two" not in tp.logs()


def test_refused_handshakes_are_counted_and_the_server_keeps_serving(pki):
    """Plaintext to a TLS port, a client trusting another CA, an expired server certificate, and
    under mutual TLS: no client certificate, one from another CA, an expired one. Each is refused
    and counted by reason; a good client is served after every one."""
    d = pki
    tp, g, h = otlp_tls("tlsrefuse", tls_block(d, cert="expired-server"), tls_block(d, mtls=True))
    body = request([os.urandom(8)]).SerializeToString()
    url = f"https://localhost:{h}/v1/traces"
    ca = str(d / "test-ca.pem")
    good = (str(d / "client.pem"), str(d / "client.key"))
    served = [0]

    def good_client_served():
        r = requests.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}, verify=ca, cert=good, timeout=10)
        assert r.status_code == 200, r.status_code
        served[0] += 1
        wait_for(lambda: accepted(tp, "http") == served[0], what="the good client's span")

    with tp:
        good_client_served()
        cases = [
            ("plaintext", lambda: requests.post(f"http://127.0.0.1:{h}/v1/traces", data=body, timeout=5), "not_tls"),
            ("another CA", lambda: requests.post(url, data=body, verify=str(d / "other-ca.pem"), cert=good, timeout=5), "refused_by_client"),
            ("no client certificate", lambda: requests.post(url, data=body, verify=ca, timeout=5), "no_client_certificate"),
            ("client certificate of another CA", lambda: requests.post(url, data=body, verify=ca, cert=(str(d / "stranger.pem"), str(d / "stranger.key")), timeout=5), "bad_client_certificate"),
            ("expired client certificate", lambda: requests.post(url, data=body, verify=ca, cert=(str(d / "expired-client.pem"), str(d / "expired-client.key")), timeout=5), "bad_client_certificate"),
        ]
        for what, attempt, reason in cases:
            before = failures(tp, reason, "http")
            with pytest.raises(requests.exceptions.RequestException):
                r = attempt()
                raise AssertionError(f"{what}: answered {r.status_code}")
            wait_for(lambda: failures(tp, reason, "http") == before + 1, what=f"{what} counted as {reason}")
            good_client_served()
        # The expired server certificate: the SDK's gRPC exporter refuses it; counted.
        assert not sdk_export("grpc", g, d, None)
        # grpcio (BoringSSL) hangs up without an alert: the server sees the handshake closed.
        wait_for(lambda: failures(tp, "closed", "grpc") >= 1, what="expired certificate refused by the client")
        assert accepted(tp, "grpc") == 0
        good_client_served()
        assert tp.stop() == 0
    assert "panicked" not in tp.logs()


def test_certificate_rotation_under_load_new_connections_get_the_new_certificate(pki):
    """The files are replaced (key first, so a reload can see a mismatched pair) while clients
    keep sending, each request on a new connection, and one keep-alive connection opened before:
    no request fails, new connections see the new certificate, the open one keeps working."""
    d = pki
    tp, _, h = otlp_tls("tlsrotate", http_tls=tls_block(d, cert="live", extra=", reload_interval: 100ms"))
    root = Ca(d, "rotating-ca")
    _, _, first = root.issue("live", "localhost", server=True)
    ca_file = str(d / "rotating-ca.pem")
    body = request([os.urandom(8)]).SerializeToString()

    def served_serial():
        ctx = ssl.create_default_context(cafile=ca_file)
        with socket.create_connection(("127.0.0.1", h)) as s, ctx.wrap_socket(s, server_hostname="localhost") as t:
            return serial_of(t.getpeercert(binary_form=True))

    errors, sent = [], [0]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = requests.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, verify=ca_file, timeout=10)
                if r.status_code != 200:
                    errors.append(r.status_code)
                sent[0] += 1
            except requests.exceptions.RequestException as e:
                errors.append(repr(e))

    with tp:
        assert served_serial() == first
        session = requests.Session()
        assert session.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, verify=ca_file).status_code == 200
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(1)
        _, _, second = root.issue("live", "localhost", server=True)
        wait_for(lambda: served_serial() == second, what="new connections served the new certificate")
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join()
        # The connection opened before the rotation still works.
        assert session.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, verify=ca_file).status_code == 200
        assert not errors, errors[:5]
        assert sent[0] > 20, sent
        wait_for(lambda: accepted(tp, "http") == sent[0] + 2, what="every request's span")
        assert "TLS certificate reloaded" in tp.logs()
        assert tp.stop() == 0


def test_hostile_handshakes_cost_bounded_time_and_memory_and_others_are_served(pki):
    """Hundreds of connections that send nothing, garbage, or a ClientHello record cut short: each
    is closed at the handshake timeout (1 s here), counted, and memory stays bounded; good clients
    are served meanwhile."""
    d = pki
    tp, _, h = otlp_tls("tlshostile", http_tls=tls_block(d, extra=", handshake_timeout: 1s"))
    body = request([os.urandom(8)]).SerializeToString()
    with tp:
        idle = peak_rss(tp.proc.pid)
        socks = []
        for i in range(600):
            s = socket.create_connection(("127.0.0.1", h))
            if i % 3 == 1:
                s.sendall(os.urandom(3000))
            elif i % 3 == 2:
                # A handshake record header promising 16 KB, then 100 bytes of it, then nothing.
                s.sendall(b"\x16\x03\x01\x40\x00" + os.urandom(100))
            socks.append(s)
        # A good client while all of that is pending.
        t0 = time.time()
        r = requests.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, verify=str(d / "test-ca.pem"), timeout=10)
        assert r.status_code == 200
        assert time.time() - t0 < 5
        # Every hostile connection is closed by the server (EOF or reset) within a few seconds.
        deadline = time.time() + 10
        for s in socks:
            s.settimeout(max(0.1, deadline - time.time()))
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
            except socket.timeout:
                raise AssertionError("a hostile connection was still open 10 s later")
            s.close()
        wait_for(lambda: failures(tp, "timeout") + failures(tp, "not_tls") + failures(tp, "closed") >= 600, what="600 failed handshakes counted")
        assert failures(tp, "timeout") >= 200, tp.metrics()
        assert peak_rss(tp.proc.pid) - idle < 64 << 20
        assert requests.post(f"https://localhost:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, verify=str(d / "test-ca.pem"), timeout=10).status_code == 200
        assert tp.stop() == 0


def test_every_tcp_listener_serves_tls(pki):
    """Zipkin, Jaeger collector HTTP and sampling, LightStep HTTP (the real LightStep tracer over
    HTTPS) and gRPC, and the telemetry endpoint, each with `tls:`; plaintext to each is refused."""
    d = pki
    if not LS_PY.exists():
        raise RuntimeError(f"peer not installed: {LS_PY}; run tests/install-peers.sh")
    z, jh, js, lg, lh = (free_port() for _ in range(5))
    t = tls_block(d)
    tp, out = recording_tracepipe(f"""
receivers:
  zipkin: {{ type: zipkin, endpoint: 127.0.0.1:{z}, tls: {t}, auth: {{ bearer_tokens: [zt] }} }}
  jaeger:
    type: jaeger
    thrift_http: {{ endpoint: 127.0.0.1:{jh}, tls: {t} }}
    sampling: {{ endpoint: 127.0.0.1:{js}, tls: {t} }}
  ls:
    type: lightstep
    grpc: {{ endpoint: 127.0.0.1:{lg}, tls: {t} }}
    http: {{ endpoint: 127.0.0.1:{lh}, tls: {t} }}
    access_tokens: [good-token]
""", ["zipkin", "jaeger", "ls"], "tlsall")
    tp.config_path.write_text(tp.config_path.read_text().replace(
        "telemetry:\n  metrics: {", f"telemetry:\n  metrics: {{ tls: {t}, "))
    ca = str(d / "test-ca.pem")
    tp.telemetry_tls = ssl.create_default_context(cafile=ca)
    with tp:
        # Zipkin v2 JSON, with its bearer token.
        span = [{"traceId": os.urandom(16).hex(), "id": os.urandom(8).hex(), "name": "get", "timestamp": 1_700_000_000_000_000,
                 "duration": 5, "localEndpoint": {"serviceName": "zsvc"}}]
        r = requests.post(f"https://localhost:{z}/api/v2/spans", json=span, verify=ca, headers={"Authorization": "Bearer zt"})
        assert r.status_code == 202, (r.status_code, r.text)
        assert requests.post(f"https://localhost:{z}/api/v2/spans", json=span, verify=ca).status_code == 401
        # Jaeger sampling and collector HTTP (an empty body is a malformed batch: 400, over TLS).
        r = requests.get(f"https://localhost:{js}/sampling?service=svc", verify=ca)
        assert r.status_code == 200 and "probabilisticSampling" in r.text, r.text
        r = requests.post(f"https://localhost:{jh}/api/traces", data=b"", headers={"Content-Type": "application/x-thrift"}, verify=ca)
        assert r.status_code == 400, r.status_code
        # The LightStep tracer over HTTPS, trusting the test CA.
        p = subprocess.run([str(LS_PY), str(Path(__file__).parent / "peers/lightstep_send.py"), str(lh), "good-token", "2", "tls"],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "REQUESTS_CA_BUNDLE": ca})
        assert p.returncode == 0, p.stderr
        wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver="ls", transport="http") == 4, what="4 LightStep spans over HTTPS")
        # LightStep gRPC: a TLS channel reaches the service (an empty report with a good token).
        with grpc.secure_channel(f"localhost:{lg}", grpc.ssl_channel_credentials(Path(ca).read_bytes())) as ch:
            call = ch.unary_unary("/lightstep.collector.CollectorService/Report", request_serializer=lambda b: b, response_deserializer=lambda b: b)
            call(b"", metadata=[("lightstep-access-token", "good-token")], timeout=10)
        # Plaintext to each TLS port is refused and counted.
        for port in (z, jh, js, lh, tp.metrics_port):
            with pytest.raises(requests.exceptions.RequestException):
                requests.get(f"http://127.0.0.1:{port}/", timeout=5)
        wait_for(lambda: failures(tp, "not_tls") >= 5, what="plaintext attempts counted")
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="zipkin") == 1
        assert tp.stop() == 0
    spans = read_jsonl_spans(out)
    assert len(spans) == 5, len(spans)


def test_tracepipe_to_tracepipe_over_mutual_tls_with_a_bearer_token(pki):
    """The OTLP sink (CA, client certificate, `authorization` header) into a receiver with mutual
    TLS and bearer tokens, over gRPC and HTTP: every span arrives; without the token the sink's
    spans are refused permanently and counted on both sides."""
    d = pki
    tp, g, h = otlp_tls("tlsrecv", tls_block(d, mtls=True), tls_block(d, mtls=True), "\n    auth: { bearer_tokens: [gw-token] }")
    a_h = free_port()
    client_tls = f"{{ ca_file: {d / 'test-ca.pem'}, cert_file: {d / 'client.pem'}, key_file: {d / 'client.key'} }}"

    def sender(token):
        headers = f"headers: {{ authorization: 'Bearer {token}' }}" if token else "headers: {}"
        return Tracepipe(f"""
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{a_h} }} }}
sinks:
  via_grpc: {{ type: otlp, inputs: [apps], endpoint: "https://localhost:{g}", {headers}, tls: {client_tls}, retry: {{ max_elapsed_time: 2s }} }}
  via_http: {{ type: otlp, inputs: [apps], protocol: http/protobuf, endpoint: "https://localhost:{h}", {headers}, tls: {client_tls}, retry: {{ max_elapsed_time: 2s }} }}
""", "tlssend")

    body = request([os.urandom(8) for _ in range(5)]).SerializeToString()
    with tp:
        with sender("gw-token") as s:
            r = requests.post(f"http://127.0.0.1:{a_h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200
            wait_for(lambda: accepted(tp, "grpc") == 5 and accepted(tp, "http") == 5, what="5 spans over each transport")
            assert s.stop() == 0
        with sender(None) as s:
            r = requests.post(f"http://127.0.0.1:{a_h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200
            wait_for(lambda: metric_sum(s.metrics(), "tracepipe_sink_failed_spans_total") == 10, what="10 spans failed in the sender")
            assert s.stop() == 0
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_unauthenticated_requests_total", receiver="in") >= 2
        assert accepted(tp, "grpc") == 5 and accepted(tp, "http") == 5
        assert tp.stop() == 0
