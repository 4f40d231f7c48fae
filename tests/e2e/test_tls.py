"""The OTLP sink over TLS with a custom CA and a client certificate (mutual TLS), against a real
grpcio server that requires the client certificate; and a refused handshake when the CA is wrong."""

import subprocess
import threading
from concurrent import futures

import grpc
import pytest

from harness import Tracepipe, free_port, metric_sum, wait_for
from otlp_wire import post, request

EXPORT_METHOD = "Export"
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=tracepipe-test-ca", cwd=d)
    for name, cn in (("server", "localhost"), ("client", "tracepipe-client")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
        ext = d / f"{name}.ext"
        ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if name == "server" else "extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", str(ext), cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other-ca.pem", "-days", "2", "-subj", "/CN=other-ca", cwd=d)


class TlsCollector:
    """A grpcio OTLP server with the test CA's server certificate; by default it also requires a
    client certificate signed by that CA."""

    def __init__(self, d, require_client_auth=True):
        self.received = []
        self.metadata = []
        self.port = free_port()
        creds = grpc.ssl_server_credentials([((d / "server.key").read_bytes(), (d / "server.pem").read_bytes())],
                                            root_certificates=(d / "ca.pem").read_bytes(), require_client_auth=require_client_auth)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        lock = threading.Lock()

        def export(req_bytes, context):
            with lock:
                self.received.append(req_bytes)
                self.metadata.append(dict(context.invocation_metadata()))
            return b""

        handler = grpc.method_handlers_generic_handler(SERVICE, {
            EXPORT_METHOD: grpc.unary_unary_rpc_method_handler(export, request_deserializer=lambda b: b, response_serializer=lambda b: b)})
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_secure_port(f"127.0.0.1:{self.port}", creds)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(0)


def forwarder(a_g, a_h, port, d, ca="ca.pem"):
    return f"""
receivers:
  in:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{a_g} }}
    http: {{ endpoint: 127.0.0.1:{a_h} }}
sinks:
  secure:
    type: otlp
    inputs: [in]
    endpoint: https://localhost:{port}
    headers: {{ lightstep-access-token: test-token }}
    tls: {{ ca_file: {d / ca}, cert_file: {d / 'client.pem'}, key_file: {d / 'client.key'} }}
    retry: {{ initial_interval: 100ms, max_interval: 200ms, max_elapsed_time: 1s }}
"""


def test_mutual_tls_with_custom_ca(tmp_path):
    make_pki(tmp_path)
    with TlsCollector(tmp_path) as col:
        a_g, a_h = free_port(), free_port()
        with Tracepipe(forwarder(a_g, a_h, col.port, tmp_path), "tls") as a:
            import os
            ids = [os.urandom(8) for _ in range(3)]
            assert post(a_h, request(ids).SerializeToString()).status_code == 200
            wait_for(lambda: col.received, what="a request at the TLS collector")
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
            got = ExportTraceServiceRequest()
            got.ParseFromString(col.received[0])
            assert [s.span_id for s in got.resource_spans[0].scope_spans[0].spans] == ids
            assert col.metadata[0].get("lightstep-access-token") == "test-token"
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="secure") == 3, what="sent = 3")
            assert a.stop() == 0


def test_wrong_ca_fails_and_is_counted(tmp_path):
    make_pki(tmp_path)
    with TlsCollector(tmp_path) as col:
        a_g, a_h = free_port(), free_port()
        with Tracepipe(forwarder(a_g, a_h, col.port, tmp_path, ca="other-ca.pem"), "tls-bad") as a:
            import os
            assert post(a_h, request([os.urandom(8)]).SerializeToString()).status_code == 200
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="secure") == 1, timeout=30, what="failed = 1")
            assert not col.received
            assert a.stop() == 0
