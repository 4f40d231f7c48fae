"""Trace archives end to end: the Python OTel SDK -> tracepipe (parquet sink) -> Parquet files
that pyarrow and DuckDB (independent readers) open with the documented schema -> `archive` replay ->
OTLP -> a second tracepipe, every field equal to what the SDK sent; kill -9 mid-write never
serves half a file; `tracepipe query` answers SQL and fails cleanly; the embedded default graph
archives out of the box."""

import gzip
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness import Tracepipe, far_end, free_port, metric_sum, read_jsonl_spans, tracepipe_bin, wait_for
from sdk import compare_everything, emit_full_trace, emit_rich_trace, normalise_json, normalise_sdk, provider
from test_otlp_roundtrip import compare

DOCUMENTED = {  # column -> pyarrow type, as pipeline/archive/schema.rs documents it
    "trace_id": pa.binary(16), "span_id": pa.binary(8), "parent_span_id": pa.binary(8), "trace_state": pa.string(),
    "flags": pa.uint32(), "name": pa.string(), "kind": pa.string(), "start_time": pa.timestamp("ns", tz="UTC"),
    "end_time": pa.timestamp("ns", tz="UTC"), "duration_ns": pa.int64(), "status_code": pa.string(), "status_message": pa.string(),
    "service_name": pa.dictionary(pa.int32(), pa.string()), "dropped_attributes_count": pa.uint32(), "dropped_events_count": pa.uint32(),
    "dropped_links_count": pa.uint32(), "resource_dropped_attributes_count": pa.uint32(), "resource_schema_url": pa.string(),
    "resource_entity_refs": pa.string(), "scope_name": pa.string(), "scope_version": pa.string(), "scope_dropped_attributes_count": pa.uint32(),
    "scope_schema_url": pa.string(),
}
# An attribute set: one map per value type (suffix -> value type) and the `_order` string.
ATTRIBUTE_SET = {"": pa.string(), "_int": pa.int64(), "_double": pa.float64(), "_bool": pa.bool_(), "_bytes": pa.binary(), "_json": pa.string()}


def archiver(path: Path, grpc_port: int, max_age="60s", workers=1, batch=100):
    return Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{grpc_port} }} }}
processors:
  batch: {{ type: batch, inputs: [apps], send_batch_size: {batch}, timeout: 50ms }}
sinks:
  archive: {{ type: parquet, inputs: [batch], path: {path}, roll: {{ max_age: {max_age} }}, workers: {workers} }}
