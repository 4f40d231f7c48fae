"""The scale-out topology at the highest rate this machine sustains: deploy/scale-out/ as shipped
(two agents -> tansu -> 2 gateway-1 replicas -> tansu -> 3 gateway-2 replicas -> three recording
backends), loaded with Envoy x-request-id-only requests (3 fragments with different trace ids, 5
proxy spans, one guid per request; new ids per request) over OTLP/gRPC as fast as the agent takes
them. Prints one JSON line: spans sent and the send rate, how long the tiers took to drain, the
end-to-end rate, the peak consumer lag of each tier, and the outcome per request: kept requests
delivered whole, lost, partial, delivered twice, kept without the policy implying it.

  tests/.venv/bin/python tests/bench/scale_out.py --requests 20000 [--kill]

`--kill` sends SIGKILL to one gateway-2 replica once the gateway-2 tier has decided a third of
the spans. Uses the debug build
(or TRACEPIPE_BIN). A measurement, not a test: nothing is asserted."""

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import grpc  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span  # noqa: E402

from harness import Tansu, metric_sum, read_jsonl_spans  # noqa: E402
from test_scale_out import Topology, attrs  # noqa: E402
from test_tail_sampling import kept_by_baseline  # noqa: E402

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GUID_MARK, TRACE_MARK = b"RRRRRRRR", b"TTTTTTTT"
PER_REQUEST = 5


def template(n: int):
    """An export of `n` requests whose guids and trace ids carry markers the sender replaces per
    export; returns the bytes and each request's root-fragment trace id suffix."""
    per_service, roots = {}, []
    for r in range(n):
        guid = f"RRRRRRRR-{r:04x}-4a1b-9c2e-6d2a0b9e7c55"
        t0 = time.time_ns() + r * 10_000
        frags = [TRACE_MARK + os.urandom(8) for _ in range(3)]
        roots.append(frags[0][8:])
        ids = [os.urandom(8) for _ in range(5)]
        shape = [  # service, kind, fragment, span, parent, start µs, end µs
            ("productpage", 2, 0, 0, None, 0, 9000),
            ("productpage", 3, 1, 1, None, 1000, 8000),
            ("reviews", 2, 1, 2, 1, 1100, 7900),
            ("reviews", 3, 2, 3, None, 2000, 7000),
            ("ratings", 2, 2, 4, 3, 2100, 6900),
        ]
        for svc, kind, frag, sid, parent, start, end in shape:
            a = [KeyValue(key="guid:x-request-id", value=AnyValue(string_value=guid)),
                 KeyValue(key="node_id", value=AnyValue(string_value=f"sidecar~10.12.4.17~{svc}-v1-1.default~default.svc.cluster.local")),
                 KeyValue(key="http.url", value=AnyValue(string_value=f"http://{svc}:9080/{svc}/{r}")),
                 KeyValue(key="http.status_code", value=AnyValue(string_value="200")),
                 KeyValue(key="component", value=AnyValue(string_value="proxy"))]
            per_service.setdefault(svc, []).append(Span(
                trace_id=frags[frag], span_id=ids[sid], parent_span_id=ids[parent] if parent is not None else b"",
                name=f"{svc}.default.svc.cluster.local:9080/*", kind=kind, start_time_unix_nano=t0 + start * 1000,
                end_time_unix_nano=t0 + end * 1000, attributes=a))
    out = []
    for svc, spans in per_service.items():
        rs = ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])
        rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=f"{svc}.default")))
        out.append(rs)
    return ExportTraceServiceRequest(resource_spans=out).SerializeToString(), roots


def scrape(p, name: str, **labels) -> float:
    """A replica's metric; 0 for one that is gone or too busy to answer within the timeout."""
    try:
        return metric_sum(p.metrics(), name, **labels) if p.proc and p.proc.poll() is None else 0.0
    except Exception:
        return 0.0


