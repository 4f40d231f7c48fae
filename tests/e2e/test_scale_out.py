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

import os
import re
import time

from harness import ROOT, Tansu, Tracepipe, free_port, metric_sum, read_jsonl_spans, recording_tracepipe, wait_for
from test_tail_sampling import kept_by_baseline

SCALE = ROOT / "deploy" / "scale-out"
DEBUG = bool(os.environ.get("TRACEPIPE_E2E_DEBUG"))


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


class Topology:
    """The shipped files as processes: two agents (A: Zipkin from the mesh, B: OTLP from the
    apps), `groupers` gateway-1 replicas, `samplers` gateway-2 replicas, each exporting to its own
    recording backend."""

    def __init__(self, kafka, groupers=2, samplers=3, later=0):
        """`later` of the sampler replicas are left for the test to start."""
        self.kafka = kafka
        kafka.create_topic("tracepipe-spans", 4)
        kafka.create_topic("tracepipe-requests", 6)
        env = {"KAFKA_BROKERS": kafka.bootstrap}
        self.zipkin, self.otlp = free_port(), free_port()
        self.agents = [
            Tracepipe.from_file(SCALE / "agent.yaml", {**env, "ZIPKIN_ENDPOINT": f"127.0.0.1:{self.zipkin}", "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}"}, "agent-a"),
            Tracepipe.from_file(SCALE / "agent.yaml", {**env, "ZIPKIN_ENDPOINT": f"127.0.0.1:{free_port()}", "OTLP_GRPC_ENDPOINT": f"127.0.0.1:{self.otlp}"}, "agent-b"),
        ]
        self.backends = [backend() for _ in range(samplers)]
        self.groupers = [Tracepipe.from_file(SCALE / "gateway-1-group.yaml", env, f"gw1-{i}") for i in range(groupers)]
        debug = {"TRACEPIPE_LOG": "info,tracepipe_receivers::kafka=trace"} if DEBUG else {}
        self.samplers = [Tracepipe.from_file(SCALE / "gateway-2-sample.yaml", {**env, **debug, "EXPORT_ENDPOINT": f"http://127.0.0.1:{g}"}, f"gw2-{i}")
                         for i, (_, g, _) in enumerate(self.backends)]
        self.procs = [b for b, _, _ in self.backends] + self.agents + self.groupers + self.samplers[:samplers - later]
        self.later = self.samplers[samplers - later:]

    def __enter__(self):
        try:
            for p in self.procs:
                p.start()
            wait_for(lambda: settled(self.groupers, 4) and settled([s for s in self.samplers if s in self.procs], 6), timeout=90,
                     what="both consumer groups settled")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in self.procs + self.later:
            p.__exit__()

    def committed_to_end(self) -> bool:
        """Both consumer groups committed every partition to its end: every record was decided
        and delivered (a record is committed only then) and none will be read again, so what the
        backends hold now is final."""
        return self.kafka.committed_to_end("tracepipe-spans", "tracepipe-group") and self.kafka.committed_to_end("tracepipe-requests", "tracepipe-sample")

    def delivered(self):
        """Per replica: request id -> the spans of it that replica's backend got."""
        out = []
        for _, _, path in self.backends:
            got = {}
            for s in read_jsonl_spans(path):
                a = attrs(s["span"])
                got.setdefault(a.get("guid:x-request-id") or a.get("app.request_id"), []).append(s["span"])
            out.append(got)
        return out


def replays(replicas) -> str:
    """What the replicas still running replayed of their partitions' previous owners' finished
    records (pipeline::replay): as context (decided that way, removed by the sinks) or whole."""
    ctx = whole = stripped = 0.0
    for r in replicas:
        if r.proc is None or r.proc.poll() is not None:
            continue
        m = r.metrics()
        ctx += metric_sum(m, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "context"})
        whole += metric_sum(m, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "whole"})
        stripped += metric_sum(m, "tracepipe_sink_replayed_context_spans_total")
    return f"finished records replayed as context {ctx:.0f}, whole {whole:.0f}; context spans removed by the sinks {stripped:.0f}"


def expected(mesh, n):
    """request id -> (root trace id, failed) for the `n` requests the mesh's entry app saw."""
    entry = [h for h in mesh.app_headers() if h["svc"] == "productpage"]
    assert len(entry) == n, f"{len(entry)} of {n} requests reached the entry app"
    return {h["headers"]["x-request-id"]: (int(h["headers"]["x-b3-traceid"], 16), "fail" in h["path"]) for h in entry}


