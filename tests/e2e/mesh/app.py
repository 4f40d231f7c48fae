"""A tiny Bookinfo-like service for the Envoy mesh.

  app.py NAME PORT STEPS_JSON FORWARD LOGFILE
STEPS_JSON: [[[callee, sidecar_url], ...], ...] — steps run one after another, the calls of one
step in parallel, each as `GET http://CALLEE:9080/PATH` (Host header) through the app's own
sidecar. FORWARD: all (x-request-id and every tracing header Istio asks apps to propagate), xrid
(only x-request-id), none. Every request's headers are appended to LOGFILE as JSON lines."""
import json
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT, STEPS, MODE, LOG = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
PROPAGATE = {"x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
             "x-ot-span-context", "traceparent", "tracestate", "baggage"}
lock = threading.Lock()


def call(callee, url, path, fwd, results, k):
    try:
        req = urllib.request.Request(url + path, headers={**fwd, "Host": f"{callee}:9080"})
        with urllib.request.urlopen(req, timeout=5) as r:
            results[k] = json.loads(r.read())
    except urllib.error.HTTPError as e:
        results[k] = {"svc": callee, "error_status": e.code}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        got = {k.lower(): v for k, v in self.headers.items()}
        with lock, open(LOG, "a") as f:
            f.write(json.dumps({"svc": NAME, "path": self.path, "headers": got}) + "\n")
        fwd = {k: v for k, v in got.items() if (MODE == "all" and k in PROPAGATE) or (MODE == "xrid" and k == "x-request-id")}
        downstream = []
        for step in STEPS:
            results = [None] * len(step)
            threads = [threading.Thread(target=call, args=(c, u, self.path, fwd, results, k)) for k, (c, u) in enumerate(step)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            downstream.extend(results)
        # Callers of the chain topology read one downstream answer; several are a list.
        body = json.dumps({"svc": NAME, "downstream": downstream[0] if len(downstream) == 1 else (downstream or None)}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