""", "archiver")


def archived(m: dict, **labels) -> float:
    """Spans a Parquet sink has written: in closed files (sent) or in files still open (pending;
    counted sent once their file closes, at roll or SIGTERM)."""
    return metric_sum(m, "tracepipe_sink_sent_spans_total", **labels) + metric_sum(m, "tracepipe_sink_parquet_pending_spans", **labels)


def archive_sdk_spans(path: Path, traces: int, workers=1, full=False):
    """Archives `traces` SDK traces (`full`: every field the SDK can set, see sdk.emit_full_trace)."""
    port = free_port()
    # With several workers, batches of 10 so that each worker gets some (the input's lock is fair).
    with archiver(path, port, workers=workers, batch=100 if workers == 1 else 10) as a:
        tp, memory = provider("grpc", f"http://127.0.0.1:{port}", full=full)
        for i in range(traces):
            (emit_full_trace if full else emit_rich_trace)(tp, f"-{i}")
        tp.shutdown()
        sent = memory.get_finished_spans()
        wait_for(lambda: archived(a.metrics()) >= len(sent), what="spans archived")
        assert a.stop() == 0, a.logs()  # SIGTERM closes the open file
    return sent


def test_sdk_to_archive_to_replay_field_for_field(tmp_path):
    archive = tmp_path / "traces"
    # Two parallel writers: the archive is their files together, and replay reads them as one.
    sent = archive_sdk_spans(archive, 20, workers=2)
    files = sorted(archive.rglob("*.parquet"))
    assert len(files) >= 2, f"both workers wrote a file: {files}"
    assert all(f.parent.parent.name.startswith("date=") and f.parent.name.startswith("hour=") for f in files)
    assert not list(archive.rglob("*.tmp")), "a temporary file survived SIGTERM"
    # pyarrow reads every file and sees the documented schema.
    rows = 0
    for f in files:
        t = pq.read_table(f)
        rows += t.num_rows
        for col, typ in DOCUMENTED.items():
            assert t.schema.field(col).type == typ, f"{col}: {t.schema.field(col).type} != {typ}"
        for set_ in ("attributes", "resource_attributes", "scope_attributes"):
            for suffix, value in ATTRIBUTE_SET.items():
                m = t.schema.field(set_ + suffix).type
                assert pa.types.is_map(m) and m.key_type == pa.string() and m.item_type == value, f"{set_}{suffix}: {m}"
            assert t.schema.field(set_ + "_order").type == pa.string()
        events = t.schema.field("events").type.value_type
        assert [events.field(i).name for i in range(events.num_fields)] == [
            "time", "name", "attributes", "attributes_int", "attributes_double", "attributes_bool", "attributes_bytes", "attributes_json",
            "attributes_order", "dropped_attributes_count"]
        assert pq.read_metadata(f).metadata[b"tracepipe.schema_version"] == b"2"
    assert rows == len(sent) == 100
    t = pa.concat_tables(pq.read_table(f) for f in files)
    assert set(t.column("service_name").to_pylist()) == {"e2e-orders"}
    row = t.filter(pa.compute.equal(t.column("name"), "GET /orders-0"))
    attrs = {suffix: dict(row.column("attributes" + suffix)[0].as_py()) for suffix in ATTRIBUTE_SET}
    assert attrs["_int"]["http.status_code"] == 200 and "http.status_code" not in attrs[""]
    assert attrs["_double"]["ratio"] == 0.25 and attrs["_bool"]["cached"] is False
    assert "arrayValue" in json.loads(attrs["_json"]["tags"]), attrs["_json"]

    # DuckDB (a third, independent Parquet reader: its own C++ decoder, not Arrow's) reads the
    # same files — pages written by tracepipe's own encoder — and agrees with pyarrow.
    import duckdb
    db = duckdb.connect()
    paths = [str(f) for f in files]
    got = db.execute(
        "SELECT count(*), count(DISTINCT span_id), epoch_ns(min(start_time)), sum(duration_ns), "
        "count(*) FILTER (WHERE parent_span_id IS NULL) FROM read_parquet($paths)",
        {"paths": paths}).fetchone()
    first_start = pa.compute.min(t.column("start_time")).cast(pa.int64()).as_py()
    assert got == (100, 100, first_start, sum(t.column("duration_ns").to_pylist()), t.column("parent_span_id").null_count), got
    one = db.execute(
        "SELECT attributes_int['http.status_code'], attributes_double['ratio'], attributes_bool['cached'], service_name, kind "
        "FROM read_parquet($paths) WHERE name = 'GET /orders-0'", {"paths": paths}).fetchall()
    assert one == [(200, 0.25, False, "e2e-orders", row.column("kind")[0].as_py())], one

    # Replay -> OTLP -> a second tracepipe: every field as the SDK sent it.
    b, b_grpc, _, out = far_end()
    with b, Tracepipe(f"""
receivers:
  replay: {{ type: archive, path: {archive} }}
sinks:
  out: {{ type: otlp, inputs: [replay], endpoint: "http://127.0.0.1:{b_grpc}" }}
