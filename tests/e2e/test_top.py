"""`tracepipe top` against a running tracepipe under load: the one-shot table (`--once`) names
every component with its kind and non-zero rates where spans flow, and the live view runs in a
real terminal (tmux), redraws, and quits on Ctrl-C."""

import re
import shutil
import subprocess
import threading
import time

import pytest

from harness import Tracepipe, free_port, tracepipe_bin

GRAPH = """
receivers:
  apps: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http} }} }}
processors:
  batch: {{ type: batch, inputs: [apps] }}
sinks:
  out: {{ type: debug, inputs: [batch], verbosity: none }}
"""


def _load(http: int, stop: threading.Event, sent: list):
    """Posts a 50-span request every 10 ms until `stop`."""
    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
    import os

    while not stop.is_set():
        spans = [Span(trace_id=os.urandom(16), span_id=os.urandom(8), name="op", start_time_unix_nano=1, end_time_unix_nano=2) for _ in range(50)]
        body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()
        r = requests.post(f"http://127.0.0.1:{http}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=5)
        assert r.status_code == 200, r.status_code
        sent.append(50)
        time.sleep(0.01)


def _rows(table: str) -> dict:
    """COMPONENT KIND IN/S OUT/S REFUSED/S FAILED/S HELD rows by component."""
    rows = {}
    for line in table.splitlines():
        m = re.match(r"^(\S+)\s+(receiver|processor|sink)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(.+?)\s*$", line)
        if m:
            num = lambda s: float(s[:-1]) * (1e6 if s.endswith("M") else 1e3) if s[-1] in "kM" else float(s)
            rows[m.group(1)] = {"kind": m.group(2), "in": num(m.group(3)), "out": num(m.group(4)), "refused": num(m.group(5)), "failed": num(m.group(6))}
    return rows


@pytest.fixture
def loaded():
    http = free_port()
    with Tracepipe(GRAPH.format(http=http), "top") as tp:
        stop, sent = threading.Event(), []
        t = threading.Thread(target=_load, args=(http, stop, sent))
        t.start()
        try:
            yield tp
        finally:
            stop.set()
            t.join()
        assert sum(sent) > 0
        assert tp.stop() == 0
    assert "panicked" not in tp.logs()


def test_top_once_names_every_component_with_its_rates(loaded):
    url = f"http://127.0.0.1:{loaded.metrics_port}/metrics"
    time.sleep(1.0)
    r = subprocess.run([tracepipe_bin(), "top", "--once", "--interval", "1s", "--url", url], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    rows = _rows(r.stdout)
    assert set(rows) == {"apps", "batch", "out"}, r.stdout
    assert [rows[c]["kind"] for c in ("apps", "batch", "out")] == ["receiver", "processor", "sink"]
    # ~5,000 spans/s are sent (50 every ~10 ms, less the request time): every stage moves some.
    for c in ("apps", "batch", "out"):
        assert rows[c]["in"] > 500 and rows[c]["out"] > 500, (c, r.stdout)
        assert rows[c]["refused"] == 0 and rows[c]["failed"] == 0, (c, r.stdout)


def test_top_refuses_a_url_that_is_not_a_metrics_endpoint():
    port = free_port()
    r = subprocess.run([tracepipe_bin(), "top", "--once", "--url", f"http://127.0.0.1:{port}/metrics"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "cannot scrape" in r.stderr, r.stderr
    r = subprocess.run([tracepipe_bin(), "top", "--once", "--url", "ftp://127.0.0.1/metrics"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "only http://" in r.stderr, r.stderr


def test_top_runs_live_in_a_terminal_and_quits_on_ctrl_c(loaded):
    tmux = shutil.which("tmux")
    assert tmux, "tmux is not installed: run `bash tests/install-peers.sh`"
    session = f"tracepipe-top-{loaded.metrics_port}"
    url = f"http://127.0.0.1:{loaded.metrics_port}/metrics"
    subprocess.run([tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "20", f"{tracepipe_bin()} top --interval 300ms --url {url}"], check=True)
    try:
        screens = []
        deadline = time.time() + 15
        while time.time() < deadline and len(screens) < 2:
            time.sleep(0.5)
            screen = subprocess.run([tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            rows = _rows(screen)
            if set(rows) == {"apps", "batch", "out"} and all(r["in"] > 0 for r in rows.values()) and screen not in screens:
                screens.append(screen)
        assert len(screens) == 2, f"two different live screens with every component moving; last:\n{screen}"
        assert "Ctrl-C to quit" in screens[-1]
        subprocess.run([tmux, "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.time() + 10
        while time.time() < deadline and subprocess.run([tmux, "has-session", "-t", session], capture_output=True).returncode == 0:
            time.sleep(0.2)
        assert subprocess.run([tmux, "has-session", "-t", session], capture_output=True).returncode != 0, "top did not quit on Ctrl-C"
    finally:
        subprocess.run([tmux, "kill-session", "-t", session], capture_output=True)


def test_top_reads_at_most_16_mib_of_a_scrape():
    """An endpoint that answers with an endless body does not make `top` hold it: past 16 MiB the
    scrape fails with a clear message."""
    import http.server

    class Huge(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            line = b"# padding " + b"x" * 1000 + b"\n"
            try:
                for _ in range(20 * 1024):  # ~20 MiB
                    self.wfile.write(line)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        r = subprocess.run([tracepipe_bin(), "top", "--once", "--url", url], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and "at most 16777216 bytes" in r.stderr, r.stderr
    finally:
        server.shutdown()
