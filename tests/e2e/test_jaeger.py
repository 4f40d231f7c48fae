"""Real Jaeger clients into tracepipe's jaeger receiver: Python jaeger-client (compact UDP, remote
sampling), the OTel Jaeger exporter (agent UDP and collector HTTP), Node jaeger-client (binary
UDP and chunked HTTP); hostile and malformed datagrams."""

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from harness import ROOT, Tracepipe, free_port, http_get, metric_sum, read_jsonl_spans, recording_tracepipe, wait_for
from sdk import normalise_json

PEERS = Path(__file__).parent / "peers"
JC_PY = ROOT / "tests/.venv-jaegerclient/bin/python"
OJ_PY = ROOT / "tests/.venv-oteljaeger/bin/python"


def need(path: Path):
    if not path.exists():
        raise RuntimeError(f"peer not installed: {path}; run tests/install-peers.sh")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JaegerTP:
    def __init__(self, strategies: Path = None, queue_packets: int = 1000):
        self.compact, self.binary = free_udp_port(), free_udp_port()
        self.http, self.sampling = free_port(), free_port()
        strat = f", strategies_file: {strategies}, reload_interval: 200ms" if strategies else ""
        self.tp, self.out = recording_tracepipe(f"""
receivers:
  jaeger:
    type: jaeger
    thrift_compact: {{ endpoint: 127.0.0.1:{self.compact}, queue_packets: {queue_packets} }}
    thrift_binary: {{ endpoint: 127.0.0.1:{self.binary} }}
    thrift_http: {{ endpoint: 127.0.0.1:{self.http} }}
    sampling: {{ endpoint: 127.0.0.1:{self.sampling}{strat} }}
""", ["jaeger"], "jaeger")

    def __enter__(self):
        self.tp.start()
        return self

    def __exit__(self, *e):
        self.tp.__exit__(*e)

    def spans(self):
        return [normalise_json(i) | {"service": next((a["value"].get("stringValue") for a in i["resource"].get("attributes", []) if a["key"] == "service.name"), None)} for i in read_jsonl_spans(self.out)]


def run(cmd, timeout=60):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_python_jaeger_client_compact_udp_field_for_field():
    need(JC_PY)
    with JaegerTP() as j:
        sent = run([JC_PY, PEERS / "jaeger_client_send.py", "const", j.compact, 20])["spans"]
        assert len(sent) == 40
        wait_for(lambda: len(read_jsonl_spans(j.out)) >= 40, what="40 spans")
        got = {s["span_id"]: s for s in j.spans()}
        assert len(got) == 40
        for w in sent:
            g = got[w["span_id"]]
            assert g["trace_id"] == w["trace_id"]
            assert g["parent_span_id"] == w["parent_span_id"]
            assert g["name"] == w["name"]
            assert g["service"] == "jc-orders"
            assert g["start"] == w["start_us"] * 1000
            assert g["end"] - g["start"] == w["duration_us"] * 1000
            tags = dict(w["tags"])
            kind = tags.pop("span.kind")
            assert g["kind"] == {"server": 2, "client": 3}[kind]
            if tags.pop("error", None):
                assert g["status"][0] == 2
            else:
                assert g["status"][0] == 0, (w["name"], g["status"])
            assert {k: v for k, v in g["attributes"].items() if k != "error"} == tags, (g["attributes"], tags)
            # The tracer's process tags are the resource.
            assert g["resource"]["env"] == "test" and g["resource"]["service.name"] == "jc-orders", g["resource"]
            assert "jaeger.version" in g["resource"] and "hostname" in g["resource"], g["resource"]
            assert len(g["events"]) == len(w["logs"]), (g["events"], w["logs"])
            for wl, ge in zip(w["logs"], g["events"]):
                assert ge[1] == wl["timestamp_us"] * 1000
                assert ge[0] == wl["fields"]["event"]
                assert ge[2] == {k: v for k, v in wl["fields"].items() if k != "event"}
        m = j.tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="jaeger", transport="udp") == 40
        assert j.tp.stop() == 0