def lag(procs) -> float:
    return sum(scrape(p, "tracepipe_receiver_kafka_lag_records") for p in procs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--per-export", type=int, default=100, help="requests per OTLP export")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--kill", action="store_true", help="SIGKILL one gateway-2 replica halfway")
    a = ap.parse_args()
    body, roots = template(a.per_export)
    exports = a.requests // a.per_export
    expected = {}  # guid -> root trace id
    for seq in range(1, exports + 1):
        for r, suffix in enumerate(roots):
            expected[f"{seq:08x}-{r:04x}-4a1b-9c2e-6d2a0b9e7c55"] = int.from_bytes(seq.to_bytes(8, "big") + suffix, "big")
    total = exports * a.per_export * PER_REQUEST

    with Tansu() as kafka, Topology(kafka) as topo:
        call = grpc.insecure_channel(f"127.0.0.1:{topo.otlp}").unary_unary(EXPORT, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        lock, state, peaks = threading.Lock(), {"next": 0, "retries": 0}, {"gw1": 0.0, "gw2": 0.0}
        sampling = threading.Event()

        def sender():
            while True:
                with lock:
                    state["next"] += 1
                    seq = state["next"]
                if seq > exports:
                    return
                req = body.replace(GUID_MARK, b"%08x" % seq).replace(TRACE_MARK, seq.to_bytes(8, "big"))
                while True:
                    try:
                        call(req, timeout=30)
                        break
                    except grpc.RpcError:  # refused (backpressure): retry, as an SDK would
                        with lock:
                            state["retries"] += 1
                        time.sleep(0.05)

        def sample_lag():
            while not sampling.wait(1.0):
                peaks["gw1"] = max(peaks["gw1"], lag(topo.groupers))
                peaks["gw2"] = max(peaks["gw2"], lag(topo.samplers))

        threading.Thread(target=sample_lag, daemon=True).start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=sender) for _ in range(a.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        sent = time.monotonic() - t0
        if a.kill:
            # Mid-run for the gateway-2 tier: once it has decided a third of the spans (the agents
            # take the load far faster than the tiers pass it on).
            while sum(scrape(s, "tracepipe_processor_tail_sampling_spans_total") for s in topo.samplers) < total / 3:
                time.sleep(0.2)
            victim = topo.samplers[0]
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
        alive = [s for s in topo.samplers if s.proc.poll() is None]

        def decided():
            return sum(scrape(s, "tracepipe_processor_tail_sampling_spans_total") for s in alive)

        # Drained: no lag in either tier and nothing decided for 5 s (lag comes from librdkafka's
        # statistics every 5 s: the figure is good to about that).
        last, since = -1.0, time.monotonic()
        while True:
            now, d = time.monotonic(), decided()
            if d != last:
                last, since = d, now
            # The tiers hold 11 s by design; after a kill the dead replica's partitions are
            # unowned (no lag reported) until its session times out (10 s) and they move.
            quiet = 20 if a.kill else 5
            settled = d >= total or (now - since >= quiet and now - t0 >= sent + 15)
            if settled and lag(topo.groupers) == 0 and lag(alive) == 0:
                break
            if now - t0 > sent + 900:
                raise RuntimeError(f"not drained after 900 s: {d} of {total} spans decided")
            time.sleep(0.5)
        drained = since - t0
        time.sleep(3)
        sampling.set()

        got = {}
        for _, _, path in topo.backends:
            for s in read_jsonl_spans(path):
                got.setdefault(attrs(s["span"]).get("guid:x-request-id"), []).append(s["span"])
        keep = {g for g, root in expected.items() if kept_by_baseline(root, 10)}
        whole = partial = twice = 0
        for g, spans in got.items():
            ids = Counter(s["spanId"] for s in spans)
            if len(ids) == PER_REQUEST and {s["traceId"] for s in spans} == {f"{expected.get(g, 0):032x}"}:
                whole += 1
                twice += max(ids.values()) > 1
            else:
                partial += 1
        print(json.dumps({
            "spans_sent": total, "send_seconds": round(sent, 1), "send_spans_per_s": round(total / sent),
            "refused_and_retried_exports": state["retries"],
            "drained_seconds": round(drained, 1),
            # The tiers hold each span 3 s (gateway-1) + 3 s (guid inference) + 5 s (decision) by design.
            "end_to_end_spans_per_s": round(total / max(drained - 11, sent)),
            "peak_lag_records": peaks, "killed_replica": a.kill,
            "kept_expected": len(keep), "kept_whole": whole, "lost": len(keep - set(got)), "partial": partial,
            "delivered_twice": twice, "kept_unexpected": len(set(got) - keep),
            # Records a new owner skipped because the previous one had finished them past its
            # commit (progress_topic).
            "skipped_as_done": sum(scrape(s, "tracepipe_receiver_kafka_already_done_records_total") for s in alive),
            # Of those, sent again with a later record of their key: as context (decided the
            # previous owner's way, not delivered again) or whole (outcome not known: twice).
            "replayed_as_context": sum(scrape(s, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "context"}) for s in alive),
            "replayed_whole": sum(scrape(s, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "whole"}) for s in alive),
            # Why a request can be decided apart: released before all its fragments were read.
            "gw2_guid_evicted_early": sum(scrape(s, "tracepipe_processor_guid_evicted_early_total") for s in alive),
            "gw2_early_decisions": sum(scrape(s, "tracepipe_processor_tail_sampling_early_decisions_total") for s in alive),
            "gw2_late_spans": sum(scrape(s, "tracepipe_processor_tail_sampling_late_spans_total") for s in alive),
            "gw1_early_decisions": sum(scrape(s, "tracepipe_processor_tail_sampling_early_decisions_total") for s in topo.groupers),
        }))
        for p in topo.procs:
            if p.proc and p.proc.poll() is None:
                p.stop()


if __name__ == "__main__":
    main()
