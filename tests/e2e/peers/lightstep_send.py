"""Run with tests/.venv-lightstep. The real LightStep Python tracer (4.4.8) reporting over HTTP
(`use_http=True`, `collector_encryption='none'`) to a satellite at 127.0.0.1:PORT.

  lightstep_send.py PORT TOKEN N [tls]
With `tls`, it reports over HTTPS to localhost (`collector_encryption='tls'`), trusting the CA in
REQUESTS_CA_BUNDLE. Prints one JSON line with every finished span as the tracer recorded it."""
import json
import sys

import lightstep

port, token, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tls = len(sys.argv) > 4 and sys.argv[4] == "tls"
tracer = lightstep.Tracer(component_name="ls-orders", access_token=token, collector_host="localhost" if tls else "127.0.0.1", collector_port=port,
                          collector_encryption="tls" if tls else "none", use_http=True, periodic_flush_seconds=0.1, tags={"env": "test", "hostname": "h1"})
finished = []
for i in range(n):
    with tracer.start_active_span(f"GET /orders/{i}", tags={"span.kind": "server", "guid:x-request-id": f"req-{i}", "http.status_code": 200}) as root:
        root.span.log_kv({"event": "cache-miss", "key": f"order:{i}"})
        with tracer.start_active_span("SELECT orders", tags={"span.kind": "client", "error": True, "ratio": 0.5}) as child:
            pass
        finished.append(child.span)
    finished.append(root.span)
tracer.flush()
tracer.flush()
out = []
for s in finished:
    out.append({"trace_id": format(s.context.trace_id, "032x"), "span_id": format(s.context.span_id, "016x"),
                "parent": format(s.parent_id, "016x") if s.parent_id else "", "name": s.operation_name,
                "start_us": int(s.start_time * 1e6), "duration_us": int(s.duration * 1e6), "tags": s.tags})
print(json.dumps(out, default=str))