@pytest.mark.parametrize("mode", ["agent", "collector"])
def test_otel_jaeger_exporter(mode):
    need(OJ_PY)
    with JaegerTP() as j:
        target = j.compact if mode == "agent" else f"http://127.0.0.1:{j.http}/api/traces"
        sent = run([OJ_PY, PEERS / "otel_jaeger_send.py", mode, target])
        assert len(sent) == 3
        wait_for(lambda: len(read_jsonl_spans(j.out)) >= 3, what="3 spans")
        got = {s["span_id"]: s for s in j.spans()}
        for w in sent:
            g = got[w["span_id"]]
            assert (g["trace_id"], g["parent_span_id"], g["name"], g["kind"]) == (w["trace_id"], w["parent_span_id"], w["name"], w["kind"])
            assert g["start"] == w["start_us"] * 1000 and g["end"] == w["end_us"] * 1000
            assert g["service"] == f"otel-jaeger-{mode}"
            assert g["scope"] == ("e2e.jaeger", "0.1")
            for k, v in w["attributes"].items():
                assert g["attributes"][k] == v
            assert [(e[0], e[1] * 1000, e[2]) for e in w["events"]] == [(e[0], e[1], e[2]) for e in g["events"]]
            assert [tuple(l) for l in w["links"]] == [(l[0], l[1]) for l in g["links"]]
            assert g["status"] == tuple(w["status"]) or (w["status"][0] == 0 and g["status"][0] == 0)
        transport = "udp" if mode == "agent" else "http"
        assert metric_sum(j.tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver="jaeger", transport=transport) == 3


@pytest.mark.parametrize("mode", ["udp", "http"])
def test_node_jaeger_client_binary_udp_and_chunked_http(mode):
    need(ROOT / "tests/node/node_modules/jaeger-client")
    with JaegerTP() as j:
        target = j.binary if mode == "udp" else f"http://127.0.0.1:{j.http}/api/traces"
        sent = run(["node", PEERS / "jaeger_node_send.js", mode, target, 10])
        assert len(sent) == 20
        wait_for(lambda: len(read_jsonl_spans(j.out)) >= 20, what="20 spans")
        got = {s["span_id"]: s for s in j.spans()}
        for w in sent:
            g = got[w["span_id"]]
            assert (g["trace_id"], g["parent_span_id"], g["name"]) == (w["trace_id"], w["parent_span_id"], w["name"])
            assert g["service"] == f"jc-node-{mode}"
        child = next(s for s in got.values() if s["name"] == "SELECT orders")
        assert child["kind"] == 3 and child["attributes"]["peer.port"] == 5432
        assert child["events"][0][0] == "query" and child["events"][0][2] == {"rows": 3}


