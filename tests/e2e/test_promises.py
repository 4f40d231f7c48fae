"""README's promises that no other test checked, each against the running binary: the OTLP
receiver's answer table row by row (invalid UTF-8, the nesting limit on both sides of its
boundary, the `google.rpc.Status` body, `UNAVAILABLE`/503 when the graph is full and while
shutting down), Zipkin's 503 + `Retry-After` and chunked bodies, Jaeger HTTP's 413 and 503, and the
CLI's `graph`, `print-config`, `TRACEPIPE_LOG` and JSON logs."""

import json
import os
import subprocess
import threading
import time

import grpc
import pytest
import requests

from harness import Tracepipe, free_port, metric_sum, tracepipe_bin, wait_for
from otlp_wire import post, request

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def nested(depth: int):
    """An AnyValue `depth` levels deep (1: a plain string; each more level an array around it)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
    v = AnyValue(string_value="x")
    for _ in range(depth - 1):
        v = AnyValue(array_value=ArrayValue(values=[v]))
    return v


def with_attribute(value) -> bytes:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue
    req = request([os.urandom(8)])
    req.resource_spans[0].scope_spans[0].spans[0].attributes.append(KeyValue(key="deep", value=value))
    return req.SerializeToString()


def rpc_status(body: bytes):
    from google.rpc import status_pb2
    s = status_pb2.Status()
    s.ParseFromString(body)
    return s


def test_the_otlp_receivers_answer_table_for_bad_input():
    """Invalid UTF-8 and nesting past 32 levels: gRPC INVALID_ARGUMENT, HTTP 400 with a
    `google.rpc.Status` body (protobuf for protobuf requests, JSON for JSON ones); 32 levels are
    accepted."""
    g, h = free_port(), free_port()
    with Tracepipe(f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{g} }}, http: {{ endpoint: 127.0.0.1:{h} }} }}
sinks:
  out: {{ type: debug, inputs: [in], verbosity: none }}
""", "answers") as tp:
        good = request([os.urandom(8)]).SerializeToString()
        assert b"\x2a\x02op" in good
        bad_utf8 = good.replace(b"\x2a\x02op", b"\x2a\x02\xff\xfe")  # the span's name: same length, not UTF-8
        r = post(h, bad_utf8)
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/x-protobuf", (r.status_code, r.headers)
        st = rpc_status(r.content)
        assert st.code == 3 and "UTF-8" in st.message, st  # INVALID_ARGUMENT
        # JSON: the body is the Status in JSON.
        r = post(h, b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"' + b"01" * 16 + b'","spanId":"' + b"02" * 8 + b'","name":"\xff\xfe"}]}]}]}',
                 content_type="application/json")
        assert r.status_code == 400 and r.headers["Content-Type"] == "application/json", (r.status_code, r.text)
        assert r.json()["code"] == 3 and r.json()["message"], r.text
        # Nesting: 32 levels accepted, 33 refused, over both transports.
        assert post(h, with_attribute(nested(32))).status_code == 200
        r = post(h, with_attribute(nested(33)))
        assert r.status_code == 400 and "nested deeper than 32" in rpc_status(r.content).message, r.content
        ch = grpc.insecure_channel(f"127.0.0.1:{g}")
        call = ch.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        assert call(with_attribute(nested(32)), timeout=10) == b""
        for body in (with_attribute(nested(33)), bad_utf8):
            with pytest.raises(grpc.RpcError) as e:
                call(body, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in") == 2
        assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="in") == 5


def full_graph(dead: int, ports: dict, fast: str = "20ms") -> str:
    """Every receiver into a sink whose endpoint is down with a tiny queue: the graph fills up."""
    return f"""
receivers:
  fast:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{ports['grpc']} }}
    http: {{ endpoint: 127.0.0.1:{ports['http']} }}
    admission_timeout: {fast}
  slow:
    type: otlp
    http: {{ endpoint: 127.0.0.1:{ports['slow']} }}
    grpc: {{ endpoint: 127.0.0.1:{ports['slowgrpc']} }}
    admission_timeout: 60s
  mesh:
    type: zipkin
    endpoint: 127.0.0.1:{ports['zipkin']}
    admission_timeout: {fast}
  jaeger:
    type: jaeger
    thrift_http: {{ endpoint: 127.0.0.1:{ports['jaeger']}, max_request_body_size: 64KiB }}
    admission_timeout: {fast}
sinks:
  up:
    type: otlp
    inputs: [fast, slow, mesh, jaeger]
    endpoint: http://127.0.0.1:{dead}
    timeout: 1s
    retry: {{ initial_interval: 1s, max_interval: 1s, max_elapsed_time: 0s }}
    queue: {{ max_spans: 50, num_consumers: 1 }}
"""


