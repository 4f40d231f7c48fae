"""README's first command builds tracepipe without its default `archive` feature
(`--no-default-features`: no DataFusion, about half the cold build). tests/run.sh builds that
binary too (`$TRACEPIPE_LEAN_BIN`); these tests hold it to what README says of it: it runs its
embedded default graph (the same graph minus the Parquet sink) and delivers, and every part of
the trace archive it leaves out — the `parquet` sink, the `archive` receiver, the `sql` policy,
`query`, `replay`, `sample` — is refused with one clear error each (all at once, with line and
column), never accepted and never a crash. The full binary accepts the same file (the control)."""

import os
import subprocess
import time
from pathlib import Path

import requests

from harness import free_port, metric_sum, parse_metrics, tracepipe_bin, wait_for


def lean_bin() -> str:
    b = os.environ.get("TRACEPIPE_LEAN_BIN") or str(Path(tracepipe_bin()).with_name("tracepipe-lean"))
    assert Path(b).exists(), f"the build without default features is missing at {b}: tests/run.sh builds it (cargo build --no-default-features --bin tracepipe, copied to tracepipe-lean)"
    return b


ARCHIVE_PARTS = """
receivers:
  apps: { type: otlp, http: { endpoint: 127.0.0.1:0 } }
  old: { type: archive, path: /tmp/none }
processors:
  sample:
    type: tail_sampling
    inputs: [apps, old]
    decision_wait: 2s
    policies:
      - { name: checkout, type: sql, where: "attributes['http.route'] = '/checkout'" }
sinks:
  keep: { type: parquet, inputs: [sample], path: /tmp/none-out }
"""


def test_the_lean_build_runs_its_default_graph_and_delivers(tmp_path):
    lean = lean_bin()
    printed = subprocess.run([lean, "print-config"], capture_output=True, text=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    assert "type: parquet" not in printed.stdout and "type: debug" in printed.stdout, printed.stdout
    full = subprocess.run([tracepipe_bin(), "print-config"], capture_output=True, text=True, timeout=30).stdout
    assert "type: parquet" in full, "the full build's default graph keeps the archive"
    # Every other line of the default graph is the full build's.
    assert set(printed.stdout.splitlines()) < set(full.splitlines())

    ports = {k: free_port() for k in ("OTLP_GRPC", "OTLP_HTTP", "JAEGER_BINARY", "JAEGER_COMPACT", "JAEGER_HTTP", "JAEGER_SAMPLING", "ZIPKIN", "LIGHTSTEP_GRPC", "LIGHTSTEP_HTTP", "METRICS")}
    env = {**os.environ, **{f"TRACEPIPE_{k}_ENDPOINT": f"127.0.0.1:{p}" for k, p in ports.items()}}
    log = open(tmp_path / "lean.log", "wb")
    proc = subprocess.Popen([lean, "run"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        metrics = f"http://127.0.0.1:{ports['METRICS']}/metrics"

        def ready():
            assert proc.poll() is None, (tmp_path / "lean.log").read_text()
            try:
                return requests.get(f"http://127.0.0.1:{ports['METRICS']}/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(ready, timeout=30, what="the lean build's default graph ready")
        body = {"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "demo"}}]},
                                   "scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
                                                              "name": f"op{i}", "kind": 2, "startTimeUnixNano": "1700000000000000000",
                                                              "endTimeUnixNano": "1700000000100000000"} for i in range(3)]}]}]}
        r = requests.post(f"http://127.0.0.1:{ports['OTLP_HTTP']}/v1/traces", json=body, timeout=10)
        assert r.status_code == 200, r.text
        # guid inference passes spans without the guid at once; the debug sink gets all three.
        sent = lambda: metric_sum(parse_metrics(requests.get(metrics, timeout=5).text), "tracepipe_sink_sent_spans_total", sink="debug")
        wait_for(lambda: sent() == 3, timeout=30, what="3 spans through the lean default graph to its debug sink")
        assert not (tmp_path / "tracepipe-data").exists(), "no archive is written by a build without it"
    finally:
        if proc.poll() is None:
            proc.terminate()
        rc = proc.wait(timeout=60)
        log.close()
    logs = (tmp_path / "lean.log").read_text(errors="replace")
    assert rc == 0, logs[-3000:]
    assert "panicked" not in logs, logs[-3000:]


def test_the_lean_build_refuses_every_archive_part_clearly_and_at_once(tmp_path):
    cfg = tmp_path / "archive.yaml"
    cfg.write_text(ARCHIVE_PARTS + "  bad: { type: debug, inputs: [apps], verbosity: loud }\n")
    lean = subprocess.run([lean_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    out = lean.stdout + lean.stderr
    assert lean.returncode == 78, out
    not_built = [l for l in out.splitlines() if "is not in this build of tracepipe" in l and "`archive` feature" in l]
    # One error per part, each at its `type:` (file:line:column), beside the unrelated error.
    assert len(not_built) == 3, out
    assert any(f"{cfg}:4:" in l and "receiver type `archive`" in l for l in not_built), out
    assert any(f"{cfg}:11:" in l and "policy `checkout`" in l and "`sql` policy" in l for l in not_built), out
    assert any(f"{cfg}:13:" in l and "sink type `parquet`" in l for l in not_built), out
    assert "unknown variant `loud`" in out, "the other error is reported with them"

    # The full build: only the unrelated error.
    full = subprocess.run([tracepipe_bin(), "validate", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert full.returncode == 78 and "not in this build" not in full.stdout + full.stderr and "unknown variant `loud`" in full.stdout + full.stderr, full.stdout + full.stderr

    # The archive commands: a clear error, the configuration exit code, no crash.
    for args in (["query", "SELECT 1"], ["replay", "--to", "grpc://127.0.0.1:4317"], ["sample", "--config", str(cfg)]):
        p = subprocess.run([lean_bin(), *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert p.returncode == 78 and "not in this build of tracepipe" in p.stderr and "panicked" not in p.stderr, (args, p.stderr)
