"""Kafka over TLS, against real peers: tansu (which serves plaintext only) behind Envoy, which
terminates TLS — mutual TLS with the test's CA — and forwards the Kafka protocol to it, tansu
advertising Envoy's port so that every connection librdkafka makes goes through TLS. The OTel SDK
-> tracepipe's Kafka sink over mutual TLS -> Envoy -> tansu -> Envoy -> a second tracepipe's Kafka
receiver over mutual TLS -> file: every span, field for field. A sink with another CA, one without
a client certificate and one in plaintext are each refused by the TLS side, counted as failed
(`retries_exhausted`) and shown by /readyz; Envoy counts the failed handshakes.

SASL: tansu built with its SQLite storage (tests/.peers/bin/tansu-sql, see install-peers.sh: the
wheel's memory storage cannot keep users) is started once without authentication to create two
users (SCRAM-SHA-512 and SCRAM-SHA-256) and the topic, then again with `--authentication`, behind
the same TLS front: the sink writes as one user and the receiver reads as the other over
SASL_SSL, every span arrives; a sink with a wrong password says so in its log at start and in
/readyz, and delivers nothing."""

import contextlib
import json
import subprocess
import tempfile
from pathlib import Path

from harness import ROOT, Tansu, Tracepipe, free_port, http_get, metric_sum, read_jsonl_spans, wait_for, wait_port
from pki import Ca
from sdk import emit_rich_trace, provider
from test_kafka import consumer_graph
from test_otlp_roundtrip import compare

ENVOY = ROOT / "tests/.peers/bin/envoy"


