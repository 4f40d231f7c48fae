"""The lightstep receiver with real clients: the LightStep Python tracer over HTTP (protobuf,
`Lightstep-Access-Token`), a gRPC client generated at test time from tracepipe's own
collector.proto (grpcio-tools), JSON reports, and wrong tokens."""

import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import requests

from harness import ROOT, free_port, metric_sum, read_jsonl_spans, recording_tracepipe, wait_for
from sdk import normalise_json

PROTO_DIR = ROOT / "pipeline/proto"
LS_PY = ROOT / "tests/.venv-lightstep/bin/python"


class LightstepTP:
    def __init__(self, tokens=("good-token",)):
        self.grpc, self.http = free_port(), free_port()
        self.tp, self.out = recording_tracepipe(f"""
receivers:
  satellite_in:
    type: lightstep
    grpc: {{ endpoint: 127.0.0.1:{self.grpc} }}
    http: {{ endpoint: 127.0.0.1:{self.http} }}
    access_tokens: {json.dumps(list(tokens))}
""", ["satellite_in"], "ls")

    def __enter__(self):
        self.tp.start()
        return self

    def __exit__(self, *e):
        self.tp.__exit__(*e)

    def spans(self):
        out = []
        for i in read_jsonl_spans(self.out):
            n = normalise_json(i)
            n["resource"] = {a["key"]: list(a["value"].values())[0] for a in i["resource"].get("attributes", [])}
            out.append(n)
        return out


def test_lightstep_python_tracer_over_http():
    if not LS_PY.exists():
        raise RuntimeError(f"peer not installed: {LS_PY}; run tests/install-peers.sh")
    with LightstepTP() as ls:
        r = subprocess.run([str(LS_PY), str(Path(__file__).parent / "peers/lightstep_send.py"), str(ls.http), "good-token", "5"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        sent = json.loads(r.stdout.strip().splitlines()[-1])
        assert len(sent) == 10
        wait_for(lambda: len(read_jsonl_spans(ls.out)) >= 10, what="10 spans")
        got = {s["span_id"]: s for s in ls.spans()}
        for w in sent:
            g = got[w["span_id"]]
            assert g["trace_id"] == w["trace_id"]
            assert g["parent_span_id"] == w["parent"]
            assert g["name"] == w["name"]
            assert abs(g["start"] - w["start_us"] * 1000) <= 1000
            assert abs((g["end"] - g["start"]) - w["duration_us"] * 1000) <= 1000
            assert g["resource"]["service.name"] == "ls-orders"
            assert g["resource"]["lightstep.component_name"] == "ls-orders"
            assert g["resource"]["env"] == "test"
            assert "lightstep.guid" in g["resource"], g["resource"]
            if w["name"] == "SELECT orders":
                # The Python tracer sends every tag as a string.
                assert g["kind"] == 3 and g["status"][0] == 2 and g["attributes"]["ratio"] == "0.5"
            else:
                assert g["kind"] == 2 and g["attributes"]["guid:x-request-id"].startswith("req-")
                assert g["events"][0][0] == "cache-miss" and g["events"][0][2]["key"].startswith("order:")
        assert metric_sum(ls.tp.metrics(), "tracepipe_receiver_accepted_spans_total", receiver="satellite_in", transport="http") == 10
        # A wrong token: refused with 401 and counted.
        r = subprocess.run([str(LS_PY), str(Path(__file__).parent / "peers/lightstep_send.py"), str(ls.http), "bad-token", "1"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: metric_sum(ls.tp.metrics(), "tracepipe_receiver_unauthenticated_requests_total", receiver="satellite_in") >= 1, what="unauthenticated counted")
        refused = metric_sum(ls.tp.metrics(), "tracepipe_receiver_unauthenticated_requests_total", receiver="satellite_in")
        # The tracer swallows the answer; the same wrong token, sent directly, gets 401 and a
        # ReportResponse naming the reason, and one more count.
        for headers, data in (({"Lightstep-Access-Token": "bad-token", "Content-Type": "application/json"}, b'{"spans": []}'),
                              ({"Content-Type": "application/json"}, b'{"auth": {"accessToken": "bad-token"}, "spans": []}')):
            r = requests.post(f"http://127.0.0.1:{ls.http}/api/v2/reports", data=data, headers=headers)
            assert r.status_code == 401, (r.status_code, r.text)
            assert r.json()["errors"] and "token" in r.json()["errors"][0].lower(), r.text
        assert metric_sum(ls.tp.metrics(), "tracepipe_receiver_unauthenticated_requests_total", receiver="satellite_in") == refused + 2
        assert len(read_jsonl_spans(ls.out)) == 10
        assert ls.tp.stop() == 0


def generated_client(tmp_path):
    from grpc_tools import protoc
    import grpc_tools
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTO_DIR / "lightstep/collector.proto")])
    assert rc == 0
    sys.path.insert(0, str(tmp_path))
    from lightstep import collector_pb2, collector_pb2_grpc  # noqa
    return collector_pb2, collector_pb2_grpc


