"""Run with tests/.venv-jaegerclient. Sends Jaeger `Agent.emitBatch` datagrams (thrift compact,
10 spans of 10 tags each, built with jaeger-client's own generated thrift code) to a UDP port at a
target span rate for a number of seconds. Prints one JSON line: spans and datagrams sent."""

import argparse
import json
import os
import socket
import time

from jaeger_client.thrift_gen.agent import Agent
from jaeger_client.thrift_gen.jaeger import ttypes as j
from thrift.Thrift import TMessageType
from thrift.protocol import TCompactProtocol
from thrift.transport import TTransport


def datagram(spans_per_packet: int) -> bytes:
    def tag(k, v):
        if isinstance(v, bool):
            return j.Tag(key=k, vType=j.TagType.BOOL, vBool=v)
        if isinstance(v, int):
            return j.Tag(key=k, vType=j.TagType.LONG, vLong=v)
        return j.Tag(key=k, vType=j.TagType.STRING, vStr=v)
    spans = []
    for i in range(spans_per_packet):
        tid = int.from_bytes(os.urandom(8), "big", signed=True)
        spans.append(j.Span(traceIdLow=tid, traceIdHigh=0, spanId=tid ^ i, parentSpanId=0, operationName="GET /reviews/{id}",
                            flags=1, startTime=1_700_000_000_000_000 + i, duration=4000, tags=[
                                tag("span.kind", "server"), tag("http.method", "GET"), tag("http.status_code", 200),
                                tag("http.url", f"http://reviews:9080/reviews/{i}"), tag("component", "proxy"),
                                tag("guid:x-request-id", "3f0a6c1e-9b7d-9c2e-8f41-6d2a0b9e7c55"), tag("peer.address", "10.12.4.17:43210"),
                                tag("response_size", 1843), tag("cached", False), tag("node_id", "sidecar~10.12.4.17~reviews-v1-1.default~default.svc.cluster.local")]))
    batch = j.Batch(process=j.Process(serviceName="reviews", tags=[tag("hostname", "reviews-v1-1"), tag("jaeger.version", "Python-4.8.0")]), spans=spans)
    buf = TTransport.TMemoryBuffer()
    prot = TCompactProtocol.TCompactProtocol(buf)
    prot.writeMessageBegin("emitBatch", TMessageType.ONEWAY, 1)
    Agent.emitBatch_args(batch=batch).write(prot)
    prot.writeMessageEnd()
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=int, required=True, help="spans per second")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--spans-per-packet", type=int, default=10)
    a = ap.parse_args()
    pkt = datagram(a.spans_per_packet)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = ("127.0.0.1", a.port)
    pps = a.rate / a.spans_per_packet
    t0 = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter() - t0
        if now >= a.seconds:
            break
        due = int(now * pps)
        while sent < due:
            s.sendto(pkt, addr)
            sent += 1
        time.sleep(0.0005)
    secs = time.perf_counter() - t0
    print(json.dumps({"datagrams": sent, "spans": sent * a.spans_per_packet, "seconds": secs, "datagram_bytes": len(pkt)}))


if __name__ == "__main__":
    main()
