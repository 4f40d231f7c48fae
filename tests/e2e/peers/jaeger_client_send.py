"""Run with tests/.venv-jaegerclient. The Python jaeger-client (OpenTracing) as a real peer.

  jaeger_client_send.py const AGENT_PORT N
      emits N traces (root SERVER span with a log, child CLIENT span with error=true) over UDP
      thrift compact and prints, as one JSON line, every span as the client recorded it.
  jaeger_client_send.py remote AGENT_PORT SAMPLING_PORT OP...
      no `sampler` in the config -> RemoteControlledSampler polling SAMPLING_PORT; waits for a
      poll, then starts 10 root spans per OP and prints {op: sampled count}.
"""
import json
import sys
import time

from jaeger_client import Config

mode, agent_port = sys.argv[1], int(sys.argv[2])
cfg = {
    "local_agent": {"reporting_host": "127.0.0.1", "reporting_port": agent_port},
    "reporter_flush_interval": 0.1,
    "reporter_batch_size": 10,
    "tags": {"env": "test"},
}
if mode == "const":
    cfg["sampler"] = {"type": "const", "param": 1}
else:
    cfg["local_agent"]["sampling_port"] = int(sys.argv[3])
    cfg["sampling_refresh_interval"] = 0.5
tracer = Config(config=cfg, service_name="jc-orders", validate=True).initialize_tracer()


def tag_value(t):
    return {0: t.vStr, 1: t.vDouble, 2: t.vBool, 3: t.vLong, 4: t.vBinary}[t.vType]


def record(span):
    ts = span.tags  # jaeger.Tag thrift objects, as they go on the wire
    return {
        "trace_id": format(span.trace_id, "032x"),
        "span_id": format(span.span_id, "016x"),
        "parent_span_id": format(span.parent_id, "016x") if span.parent_id else "",
        "name": span.operation_name,
        "start_us": int(span.start_time * 1e6),
        "duration_us": int((span.end_time - span.start_time) * 1e6),
        "tags": {t.key: tag_value(t) for t in ts},
        "logs": [{"timestamp_us": l.timestamp, "fields": {f.key: tag_value(f) for f in l.fields}} for l in span.logs],
    }


if mode == "const":
    n = int(sys.argv[3])
    spans = []
    for i in range(n):
        with tracer.start_active_span(f"GET /orders/{i}", tags={"span.kind": "server", "http.method": "GET", "http.status_code": 200, "ratio": 0.5, "guid:x-request-id": f"req-{i}"}) as root:
            root.span.log_kv({"event": "cache-miss", "key": f"order:{i}"})
            with tracer.start_active_span("SELECT orders", tags={"span.kind": "client", "peer.port": 5432, "error": True}) as child:
                time.sleep(0.001)
            spans.append(child.span)
        spans.append(root.span)
    time.sleep(0.5)
    tracer.close()
    time.sleep(1.0)
    print(json.dumps({"spans": [record(s) for s in spans]}))
else:
    time.sleep(2.5)  # first poll comes after a random delay below the refresh interval
    res = {}
    for op in sys.argv[4:]:
        n = 0
        for _ in range(10):
            with tracer.start_active_span(op) as sc:
                n += int(sc.span.is_sampled())
        res[op] = n
    tracer.close()
    time.sleep(0.5)
    print(json.dumps(res))