def deliveries(topo, requests, per, merged=False):
    """Every delivery of a request (its spans at one replica) checked: (requests delivered, whole
    deliveries, partial deliveries, requests delivered more than once). A replica that got a
    request's spans k times over (each span k times) made k whole deliveries.

    `merged`: the backends taken as one (as they are in production), for runs where a replica
    dies or leaves: a request it delivered and another replica delivers again is then one request
    whose spans all arrived, some twice — whole, delivered twice — and partial means a span of it
    never arrived (or arrived under another trace id)."""
    from collections import Counter
    whole = partial = 0
    count = Counter()
    backends = topo.delivered()
    if merged:
        union = {}
        for got in backends:
            for g, spans in got.items():
                union.setdefault(g, []).extend(spans)
        backends = [union]
    for got in backends:
        for g, spans in got.items():
            ids = Counter(s["spanId"] for s in spans)
            root = requests[g][0] if g in requests else None
            times = set(ids.values())
            ok = len(ids) == per and (merged or len(times) == 1) and {s["traceId"] for s in spans} == {f"{root:032x}"}
            k = max(times) if ok else 1
            whole += k if ok else 0
            partial += not ok
            count[g] += k
            if not ok and DEBUG:
                print("partial", g, requests.get(g), len(ids), sorted({s["traceId"] for s in spans}),
                      sorted((s["name"], s["traceId"][:6], s["spanId"][:6]) for s in spans))
    return set(count), whole, partial, sum(1 for c in count.values() if c > 1)


def where_lost(kafka, union, short, per):
    """(Debugging) For requests short of spans: which of their spans each topic holds, so a loss
    is placed at the agents/broker, gateway-1 or gateway-2."""
    from opentelemetry.proto.trace.v1.trace_pb2 import TracesData
    spans_of = {}
    for topic in ("tracepipe-spans", "tracepipe-requests"):
        seen, placed = {}, {}
        for partition, key, value in kafka.records(topic, 1, settle=2.0):
            for rs in TracesData.FromString(value).resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        a = {kv.key: kv.value.string_value for kv in sp.attributes}
                        g = a.get("guid:x-request-id") or a.get("app.request_id")
                        seen.setdefault(g, set()).add(sp.span_id.hex())
                        placed.setdefault(g, set()).add((partition, (key or "")[:8]))
        spans_of[topic] = seen
        spans_of[topic + "@"] = placed
    for g, missing in list(short.items())[:8]:
        print("short", g, "missing", missing, "of", per, "| in tracepipe-spans:", len(spans_of["tracepipe-spans"].get(g, ())),
              "in tracepipe-requests:", len(spans_of["tracepipe-requests"].get(g, ())), "delivered:", len(union.get(g, ())),
              "records (partition, key):", sorted(spans_of["tracepipe-requests@"].get(g, ())))


def slow_requests(topo) -> set:
    """Requests the `slow` policy kept on its own evidence: delivered marked by it, and the
    delivered trace really lasts 1 s or more (a loaded machine makes some requests slow)."""
    out = set()
    for got in topo.delivered():
        for g, spans in got.items():
            policies = {attrs(s).get("tracepipe.sampling.policy") for s in spans}
            length = max(int(s["endTimeUnixNano"]) for s in spans) - min(int(s["startTimeUnixNano"]) for s in spans)
            if policies == {"slow"} and length >= 1_000_000_000:
                out.add(g)
    return out


def steady_load(mesh, n: int, errors: list):
    """Sends `n` requests (every 4th one failing at the last hop), one per 150 ms, on a thread;
    statuses other than 200 go to `errors`. Returns the started thread."""
    import threading

    def load():
        for i in range(n):
            status, _ = mesh.request("/productpage?fail" if i % 4 == 0 else "/productpage")
            if status != 200:
                errors.append(status)
            time.sleep(0.15)

    sender = threading.Thread(target=load)
    sender.start()
    return sender


