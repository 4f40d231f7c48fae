"""tracepipe as a Prometheus-monitored service, against Debian's real Prometheus and promtool:
the alert rules in deploy/ load and evaluate, and Prometheus scraping a running tracepipe sees
the span counters the test caused."""

import contextlib
import json
import re
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from harness import ROOT, Tracepipe, free_port, http_get, metric_sum, wait_for, wait_port
from sdk import emit_rich_trace, provider

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} not installed: run tests/install-peers.sh (Debian package prometheus)")
    return path


def test_promtool_checks_the_alert_rules():
    p = subprocess.run([need("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


@contextlib.contextmanager
def prometheus(scrape_port: int, rules: Path = None):
    """Debian's Prometheus scraping 127.0.0.1:`scrape_port` every second (and evaluating `rules`),
    ready; yields its HTTP port."""
    exe = need("prometheus")
    work = Path(tempfile.mkdtemp(prefix="prom-"))
    rule_files = f'rule_files: ["{rules}"]\n' if rules else ""
    (work / "prometheus.yml").write_text(f"""
global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
{rule_files}scrape_configs:
  - job_name: tracepipe
    static_configs: [{{ targets: ["127.0.0.1:{scrape_port}"] }}]
""")
    port = free_port()
    log = open(work / "prometheus.log", "wb")
    prom = subprocess.Popen([exe, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30, what="prometheus")
        # The port opens before the TSDB is loaded; the API answers 503 until /-/ready is 200.
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, timeout=30, what="prometheus ready")
        yield port
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_prometheus_scrapes_tracepipe_and_evaluates_the_rules():
    grpc = free_port()
    with Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{grpc} }} }}
sinks:
  out: {{ type: debug, inputs: [apps], verbosity: none }}
""", "monitored") as tp:
        sdk, _ = provider("grpc", f"http://127.0.0.1:{grpc}")
        for i in range(3):
            emit_rich_trace(sdk, f"-{i}")
        sdk.shutdown()
        wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_sink_sent_spans_total") >= 15, what="15 spans through")
        with prometheus(tp.metrics_port, RULES) as port:
            def scraped():
                r = api(port, "/api/v1/query?query=sum(tracepipe_receiver_accepted_spans_total)")["result"]
                return r and float(r[0]["value"][1]) == 15

            wait_for(scraped, timeout=30, what="Prometheus to scrape 15 accepted spans")
            up = api(port, "/api/v1/query?query=up")["result"]
            assert [x["value"][1] for x in up] == ["1"], up
            sent = api(port, '/api/v1/query?query=tracepipe_sink_sent_spans_total{sink="out"}')["result"]
            assert float(sent[0]["value"][1]) == 15, sent
            # Every rule of deploy/prometheus/rules.yaml evaluates against the real series.
            def evaluated():
                rules = [r for g in api(port, "/api/v1/rules")["groups"] for r in g["rules"]]
                return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok" for r in rules) else None
            rules = wait_for(evaluated, timeout=30, what="every rule evaluated")
            want = RULES.read_text().count("- alert:")
            assert len(rules) == want and all(r["state"] == "inactive" for r in rules), rules  # a healthy run fires nothing


def test_the_alerts_fire_when_they_should(tmp_path):
    """`promtool test rules`: synthetic series that should page (a sink dropping spans, Kafka lag
    growing, a sink queue near full, tail sampling deciding early for memory — not for shutdown)
    fire exactly their alerts, with their summaries, and not before their `for:` has passed."""
    (tmp_path / "alerts_test.yaml").write_text(f"""