""", "replayer") as r:
        assert r.proc.wait(timeout=60) == 0, "replay did not end by itself: " + r.logs()
        assert "Every component has finished" in r.logs()
        wait_for(lambda: len(read_jsonl_spans(out)) >= len(sent), what="replayed spans at the far end")
        compare(sent, read_jsonl_spans(out))
        compare_everything(sent, out)


def test_every_field_the_sdk_sets_survives_archive_and_replay(tmp_path):
    """Flags (remote parent), tracestate, dropped attribute/event/link counts, schema URLs, scope
    attributes: SDK -> archive -> replay -> OTLP, every span's protobuf equal to what the SDK's own
    encoder makes of it."""
    archive = tmp_path / "traces"
    sent = archive_sdk_spans(archive, 5, full=True)
    assert any(s.dropped_attributes for s in sent) and any(s.dropped_events for s in sent) and any(s.dropped_links for s in sent)
    b, b_grpc, _, out = far_end()
    with b:
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"grpc://127.0.0.1:{b_grpc}"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        wait_for(lambda: len(read_jsonl_spans(out)) >= len(sent), what="replayed spans at the far end")
        compare_everything(sent, out)


def test_replay_cli_filters_whole_traces(tmp_path):
    archive = tmp_path / "traces"
    sent = archive_sdk_spans(archive, 10)
    b, b_grpc, _, out = far_end()
    with b:
        # A strict subset: the root spans of traces 3 and 7; --whole-traces brings their other
        # 4 spans each, and nothing of the other 8 traces.
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--where", "name IN ('GET /orders-3', 'GET /orders-7') AND kind = 'SERVER'",
                            "--whole-traces", "--to", f"grpc://127.0.0.1:{b_grpc}"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        assert "replay: 10/10 spans sent" in p.stderr, p.stderr  # plain progress lines off a terminal
        wait_for(lambda: len(read_jsonl_spans(out)) >= 10, what="10 spans")
        want_traces = {f"{s.get_span_context().trace_id:032x}" for s in sent if s.name in ("GET /orders-3", "GET /orders-7")}
        assert len(want_traces) == 2
        want = {f"{s.get_span_context().span_id:016x}" for s in sent if f"{s.get_span_context().trace_id:032x}" in want_traces}
        # Everything replayed arrived by now (replay exits after its sink flushed): exactly those.
        assert b.stop() == 0
        got = [s["span"]["spanId"] for s in read_jsonl_spans(out)]
        assert sorted(got) == sorted(want), (got, want)
    # Unknown scheme and missing destination are config errors.
    p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", "ftp://x"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 78 and "unknown destination scheme" in p.stderr


def test_replay_shows_a_progress_bar_on_a_terminal(tmp_path):
    """On a terminal (a pseudo-terminal here) replay draws indicatif's bar: spans, spans/s, ETA."""
    import pty
    archive = tmp_path / "traces"
    archive_sdk_spans(archive, 4)
    b, b_grpc, _, out = far_end()
    with b:
        master, slave = pty.openpty()
        proc = subprocess.Popen([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"grpc://127.0.0.1:{b_grpc}"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave, env={**os.environ, "TERM": "xterm"})
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        os.close(master)
        assert proc.wait(timeout=60) == 0, screen
        text = screen.decode(errors="replace")
        assert "20/20 spans" in text and "ETA" in text and "/s" in text, text  # the bar's template
        assert "replay: 20/20 spans sent" in text, text
        wait_for(lambda: len(read_jsonl_spans(out)) >= 20, what="20 spans")


def test_replay_to_a_satellite_over_tls_with_the_access_token(tmp_path):
    """`--to satellite://` is OTLP/gRPC over TLS with the `lightstep-access-token` header; the
    server is a real grpcio server with a certificate from a custom CA (`--ca-file`)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from test_tls import TlsCollector, make_pki
    archive = tmp_path / "traces"
    sent = archive_sdk_spans(archive, 4)
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    env = {**os.environ, "LIGHTSTEP_ACCESS_TOKEN": "tok-123"}
    with TlsCollector(pki, require_client_auth=False) as sat:
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"satellite://localhost:{sat.port}",
                            "--ca-file", str(pki / "ca.pem")], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
        assert p.returncode == 0, p.stderr
        spans = sum(len(ss.spans) for b in sat.received for rs in ExportTraceServiceRequest.FromString(b).resource_spans for ss in rs.scope_spans)
        assert spans == len(sent) == 20, spans
        assert sat.metadata and all(m.get("lightstep-access-token") == "tok-123" for m in sat.metadata), sat.metadata
    # No token: a config error before anything is sent; --ca-file on a plaintext destination too.
    env.pop("LIGHTSTEP_ACCESS_TOKEN")
    p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", "satellite://localhost:1"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 78 and "needs an access token" in p.stderr, p.stderr
    p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", "grpc://localhost:1", "--ca-file", "x.pem"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 78 and "--ca-file needs a TLS destination" in p.stderr, p.stderr
    # An unreadable CA file fails when the sink starts, before any progress line.
    p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", "grpcs://localhost:1", "--ca-file", str(tmp_path / "missing.pem")],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    assert p.returncode == 1 and "missing.pem" in p.stderr and "replay:" not in p.stderr, p.stderr


class HttpsOtlp:
    """An OTLP/HTTP server over TLS (Python's http.server with the test CA's server
    certificate): records every body posted to /v1/traces and answers 200 with an empty
    `ExportTraceServiceResponse`."""

    def __init__(self, pki):
        import http.server
        import ssl
        self.received = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path == "/v1/traces":
                    outer.received.append((self.headers.get("Content-Type"), body))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def test_replay_to_https_and_grpcs_with_a_custom_ca(tmp_path):
    """`https://` is OTLP/HTTP over TLS and `grpcs://` OTLP/gRPC over TLS, both verified against
    `--ca-file` (a wrong CA is the OTLP sink's case in test_tls.py: refused and counted, retried
    like any transport error until `max_elapsed_time`)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from test_tls import TlsCollector, make_pki
    archive = tmp_path / "traces"
    sent = archive_sdk_spans(archive, 3)
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)

    def count(bodies):
        return sum(len(ss.spans) for b in bodies for rs in ExportTraceServiceRequest.FromString(b).resource_spans for ss in rs.scope_spans)
    with HttpsOtlp(pki) as web:
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"https://localhost:{web.port}/v1/traces",
                            "--ca-file", str(pki / "ca.pem")], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        assert web.received and all(ct == "application/x-protobuf" for ct, _ in web.received), [ct for ct, _ in web.received]
        assert count([b for _, b in web.received]) == len(sent) == 15
    with TlsCollector(pki, require_client_auth=False) as col:
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"grpcs://localhost:{col.port}",
                            "--ca-file", str(pki / "ca.pem")], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        assert count(col.received) == 15