def test_whole_requests_decided_once_across_three_replicas():
    from mesh.mesh import Mesh

    with Tansu() as kafka, Topology(kafka) as topo:
        n = 40
        with Mesh("zipkin-proto", topo.zipkin, forward="xrid", topology="chain", sdk_endpoint=f"http://127.0.0.1:{topo.otlp}") as mesh:
            per = mesh.spans_per_request() + len(mesh.services)  # proxy spans + one SDK span per app
            for i in range(n):
                status, _ = mesh.request("/productpage?fail" if i % 4 == 0 else "/productpage")
                assert status == 200
            time.sleep(1)
            requests = expected(mesh, n)
        # (the mesh is down: the apps flushed their SDK spans on exit)
        keep = {g for g, (root, fail) in requests.items() if fail or kept_by_baseline(root, 10)}
        assert 0 < len(keep) < n
        wait_for(lambda: sum(len(s) for got in topo.delivered() for s in got.values()) >= per * len(keep), timeout=120,
                 what=f"{per * len(keep)} kept spans at the backends")
        # Anything that would arrive twice or late has arrived once both groups committed to the end.
        wait_for(topo.committed_to_end, timeout=120, what="both consumer groups committed to the end")
        got, whole, partial, twice = deliveries(topo, requests, per)
        slow = slow_requests(topo) - keep
        keep |= slow
        assert got == keep, f"missing {sorted(keep - got)}, extra {sorted(got - keep)}"
        # Each kept request once, whole (proxy and SDK spans, each span once) in its rebuilt
        # trace, at one replica.
        assert (whole, partial, twice) == (len(keep), 0, 0)
        # The SDK spans came through the other agent and carry no guid: they joined their
        # fragments by trace id, then followed them into the rebuilt trace.
        sdk = [s for r in topo.delivered() for spans in r.values() for s in spans if "app.request_id" in attrs(s)]
        assert len(sdk) == len(keep) * len(mesh.services)
        # Work was spread: every replica decided some requests.
        decided = [metric_sum(r.metrics(), "tracepipe_processor_tail_sampling_traces_total") for r in topo.samplers]
        assert all(d > 0 for d in decided), decided
        assert sum(metric_sum(r.metrics(), "tracepipe_processor_guid_retraced_spans_total") for r in topo.samplers) > 0
        for p in topo.procs:
            assert p.stop() == 0, p.logs()
            assert "panicked" not in p.logs()


def test_a_replica_killed_mid_run_loses_nothing_and_delivers_nothing_partially():
    """kill -9 of one gateway-2 replica under load: its uncommitted records are read again by the
    replicas that take its partitions, except those it had finished past its commit
    (`progress_topic`), which they skip. Every kept request arrives whole (the backends taken as
    one: a request the dead replica delivered in part — its late fragment was still unread — is
    sent again whole by the new owner); requests delivered twice (finished after the dead
    replica's last progress write) are counted and reported."""
    import signal

    from mesh.mesh import Mesh

    with Tansu() as kafka, Topology(kafka) as topo:
        n, errors = 150, []
        with Mesh("zipkin-proto", topo.zipkin, forward="xrid", topology="chain", sdk_endpoint=f"http://127.0.0.1:{topo.otlp}") as mesh:
            per = mesh.spans_per_request() + len(mesh.services)

            sender = steady_load(mesh, n, errors)
            time.sleep(8)
            victim = topo.samplers[0]
            held = metric_sum(victim.metrics(), "tracepipe_processor_tail_sampling_traces_held") + metric_sum(victim.metrics(), "tracepipe_processor_guid_spans_held")
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait()
            sender.join()
            assert not errors
            time.sleep(1)
            requests = expected(mesh, n)
        keep = {g for g, (root, fail) in requests.items() if fail or kept_by_baseline(root, 10)}

        def complete():
            got, whole, partial, twice = deliveries(topo, requests, per, merged=True)
            return (got, whole, partial, twice) if keep <= got else None

        wait_for(complete, timeout=180, what="every kept request at the backends")
        # Anything that would arrive twice or late has arrived once both groups committed to the end.
        wait_for(topo.committed_to_end, timeout=120, what="both consumer groups committed to the end")
        got, whole, partial, twice = deliveries(topo, requests, per, merged=True)
        slow = slow_requests(topo) - keep
        keep |= slow
        per_replica_partial = deliveries(topo, requests, per)[2]
        survivors = [s for s in topo.samplers if s is not victim]
        skipped = sum(metric_sum(s.metrics(), "tracepipe_receiver_kafka_already_done_records_total") for s in survivors)
        print(f"\nkill -9 of one of 3 replicas with {held:.0f} traces/spans held: {len(keep)} requests kept ({len(slow)} by the slow policy), "
              f"{whole} whole deliveries, {partial} partial, {twice} delivered twice; records the new owners skipped as done (progress_topic): {skipped:.0f}; "
              f"deliveries partial at one replica (the rest sent again whole by the new owner): {per_replica_partial}; {replays(survivors)}")
        assert got == keep, f"missing {sorted(keep - got)}, extra {sorted(got - keep)}"
        assert partial == 0
        # (`skipped` depends on where the dead replica's last commit and last progress write fell:
        # 0 when it finished nothing between them. The mock-cluster test in receivers/kafka
        # checks the skip itself.)
        assert twice <= len(keep) // 4, f"{twice} of {len(keep)} kept requests delivered twice"
        for p in topo.procs:
            if p is not victim:
                assert p.stop() == 0, p.logs()