rule_files: ["{RULES}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tracepipe_sink_failed_spans_total{{instance="a", sink="bus", reason="retries_exhausted"}}'
        values: '0+10x40'
      - series: 'tracepipe_receiver_kafka_lag_records{{instance="a", receiver="in", topic="otlp_spans", partition="0"}}'
        values: '150000+1000x40'
      - series: 'tracepipe_sink_queue_spans{{instance="a", sink="up"}}'
        values: '95000x40'
      - series: 'tracepipe_sink_queue_capacity_spans{{instance="a", sink="up"}}'
        values: '100000x40'
      - series: 'tracepipe_receiver_refused_spans_total{{instance="a", receiver="apps", transport="grpc", reason="pipeline_full"}}'
        values: '0x40'
      - series: 'tracepipe_processor_tail_sampling_early_decisions_total{{instance="a", processor="sample", reason="memory"}}'
        values: '0+50x40'
      - series: 'tracepipe_processor_tail_sampling_early_decisions_total{{instance="a", processor="sample", reason="shutdown"}}'
        values: '0+50x40'
    alert_rule_test:
      - eval_time: 14m
        alertname: TracepipeTailSamplingDecidingEarly
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeTailSamplingDecidingEarly
        exp_alerts:
          - exp_labels: {{ instance: a, processor: sample }}
            exp_annotations: {{ summary: "tail sampling sample decides traces before their wait for lack of max_bytes: raise max_bytes or add replicas" }}
      - eval_time: 3m
        alertname: TracepipeSinkFailing
        exp_alerts: []
      - eval_time: 10m
        alertname: TracepipeSinkFailing
        exp_alerts:
          - exp_labels: {{ instance: a, sink: bus, reason: retries_exhausted }}
            exp_annotations: {{ summary: "sink bus drops spans (retries_exhausted)" }}
      - eval_time: 10m
        alertname: TracepipeSinkQueueFull
        exp_alerts:
          - exp_labels: {{ instance: a, sink: up }}
            exp_annotations: {{ summary: "sink up queue above 90%" }}
      - eval_time: 10m
        alertname: TracepipeKafkaLagGrowing
        exp_alerts: []
      - eval_time: 30m
        alertname: TracepipeKafkaLagGrowing
        exp_alerts:
          - exp_labels: {{ topic: otlp_spans }}
            exp_annotations: {{ summary: "consumers of otlp_spans fall behind: add replicas (up to the partition count)" }}
      - eval_time: 30m
        alertname: TracepipeRefusingSpans
        exp_alerts: []
      - eval_time: 4m
        alertname: TracepipeSinkQueueFull
        exp_alerts: []
  # A receiver refusing spans, and one receiving malformed requests (2/s): pending from the first
  # minute, so firing only after their 10 m.
  - interval: 1m
    input_series:
      - series: 'tracepipe_receiver_refused_spans_total{{instance="a", receiver="edge", transport="http", reason="memory"}}'
        values: '0+100x40'
      - series: 'tracepipe_receiver_malformed_requests_total{{instance="a", receiver="zipkin", transport="http"}}'
        values: '0+120x40'
    alert_rule_test:
      - eval_time: 9m
        alertname: TracepipeRefusingSpans
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeRefusingSpans
        exp_alerts:
          - exp_labels: {{ instance: a, receiver: edge }}
            exp_annotations: {{ summary: "edge refuses spans: the graph is full (clients retry)" }}
      - eval_time: 9m
        alertname: TracepipeMalformedRequests
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeMalformedRequests
        exp_alerts:
          - exp_labels: {{ instance: a, receiver: zipkin }}
            exp_annotations: {{ summary: "zipkin receives malformed requests" }}
  # The rest of the components that can fail or fill: each alert silent before its `for:` and
  # firing after it; a healthy series of the same metric (zero rate, or below the line) never.
  - interval: 1m
    input_series:
      - series: 'tracepipe_processor_guid_evicted_early_total{{instance="a", processor="rebuild"}}'
        values: '0+30x40'
      - series: 'tracepipe_processor_guid_evicted_early_total{{instance="a", processor="quiet"}}'
        values: '5x40'
      - series: 'tracepipe_processor_dropped_spans_total{{instance="a", processor="batch", reason="decode"}}'
        values: '0+3x40'
      - series: 'tracepipe_processor_tail_sampling_policy_errors_total{{instance="a", processor="sample"}}'
        values: '0+1x40'
      - series: 'tracepipe_process_resident_memory_bytes{{instance="a"}}'
        values: '900x40'
      - series: 'tracepipe_memory_soft_limit_bytes{{instance="a"}}'
        values: '850x40'
      - series: 'tracepipe_process_resident_memory_bytes{{instance="b"}}'
        values: '500x40'
      - series: 'tracepipe_memory_soft_limit_bytes{{instance="b"}}'
        values: '850x40'
      - series: 'tracepipe_receiver_tls_handshake_failures_total{{instance="a", receiver="apps", transport="grpc", reason="bad_client_certificate"}}'
        values: '0+600x40'
      - series: 'tracepipe_receiver_tls_handshake_failures_total{{instance="a", receiver="apps", transport="grpc", reason="closed"}}'
        values: '0+6x40'
      - series: 'tracepipe_receiver_unauthenticated_requests_total{{instance="a", receiver="apps", transport="http"}}'
        values: '0+60x40'
      - series: 'tracepipe_receiver_kafka_committed_failed_records_total{{instance="a", receiver="bus", reason="permanent"}}'
        values: '0+2x40'
      - series: 'tracepipe_sink_queue_corrupt_total{{instance="a", sink="up"}}'
        values: '0x10 1x30'
    alert_rule_test:
      - eval_time: 14m
        alertname: TracepipeGuidInferenceResolvingEarly
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeGuidInferenceResolvingEarly
        exp_alerts:
          - exp_labels: {{ instance: a, processor: rebuild }}
            exp_annotations: {{ summary: "guid inference rebuild resolves guids before their wait for lack of max_bytes: raise max_bytes or add replicas" }}
      - eval_time: 4m
        alertname: TracepipeProcessorDroppingSpans
        exp_alerts: []
      - eval_time: 10m
        alertname: TracepipeProcessorDroppingSpans
        exp_alerts:
          - exp_labels: {{ instance: a, processor: batch, reason: decode }}
            exp_annotations: {{ summary: "processor batch drops spans (decode)" }}
      - eval_time: 9m
        alertname: TracepipeTailSamplingPolicyErrors
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeTailSamplingPolicyErrors
        exp_alerts:
          - exp_labels: {{ instance: a, processor: sample }}
            exp_annotations: {{ summary: "a sql policy of sample fails at run time (it votes not sampled): check its predicate" }}
      - eval_time: 4m
        alertname: TracepipeAboveSoftMemoryLimit
        exp_alerts: []
      - eval_time: 10m
        alertname: TracepipeAboveSoftMemoryLimit
        exp_alerts:
          - exp_labels: {{ instance: a }}
            exp_annotations: {{ summary: "a is above its soft memory limit: receivers refuse until it is below (raise memory.limit or add replicas)" }}
      - eval_time: 9m
        alertname: TracepipeTlsHandshakesFailing
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeTlsHandshakesFailing
        exp_alerts:
          - exp_labels: {{ instance: a, receiver: apps, reason: bad_client_certificate }}
            exp_annotations: {{ summary: "apps: TLS handshakes fail (bad_client_certificate): clients with the wrong CA, certificate or protocol" }}
      - eval_time: 9m
        alertname: TracepipeUnauthenticatedRequests
        exp_alerts: []
      - eval_time: 20m
        alertname: TracepipeUnauthenticatedRequests
        exp_alerts:
          - exp_labels: {{ instance: a, receiver: apps }}
            exp_annotations: {{ summary: "apps refuses requests without a valid bearer token" }}
      - eval_time: 4m
        alertname: TracepipeKafkaRecordsCommittedUndelivered
        exp_alerts: []
      - eval_time: 10m
        alertname: TracepipeKafkaRecordsCommittedUndelivered
        exp_alerts:
          - exp_labels: {{ instance: a, receiver: bus, reason: permanent }}
            exp_annotations: {{ summary: "bus commits Kafka records whose delivery failed (permanent)" }}
      - eval_time: 9m
        alertname: TracepipeDiskQueueCorrupt
        exp_alerts: []
      - eval_time: 12m
        alertname: TracepipeDiskQueueCorrupt
        exp_alerts:
          - exp_labels: {{ instance: a, sink: up }}
            exp_annotations: {{ summary: "sink up's disk queue skipped damaged records" }}
""")
    p = subprocess.run([need("promtool"), "test", "rules", str(tmp_path / "alerts_test.yaml")], capture_output=True, text=True)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    # Every alert in the file has a case here that expects it to fire.
    fired = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", (tmp_path / "alerts_test.yaml").read_text()))
    assert fired == set(re.findall(r"- alert: (\w+)", RULES.read_text())), fired
