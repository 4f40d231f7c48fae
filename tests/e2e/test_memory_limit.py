"""The process-wide memory limit (issue 18): with `memory.limit` set, a flood that the graph
cannot deliver (the upstream is down, the sink queue holds everything) makes tracepipe refuse
with retryable errors once its resident memory passes the soft limit, say so on /readyz, and keep
its peak resident memory under the limit; every span the client sent is either accepted
(counted) or refused to it."""

import os

import requests

from harness import Tracepipe, free_port, http_get, metric_sum, peak_rss
from otlp_wire import request


def graph(g: int, h: int, dead: int, limit: str) -> str:
    return f"""
receivers:
  in: {{ type: otlp, grpc: {{ endpoint: 127.0.0.1:{g} }}, http: {{ endpoint: 127.0.0.1:{h} }} }}
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{dead}
    protocol: http/protobuf
    retry: {{ initial_interval: 1s, max_interval: 1s, max_elapsed_time: 0s }}
    queue: {{ max_spans: 10000000 }}
memory: {{ limit: {limit}, soft_ratio: 0.8, check_interval: 20ms }}
"""


def test_flood_into_a_dead_upstream_is_refused_at_the_memory_limit():
    g, h, dead = free_port(), free_port(), free_port()
    # The idle debug binary's resident memory, then a limit 60 MiB above it.
    probe = Tracepipe(graph(g, h, dead, "1GiB"), "memprobe")
    with probe:
        idle = peak_rss(probe.proc.pid)
        assert probe.stop() == 0
    limit = idle + (60 << 20)
    tp = Tracepipe(graph(g, h, dead, str(limit)), "memlimit")
    body = request([os.urandom(8) for _ in range(2000)]).SerializeToString()  # ~0.2 MB, 2,000 spans
    accepted_requests = refused = 0
    with tp:
        session = requests.Session()
        for _ in range(1500):  # up to 3,000,000 spans, ~300 MB: far past the limit if all were held
            r = session.post(f"http://127.0.0.1:{h}/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=10)
            if r.status_code == 200:
                accepted_requests += 1
            else:
                assert r.status_code == 503 and r.headers.get("Retry-After") == "1", (r.status_code, r.text)
                refused += 1
                if refused >= 50:
                    break
        assert refused >= 50, f"never refused: {accepted_requests} requests accepted"
        status, why = http_get(f"http://127.0.0.1:{tp.metrics_port}/readyz")
        assert status == 503 and "refusing data: resident memory" in why, why
        m = tp.metrics()
        assert metric_sum(m, "tracepipe_receiver_accepted_spans_total", receiver="in") == accepted_requests * 2000
        refused_spans = metric_sum(m, "tracepipe_receiver_refused_spans_total", receiver="in", reason="memory")
        refused_requests = metric_sum(m, "tracepipe_receiver_refused_requests_total", receiver="in", reason="memory")
        assert refused_spans / 2000 + refused_requests == refused, "every refusal counted"
        assert metric_sum(m, "tracepipe_memory_limit_bytes") == limit
        peak = peak_rss(tp.proc.pid)
        print(f"idle {idle >> 20} MiB, limit {limit >> 20} MiB, peak {peak >> 20} MiB, {accepted_requests} requests accepted, {refused} refused")
        assert peak <= limit, f"peak resident memory {peak} over the limit {limit}"
        # SIGTERM: the upstream is still down, so what the sink holds is dropped after its 20 s
        # budget, counted.
        assert tp.stop() == 0
        assert "Shutting down; undeliverable spans dropped." in tp.logs()