def test_a_replica_added_and_one_stopped_mid_run_lose_nothing():
    """Rebalance under load: a third sampling replica joins, later one of the first two is
    stopped with SIGTERM. Partitions move incrementally (cooperative rebalancing); the replica
    losing a partition, and the one leaving (all of its partitions), hand what they hold of them
    back undecided before they commit. Nothing is lost, nothing arrives partially; requests
    delivered twice are counted and reported."""
    from mesh.mesh import Mesh

    with Tansu() as kafka, Topology(kafka, later=1) as topo:
        n, errors = 200, []
        with Mesh("zipkin-proto", topo.zipkin, forward="xrid", topology="chain", sdk_endpoint=f"http://127.0.0.1:{topo.otlp}") as mesh:
            per = mesh.spans_per_request() + len(mesh.services)

            sender = steady_load(mesh, n, errors)
            time.sleep(6)
            joining = topo.later[0]
            joining.start()
            # Settled *and balanced* (2 partitions each): the cooperative protocol moves partitions
            # in two rebalances, and the sum is already 6 between them. A member leaving while
            # the second one runs left partitions unassigned for minutes with tansu (seen twice
            # in a dozen runs, 2026-12-05: no member ever got partitions 0, 3, 5 back).
            three = [topo.samplers[0], topo.samplers[1], joining]
            wait_for(lambda: settled(three, 6) and all(len(assigned(r)) == 2 for r in three), timeout=60, what="the third replica owns its share of partitions")
            time.sleep(3)
            leaving = topo.samplers[0]
            assert leaving.stop() == 0, leaving.logs()
            sender.join()
            assert not errors
            time.sleep(1)
            requests = expected(mesh, n)
        keep = {g for g, (root, fail) in requests.items() if fail or kept_by_baseline(root, 10)}
        try:
            wait_for(lambda: keep <= deliveries(topo, requests, per, merged=True)[0], timeout=180, what="every kept request at the backends")
        except AssertionError:
            import zlib
            missing = sorted(keep - deliveries(topo, requests, per, merged=True)[0])
            print("MISSING", len(missing), "of", len(keep), [(g[:8], zlib.crc32(g.encode()) % 6) for g in missing][:10])
            raise
        # Anything that would arrive twice or late has arrived once both groups committed to the end.
        wait_for(topo.committed_to_end, timeout=120, what="both consumer groups committed to the end")
        got, whole, partial, twice = deliveries(topo, requests, per, merged=True)
        slow = slow_requests(topo) - keep
        keep |= slow
        handed = sum(metric_sum(r.metrics(), "tracepipe_receiver_kafka_handed_back_records_total") for r in (topo.samplers[1], joining))
        if DEBUG:
            import zlib
            union = {}
            for got_ in topo.delivered():
                for g, sp in got_.items():
                    union.setdefault(g, set()).update(x["spanId"] for x in sp)
            for g in sorted(keep):
                if len(union.get(g, ())) != per:
                    part = zlib.crc32(g.encode()) % 6
                    print("LOST spans of", g, len(union.get(g, ())), "of", per, "partition", part)
                    for i, r in enumerate(topo.samplers):
                        ev = [l for l in r.logs().splitlines() if f"partition={part} " in l or f"partition={part}\n" in l or l.endswith(f"partition={part}")]
                        print(f"  sampler {i}: {len(ev)} events; first/last:", ev[:2], ev[-3:])
        if DEBUG and twice:
            import zlib
            per_replica = topo.delivered()
            for g in sorted(keep):
                counts = [len(d.get(g, [])) for d in per_replica]
                if sum(counts) > per:
                    part = zlib.crc32(g.encode()) % 6
                    print("TWICE", g, "spans per replica", counts, "partition", part,
                          [sorted((x["name"][:14], x["traceId"][:6]) for x in d.get(g, [])) for d in per_replica])
                    for i, r in enumerate(topo.samplers):
                        for l in r.logs().splitlines():
                            if ("artition" in l and "assigned" in l) or "revoked" in l.lower() or (f"partition={part} " in l and "handed" not in l):
                                print(f"  gw2-{i}", l[:260])
        if DEBUG and partial:
            for i, r in enumerate(topo.samplers):
                print(f"--- sampler {i}", [g for g, sp in topo.delivered()[i].items() if g in requests and len(sp) != per])
                for l in r.logs().splitlines():
                    if "artition" in l or "ettled" in l or "not delivered" in l or "WARN" in l:
                        print(l[:300])
        print(f"\nrebalance (join, then SIGTERM): {len(keep)} requests kept ({len(slow)} by the slow policy), {whole} whole deliveries, {partial} partial, "
              f"{twice} delivered twice; records handed back by the replicas that stayed: {handed:.0f}; {replays([topo.samplers[1], joining])}")
        assert got == keep, f"missing {sorted(keep - got)}, extra {sorted(got - keep)}"
        assert partial == 0
        # Nothing twice. (Until 2026-12-05 0–1 per run: guid inference released the guids of all
        # partitions due in one tick as one batch, so tail sampling held a trace of the revoked
        # partition with another partition's acknowledgements, did not hand it over, and decided
        # it after the partition moved: delivered by both owners. What can still duplicate is a
        # record decided but not exported within revoke_timeout, 2 s.)
        assert twice == 0, f"{twice} of {len(keep)} kept requests delivered twice"
        for p in topo.procs + [joining]:
            if p is not leaving:
                assert p.stop() == 0, p.logs()


