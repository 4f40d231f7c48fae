"""The Grafana dashboard (deploy/grafana/tracepipe.json) against real series: a running tracepipe
whose graph has every kind of component the dashboard shows (OTLP and Zipkin receivers, a Kafka
receiver, guid inference, tail sampling, batch, debug, Kafka and OTLP sinks, a memory limit),
driven by the Envoy mesh in x-request-id-only mode, the OTel SDK, a malformed request, an upstream
that is down and a receiver whose sink is stuck, is scraped by Debian's Prometheus; every query of
every panel, run through Prometheus's HTTP API, returns at least one series. A panel whose metric
or label is misspelt returns none and fails the test."""

import json
import re
import time
from urllib.parse import quote

from harness import ROOT, Tansu, Tracepipe, free_port, metric_sum, wait_for
from mesh.mesh import Mesh
from otlp_wire import post
from sdk import emit_rich_trace, provider
from test_prometheus import api, prometheus

DASHBOARD = ROOT / "deploy" / "grafana" / "tracepipe.json"


def queries() -> list:
    """(panel title, PromQL) for every target, with Grafana's variables as a query would get them."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "30s").replace('job=~"$job"', 'job=~".+"')
            assert "$" not in expr, expr
            out.append((p["title"], expr))
    return out


def test_the_dashboard_is_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20 and len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    names = {m for _, e in queries() for m in re.findall(r"tracepipe_[a-z_]+", e)}
    # Every metric the dashboard reads is one tracepipe exports (pipeline/telemetry.rs).
    exported = set(re.findall(r'"(tracepipe_[a-z_]+)"', (ROOT / "pipeline" / "telemetry.rs").read_text()))
    unknown = {n for n in names if n.removesuffix("_bucket") not in exported}
    assert not unknown, unknown


def test_every_panel_returns_series_from_a_running_tracepipe(tmp_path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
    g, h, z, jam, dead = (free_port() for _ in range(5))
    with Tansu() as kafka:
        kafka.create_topic("dash", 2)
        k = kafka.bootstrap
        tp = Tracepipe(f"""
receivers:
  apps: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{g} }}, http: {{ endpoint: 127.0.0.1:{h} }} }}
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{z} }}
  jammed: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{jam} }} }}
  bus: {{ type: kafka, brokers: ["{k}"], topic: dash, group_id: dash, initial_offset: earliest, session_timeout: 6s, heartbeat_interval: 1s }}
processors:
  rebuild: {{ type: guid_inference, inputs: [mesh, apps], wait: 1s }}
  sample:
    type: tail_sampling
    inputs: [rebuild]
    decision_wait: 1s
    max_trace_spans: 3
    policies: [ {{ name: errors, type: status_code, status_codes: [ERROR] }}, {{ name: half, type: probabilistic, sampling_percentage: 50 }} ]
  batch: {{ type: batch, inputs: [sample], send_batch_size: 50, timeout: 100ms }}
sinks:
  out: {{ type: debug, inputs: [batch], verbosity: none }}
  bus_out: {{ type: kafka, inputs: [batch], brokers: ["{k}"], topic: dash }}
  from_bus: {{ type: debug, inputs: [bus], verbosity: none }}
  dead: {{ type: otlp, inputs: [batch], endpoint: "http://127.0.0.1:{dead}", retry: {{ initial_interval: 100ms, max_elapsed_time: 1s }} }}
  stuck: {{ type: otlp, inputs: [jammed], endpoint: "http://127.0.0.1:{dead}", queue: {{ max_spans: 100 }}, retry: {{ max_elapsed_time: 600s }} }}
memory: {{ limit: 2GiB }}
""", "dashboard")
        with tp, Mesh("zipkin-proto", z, forward="xrid", topology="chain") as mesh:
            for _ in range(10):
                assert mesh.request()[0] == 200
            sdk, _ = provider("grpc", f"http://127.0.0.1:{g}")
            for i in range(5):
                emit_rich_trace(sdk, f"-dash{i}")
            sdk.shutdown()
            assert post(h, b"\x0a\xff\xff\xff not protobuf").status_code == 400
            # The stuck sink holds 100 spans; its input channel fills; then the receiver refuses.
            body = ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[
                Span(trace_id=bytes([7] * 16), span_id=bytes([i + 1] * 8), name="jam", start_time_unix_nano=1, end_time_unix_nano=2) for i in range(10)])])]).SerializeToString()
            codes = [post(jam, body).status_code for _ in range(120)]
            assert 503 in codes, codes
            wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_processor_guid_edges_inferred_total") > 0, timeout=30, what="guid inference made edges")
            wait_for(lambda: metric_sum(tp.metrics(), "tracepipe_sink_failed_spans_total", sink="dead") > 0, timeout=30, what="the dead upstream's failures")
            wait_for(lambda: "tracepipe_receiver_kafka_lag_records" in tp.telemetry_get("/metrics")[1], timeout=60, what="the Kafka receiver's lag gauge")
            with prometheus(tp.metrics_port) as port:
                def empty():
                    return [(t, e) for t, e in queries() if not api(port, "/api/v1/query?query=" + quote(e))["result"]]
                # Rates need two scrapes in their window: poll until every query answers, for 60 s.
                deadline, missing = time.time() + 60, None
                while time.time() < deadline:
                    missing = empty()
                    if not missing:
                        break
                    time.sleep(2)
                assert not missing, "panels without series:\n" + "\n".join(f"  {t}: {e}" for t, e in missing)
                accepted = api(port, "/api/v1/query?query=" + quote('sum(tracepipe_receiver_accepted_spans_total{job=~".+"})'))["result"]
                assert float(accepted[0]["value"][1]) > 0
            # SIGTERM: the stuck sink's spans are given up (counted `shutdown`), the process exits 0.
            assert tp.stop() == 0, tp.logs()[-3000:]
        assert "panicked" not in tp.logs()
