"""Bad input, backpressure and shutdown, against the real binary."""

import gzip
import json
import os
import subprocess
import threading
import time

import grpc
import pytest

from harness import Tracepipe, far_end, free_port, metric_sum, read_jsonl_spans, recording_tracepipe, tracepipe_bin, wait_for
from otlp_wire import parse_response, post, request

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def server():
    tp, g, h, out = far_end(max_size="1MiB")
    with tp:
        yield tp, g, h, out


def test_http_bad_input_gets_clear_errors_and_server_keeps_serving(server):
    tp, g, h, out = server
    good = request([os.urandom(8)]).SerializeToString()
    cases = [
        ("corrupt protobuf", dict(body=b"\x0a\xff\xff\xff\xff\x0f garbage"), 400),
        ("truncated protobuf", dict(body=good[:-5]), 400),
        ("bad json", dict(body=b'{"resourceSpans": [', content_type="application/json"), 400),
        ("json array at the top level", dict(body=b'[[]]', content_type="application/json"), 400),
        ("json empty array", dict(body=b'[]', content_type="application/json"), 400),
        ("json with bad hex id", dict(body=b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"01"}]}]}]}', content_type="application/json"), 400),
        ("wrong content type", dict(body=good, content_type="text/plain"), 415),
        ("unknown encoding", dict(body=good, encoding="br"), 415),
        ("corrupt gzip", dict(body=b"\x1f\x8b\x08\x00garbage", encoding="gzip"), 400),
        ("oversized body", dict(body=b"\x00" * (2 << 20)), 413),
        ("gzip bomb", dict(body=gzip.compress(b"\x00" * (64 << 20)), encoding="gzip"), 413),
    ]
    deep = {"stringValue": "x"}
    for _ in range(200):
        deep = {"arrayValue": {"values": [deep]}}
    deep_json = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "01" * 16, "spanId": "02" * 8, "name": "d", "attributes": [{"key": "k", "value": deep}]}]}]}]}
    cases.append(("json nested 200 deep", dict(body=json.dumps(deep_json).encode(), content_type="application/json"), 400))
    for name, kw, status in cases:
        r = post(h, **kw)
        assert r.status_code == status, f"{name}: got {r.status_code} {r.text[:200]}"
        assert r.content, f"{name}: empty error body"
    # Still serving, and the good request is accepted.
    r = post(h, good)
    assert r.status_code == 200
    m = tp.metrics()
    # Every refusal above is counted once, with its reason.
    assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="in", transport="http") == len(cases)
    assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="in", transport="http", reason="body_too_large") == 2
    assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="in", transport="http", reason="content_type") == 1
    assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in") == 1
    assert tp.proc.poll() is None


def test_partial_success_for_bad_ids(server):
    tp, g, h, out = server
    req = request([os.urandom(8), b"\x00" * 8, b"\x01\x02"], trace_id=os.urandom(16))
    r = post(h, req.SerializeToString())
    assert r.status_code == 200
    resp = parse_response(r.content)
    assert resp.partial_success.rejected_spans == 2
    assert "span_id" in resp.partial_success.error_message
    # Zero trace id over JSON too.
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "00" * 16, "spanId": "03" * 8, "name": "z"},
        {"traceId": "04" * 16, "spanId": "05" * 8, "name": "ok"}]}]}]}
    r = post(h, json.dumps(body).encode(), content_type="application/json")
    assert r.status_code == 200, r.text
    assert r.json()["partialSuccess"]["rejectedSpans"] in (1, "1")
    wait_for(lambda: len(read_jsonl_spans(out)) == 2, what="the two valid spans")
    names = sorted(i["span"]["name"] for i in read_jsonl_spans(out))
    assert names == ["ok", "op"]
    m = tp.metrics()
    assert metric_sum(m, "tracepipe_receiver_rejected_spans_total", receiver="in") == 3