class TlsFront:
    """Envoy terminating (mutual) TLS on `port` in front of a plaintext broker."""

    def __init__(self, port: int, upstream_port: int, cert: Path, key: Path, client_ca: Path, client_certificates: bool = True):
        if not ENVOY.exists():
            raise RuntimeError(f"envoy not installed at {ENVOY}; run tests/install-peers.sh")
        self.port, self.admin = port, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="kafka-tls-"))
        sock = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}
        self.cfg = {
            "admin": {"address": sock(self.admin)},
            "static_resources": {
                "listeners": [{"name": "kafka_tls", "address": sock(self.port), "filter_chains": [{
                    "filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                        "stat_prefix": "kafka", "cluster": "broker"}}],
                    "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": client_certificates,
                        "common_tls_context": {
                            "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}],
                            "validation_context": {"trusted_ca": {"filename": str(client_ca)}}}}}}]}],
                "clusters": [{"name": "broker", "type": "STATIC", "connect_timeout": "2s", "load_assignment": {
                    "cluster_name": "broker", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(upstream_port)}}]}]}}]}}

    def __enter__(self):
        path = self.dir / "envoy.json"
        path.write_text(json.dumps(self.cfg))
        self.log = open(self.dir / "envoy.log", "wb")
        self.proc = subprocess.Popen([str(ENVOY), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "--log-level", "warn"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=30, what="envoy (TLS in front of the broker)")
        except RuntimeError as e:
            self.__exit__()
            raise RuntimeError(f"{e}\n{(self.dir / 'envoy.log').read_text()}")
        return self

    def stat(self, name: str) -> int:
        status, body = http_get(f"http://127.0.0.1:{self.admin}/stats?filter={name}")
        assert status == 200, body
        return sum(int(l.rsplit(":", 1)[1]) for l in body.splitlines() if l.split(":")[0].endswith(name))

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def _pki(tmp: Path):
    ca, other = Ca(tmp, "kafka-ca"), Ca(tmp, "other-ca")
    server = ca.issue("broker", "localhost", server=True)
    client = ca.issue("client", "tracepipe", server=False)
    stranger = other.issue("stranger", "tracepipe", server=False)
    return ca, other, server, client, stranger


def _tls(ca: Path, cert: Path = None, key: Path = None) -> str:
    files = f"ca_file: {ca}" + (f", cert_file: {cert}, key_file: {key}" if cert else "")
    return f", tls: {{ {files} }}"


def test_sink_and_receiver_over_mutual_tls_deliver_every_span(tmp_path):
    ca, _other, server, client, _stranger = _pki(tmp_path)
    tls = _tls(ca.pem, client[0], client[1])
    front_port = free_port()
    with Tansu(advertise=front_port) as kafka:
        kafka.create_topic("tls-spans", 2)
        with TlsFront(front_port, kafka.port, server[0], server[1], ca.pem) as front:
            writer, reader, out, port = writer_and_reader(front.port, "tls-spans", tls)
            with writer, reader:
                sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")
                for i in range(6):
                    emit_rich_trace(sdk, f"-tls{i}")
                sdk.shutdown()
                sent = memory.get_finished_spans()
                wait_for(lambda: metric_sum(writer.metrics(), "tracepipe_sink_sent_spans_total", sink="bus") == len(sent), timeout=60,
                         what="the sink delivered over TLS")
                wait_for(lambda: len(read_jsonl_spans(out)) >= len(sent), timeout=90, what="the receiver read everything over TLS")
                compare(sent, read_jsonl_spans(out))
                assert metric_sum(writer.metrics(), "tracepipe_sink_failed_spans_total") == 0
                # Every byte went through Envoy's TLS listener: handshakes made, none failed.
                assert front.stat("ssl.handshake") >= 2, "librdkafka connected through TLS"
                assert front.stat("ssl.connection_error") == 0
                assert writer.stop() == 0, writer.logs()
                assert reader.stop() == 0, reader.logs()
            for tp in (writer, reader):
                assert "panicked" not in tp.logs()


def test_wrong_ca_missing_client_certificate_and_plaintext_are_refused_and_counted(tmp_path):
    ca, other, server, _client, stranger = _pki(tmp_path)
    front_port = free_port()
    with Tansu(advertise=front_port) as kafka:
        kafka.create_topic("tls-spans", 1)
        with TlsFront(front_port, kafka.port, server[0], server[1], ca.pem) as front:
            port = free_port()
            bootstrap = f'brokers: ["127.0.0.1:{front.port}"], topic: tls-spans, message_timeout: 4s'
            with Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
sinks:
  other_ca: {{ type: kafka, inputs: [apps], {bootstrap}{_tls(other.pem)} }}
  no_cert: {{ type: kafka, inputs: [apps], {bootstrap}{_tls(ca.pem)} }}
  stranger_cert: {{ type: kafka, inputs: [apps], {bootstrap}{_tls(ca.pem, stranger[0], stranger[1])} }}
  plaintext: {{ type: kafka, inputs: [apps], {bootstrap} }}
""", "kafka-tls-refused") as tp:
                sdk, _ = provider("grpc", f"http://127.0.0.1:{port}")
                emit_rich_trace(sdk)
                sdk.shutdown()
                sinks = ("other_ca", "no_cert", "stranger_cert", "plaintext")
                m = wait_for(lambda: (lambda m: m if all(metric_sum(m, "tracepipe_sink_failed_spans_total", sink=s) >= 5 for s in sinks) else None)(tp.metrics()),
                             timeout=60, what="every refused sink counted its spans")
                for s in sinks:
                    assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink=s, reason="retries_exhausted") == 5, s
                    assert metric_sum(m, "tracepipe_sink_sent_spans_total", sink=s) == 0, s
                status, body = http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")
                assert status == 503, (status, body)
                assert front.stat("ssl.connection_error") + front.stat("ssl.fail_verify_no_cert") + front.stat("ssl.fail_verify_error") > 0
                # A wrong CA fails on the client side: librdkafka says why in the log.
                assert "certificate verify failed" in tp.logs(), tp.logs()[-3000:]
                assert tp.stop() == 0, tp.logs()
            assert "panicked" not in tp.logs()


@contextlib.contextmanager
def sasl_broker(users, topics, advertise: int):
    """tansu on SQLite with `--authentication`, its users and topics made first by the same broker
    started without it (users can only be created over an authenticated connection once
    authentication is on)."""
    with Tansu(advertise=advertise, persistent=True) as kafka:
        for name, password, mechanism in users:
            kafka.create_user(name, password, mechanism)
        for t in topics:
            kafka.create_topic(t, 2)
        kafka.stop()
        kafka.authentication = True
        yield kafka.restart()


def writer_and_reader(front_port: int, topic: str, security: str, reader_security: str = None, extra_sinks: str = ""):
    """A tracepipe writing OTLP it receives to `topic` through the TLS front (sink `bus`, plus
    `extra_sinks`), and one reading it back into a file; `security` is appended to the Kafka
    settings of both (`reader_security` to the reader's instead, if given). Returns (writer,
    reader, its file, the writer's OTLP gRPC port); neither is started."""
    port = free_port()
    writer = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{port} }} }}