def test_a_broker_restart_under_load_loses_nothing():
    """The broker (tansu on SQLite: records and committed offsets survive it) is stopped with
    SIGTERM under load and started again 8 s later. The agents hold what they receive meanwhile
    (librdkafka's buffer, bounded by `max_buffer_bytes`) and retry; the gateways reconnect and go on
    from their committed offsets. Every kept request arrives whole, no dropped request has a
    fragment delivered, no span fails or is refused anywhere; repeated deliveries are reported."""
    from harness import peak_rss
    from mesh.mesh import Mesh

    with Tansu(persistent=True) as kafka, Topology(kafka) as topo:
        n, errors = 150, []
        with Mesh("zipkin-proto", topo.zipkin, forward="xrid", topology="chain", sdk_endpoint=f"http://127.0.0.1:{topo.otlp}") as mesh:
            per = mesh.spans_per_request() + len(mesh.services)
            sender = steady_load(mesh, n, errors)
            time.sleep(6)
            kafka.stop()
            accepted = [metric_sum(a.metrics(), "tracepipe_receiver_accepted_spans_total") for a in topo.agents]
            time.sleep(8)
            # The agents kept taking spans while the broker was away (nothing refused to the mesh).
            during = [metric_sum(a.metrics(), "tracepipe_receiver_accepted_spans_total") for a in topo.agents]
            assert all(d > a for d, a in zip(during, accepted)), (accepted, during)
            kafka.restart()
            sender.join()
            assert not errors
            time.sleep(1)
            requests = expected(mesh, n)
        keep = {g for g, (root, fail) in requests.items() if fail or kept_by_baseline(root, 10)}
        try:
            wait_for(lambda: keep <= deliveries(topo, requests, per, merged=True)[0], timeout=90, what="every kept request at the backends")
        except AssertionError:
            for name, group in (("agent", topo.agents), ("gw1", topo.groupers), ("gw2", topo.samplers)):
                for p in group:
                    m = p.metrics()
                    print(name, {k: metric_sum(m, k) for k in ("tracepipe_receiver_accepted_spans_total", "tracepipe_sink_sent_spans_total",
                                                               "tracepipe_sink_failed_spans_total", "tracepipe_receiver_kafka_lag_records")})
                    print("   ", [l[:250] for l in p.logs().splitlines() if "WARN" in l or "ERROR" in l][-6:])
            print("missing", len(keep - deliveries(topo, requests, per, merged=True)[0]), "of", len(keep))
            print(open(kafka.dir / "tansu.log").read()[-3000:])
            raise
        wait_for(topo.committed_to_end, timeout=120, what="both consumer groups committed to the end")
        got, whole, partial, twice = deliveries(topo, requests, per, merged=True)
        slow = slow_requests(topo) - keep
        keep |= slow
        agent_rss = [peak_rss(a.proc.pid) >> 20 for a in topo.agents]
        print(f"\nbroker restart (8 s down): {len(keep)} requests kept, {whole} whole deliveries, {partial} partial, {twice} delivered twice; "
              f"agents' peak RSS {agent_rss} MiB; gateway-2: {replays(topo.samplers)}; gateway-1: {replays(topo.groupers)}")
        # Every kept request arrived (wait_for above), no span failed or was refused anywhere (the
        # Kafka sinks offer records again after the broker's transient errors: before, the broker's
        # UNKNOWN_SERVER_ERROR on shutdown made in-flight records fail for good and the gateways
        # commit past them), the agents held the outage in bounded memory. And no request was
        # decided apart: the restart outlasts the consumers' sessions, both tiers rebalance and read
        # again from their commits, and gateway-1 sends the rest of a request gateway-2 re-read
        # only after its own wait (3 s) once it has rejoined — up to ~8 s after gateway-2 resumed in
        # the runs measured. gateway-2's `outage_grace: 10s` keeps its waits paused that long after
        # records flow again; without it (outage_grace 0) 1–41 requests per run were partial. With
        # it, 0 in nine runs of ten and 1 in one (a CI run of 2026-12-04: one kept request short of
        # one span, not explained); at most 2 is what this holds.
        union = {}
        for got_ in topo.delivered():
            for g, spans in got_.items():
                union.setdefault(g, set()).update(x["spanId"] for x in spans)
        short = {g: per - len(union.get(g, ())) for g in keep if len(union.get(g, ())) != per}
        print(f"decided apart: {len(short)} kept requests short of spans, {len(got - keep)} dropped requests with fragments kept")
        if DEBUG and short:
            where_lost(kafka, union, short, per)
        if short:
            # Which replica delivered which fragment (span name, trace id) of the first few.
            for g in list(short)[:8]:
                print("  by replica", g[:8], [sorted((s["name"][:12], s["traceId"][:6]) for s in got_.get(g, [])) for got_ in topo.delivered()])
        assert keep <= got
        assert len(short) <= 2 and len(got - keep) <= 2 and partial <= 2, f"{len(short)} kept requests partial, {len(got - keep)} dropped requests with a fragment delivered"
        assert any("Outage grace over" in s.logs() for s in topo.samplers), "gateway-2's outage_grace ran"
        assert all(r < 256 for r in agent_rss), f"agents held the outage in bounded memory: {agent_rss} MiB"
        for p in topo.procs:
            m = p.metrics()
            assert metric_sum(m, "tracepipe_sink_failed_spans_total") == 0, (str(p.dir), p.logs()[-2000:])
            assert metric_sum(m, "tracepipe_receiver_refused_spans_total") == 0, str(p.dir)
            assert p.stop() == 0, p.logs()
            assert "panicked" not in p.logs()