def test_grpc_bad_input(server):
    tp, g, h, out = server
    ch = grpc.insecure_channel(f"127.0.0.1:{g}", options=[("grpc.max_send_message_length", 64 << 20)])
    call = ch.unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as e:
        call(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        call(b"\x00" * (2 << 20), timeout=5)
    assert e.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    # gzip bomb: 64 MiB of zeros compressed to ~64 KiB.
    with pytest.raises(grpc.RpcError) as e:
        call(b"\x0a\x00" * (32 << 20), timeout=20, compression=grpc.Compression.Gzip)
    assert e.value.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    ok = call(request([os.urandom(8)]).SerializeToString(), timeout=5)
    assert ok == b""  # empty ExportTraceServiceResponse
    m = tp.metrics()
    assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="in", transport="grpc") == 3
    assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in", transport="grpc") == 1


def test_backpressure_refuses_then_recovers_without_loss_or_duplicates():
    """A sink whose endpoint is down fills the graph; the receiver answers 503 + Retry-After;
    once the endpoint comes up, exactly the accepted spans arrive, once each."""
    far, far_g, far_h, out = far_end()
    a_g, a_h = free_port(), free_port()
    a_cfg = f"""
receivers:
  in:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{a_g} }}
    http: {{ endpoint: 127.0.0.1:{a_h} }}
    admission_timeout: 20ms
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{far_g}
    compression: none
    timeout: 2s
    retry: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 0s }}
    queue: {{ max_spans: 500, num_consumers: 2 }}
"""
    accepted, refused = [], 0
    with Tracepipe(a_cfg, "bp") as a:
        for _ in range(120):
            ids = [os.urandom(8) for _ in range(50)]
            r = post(a_h, request(ids).SerializeToString())
            if r.status_code == 200:
                accepted.extend(ids)
            else:
                assert r.status_code == 503, r.text
                assert r.headers.get("Retry-After") == "1"
                refused += 50
        assert refused > 0, "the graph never filled up"
        m = a.metrics()
        assert metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="in") == refused
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in") == len(accepted)
        # The far end comes up.
        with far:
            wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_sent_spans_total", sink="up") == len(accepted), timeout=60, what="all accepted spans sent")
            wait_for(lambda: len(read_jsonl_spans(out)) >= len(accepted), what="delivery")
            got = [bytes.fromhex(i["span"]["spanId"]) for i in read_jsonl_spans(out)]
            assert len(got) == len(set(got)), "duplicates delivered"
            assert set(got) == set(accepted)
            assert metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="up") == 0
            assert a.stop() == 0


def test_sigterm_under_load_delivers_every_accepted_span():
    far, far_g, far_h, out = far_end()
    a_g, a_h = free_port(), free_port()
    a_cfg = f"""
receivers:
  in:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{a_g} }}
    http: {{ endpoint: 127.0.0.1:{a_h} }}
processors:
  batch:
    type: batch
    inputs: [in]
    send_batch_size: 5000
    timeout: 10s
sinks:
  up:
    type: otlp
    inputs: [batch]
    endpoint: http://127.0.0.1:{far_g}
"""
    accepted = []
    stop = threading.Event()

    def load():
        while not stop.is_set():
            ids = [os.urandom(8) for _ in range(100)]
            try:
                r = post(a_h, request(ids).SerializeToString(), timeout=5)
            except Exception:
                continue
            if r.status_code == 200:
                accepted.extend(ids)

    with far, Tracepipe(a_cfg, "term") as a:
        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: len(accepted) >= 3000, what="load")
        # The batch timeout is 10s and the size 5000: spans are pending in the processor.
        code = a.stop()
        stop.set()
        for t in threads:
            t.join()
        assert code == 0, a.logs()
        wait_for(lambda: len(read_jsonl_spans(out)) >= len(accepted), what="every accepted span at the far end")
        got = {bytes.fromhex(i["span"]["spanId"]) for i in read_jsonl_spans(out)}
        missing = set(accepted) - got
        assert not missing, f"{len(missing)} accepted spans lost"


