"""Scale-out through Kafka with the shipped topology: the files in deploy/scale-out/ run as they
are, configured only through environment variables, against a real broker (tansu), a real Envoy
mesh whose apps forward only x-request-id, and the apps' own OpenTelemetry SDK spans.

  Envoy sidecars --Zipkin--> agent A --+                 gateway-1 x2              gateway-2 x3
                                       +--> tracepipe-spans --> (group by trace, --> tracepipe-requests --> (guid inference,
  apps' OTel SDK --OTLP----> agent B --+    (key: trace id)     re-key by guid)      (key: request id)     tail sampling) --> backends

Proxy spans and SDK spans of one fragment reach Kafka through different agents; fragments of one
request carry different trace ids. Measured: every request the policies keep arrives whole (proxy
and SDK spans), in one trace, at one replica's backend, each span once; every request they drop
is absent."""

import re
import time

from harness import ROOT, Tansu, Tracepipe, free_port, metric_sum, read_jsonl_spans, recording_tracepipe, wait_for
from test_tail_sampling import kept_by_baseline

SCALE = ROOT / "deploy" / "scale-out"


def assigned(tp) -> list:
    """The partitions a consumer replica's last rebalance assigned it (from its log)."""
    lines = [l for l in tp.logs().splitlines() if "Kafka partitions assigned." in l]
    return re.findall(r"\d+", lines[-1].split("partitions=")[1]) if lines else []


def settled(replicas, partitions: int) -> bool:
    parts = [assigned(r) for r in replicas]
    return all(parts) and sorted(int(p) for ps in parts for p in ps) == list(range(partitions))


def attrs(span: dict) -> dict:
    return {a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", [])}


def backend():
    g = free_port()
    tp, out = recording_tracepipe(f"receivers:\n  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{g} }} }}\n", ["in"], "backend")
    return tp, g, out


def test_whole_requests_decided_once_across_three_replicas():
    from mesh.mesh import Mesh

    with Tansu() as kafka:
        kafka.create_topic("tracepipe-spans", 4)
        kafka.create_topic("tracepipe-requests", 6)
        env = {"KAFKA_BROKERS": kafka.bootstrap}
        zipkin, otlp = free_port(), free_port()
        agents = [
            Tracepipe.from_file(SCALE / "agent.yaml", {**env, "ZIPKIN_ENDPOINT": f"127.0.0.1:{zipkin}", "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}"}, "agent-a"),
            Tracepipe.from_file(SCALE / "agent.yaml", {**env, "ZIPKIN_ENDPOINT": f"127.0.0.1:{free_port()}", "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{otlp}"}, "agent-b"),
        ]
        backends = [backend() for _ in range(3)]
        groupers = [Tracepipe.from_file(SCALE / "gateway-1-group.yaml", env, f"gw1-{i}") for i in range(2)]
        samplers = [Tracepipe.from_file(SCALE / "gateway-2-sample.yaml", {**env, "EXPORT_ENDPOINT": f"http://127.0.0.1:{g}"}, f"gw2-{i}")
                    for i, (_, g, _) in enumerate(backends)]
        procs = [b for b, _, _ in backends] + agents + groupers + samplers
        try:
            for p in procs:
                p.start()
            wait_for(lambda: settled(groupers, 4) and settled(samplers, 6), timeout=90, what="both consumer groups settled")
            n = 40
            with Mesh("zipkin-proto", zipkin, forward="xrid", topology="chain", sdk_endpoint=f"http://127.0.0.1:{otlp}") as mesh:
                per = mesh.spans_per_request() + len(mesh.services)  # proxy spans + one SDK span per app
                for i in range(n):
                    status, _ = mesh.request("/productpage?fail" if i % 4 == 0 else "/productpage")
                    assert status == 200
                time.sleep(1)
                entry = [h for h in mesh.app_headers() if h["svc"] == "productpage"]
            # (the mesh is down: the apps flushed their SDK spans on exit)
            assert len(entry) == n
            requests = {h["headers"]["x-request-id"]: (int(h["headers"]["x-b3-traceid"], 16), "fail" in h["path"]) for h in entry}
            keep = {g for g, (root, fail) in requests.items() if fail or kept_by_baseline(root, 10)}
            assert 0 < len(keep) < n

            def delivered():
                return [read_jsonl_spans(out) for _, _, out in backends]

            wait_for(lambda: sum(map(len, delivered())) >= per * len(keep), timeout=120, what=f"{per * len(keep)} kept spans at the backends")
            time.sleep(8)  # anything that would arrive twice or late
            got = delivered()
            by_request = {}
            for replica, spans in enumerate(got):
                for s in spans:
                    a = attrs(s["span"])
                    g = a.get("guid:x-request-id") or a.get("app.request_id")
                    by_request.setdefault(g, []).append((replica, s["span"]))
            assert set(by_request) == keep, f"kept {sorted(set(by_request) & keep)}, missing {sorted(keep - set(by_request))}, extra {sorted(set(by_request) - keep)}"
            split = partial = 0
            for g, items in by_request.items():
                root = requests[g][0]
                replicas = {r for r, _ in items}
                traces = {s["traceId"] for _, s in items}
                ids = [s["spanId"] for _, s in items]
                split += len(replicas) > 1
                partial += len(items) != per or len(set(ids)) != len(ids) or traces != {f"{root:032x}"}
            assert (split, partial) == (0, 0), f"{split} requests split across replicas, {partial} not whole in one trace"
            # The SDK spans came through the other agent and carry no guid: they joined their
            # fragments by trace id, then followed them into the rebuilt trace.
            sdk = [s for items in by_request.values() for _, s in items if "app.request_id" in attrs(s)]
            assert len(sdk) == len(keep) * len(mesh.services)
            # Work was spread: every replica decided some requests, and they add up.
            decided = [metric_sum(r.metrics(), "tracepipe_processor_tail_sampling_traces_total") for r in samplers]
            assert all(d > 0 for d in decided), decided
            assert sum(metric_sum(r.metrics(), "tracepipe_processor_guid_retraced_spans_total") for r in samplers) > 0
            for p in procs:
                assert p.stop() == 0, p.logs()
            for p in procs:
                assert "panicked" not in p.logs()
        finally:
            for p in procs:
                p.__exit__()