def test_kill_9_mid_write_serves_nothing_half_written(tmp_path):
    archive = tmp_path / "traces"
    port = free_port()
    a = archiver(archive, port, max_age="1h")
    a.start()
    tp, memory = provider("grpc", f"http://127.0.0.1:{port}")
    for i in range(5):
        emit_rich_trace(tp, f"-{i}")
    tp.shutdown()
    wait_for(lambda: archived(a.metrics()) >= 25, what="spans written")
    m = a.metrics()
    assert metric_sum(m, "tracepipe_sink_sent_spans_total") == 0, "nothing is counted sent before its file is closed"
    assert metric_sum(m, "tracepipe_sink_parquet_pending_spans") == 25
    assert list(archive.rglob(".*.parquet.tmp")), "an open file should exist"
    assert not list(archive.rglob("*.parquet")) or all(p.name.startswith(".") for p in archive.rglob("*.parquet"))
    a.proc.kill()
    a.proc.wait()
    # Nothing closed: the archive has no files yet; query says so clearly.
    q = subprocess.run([tracepipe_bin(), "query", "--archive", str(archive), "SELECT count(*) FROM spans"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert q.returncode != 0 and "holds no .parquet files" in q.stderr
    # Restart: the leftover is quarantined and reported, not served; new spans archive normally.
    b = archiver(archive, port)
    with b:
        assert "Incomplete archive file left by a crash moved aside" in b.logs()
        assert metric_sum(b.metrics(), "tracepipe_sink_parquet_recovered_files_total", outcome="quarantined") == 1
        tp, memory = provider("grpc", f"http://127.0.0.1:{port}")
        emit_rich_trace(tp, "-after")
        tp.shutdown()
        wait_for(lambda: archived(b.metrics()) >= 5, what="spans written")
        assert b.stop() == 0
    assert list((archive / "_quarantine").rglob("*.tmp"))
    q = subprocess.run([tracepipe_bin(), "query", "--archive", str(archive), "--format", "csv", "SELECT count(*) AS n FROM spans"], capture_output=True, text=True)
    assert q.returncode == 0 and q.stdout.split() == ["n", "5"], q.stdout + q.stderr


def test_query_formats_and_errors(tmp_path):
    archive = tmp_path / "traces"
    archive_sdk_spans(archive, 3)
    run = lambda *a: subprocess.run([tracepipe_bin(), "query", "--archive", str(archive), *a], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    p = run("SELECT kind, count(*) AS n FROM spans GROUP BY kind ORDER BY kind")
    assert p.returncode == 0 and "| CLIENT   | 3 |" in p.stdout, p.stdout
    p = run("--format", "json", "SELECT name, duration_ns >= 0 AS ok, attributes['http.method'] AS method FROM spans WHERE kind = 'SERVER'")
    rows = [json.loads(l) for l in p.stdout.splitlines()]
    assert len(rows) == 3 and all(r["ok"] and r["method"] == "GET" for r in rows), p.stdout
    p = run("--format", "csv", "SELECT encode(trace_id, 'hex') AS t FROM spans LIMIT 1")
    assert p.returncode == 0 and len(p.stdout.splitlines()[1]) == 32
    p = run("SELEC nonsense")
    assert p.returncode != 0 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run("SELECT no_such_column FROM spans")
    assert p.returncode != 0 and "no_such_column" in p.stderr
    p = subprocess.run([tracepipe_bin(), "query", "--archive", str(tmp_path / "missing"), "SELECT 1"], capture_output=True, text=True)
    assert p.returncode != 0 and "does not exist" in p.stderr


def test_default_graph_archives_out_of_the_box(tmp_path):
    """README's session: `tracepipe run` (embedded graph), send spans, stop, `tracepipe query`."""
    ports = {k: free_port() for k in ("grpc", "http", "compact", "binary", "jhttp", "sampling", "zipkin", "lsg", "lsh", "metrics")}
    env = dict(os.environ, TRACEPIPE_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{ports['grpc']}", TRACEPIPE_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{ports['http']}",
               TRACEPIPE_JAEGER_COMPACT_ENDPOINT=f"127.0.0.1:{ports['compact']}", TRACEPIPE_JAEGER_BINARY_ENDPOINT=f"127.0.0.1:{ports['binary']}",
               TRACEPIPE_JAEGER_HTTP_ENDPOINT=f"127.0.0.1:{ports['jhttp']}", TRACEPIPE_JAEGER_SAMPLING_ENDPOINT=f"127.0.0.1:{ports['sampling']}",
               TRACEPIPE_ZIPKIN_ENDPOINT=f"127.0.0.1:{ports['zipkin']}", TRACEPIPE_LIGHTSTEP_GRPC_ENDPOINT=f"127.0.0.1:{ports['lsg']}",
               TRACEPIPE_LIGHTSTEP_HTTP_ENDPOINT=f"127.0.0.1:{ports['lsh']}", TRACEPIPE_METRICS_ENDPOINT=f"127.0.0.1:{ports['metrics']}")
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen([tracepipe_bin(), "run"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        from harness import wait_port
        wait_port(ports["grpc"], what="tracepipe run")
        tp, memory = provider("grpc", f"http://127.0.0.1:{ports['grpc']}")
        emit_rich_trace(tp)
        tp.shutdown()  # exported and answered: SIGTERM must now drain it into the archive
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
    p = subprocess.run([tracepipe_bin(), "query", "SELECT service_name, count(*) AS spans FROM spans GROUP BY 1"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "| e2e-orders   | 5     |" in p.stdout, p.stdout + p.stderr


def test_envoy_mesh_spans_survive_archive_and_replay(tmp_path):
    """Real Envoy proxy spans (Zipkin JSON, bookinfo topology) -> archive -> replay: the replayed
    spans are exactly the ones the receiver produced (recorded beside the archive)."""
    from harness import recording_tracepipe
    from mesh.mesh import Mesh
    archive = tmp_path / "traces"
    port = free_port()
    tp, _ = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{port} }}
processors:
  batch: {{ type: batch, inputs: [mesh], timeout: 50ms }}
""", ["mesh"], "mesharchive", also={})
    cfg = tp.config_path.read_text().replace("sinks:\n", f"sinks:\n  archive: {{ type: parquet, inputs: [batch], path: {archive} }}\n", 1)
    tp.config_path.write_text(cfg)
    recorded = tp.dir / "spans.jsonl"
    with tp, Mesh("zipkin-json", port, forward="all", topology="bookinfo") as mesh:
        for _ in range(10):
            assert mesh.request()[0] == 200
        want = 10 * mesh.spans_per_request()
        wait_for(lambda: archived(tp.metrics(), sink="archive") >= want, timeout=30, what=f"{want} spans archived")
        assert tp.stop() == 0
    b, b_grpc, _, out = far_end()
    with b:
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"grpc://127.0.0.1:{b_grpc}"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert p.returncode == 0, p.stderr
        wait_for(lambda: len(read_jsonl_spans(out)) >= want, what="replayed mesh spans")
    canon = lambda rows: sorted(json.dumps(r, sort_keys=True) for r in rows)
    rec, rep = canon(read_jsonl_spans(recorded)), canon(read_jsonl_spans(out))
    assert len(rec) >= want, f"{len(rec)} spans recorded, {want} expected"
    missing, extra = sorted(set(rec) - set(rep)), sorted(set(rep) - set(rec))
    assert rep == rec, f"{len(rep)} replayed vs {len(rec)} recorded; first missing {missing[:1]}, first extra {extra[:1]}"


T0 = 1_795_341_600_000_000_000  # 2026-11-22T10:00:00Z


def archive_timed_traces(path: Path, n: int) -> list:
    """`n` one-span traces from the SDK, trace k starting at T0 + k seconds; returns their span ids."""
    port = free_port()
    with archiver(path, port) as a:
        tp, memory = provider("grpc", f"http://127.0.0.1:{port}")
        tracer = tp.get_tracer("e2e.timed")
        for k in range(n):
            s = tracer.start_span(f"t{k}", start_time=T0 + k * 1_000_000_000)
            s.end(end_time=T0 + k * 1_000_000_000 + 1_000_000)
        tp.shutdown()
        sent = memory.get_finished_spans()
        wait_for(lambda: archived(a.metrics()) >= n, what="spans archived")
        assert a.stop() == 0, a.logs()
    return [f"{s.get_span_context().span_id:016x}" for s in sent]


def test_replay_window_speed_and_destination_forms(tmp_path):
    """`--from`/`--to TIME` select [from, to) by start time, whichever order `--to` comes in;
    `--speed 2x` keeps half the gaps; `http://` is OTLP/HTTP; `satellite+insecure://` is
    OTLP/gRPC in plaintext with `--access-token` as the `lightstep-access-token` header."""
    import grpc
    from concurrent import futures
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    archive = tmp_path / "traces"
    ids = archive_timed_traces(archive, 6)
    b, _, b_http, out = far_end()
    with b:
        # The end time before the URL, then after it: the same window, spans 2 and 3.
        for k, order in enumerate((["--to", "2026-11-22T10:00:04Z", "--to", f"http://127.0.0.1:{b_http}/v1/traces"],
                                   ["--to", f"http://127.0.0.1:{b_http}/v1/traces", "--to", "2026-11-22T10:00:04Z"])):
            p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--from", "2026-11-22T10:00:02Z", *order],
                               capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
            assert p.returncode == 0, p.stderr
            wait_for(lambda: len(read_jsonl_spans(out)) >= 2 * (k + 1), what="the window's spans")
            # (replay exits once its sink flushed: what it sent is all in the file by now)
            assert sorted(s["span"]["spanId"] for s in read_jsonl_spans(out)) == sorted(ids[2:4] * (k + 1)), order
        # Paced: 5 s of gaps at 2x take at least 2.5 s (unpaced, this replay takes well under 1 s).
        started = time.time()
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--speed", "2x", "--to", f"http://127.0.0.1:{b_http}/v1/traces"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        took = time.time() - started
        assert p.returncode == 0 and "replay: 6/6 spans sent" in p.stderr, p.stderr
        assert took >= 2.4, f"--speed 2x replayed 5 s of traffic in {took:.2f} s"
    # The archive receiver in a graph, paced at 1x (5 s): its read counter, scraped while it runs.
    b, b_grpc, _, out = far_end()
    with b, Tracepipe(f"""
receivers:
  replay: {{ type: archive, path: {archive}, speed: 1x }}
sinks:
  out: {{ type: otlp, inputs: [replay], endpoint: "http://127.0.0.1:{b_grpc}" }}
""", "paced") as r:
        # (the read runs ahead of the paced sends: all 6 are read long before the last goes out)
        wait_for(lambda: metric_sum(r.metrics(), "tracepipe_receiver_archive_read_spans_total", receiver="replay") == 6, what="the archive read")
        assert metric_sum(r.metrics(), "tracepipe_sink_sent_spans_total", sink="out") < 6, "paced at 1x: not all sent yet"
        assert r.proc.wait(timeout=60) == 0, r.logs()
        wait_for(lambda: len(read_jsonl_spans(out)) >= 6, what="the paced replay's spans")
    # satellite+insecure:// with --access-token: a plain grpcio OTLP server sees the header.
    received, metadata = [], []

    def export(req, context):
        received.append(req)
        metadata.append(dict(context.invocation_metadata()))
        return b""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
        "Export": grpc.unary_unary_rpc_method_handler(export, request_deserializer=lambda b: b, response_serializer=lambda b: b)}),))
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        env = {k: v for k, v in os.environ.items() if k != "LIGHTSTEP_ACCESS_TOKEN"}
        p = subprocess.run([tracepipe_bin(), "replay", "--archive", str(archive), "--to", f"satellite+insecure://127.0.0.1:{port}", "--access-token", "tok-9"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=env)
        assert p.returncode == 0, p.stderr
        got = [sp.span_id.hex() for b_ in received for rs in ExportTraceServiceRequest.FromString(b_).resource_spans for ss in rs.scope_spans for sp in ss.spans]
        assert sorted(got) == sorted(ids)
        assert metadata and all(m.get("lightstep-access-token") == "tok-9" for m in metadata), metadata
    finally:
        server.stop(0)