sinks:
  bus: {{ type: kafka, inputs: [apps], brokers: ["127.0.0.1:{front_port}"], topic: {topic}, message_timeout: 20s{security} }}
{extra_sinks}""", f"{topic}-writer")
    reader = Tracepipe("PLACEHOLDER", f"{topic}-reader")
    out = reader.dir / "spans.jsonl"
    reader.config_path.write_text(consumer_graph(f"127.0.0.1:{front_port}", topic, out, reader_security or security)
                                  + f"telemetry: {{ metrics: {{ endpoint: 127.0.0.1:{reader.metrics_port} }} }}\n")
    return writer, reader, out, port


def test_sasl_scram_over_tls_sink_and_receiver_and_a_wrong_password(tmp_path):
    ca, _other, server, _client, _stranger = _pki(tmp_path)
    front_port = free_port()
    users = [("writer", "w-s3cret", "scram512"), ("reader", "r-s3cret", "scram256")]
    with sasl_broker(users, ["sasl-spans"], front_port) as kafka:
        # No client certificates here: SASL is the authentication (the front still requires TLS).
        with TlsFront(front_port, kafka.port, server[0], server[1], ca.pem, client_certificates=False) as front:
            tls = f", tls: {{ ca_file: {ca.pem} }}"
            sasl = lambda user, pw, mech: f", auth: {{ sasl: {{ mechanism: {mech}, username: {user}, password: \"{pw}\" }} }}"
            wrong = (f'  wrong: {{ type: kafka, inputs: [apps], brokers: ["127.0.0.1:{front.port}"], topic: sasl-spans, message_timeout: 4s'
                     f'{tls}{sasl("writer", "not-it", "SCRAM-SHA-512")} }}\n')
            writer, reader, out, port = writer_and_reader(front.port, "sasl-spans", tls + sasl("writer", "w-s3cret", "SCRAM-SHA-512"),
                                                          tls + sasl("reader", "r-s3cret", "SCRAM-SHA-256"), wrong)
            with writer, reader:
                sdk, memory = provider("grpc", f"http://127.0.0.1:{port}")
                for i in range(4):
                    emit_rich_trace(sdk, f"-sasl{i}")
                sdk.shutdown()
                sent = memory.get_finished_spans()
                wait_for(lambda: metric_sum(writer.metrics(), "tracepipe_sink_sent_spans_total", sink="bus") == len(sent), timeout=60,
                         what="the sink delivered over SASL_SSL")
                wait_for(lambda: len(read_jsonl_spans(out)) >= len(sent), timeout=90, what="the receiver read everything over SASL_SSL")
                compare(sent, read_jsonl_spans(out))
                # The wrong password: refused by the broker, said in the log from the start, counted
                # once message_timeout has passed, and shown by /readyz.
                assert "SASL authentication error" in writer.logs(), writer.logs()[-3000:]
                m = wait_for(lambda: (lambda m: m if metric_sum(m, "tracepipe_sink_failed_spans_total", sink="wrong") >= len(sent) else None)(writer.metrics()),
                             timeout=60, what="the wrong password's spans counted")
                assert metric_sum(m, "tracepipe_sink_failed_spans_total", sink="wrong", reason="retries_exhausted") == len(sent)
                assert metric_sum(m, "tracepipe_sink_sent_spans_total", sink="wrong") == 0
                status, body = http_get(f"http://127.0.0.1:{writer.metrics_port}/readyz")
                assert status == 503 and "wrong" in body, (status, body)
                assert "not-it" not in writer.logs() and "w-s3cret" not in writer.logs(), "passwords never logged"
                assert writer.stop() == 0, writer.logs()
                assert reader.stop() == 0, reader.logs()
            for tp in (writer, reader):
                assert "panicked" not in tp.logs()
