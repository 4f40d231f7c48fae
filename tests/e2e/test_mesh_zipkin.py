"""Real Envoy 1.40 sidecars (an Istio-like productpage -> reviews -> ratings mesh) sending Zipkin
JSON and proto to tracepipe. With every tracing header forwarded, each request must arrive as one
well-formed trace of 5 spans carrying Envoy's tags, with span ids equal to the B3 ids the apps
saw (so Envoy's byte-reversed proto ids are repaired); a down service gives 503/UF error spans."""

import collections

import pytest

from harness import free_port, read_jsonl_spans, recording_tracepipe, wait_for
from mesh.mesh import Mesh
from sdk import normalise_json

ENVOY_TAGS = ["guid:x-request-id", "node_id", "upstream_cluster", "http.url", "http.method", "http.status_code", "component", "response_flags"]


def collector(otlp_port=None):
    port = free_port()
    otlp = f"\n  otlp: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{otlp_port} }} }}" if otlp_port else ""
    tp, out = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{port} }}{otlp}
""", ["mesh", "otlp"] if otlp_port else ["mesh"], "mesh")
    return tp, port, out


def by_request(out):
    spans = []
    for item in read_jsonl_spans(out):
        n = normalise_json(item)
        n["service"] = next(a["value"]["stringValue"] for a in item["resource"]["attributes"] if a["key"] == "service.name")
        spans.append(n)
    groups = collections.defaultdict(list)
    for s in spans:
        groups[s["attributes"].get("guid:x-request-id")].append(s)
    return groups


@pytest.mark.parametrize("variant", ["zipkin-json", "zipkin-proto", "otel-grpc"])
def test_forward_all_gives_one_wellformed_trace_per_request(variant):
    otlp_port = free_port() if variant.startswith("otel") else None
    tp, port, out = collector(otlp_port)
    n = 10
    with tp, Mesh(variant, port, forward="all", otlp_port=otlp_port) as mesh:
        for _ in range(n):
            status, _ = mesh.request()
            assert status == 200
        wait_for(lambda: len(read_jsonl_spans(out)) >= 5 * n, timeout=30, what=f"{5 * n} spans from Envoy")
        groups = by_request(out)
        assert len(groups) == n and None not in groups
        seen_ids = {}
        for h in mesh.app_headers():
            hd = h["headers"]
            seen_ids[(hd["x-request-id"], h["svc"])] = hd["x-b3-spanid"] if "x-b3-spanid" in hd else hd["traceparent"].split("-")[2]
        for xrid, spans in groups.items():
            assert len(spans) == 5, [s["name"] for s in spans]
            assert len({s["trace_id"] for s in spans}) == 1
            ids = {s["span_id"] for s in spans}
            roots = [s for s in spans if not s["parent_span_id"]]
            assert len(roots) == 1 and roots[0]["kind"] == 2
            assert all(s["parent_span_id"] in ids for s in spans if s["parent_span_id"])
            assert sorted(s["kind"] for s in spans) == [2, 2, 2, 3, 3]
            for s in spans:
                for t in ENVOY_TAGS:
                    assert t in s["attributes"], (t, s["name"])
                assert s["attributes"]["http.status_code"] == "200"
            # The span id each app saw (x-b3-spanid, or traceparent for the OTel tracer) is its
            # sidecar's SERVER span id.
            for s in spans:
                if s["kind"] == 2:
                    svc = s["service"].split(".")[0]
                    assert seen_ids[(xrid, svc)] == s["span_id"], (variant, svc, seen_ids[(xrid, svc)], s["span_id"])
        assert tp.stop() == 0


def test_down_service_gives_error_spans():
    tp, port, out = collector()
    with tp, Mesh("zipkin-json", port, forward="all", ratings_down=True) as mesh:
        status, body = mesh.request()
        assert status == 200 and body["downstream"]["downstream"] == {"svc": "ratings", "error_status": 503}
        wait_for(lambda: len(read_jsonl_spans(out)) >= 5, timeout=30, what="5 spans")
        spans = next(iter(by_request(out).values()))
        ratings_server = next(s for s in spans if s["kind"] == 2 and s["service"].startswith("ratings"))
        reviews_client = next(s for s in spans if s["kind"] == 3 and s["service"].startswith("reviews"))
        assert ratings_server["attributes"]["http.status_code"] == "503"
        assert ratings_server["attributes"]["response_flags"] == "UF"
        assert ratings_server["status"][0] == 2
        assert reviews_client["attributes"]["http.status_code"] == "503" and reviews_client["status"][0] == 2
        assert tp.stop() == 0


def test_envoy_default_zipkin_shares_span_ids():
    """Envoy defaults (64-bit ids, shared_span_context true): the receiving sidecar's SERVER span
    reuses the caller's CLIENT span id and is marked shared; tracepipe keeps that as
    `zipkin.shared=true` and left-pads the 64-bit trace id."""
    tp, port, out = collector()
    with tp, Mesh("zipkin-json-envoydefault", port, forward="all") as mesh:
        for _ in range(3):
            assert mesh.request()[0] == 200
        wait_for(lambda: len(read_jsonl_spans(out)) >= 15, timeout=30, what="15 spans")
        for xrid, spans in by_request(out).items():
            assert len(spans) == 5
            assert all(s["trace_id"].startswith("0" * 16) for s in spans)
            shared = [s for s in spans if s["attributes"].get("zipkin.shared") is True]
            assert shared and all(s["kind"] == 2 for s in shared)
            clients = {s["span_id"] for s in spans if s["kind"] == 3}
            assert {s["span_id"] for s in shared if not s["service"].startswith("productpage")} <= clients
        assert tp.stop() == 0


def test_sidecars_send_zipkin_and_otlp_over_mutual_tls(tmp_path):
    """The `mixed` mesh (outbound listeners trace with Zipkin, inbound ones with OpenTelemetry) with
    each sidecar's tracer clusters over mutual TLS (Envoy's TLS transport socket, the test's CA
    and a client certificate) to tracepipe's Zipkin and OTLP gRPC receivers, which require client
    certificates: every proxy span of every request arrives, by both protocols, and no handshake
    fails. A sidecar whose CA is another one gets nothing through: its handshakes are counted."""
    from harness import metric_sum
    from pki import Ca
    ca = Ca(tmp_path, "mesh-ca")
    server = ca.issue("collector", "localhost", server=True)
    client = ca.issue("sidecar", "istio-proxy", server=False)
    tls = f"{{ cert_file: {server[0]}, key_file: {server[1]}, client_ca_file: {ca.pem} }}"
    port, otlp_port = free_port(), free_port()
    tp, out = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{port}, tls: {tls} }}
  otlp: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{otlp_port}, tls: {tls} }} }}
""", ["mesh", "otlp"], "mesh-tls")
    n = 6
    with tp, Mesh("mixed", port, forward="all", otlp_port=otlp_port, collector_tls={"ca": ca.pem, "cert": client[0], "key": client[1]}) as mesh:
        for _ in range(n):
            status, _ = mesh.request()
            assert status == 200
        want = mesh.spans_per_request() * n
        wait_for(lambda: len(read_jsonl_spans(out)) >= want, timeout=30, what=f"{want} spans from Envoy over TLS")
        m = tp.metrics()
        zipkin = metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="mesh")
        otlp = metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="otlp")
        # Outbound (CLIENT) spans come by Zipkin, inbound (SERVER) ones by OTLP: 2 and 3 per request.
        assert (zipkin, otlp) == (2 * n, 3 * n), (zipkin, otlp)
        assert metric_sum(m, "tracepipe_receiver_tls_handshake_failures_total") == 0
        groups = by_request(out)
        assert len(groups) == n and all(len(g) == 5 for g in groups.values())
        assert tp.stop() == 0
    # Sidecars that trust another CA: refused by the sidecars themselves (the collector's
    # certificate does not verify); tracepipe counts the handshakes the clients broke off.
    other = Ca(tmp_path, "other-ca")
    tp, out = recording_tracepipe(f"""
receivers:
  mesh: {{ type: zipkin, endpoint: 127.0.0.1:{port}, tls: {tls} }}
  otlp: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{otlp_port}, tls: {tls} }} }}
""", ["mesh", "otlp"], "mesh-tls-other")
    with tp, Mesh("mixed", port, forward="all", otlp_port=otlp_port, collector_tls={"ca": other.pem, "cert": client[0], "key": client[1]}) as mesh:
        for _ in range(n):
            status, _ = mesh.request()
            assert status == 200
        m = wait_for(lambda: (lambda m: m if metric_sum(m, "tracepipe_receiver_tls_handshake_failures_total", receiver="mesh") > 0
                              and metric_sum(m, "tracepipe_receiver_tls_handshake_failures_total", receiver="otlp") > 0 else None)(tp.metrics()),
                     timeout=30, what="refused handshakes counted on both receivers")
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total") == 0
        assert tp.stop() == 0