def test_a_late_fragment_after_a_hand_over_is_delivered_once_in_its_request():
    """A new owner of a partition (gateway-2 as shipped) reads a request's finished records and a
    late record of the same key (an application span of one of its fragments) that the previous
    owner never read. The previous owner is played by its progress record (the documented JSON
    in `progress_topic`, as a crashed owner leaves it; the owner's side of it is unit-tested):
    offset 0 finished, and — per partition — kept, dropped, or not said. The finished record goes
    in again as context: the late span takes the request's rebuilt trace id (guid inference), the
    request is decided the previous owner's way (tail sampling), and the sink removes the context:
    kept → only the late span is delivered, once; dropped → nothing, though the late span has an
    error status the policies would keep; not said (an older owner) → decided again whole and
    delivered twice (the finished spans again), never in part."""
    import json

    from confluent_kafka import Producer
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status, TracesData

    def kv(k, v):
        return KeyValue(key=k, value=AnyValue(string_value=v))

    base = time.time_ns() - 5_000_000_000

    def span(trace, sid, parent, kind, node, guid, start, end, error=False):
        attrs = [kv("node_id", node)] + ([kv("guid:x-request-id", guid)] if guid else [])
        return Span(trace_id=bytes([trace]) * 16, span_id=bytes([sid]) * 8, parent_span_id=bytes([parent]) * 8 if parent else b"",
                    name=f"s{sid}", kind=kind, start_time_unix_nano=base + start, end_time_unix_nano=base + end, attributes=attrs,
                    status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET))

    def record(spans):
        return TracesData(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]).SerializeToString()

    def request(g, t, error):
        """Two fragments of one request as Envoy sends them without forwarded trace context:
        productpage's SERVER (trace t), its CLIENT call starting trace t+1, reviews' SERVER in it."""
        return [span(t, t, 0, 2, "pp", g, 100, 9_000_000), span(t + 1, t + 1, 0, 3, "pp", g, 200, 8_000_000, error),
                span(t + 1, t + 2, t + 1, 2, "rv", g, 300, 7_000_000)]

    cases = {0: ("kept", "r-kept", 10, True), 1: ("dropped", "r-dropped", 40, False), 2: (None, "r-unknown", 70, True)}
    with Tansu() as kafka:
        kafka.create_topic("tracepipe-requests", 3)
        kafka.create_topic("tracepipe-requests-progress", 3)
        prod = Producer({"bootstrap.servers": kafka.bootstrap})
        for part, (outcome, g, t, error) in cases.items():
            # Offset 0: the finished request; offset 1: reviews' application span (no guid, trace
            # t+1, under reviews' SERVER), late — with an error status in the dropped case.
            prod.produce("tracepipe-requests", key=g, value=record(request(g, t, error)), partition=part)
            prod.produce("tracepipe-requests", key=g, value=record([span(t + 1, t + 3, t + 2, 1, "rv", None, 400, 6_000_000, error=outcome == "dropped")]), partition=part)
            progress = {"next": 0, "done": [[0, 0]]}
            if outcome:
                progress[outcome] = [[0, 0]]
            prod.produce("tracepipe-requests-progress", key=f"tracepipe-sample/tracepipe-requests/{part}", value=json.dumps(progress), partition=part)
        assert prod.flush(10) == 0
        be, port, out = backend()
        with be:
            owner = Tracepipe.from_file(SCALE / "gateway-2-sample.yaml", {"KAFKA_BROKERS": kafka.bootstrap, "EXPORT_ENDPOINT": f"http://127.0.0.1:{port}"}, "gw2-new")
            with owner:
                # Three traces decided (guid wait 3 s, then decision_wait 5 s), and exported.
                wait_for(lambda: metric_sum(owner.metrics(), "tracepipe_processor_tail_sampling_traces_total") >= 3, timeout=60, what="three traces decided")
                wait_for(lambda: kafka.committed_to_end("tracepipe-requests", "tracepipe-sample"), timeout=60, what="the new owner committed every partition")
                time.sleep(2)
                got = {}
                for s in read_jsonl_spans(out):
                    sp = s["span"]
                    got.setdefault(sp["traceId"][:2], []).append(sp["spanId"][:2])
                m = owner.metrics()
                context = metric_sum(m, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "context"})
                whole = metric_sum(m, "tracepipe_receiver_kafka_replayed_records_total", **{"as": "whole"})
                removed = metric_sum(m, "tracepipe_sink_replayed_context_spans_total")
                print(f"\nlate fragment after a hand-over: delivered (trace -> span ids) {got}; replayed as context {context:.0f}, whole {whole:.0f}; "
                      f"context spans removed by the sink {removed:.0f}")
                # kept: only the late span, in the request's rebuilt trace (t=10), once.
                assert sorted(got.get("0a", [])) == ["0d"], got
                # dropped: nothing (not the late span with its error either).
                assert not any(k in got for k in ("28", "29")), got
                # not said: the whole request again (3 finished spans + the late one), in one trace.
                assert sorted(got.get("46", [])) == ["46", "47", "48", "49"], got
                assert set(got) == {"0a", "46"}, got
                # Two records replayed as context, one whole; the sink removed the kept case's three
                # context spans (the dropped case's never reached it).
                assert (context, whole, removed) == (2, 1, 3)
