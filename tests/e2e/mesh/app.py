"""A tiny Bookinfo-like service for the Envoy mesh (productpage -> reviews -> ratings).

  app.py NAME PORT NEXT_URL|- FORWARD LOGFILE
FORWARD: all (x-request-id and every tracing header Istio asks apps to propagate), xrid (only
x-request-id), none. Every request's headers are appended to LOGFILE as JSON lines."""
import json
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME, PORT, NEXT, MODE, LOG = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
PROPAGATE = {"x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
             "x-ot-span-context", "traceparent", "tracestate", "baggage"}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        got = {k.lower(): v for k, v in self.headers.items()}
        with lock, open(LOG, "a") as f:
            f.write(json.dumps({"svc": NAME, "path": self.path, "headers": got}) + "\n")
        status, downstream = 200, None
        if NEXT != "-":
            fwd = {k: v for k, v in got.items() if (MODE == "all" and k in PROPAGATE) or (MODE == "xrid" and k == "x-request-id")}
            try:
                with urllib.request.urlopen(urllib.request.Request(NEXT + self.path, headers=fwd), timeout=5) as r:
                    downstream = json.loads(r.read())
            except urllib.error.HTTPError as e:
                downstream = {"error_status": e.code}
        body = json.dumps({"svc": NAME, "downstream": downstream}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