def zipkin_body(n: int) -> bytes:
    return json.dumps([{"traceId": os.urandom(16).hex(), "id": os.urandom(8).hex(), "name": "z", "timestamp": 1_700_000_000_000_000, "duration": 5,
                        "localEndpoint": {"serviceName": "zsvc"}} for _ in range(n)]).encode()


def jaeger_body() -> bytes:
    """A jaeger.thrift `Batch` of one span in the binary protocol (what jaeger-client's HTTP
    sender posts), written out field by field."""
    def field(ttype: int, fid: int) -> bytes:
        return bytes([ttype]) + fid.to_bytes(2, "big")

    def i64(fid: int, v: int) -> bytes:
        return field(10, fid) + v.to_bytes(8, "big", signed=True)

    def string(fid: int, v: bytes) -> bytes:
        return field(11, fid) + len(v).to_bytes(4, "big") + v
    process = field(12, 1) + string(1, b"jsvc") + b"\x00"
    span = (i64(1, int.from_bytes(os.urandom(7), "big") + 1) + i64(2, 0) + i64(3, int.from_bytes(os.urandom(7), "big") + 1) + i64(4, 0)
            + string(5, b"op") + field(8, 7) + (1).to_bytes(4, "big") + i64(8, 1_700_000_000_000_000) + i64(9, 5) + b"\x00")
    return process + field(15, 2) + bytes([12]) + (1).to_bytes(4, "big") + span + b"\x00"


def until_refused(send, limit: int = 400):
    """Sends until the answer is not a success; returns that answer."""
    for _ in range(limit):
        r = send()
        if r.status_code >= 300:
            return r
    raise AssertionError(f"never refused in {limit} requests: the graph did not fill up")


def test_a_full_graph_and_a_stopping_process_answer_retryably_on_every_receiver():
    dead = free_port()
    ports = {k: free_port() for k in ("grpc", "http", "slow", "slowgrpc", "zipkin", "jaeger")}
    tp = Tracepipe(full_graph(dead, ports), "full")
    with tp:
        # Chunked bodies (no Content-Length) are read like any other.
        body = zipkin_body(2)
        r = requests.post(f"http://127.0.0.1:{ports['zipkin']}/api/v2/spans", data=iter([body[i:i + 7] for i in range(0, len(body), 7)]),
                          headers={"Content-Type": "application/json"})  # a generator: Transfer-Encoding: chunked
        assert r.status_code == 202 and "Content-Length" not in r.request.headers, (r.status_code, r.text, r.request.headers)
        r = requests.post(f"http://127.0.0.1:{ports['jaeger']}/api/traces", data=iter([jaeger_body()]), headers={"Content-Type": "application/x-thrift"})
        assert r.status_code == 202, (r.status_code, r.text)
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="mesh") == 2
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="jaeger") == 1
        # Jaeger HTTP: over max_request_body_size is 413 (before the graph is involved).
        r = requests.post(f"http://127.0.0.1:{ports['jaeger']}/api/traces", data=b"\x00" * (65 << 10), headers={"Content-Type": "application/x-thrift"})
        assert r.status_code == 413, (r.status_code, r.text)
        # Fill the graph through OTLP/HTTP, then every receiver refuses retryably.
        r = until_refused(lambda: post(ports["http"], request([os.urandom(8) for _ in range(50)]).SerializeToString()))
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.headers)
        r = requests.post(f"http://127.0.0.1:{ports['zipkin']}/api/v2/spans", data=zipkin_body(5), headers={"Content-Type": "application/json"})
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.headers, r.text)
        r = requests.post(f"http://127.0.0.1:{ports['jaeger']}/api/traces", data=jaeger_body(), headers={"Content-Type": "application/x-thrift"})
        assert r.status_code == 503, (r.status_code, r.text)
        call = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}").unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            call(request([os.urandom(8)]).SerializeToString(), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, e.value
        # A request waiting for room (admission_timeout 60 s) when SIGTERM comes is answered at
        # once, not left to its timeout: HTTP 503, gRPC UNAVAILABLE.
        answer = {}

        def waiting():
            answer["r"] = post(ports["slow"], request([os.urandom(8)]).SerializeToString(), timeout=60)
            answer["at"] = time.time()

        def waiting_grpc():
            slow = grpc.insecure_channel(f"127.0.0.1:{ports['slowgrpc']}").unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            try:
                slow(request([os.urandom(8)]).SerializeToString(), timeout=60)
                answer["grpc"] = grpc.StatusCode.OK
            except grpc.RpcError as e:
                answer["grpc"] = e.code()
            answer["grpc_at"] = time.time()
        threads = [threading.Thread(target=waiting), threading.Thread(target=waiting_grpc)]
        for t in threads:
            t.start()
        time.sleep(1)
        assert "r" not in answer and "grpc" not in answer, f"the slow receiver answered while the graph was full: {answer}"
        stopped_at = time.time()
        tp.proc.send_signal(15)
        for t in threads:
            t.join(30)
        assert "r" in answer and "grpc" in answer, f"no answer after SIGTERM: {answer}"
        assert answer["r"].status_code == 503, (answer["r"].status_code, answer["r"].text)
        assert answer["grpc"] == grpc.StatusCode.UNAVAILABLE, answer["grpc"]
        assert answer["at"] - stopped_at < 10, answer["at"] - stopped_at
        assert answer["grpc_at"] - stopped_at < 10, answer["grpc_at"] - stopped_at
        assert tp.proc.wait(timeout=60) == 0