def test_remote_sampling_with_a_real_client(tmp_path):
    need(JC_PY)
    strat = tmp_path / "strategies.json"
    strat.write_text(json.dumps({"service_strategies": [{"service": "jc-orders", "type": "probabilistic", "param": 1.0}]}))
    with JaegerTP(strategies=strat) as j:
        status, body = http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=jc-orders")
        assert status == 200 and json.loads(body)["strategyType"] == "PROBABILISTIC"
        assert json.loads(http_get(f"http://127.0.0.1:{j.sampling}/?service=jc-orders")[1])["strategyType"] == 0
        assert json.loads(http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=unknown")[1])["probabilisticSampling"]["samplingRate"] == 0.001
        res = run([JC_PY, PEERS / "jaeger_client_send.py", "remote", j.compact, j.sampling, "GET /orders", "GET /health"])
        assert res == {"GET /orders": 10, "GET /health": 10}
        strat.write_text(json.dumps({"service_strategies": [{"service": "jc-orders", "type": "probabilistic", "param": 0.0}]}))
        wait_for(lambda: json.loads(http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=jc-orders")[1])["probabilisticSampling"]["samplingRate"] == 0.0, what="reload")
        res = run([JC_PY, PEERS / "jaeger_client_send.py", "remote", j.compact, j.sampling, "GET /orders", "GET /health"])
        assert res == {"GET /orders": 0, "GET /health": 0}
        strat.write_text(json.dumps({"service_strategies": [{"service": "jc-orders", "type": "probabilistic", "param": 0.0,
                                                              "operation_strategies": [{"operation": "GET /orders", "type": "probabilistic", "param": 1.0}]}]}))
        wait_for(lambda: "operationSampling" in http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=jc-orders")[1], what="reload")
        res = run([JC_PY, PEERS / "jaeger_client_send.py", "remote", j.compact, j.sampling, "GET /orders", "GET /health"])
        assert res == {"GET /orders": 10, "GET /health": 0}
        # A broken file keeps the previous strategies: wait until the reload was tried and refused
        # (logged), then check what is served.
        strat.write_text("{ not json")
        wait_for(lambda: "Sampling strategies not reloaded" in j.tp.logs(), what="the broken file refused")
        assert "operationSampling" in http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=jc-orders")[1]
        # And the next good file is taken up again.
        strat.write_text(json.dumps({"service_strategies": [{"service": "jc-orders", "type": "probabilistic", "param": 0.25}]}))
        wait_for(lambda: json.loads(http_get(f"http://127.0.0.1:{j.sampling}/sampling?service=jc-orders")[1])["probabilisticSampling"]["samplingRate"] == 0.25, what="reload after a broken file")


def test_malformed_oversized_and_hostile_datagrams_are_counted():
    with JaegerTP() as j:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        bad = [b"", b"\xff" * 100, b"\x82\x81\x01\x09emitBatch" + b"\x1c\x1c" + b"\xff\xff\xff\xff\x0f",  # truncated
               b"\x80\x01\x00\x04\x00\x00\x00\x09emitBatch\x00\x00\x00\x01\x0c\x00\x01\x0c\x00\x01\x00\x0f\x00\x02\x0c\x7f\xff\xff\xff"]  # 2^31 list
        for b in bad:
            s.sendto(b, ("127.0.0.1", j.compact))
            s.sendto(b, ("127.0.0.1", j.binary))
        s.sendto(b"\x00" * 65100, ("127.0.0.1", j.compact))  # over max_packet_size (65000)
        wait_for(lambda: metric_sum(j.tp.metrics(), "tracepipe_receiver_malformed_requests_total", receiver="jaeger", transport="udp") >= 2 * len(bad) - 2 + 1,
                 what="malformed datagrams counted")
        m = j.tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="jaeger", reason="oversized") == 1
        # HTTP: garbage and wrong content type.
        r = requests.post(f"http://127.0.0.1:{j.http}/api/traces", data=b"\xff" * 50, headers={"Content-Type": "application/x-thrift"})
        assert r.status_code == 400
        r = requests.post(f"http://127.0.0.1:{j.http}/api/traces", data=b"{}", headers={"Content-Type": "application/json"})
        assert r.status_code == 415
        # Still serving.
        need(JC_PY)
        run([JC_PY, PEERS / "jaeger_client_send.py", "const", j.compact, 1])
        wait_for(lambda: len(read_jsonl_spans(j.out)) >= 2, what="spans after garbage")
        assert j.tp.proc.poll() is None
        assert j.tp.stop() == 0


def test_full_udp_queue_drops_whole_datagrams_and_counts_their_spans():
    """A stalled graph (sink upstream down, tiny queues) fills the decode queue; further datagrams
    are dropped whole and their spans counted; nothing else is lost: accepted + refused = sent."""
    need(JC_PY)
    compact = free_udp_port()
    dead = free_port()
    tp = Tracepipe(f"""
receivers:
  jaeger:
    type: jaeger
    thrift_compact: {{ endpoint: 127.0.0.1:{compact}, workers: 1, queue_packets: 2 }}
    admission_timeout: 50ms
sinks:
  up:
    type: otlp
    inputs: [jaeger]
    endpoint: http://127.0.0.1:{dead}
    queue: {{ max_spans: 10, num_consumers: 1 }}
    retry: {{ initial_interval: 1s, max_interval: 1s, max_elapsed_time: 0s }}
""", "udpfull")
    # One real emitBatch datagram of 2 spans from the Python client, replayed.
    from jaeger_datagram import datagram
    pkt = datagram()
    with tp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        import time
        for _ in range(300):
            s.sendto(pkt, ("127.0.0.1", compact))
            sent += 2
            time.sleep(0.002)

        def settled():
            m = tp.metrics()
            acc = metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="jaeger")
            ref = metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="jaeger", transport="udp")
            return (acc, ref) if acc + ref == sent else None
        acc, ref = wait_for(settled, what="every datagram accounted for")
        assert ref > 0 and acc > 0
