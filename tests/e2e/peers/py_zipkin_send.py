"""py_zipkin 1.2.8 as a real Zipkin client through its own SimpleHTTPTransport.

  py_zipkin_send.py V2_JSON|V2_PROTO3|V1_JSON PORT N
Emits N traces (SERVER root with an annotation and tags -> CLIENT child with a remote endpoint)
and prints one JSON line with the ids, names and kinds py_zipkin used."""
import json
import sys

from py_zipkin import Encoding, Kind
from py_zipkin.transport import SimpleHTTPTransport
from py_zipkin.zipkin import zipkin_span

enc = getattr(Encoding, sys.argv[1])
port, n = int(sys.argv[2]), int(sys.argv[3])
transport = SimpleHTTPTransport("127.0.0.1", port)
out = []
for i in range(n):
    with zipkin_span(service_name=f"pyz-{enc.name.lower()}", span_name=f"GET /orders/{i}", transport_handler=transport, sample_rate=100.0,
                     encoding=enc, kind=Kind.SERVER, host="127.0.0.1", port=8080,
                     binary_annotations={"http.method": "GET", "guid:x-request-id": f"req-{i}"}) as root:
        root.add_annotation("cache-miss")
        with zipkin_span(service_name=f"pyz-{enc.name.lower()}", span_name="SELECT orders", kind=Kind.CLIENT, binary_annotations={"db.type": "sql"}) as child:
            child.add_sa_binary_annotation(port=5432, service_name="postgres", host="127.0.0.5")
            c = child.zipkin_attrs
        r = root.zipkin_attrs
    out.append({"trace_id": r.trace_id, "span_id": r.span_id, "parent": r.parent_span_id or "", "name": f"GET /orders/{i}", "kind": "SERVER"})
    out.append({"trace_id": c.trace_id, "span_id": c.span_id, "parent": c.parent_span_id or "", "name": "SELECT orders", "kind": "CLIENT"})
print(json.dumps(out))