def test_validate_reports_every_error_with_positions(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("""receivers:
  a:
    type: otlp
    grpc: { endpoint: 0.0.0.0:4317 }
  b:
    type: otlp
    grpc: { endpoint: 127.0.0.1:4317 }
    http: { endpoint: "localhost:99999" }
  c:
    type: jaegerish
processors:
  p:
    type: batch
    inputs: [a, nowhere]
    timeout: soon
sinks:
  s:
    type: debug
    inputs: [p, b]
    verbosity: loud
""")
    r = subprocess.run([tracepipe_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 78, r.stderr
    err = r.stderr
    for expected in [
        f"{cfg}:8:23: invalid endpoint \"localhost:99999\"",
        f"{cfg}:10:11: unknown receiver type `jaegerish`",
        f"{cfg}:14:17: processor `p` reads from `nowhere`",
        f"{cfg}:15:14: invalid duration \"soon\"",
        f"{cfg}:20:16: unknown variant `loud`",
        f"{cfg}:9:3: receiver `c` is not an input",
        # b does not validate (its http endpoint), but its grpc listener still conflicts with a's.
        f"{cfg}:5:3: `b` listens on 127.0.0.1:4317, which `a` already uses (tcp)",
    ]:
        assert expected in err, f"missing {expected!r} in:\n{err}"
    ok = subprocess.run([tracepipe_bin(), "validate"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_listen_conflict_and_health_endpoints(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("receivers:\n  a:\n    type: otlp\n    grpc: { endpoint: 0.0.0.0:5317 }\n  b:\n    type: otlp\n    http: { endpoint: 127.0.0.1:5317 }\nsinks:\n  s: { type: debug, inputs: [a, b] }\n")
    r = subprocess.run([tracepipe_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 78
    assert "`b` listens on 127.0.0.1:5317, which `a` already uses" in r.stderr
    tp, _, _, _ = far_end()
    with tp:
        from harness import http_get
        assert http_get(f"http://127.0.0.1:{tp.metrics_port}/healthz")[0] == 200
        assert http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")[0] == 200
        assert metric_sum(tp.metrics(), "tracepipe_build_info") == 1
        assert tp.stop() == 0


def test_sigterm_with_unreachable_sink_counts_what_it_drops():
    """Shutdown cannot wait forever for a dead upstream: after the retry budget the sink drops
    the undeliverable spans with a reason (logged and counted), and the process exits 0."""
    a_g, a_h, dead = free_port(), free_port(), free_port()
    cfg = f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{a_g} }}, http: {{ endpoint: 127.0.0.1:{a_h} }} }}
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{dead}
    retry: {{ initial_interval: 200ms, max_interval: 500ms, max_elapsed_time: 0s }}
"""
    import re
    import signal
    with Tracepipe(cfg, "dead") as a:
        # Six batches of 7 spans: more than the sink's 4 workers, so some wait in its queue.
        for _ in range(6):
            assert post(a_h, request([os.urandom(8) for _ in range(7)]).SerializeToString()).status_code == 200
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_retries_total", sink="up") >= 4, what="retries")
        t0 = time.time()
        a.proc.send_signal(signal.SIGTERM)
        # /metrics is served until the graph has drained: the drop is counted with its reason.
        seen = 0.0
        while a.proc.poll() is None:
            try:
                seen = metric_sum(a.metrics(), "tracepipe_sink_failed_spans_total", sink="up", reason="shutdown")
            except Exception:
                pass
            time.sleep(0.2)
        assert a.proc.returncode == 0, a.logs()
        took = time.time() - t0
        # One 20 s budget for the sink from the first retry after SIGTERM, not one per batch.
        assert took < 25, f"stopped after {took:.1f}s"
        # A scrape during the drain sees whole batches counted with the reason (the drops may
        # also all land after the last scrape before exit) ...
        assert seen % 7 == 0, f"failed{{reason=shutdown}} read {seen} mid-drain"
        # ... and the counters as they stood at exit, logged with "tracepipe stopped.", have all
        # six batches: 42 spans accepted, 42 failed with reason shutdown, none sent.
        final = re.search(r"tracepipe stopped\. spans=(.*)", a.logs()).group(1)
        counts = {m.group(1): float(m.group(2)) for m in re.finditer(r"(tracepipe_\w+\{[^}]*\}) ([0-9.eE+-]+)", final)}
        failed = {k: v for k, v in counts.items() if k.startswith("tracepipe_sink_failed_spans_total") and 'sink="up"' in k}
        assert list(failed.values()) == [42] and 'reason="shutdown"' in next(iter(failed)), final
        assert sum(v for k, v in counts.items() if k.startswith("tracepipe_receiver_accepted_spans_total")) == 42, final
        assert not any(k.startswith("tracepipe_sink_sent_spans_total") and v for k, v in counts.items()), final
        drops = re.findall(r"Shutting down; undeliverable spans dropped\..* spans=(\d+)\b", a.logs())
        assert sorted(int(n) for n in drops) == [7] * 6, drops


def test_validate_reports_component_setting_errors(tmp_path):
    """Every receiver and processor checks its own settings; all errors come back at once."""
    cfg = tmp_path / "bad2.yaml"
    cfg.write_text("""receivers:
  j:
    type: jaeger
    thrift_compact: { max_packet_size: 70000, workers: 0 }
  z:
    type: zipkin
    envoy_proto_ids: sometimes
  l:
    type: lightstep
    grpc: { endpoint: 0.0.0.0:7000 }
    http: { endpoint: 0.0.0.0:7000 }
processors:
  g:
    type: guid_inference
    inputs: [j, z, l]
    wait: 0s
    max_bytes: lots
sinks:
  s: { type: debug, inputs: [g] }
""")
    r = subprocess.run([tracepipe_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 78, r.stderr
    for expected in [
        f"{cfg}:4:21: thrift_compact: max_packet_size must be from 1 to 65507",
        f"{cfg}:4:21: thrift_compact: workers and queue_packets must be above 0",
        f"{cfg}:7:22: unknown variant `sometimes`",
        f"{cfg}:11:11: grpc and http both listen on 0.0.0.0:7000",
        f"{cfg}:17:16: invalid size \"lots\"",
    ]:
        assert expected in r.stderr, f"missing {expected!r} in:\n{r.stderr}"


def test_validate_reports_errors_inside_a_cycle_with_the_cycle(tmp_path):
    """A cycle does not hide the settings errors of the processors on it: both come back."""
    cfg = tmp_path / "cycle.yaml"
    cfg.write_text("""receivers:
  in: { type: otlp }
processors:
  a:
    type: batch
    inputs: [in, b]
    timeout: soon
  b:
    type: batch
    inputs: [a]
sinks:
  s: { type: debug, inputs: [b] }
""")
    r = subprocess.run([tracepipe_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 78, r.stderr
    assert "processors form a cycle" in r.stderr, r.stderr
    assert f"{cfg}:7:14: invalid duration" in r.stderr, r.stderr


def test_encoded_bodies_are_refused_where_they_are_not_decompressed():
    """The Jaeger collector and LightStep HTTP endpoints do not decompress (as Jaeger's own): a
    body with a Content-Encoding is 415, not read as Thrift or a report."""
    j, l_g, l_h = free_port(), free_port(), free_port()
    tp, out = recording_tracepipe(f"""
receivers:
  jaeger: {{ type: jaeger, thrift_http: {{ endpoint: 127.0.0.1:{j} }} }}
  ls: {{ type: lightstep, grpc: {{ endpoint: 127.0.0.1:{l_g} }}, http: {{ endpoint: 127.0.0.1:{l_h} }} }}
""", ["jaeger", "ls"], "enc")
    import requests
    with tp:
        r = requests.post(f"http://127.0.0.1:{j}/api/traces", data=b"\x00" * 10, headers={"Content-Type": "application/x-thrift", "Content-Encoding": "br"})
        assert r.status_code == 415 and "Content-Encoding" in r.text, (r.status_code, r.text)
        r = requests.post(f"http://127.0.0.1:{l_h}/api/v2/reports", data=b"{}", headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
        assert r.status_code == 415 and "Content-Encoding" in r.text, (r.status_code, r.text)
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="jaeger", reason="encoding") == 1
        assert metric_sum(m, "tracepipe_receiver_malformed_requests_total", receiver="ls", reason="encoding") == 1
        assert tp.stop() == 0