def test_cli_graph_print_config_and_logs(tmp_path):
    # print-config prints the embedded default graph, which validates.
    p = subprocess.run([tracepipe_bin(), "print-config"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "receivers:" in p.stdout and "sinks:" in p.stdout, p.stderr
    (tmp_path / "default.yaml").write_text(p.stdout)
    v = subprocess.run([tracepipe_bin(), "validate", "--config", str(tmp_path / "default.yaml")], capture_output=True, text=True, timeout=30)
    assert v.returncode == 0, v.stdout + v.stderr
    # graph: every component and edge, in both formats.
    cfg = tmp_path / "g.yaml"
    cfg.write_text("""
receivers:
  apps: { type: otlp, grpc: { endpoint: 127.0.0.1:0 } }
processors:
  batch: { type: batch, inputs: [apps] }
sinks:
  out: { type: debug, inputs: [batch] }
  raw: { type: debug, inputs: [apps] }
""")
    dot = subprocess.run([tracepipe_bin(), "graph", "--config", str(cfg), "--format", "dot"], capture_output=True, text=True, timeout=30)
    assert dot.returncode == 0 and dot.stdout.lstrip().startswith("digraph"), dot.stdout + dot.stderr
    edges = [l for l in dot.stdout.splitlines() if "->" in l]
    assert len(edges) == 3 and all(any(a in l and b in l for l in edges) for a, b in (("apps", "batch"), ("batch", "out"), ("apps", "raw"))), dot.stdout
    mer = subprocess.run([tracepipe_bin(), "graph", "--config", str(cfg), "--format", "mermaid"], capture_output=True, text=True, timeout=30)
    assert mer.returncode == 0 and mer.stdout.lstrip().startswith(("graph", "flowchart")), mer.stdout + mer.stderr
    assert len([l for l in mer.stdout.splitlines() if "-->" in l]) == 3, mer.stdout
    # Logs: TRACEPIPE_LOG overrides the configured level; format json gives one JSON object a line.
    port = free_port()
    graph = f"""
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{port} }} }}
sinks:
  out: {{ type: debug, inputs: [apps], verbosity: none }}
"""
    tp = Tracepipe(graph, "jsonlogs")
    tp.config_path.write_text(tp.config_path.read_text().replace("logs: { level: info }", "logs: { level: warn, format: json }"))
    tp.env = {**os.environ, "TRACEPIPE_LOG": "debug"}
    with tp:
        assert post(port, request([os.urandom(8)]).SerializeToString()).status_code == 200
    lines = [l for l in tp.logs().splitlines() if l.strip()]
    parsed = [json.loads(l) for l in lines]  # every line is JSON
    levels = {str(p.get("level", "")).upper() for p in parsed}
    assert "DEBUG" in levels, f"TRACEPIPE_LOG=debug did not override `level: warn`: {sorted(levels)}"
    assert all("message" in json.dumps(p) for p in parsed), lines[:3]
    # Without the override the configured level holds: no info or debug lines.
    tp2 = Tracepipe(graph.replace(str(port), str(free_port())), "warnlogs")
    tp2.config_path.write_text(tp2.config_path.read_text().replace("logs: { level: info }", "logs: { level: warn, format: json }"))
    tp2.env = {k: v for k, v in os.environ.items() if k != "TRACEPIPE_LOG"}
    with tp2:
        pass
    levels = {str(json.loads(l).get("level", "")).upper() for l in tp2.logs().splitlines() if l.strip()}
    assert not levels & {"DEBUG", "INFO", "TRACE"}, levels