def test_grpc_client_generated_from_our_proto(tmp_path):
    pb, pb_grpc = generated_client(tmp_path)
    with LightstepTP() as ls:
        stub = pb_grpc.CollectorServiceStub(grpc.insecure_channel(f"127.0.0.1:{ls.grpc}"))
        req = pb.ReportRequest(
            reporter=pb.Reporter(reporter_id=7, tags=[pb.KeyValue(key="lightstep.component_name", string_value="istio-proxy")]),
            auth=pb.Auth(access_token="good-token"),
            timestamp_offset_micros=-1000,
            spans=[
                pb.Span(span_context=pb.SpanContext(trace_id=0xabc, span_id=0x1), operation_name="ingress",
                        duration_micros=2500, tags=[pb.KeyValue(key="guid:x-request-id", string_value="r1"), pb.KeyValue(key="n", int_value=3)]),
                pb.Span(span_context=pb.SpanContext(trace_id=0xabc, span_id=0x2), operation_name="egress",
                        references=[pb.Reference(relationship=pb.Reference.CHILD_OF, span_context=pb.SpanContext(trace_id=0xabc, span_id=0x1)),
                                    pb.Reference(relationship=pb.Reference.FOLLOWS_FROM, span_context=pb.SpanContext(trace_id=0xdef, span_id=0x9))]),
            ])
        req.spans[0].start_timestamp.FromNanoseconds(1_700_000_000_000_000_000)
        resp = stub.Report(req, timeout=5)
        assert list(resp.commands) == [] and not resp.errors and resp.receive_timestamp.seconds > 0
        wait_for(lambda: len(read_jsonl_spans(ls.out)) >= 2, what="2 spans")
        got = {s["name"]: s for s in ls.spans()}
        assert got["ingress"]["trace_id"] == "0000000000000000" + "0000000000000abc"
        assert got["ingress"]["start"] == 1_700_000_000_000_000_000 - 1_000_000, "timestamp_offset_micros applied"
        assert got["ingress"]["end"] - got["ingress"]["start"] == 2_500_000
        assert got["ingress"]["attributes"] == {"guid:x-request-id": "r1", "n": 3}
        assert got["ingress"]["resource"]["service.name"] == "istio-proxy"
        assert got["egress"]["parent_span_id"] == "0000000000000001"
        assert got["egress"]["links"] == [("0000000000000000" + "0000000000000def", "0000000000000009", {"opentracing.ref_type": "follows_from"})]
        with pytest.raises(grpc.RpcError) as e:
            stub.Report(pb.ReportRequest(auth=pb.Auth(access_token="nope")), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The token is checked on the auth field before the report is decoded; a report that does
        # not decode is INVALID_ARGUMENT and counted.
        raw = grpc.insecure_channel(f"127.0.0.1:{ls.grpc}").unary_unary(
            "/lightstep.collector.CollectorService/Report", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            raw(b"\xff\xff", timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert metric_sum(ls.tp.metrics(), "tracepipe_receiver_malformed_requests_total", receiver="satellite_in", transport="grpc", reason="protobuf") == 1
        # JSON over HTTP, token in the header.
        body = {"reporter": {"reporterId": "77", "tags": [{"key": "lightstep.component_name", "stringValue": "json-svc"}, {"key": "region", "stringValue": "eu"}]},
                "timestampOffsetMicros": "-2",
                "spans": [{"spanContext": {"traceId": "12", "spanId": "34"}, "operationName": "j", "startTimestamp": "2026-11-22T10:00:00Z", "durationMicros": "5",
                           "references": [{"relationship": "CHILD_OF", "spanContext": {"traceId": "12", "spanId": "33"}},
                                          {"relationship": "FOLLOWS_FROM", "spanContext": {"traceId": "99", "spanId": "98"}}],
                           "tags": [{"key": "span.kind", "stringValue": "server"}, {"key": "error", "boolValue": True},
                                    {"key": "http.status_code", "intValue": "503"}, {"key": "ratio", "doubleValue": 0.25}, {"key": "guid:x-request-id", "stringValue": "j1"}],
                           "logs": [{"timestamp": "2026-11-22T10:00:00.000003Z", "fields": [{"key": "event", "stringValue": "retry"}, {"key": "attempt", "intValue": 2}]}]}]}
        r = requests.post(f"http://127.0.0.1:{ls.http}/api/v2/reports", json=body, headers={"Lightstep-Access-Token": "good-token"})
        assert r.status_code == 200, r.text
        assert r.json() == {"errors": [], "commands": []}, r.text
        wait_for(lambda: len(read_jsonl_spans(ls.out)) >= 3, what="the JSON span")
        j = {s["name"]: s for s in ls.spans()}["j"]
        t0 = 1_795_341_600_000_000_000  # 2026-11-22T10:00:00Z
        assert j["trace_id"] == "0" * 16 + "%016x" % 12 and j["span_id"] == "%016x" % 34
        assert j["parent_span_id"] == "%016x" % 33, "CHILD_OF is the parent"
        assert j["links"] == [("0" * 16 + "%016x" % 99, "%016x" % 98, {"opentracing.ref_type": "follows_from"})]
        assert j["start"] == t0 - 2_000 and j["end"] - j["start"] == 5_000, "timestampOffsetMicros and durationMicros"
        assert j["kind"] == 2 and j["status"] == (2, ""), "span.kind and error tags become kind and status"
        assert j["attributes"] == {"http.status_code": 503, "ratio": 0.25, "guid:x-request-id": "j1"}
        assert j["events"] == [("retry", t0 + 3_000 - 2_000, {"attempt": 2})]
        assert j["resource"]["service.name"] == "json-svc" and j["resource"]["region"] == "eu"
        r = requests.post(f"http://127.0.0.1:{ls.http}/api/v2/reports", data=b"\xff\xff", headers={"Content-Type": "application/octet-stream", "Lightstep-Access-Token": "good-token"})
        assert r.status_code == 400
        r = requests.post(f"http://127.0.0.1:{ls.http}/api/v2/reports", data=b"[", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        assert ls.tp.stop() == 0
