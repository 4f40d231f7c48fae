"""An Istio-like mesh of real Envoy 1.40 sidecars for end-to-end tests (reused by the guid
inference tests). Topologies: `chain` (productpage -> reviews -> ratings), `bookinfo`
(productpage -> details || reviews in parallel; details -> inventory, whose app is down: a
failing hop; reviews -> ratings twice per request; ratings -> db; 15 proxy spans per request) and
`fanout` (productpage -> reviews || details, then reviews again; details -> reviews, then the down
inventory; reviews -> ratings on each of its three calls, two of them concurrent; ratings fails
the first attempt of each call and reviews' sidecar retries it; 20 proxy spans per request). Each app sits behind its own
Envoy with an inbound listener and one outbound listener per callee, tracing at 100%, Istio-style node ids
(`sidecar~IP~svc-v1-1.default~default.svc.cluster.local`) and clusters (`inbound|PORT||`,
`outbound|9080||svc.default.svc.cluster.local`), route decorators, and a tracer pointed at
tracepipe: Zipkin JSON or proto (`zipkin-json`, `zipkin-proto`; Istio settings: 128-bit ids,
shared_span_context false), Envoy-default Zipkin (`zipkin-json-envoydefault`), or OpenTelemetry
(`otel-grpc`), or `mixed`: outbound listeners trace with Zipkin (B3) and inbound ones with
OpenTelemetry (W3C), so no hop propagates a context and every proxy span is its own trace (a mesh
mid-migration between tracers). Apps call `http://CALLEE:9080/...` (Host header) through their
sidecar, as in Kubernetes. Every port is free and chosen at start."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
ENVOY = ROOT / "tests/.peers/bin/envoy"
# service -> sequential steps, each a list of callees called in parallel
TOPOLOGIES = {
    "chain": {"productpage": [["reviews"]], "reviews": [["ratings"]], "ratings": []},
    "bookinfo": {"productpage": [["details", "reviews"]], "details": [["inventory"]], "reviews": [["ratings"], ["ratings"]],
                 "ratings": [["db"]], "db": [], "inventory": []},
    # reviews is reached three times per request, twice at once (from productpage and from
    # details, in parallel), and calls ratings each time; ratings fails the first attempt of each
    # call and reviews' sidecar retries it; inventory is down.
    "fanout": {"productpage": [["reviews", "details"], ["reviews"]], "details": [["reviews"], ["inventory"]],
               "reviews": [["ratings"]], "ratings": [], "inventory": []},
}
DOWN = {"chain": set(), "bookinfo": {"inventory"}, "fanout": {"inventory"}}
FLAKY = {"fanout": {"ratings"}}
# (caller, callee) pairs whose route retries 5xx, as an Istio VirtualService `retries` would.
RETRIES = {"fanout": {("reviews", "ratings")}}

sys.path.insert(0, str(HERE.parent))
from harness import free_port, wait_port  # noqa: E402


def _addr(port):
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name, port, h2=False):
    c = {"name": name, "type": "STATIC", "connect_timeout": "1s",
         "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _addr(port)}}]}]}}
    if h2:
        c["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}
    return c


class Mesh:
    def __init__(self, variant: str, collector_port: int, forward: str = "all", ratings_down: bool = False, otlp_port: int = None,
                 topology: str = "chain", sdk_endpoint: str = None, collector_tls: dict = None):
        if not ENVOY.exists():
            raise RuntimeError(f"envoy not installed at {ENVOY}; run tests/install-peers.sh")
        self.variant, self.collector_port, self.forward = variant, collector_port, forward
        self.calls = TOPOLOGIES[topology]
        self.services = list(self.calls)
        self.down = set(DOWN[topology]) | ({"ratings"} if ratings_down else set())
        self.flaky, self.retries = FLAKY.get(topology, set()), RETRIES.get(topology, set())
        self.otlp_port = otlp_port or collector_port
        self.dir = Path(tempfile.mkdtemp(prefix=f"mesh-{variant}-"))
        self.app_ports = {s: free_port() for s in self.services}
        self.inbound = {s: free_port() for s in self.services}
        self.outbound = {s: {c: free_port() for step in steps for c in step} for s, steps in self.calls.items()}
        self.admin = {s: free_port() for s in self.services}
        self.headers_log = self.dir / "app_headers.jsonl"
        self.sdk_endpoint = sdk_endpoint  # OTLP/gRPC URL the apps' own SDK spans go to (none: apps untraced)
        # The tracers' collector over TLS (Envoy's TLS transport socket): {"ca": PEM path, and for
        # mutual TLS "cert", "key"}; the collector is checked as `localhost`.
        self.collector_tls = collector_tls
        self.procs = []

    def spans_per_request(self):
        """Proxy spans one request yields: a SERVER per call received (two for a call to a flaky
        service: its first attempt fails and is retried), a CLIENT per call made."""
        def count(svc):
            return 1 + sum(1 + count(c) + (c in self.flaky) for step in self.calls[svc] for c in step)
        return count("productpage")

    def _provider(self, svc, inbound):
        v = self.variant
        if v == "mixed":
            v = "otel-grpc" if inbound else "zipkin-json"
        if v.startswith("zipkin"):
            cfg = {"@type": "type.googleapis.com/envoy.config.trace.v3.ZipkinConfig", "collector_cluster": "zipkin",
                   "collector_endpoint": "/api/v2/spans", "collector_endpoint_version": "HTTP_PROTO" if v == "zipkin-proto" else "HTTP_JSON"}
            if v != "zipkin-json-envoydefault":
                cfg.update(trace_id_128bit=True, shared_span_context=False)
            return {"name": "envoy.tracers.zipkin", "typed_config": cfg}
        return {"name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig", "service_name": f"{svc}.default",
            "grpc_service": {"envoy_grpc": {"cluster_name": "otlp_grpc"}, "timeout": "1s"}}}

    def _hcm(self, svc, prefix, cluster, decorator, inbound, retry=False):
        route = {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "5s"}}
        if retry:
            route["route"]["retry_policy"] = {"retry_on": "5xx", "num_retries": 2}
        if self.variant != "zipkin-json-envoydefault":
            route["decorator"] = {"operation": decorator}
        return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": prefix,
            "tracing": {"random_sampling": {"value": 100},
                        "custom_tags": [{"tag": "istio.canonical_service", "literal": {"value": svc}},
                                        {"tag": "istio.namespace", "literal": {"value": "default"}}],
                        "provider": self._provider(svc, inbound)},
            "route_config": {"name": prefix, "virtual_hosts": [{"name": prefix, "domains": ["*"], "routes": [route]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}

    def _bootstrap(self, svc):
        app = self.app_ports[svc]
        inbound_cluster = f"inbound|{app}||"
        listeners = [{"name": f"virtualInbound_{svc}", "address": _addr(self.inbound[svc]), "traffic_direction": "INBOUND",
                      "filter_chains": [{"filters": [self._hcm(svc, f"inbound_0.0.0.0_{app}", inbound_cluster, f"{svc}.default.svc.cluster.local:9080/*", True)]}]}]
        clusters = [_cluster(inbound_cluster, app), _cluster("zipkin", self.collector_port), _cluster("otlp_grpc", self.otlp_port, h2=True)]
        if self.collector_tls:
            t = self.collector_tls
            for c in clusters[1:]:
                ctx = {"validation_context": {"trusted_ca": {"filename": str(t["ca"])},
                                              "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}]}}
                if "cert" in t:
                    ctx["tls_certificates"] = [{"certificate_chain": {"filename": str(t["cert"])}, "private_key": {"filename": str(t["key"])}}]
                if c["name"] == "otlp_grpc":
                    ctx["alpn_protocols"] = ["h2"]
                c["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "localhost", "common_tls_context": ctx}}
        for nxt, port in self.outbound[svc].items():
            oc = f"outbound|9080||{nxt}.default.svc.cluster.local"
            listeners.append({"name": f"outbound_{nxt}", "address": _addr(port), "traffic_direction": "OUTBOUND",
                              "filter_chains": [{"filters": [self._hcm(svc, f"outbound_0.0.0.0_9080_{nxt}", oc, f"{nxt}.default.svc.cluster.local:9080/*", False,
                                                                          retry=(svc, nxt) in self.retries)]}]})
            c = _cluster(oc, self.inbound[nxt])
            # Istio's defaults: no circuit-breaker limits (Envoy's own allow 3 concurrent retries,
            # so a burst of retried calls would see some refused).
            c["circuit_breakers"] = {"thresholds": [{k: 4294967295 for k in ("max_connections", "max_pending_requests", "max_requests", "max_retries")}]}
            clusters.append(c)
        return {"node": {"id": f"sidecar~127.0.0.1~{svc}-v1-1.default~default.svc.cluster.local", "cluster": f"{svc}.default"},
                "admin": {"address": _addr(self.admin[svc])},
                "layered_runtime": {"layers": [{"name": "static", "static_layer": {
                    "tracing.zipkin.flush_interval_ms": 500, "tracing.opentelemetry.flush_interval_ms": 500}}]},
                "static_resources": {"listeners": listeners, "clusters": clusters}}

    def __enter__(self):
        try:
            for svc in self.services:
                if svc in self.down:
                    continue
                steps = [[[c, f"http://127.0.0.1:{self.outbound[svc][c]}"] for c in step] for step in self.calls[svc]]
                self.procs.append(subprocess.Popen([sys.executable, str(HERE / "app.py"), svc, str(self.app_ports[svc]), json.dumps(steps),
                                                    self.forward, str(self.headers_log)] + ([self.sdk_endpoint] if self.sdk_endpoint else []),
                                                   env={**os.environ, "MESH_FLAKY": "1" if svc in self.flaky else "0"}))
            for svc in self.services:
                cfg = self.dir / f"envoy-{svc}.json"
                cfg.write_text(json.dumps(self._bootstrap(svc)))
                log = open(self.dir / f"envoy-{svc}.log", "wb")
                self.procs.append(subprocess.Popen([str(ENVOY), "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart",
                                                    "--log-level", "warn", "--service-cluster", f"{svc}.default", "--service-node",
                                                    f"sidecar~127.0.0.1~{svc}-v1-1.default~default.svc.cluster.local"], stdout=log, stderr=subprocess.STDOUT))
            for svc in self.services:
                wait_port(self.inbound[svc], timeout=30, what=f"envoy {svc}")
                if svc not in self.down:
                    wait_port(self.app_ports[svc], timeout=30, what=f"app {svc}")
            # A peer that died at start (say, its port was taken) must fail the test here, not as a
            # timeout later: a port answering is not proof that our process is the one listening.
            dead = [" ".join(map(str, p.args[:3])) for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"mesh peers exited at start: {dead}")
        except Exception:
            self.__exit__()
            raise
        return self

    def request(self, path="/productpage"):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{self.inbound['productpage']}{path}", headers={"Host": "productpage:9080"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def app_headers(self):
        # Complete lines only: an app may be half-way through writing the last one.
        return [json.loads(l) for l in self.headers_log.read_bytes().split(b"\n")[:-1] if l.strip()] if self.headers_log.exists() else []

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
