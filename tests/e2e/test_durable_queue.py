"""The OTLP sink's disk queue (`queue.storage`): what the sink accepted survives kill -9 and a
SIGTERM with the upstream down, and is delivered once the upstream is back; a damaged queue file
does not stop the process."""

import os
import random
import signal
import subprocess
import threading
import time

import requests

from harness import Tracepipe, far_end, free_port, metric_sum, read_jsonl_spans, wait_for
from otlp_wire import post, request


def gateway(storage, http_port, upstream_port, acks=False, ack_timeout="10s"):
    return Tracepipe(f"""
receivers:
  in: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http_port} }}, acknowledgements: {{ enabled: {str(acks).lower()}, timeout: {ack_timeout} }} }}
sinks:
  up:
    type: otlp
    inputs: [in]
    endpoint: http://127.0.0.1:{upstream_port}
    retry: {{ initial_interval: 100ms, max_interval: 300ms, max_elapsed_time: 0s }}
    queue: {{ num_consumers: 2, storage: {{ path: {storage}, max_bytes: 64MiB }} }}
""", "durable")


def send(port, n_requests, per_request):
    ids = []
    for _ in range(n_requests):
        batch = [os.urandom(8) for _ in range(per_request)]
        assert post(port, request(batch).SerializeToString()).status_code == 200
        ids += batch
    return ids


def test_disk_queue_survives_kill_9_and_sigterm_with_the_upstream_down(tmp_path):
    storage = tmp_path / "queue"
    http_port, upstream = free_port(), free_port()
    # 1. Upstream down: 500 spans accepted, all on disk (the queue gauge says so), then kill -9.
    a = gateway(storage, http_port, upstream)
    with a:
        ids = send(http_port, 10, 50)
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_queue_spans", sink="up") == 500, what="500 spans queued on disk")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
    # 2. Restart, upstream still down: the queue is back; SIGTERM leaves it on disk, drops nothing.
    b = gateway(storage, http_port, upstream)
    with b:
        wait_for(lambda: metric_sum(b.metrics(), "tracepipe_sink_queue_spans", sink="up") == 500, what="the queue back after kill -9")
        ids += send(http_port, 2, 25)
        wait_for(lambda: metric_sum(b.metrics(), "tracepipe_sink_queue_spans", sink="up") == 550, what="550 spans queued")
        t0 = time.time()
        assert b.stop() == 0, b.logs()
        took = time.time() - t0
    logs = b.logs()
    assert took < 10, f"SIGTERM took {took:.1f}s: a durable queue need not wait out the retry budget"
    assert "Stopped with batches in the disk queue" in logs, logs
    assert "undeliverable spans dropped" not in logs, logs
    assert "reason=shutdown" not in logs.split("tracepipe stopped.")[-1], logs
    # 3. Upstream back: everything arrives (at least once), then the queue is empty.
    far, g, h, out = far_end()
    # The far end listens for OTLP/gRPC (the sink's default protocol) where the sink sends.
    far_port_cfg = far.config_path.read_text().replace(f"127.0.0.1:{g},", f"127.0.0.1:{upstream},")
    far.config_path.write_text(far_port_cfg)
    with far:
        c = gateway(storage, http_port, upstream)
        with c:
            wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(ids), timeout=30, what="every queued span delivered")
            wait_for(lambda: metric_sum(c.metrics(), "tracepipe_sink_queue_spans", sink="up") == 0, what="an empty queue")
            sent = metric_sum(c.metrics(), "tracepipe_sink_sent_spans_total", sink="up")
            assert c.stop() == 0
    got = [bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)]
    assert set(got) == set(ids)
    print(f"disk queue: {len(ids)} spans accepted across kill -9 and SIGTERM with the upstream down; "
          f"{len(set(got))} delivered after it came back, {len(got) - len(set(got))} twice; sent counter {sent:.0f}")


def test_a_damaged_queue_file_does_not_stop_the_process(tmp_path):
    storage = tmp_path / "queue"
    http_port, upstream = free_port(), free_port()
    a = gateway(storage, http_port, upstream)
    with a:
        send(http_port, 4, 10)
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_queue_spans", sink="up") == 40, what="40 spans queued")
        assert a.stop() == 0
    f = storage / "queue.redb"
    f.write_bytes(b"\x5a" * f.stat().st_size)
    b = gateway(storage, http_port, upstream)
    with b:
        m = b.metrics()
        assert metric_sum(m, "tracepipe_sink_queue_corrupt_total", sink="up") == 1
        assert metric_sum(m, "tracepipe_sink_queue_spans", sink="up") == 0
        send(http_port, 1, 10)
        wait_for(lambda: metric_sum(b.metrics(), "tracepipe_sink_queue_spans", sink="up") == 10, what="the new queue works")
        assert b.stop() == 0


def test_a_full_disk_holds_the_input_and_loses_no_acknowledged_span(tmp_path):
    """The queue on a 4 MiB tmpfs that fills while the upstream is down: no crash; the input is
    held, so clients are refused with a retryable 503; the failed writes are counted; once the
    upstream is back the queue drains, writes succeed again, and every acknowledged span arrives."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    assert r.returncode == 0, f"cannot mount a 4 MiB tmpfs for the disk-full test (needs root): {r.stderr.strip()}"
    try:
        http_port = free_port()
        far, g, _, out = far_end()
        a = gateway(disk / "queue", http_port, g, acks=True, ack_timeout="2s")
        acked, refused = [], 0
        with a:
            while refused < 5 and len(acked) < 100_000:
                batch = [os.urandom(8) for _ in range(100)]
                resp = post(http_port, request(batch, pad=2000).SerializeToString(), timeout=30)
                if resp.status_code == 200:
                    acked += batch
                else:
                    assert resp.status_code == 503, (resp.status_code, resp.text)
                    refused += 1
            assert refused == 5, f"never refused: {len(acked)} spans accepted onto a 4 MiB disk"
            assert a.proc.poll() is None, a.logs()
            m = a.metrics()
            errors = metric_sum(m, "tracepipe_sink_queue_write_errors_total", sink="up")
            assert errors > 0, "failed disk writes not counted"
            assert "Disk queue write failed; holding input until it succeeds." in a.logs()
            print(f"full disk: {len(acked)} spans acknowledged ({len(acked) * 2000 / 1e6:.1f} MB of padding), then {refused} requests "
                  f"refused with 503; {errors:.0f} failed writes counted")
            # The disk stays full past the writer's 10 s retry: a retry then must not take the room
            # that removals need once the upstream is back (it did, and the queue never drained).
            time.sleep(12)
            with far:
                wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(acked), timeout=60,
                         what="every acknowledged span delivered once the upstream is back")
                more = []
                for _ in range(5):  # the disk has room again: writes succeed
                    batch = [os.urandom(8) for _ in range(100)]
                    wait_for(lambda: post(http_port, request(batch).SerializeToString(), timeout=30).status_code == 200, timeout=30,
                             what="a request accepted after the disk drained")
                    more += batch
                wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(more), timeout=30,
                         what="spans accepted after the disk drained delivered")
                assert a.stop() == 0, a.logs()
            assert "Disk queue writes succeed again." in a.logs()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_kill_9_under_load_loses_no_acknowledged_span(tmp_path):
    """With end-to-end acknowledgements, an answered request is on disk: kill -9 at 10 random
    moments under load loses none of them (duplicates are counted, not lost)."""
    storage = tmp_path / "queue"
    http_port = free_port()
    far, g, _, out = far_end()
    acked, stop, errors = [], threading.Event(), []

    def client():
        # An SDK's behaviour: resend a request until it is answered 200.
        while not stop.is_set():
            batch = [os.urandom(8) for _ in range(20)]
            body = request(batch).SerializeToString()
            while not stop.is_set():
                try:
                    r = post(http_port, body, timeout=5)
                    if r.status_code == 200:
                        acked.extend(batch)
                        break
                    if r.status_code not in (429, 502, 503, 504):
                        errors.append(r.status_code)
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.02)

    rng = random.Random(7)
    with far:
        a = gateway(storage, http_port, g, acks=True).start()
        t = threading.Thread(target=client)
        t.start()
        try:
            for _ in range(10):
                time.sleep(rng.uniform(0.3, 1.5))
                a.proc.send_signal(signal.SIGKILL)
                a.proc.wait()
                a = gateway(storage, http_port, g, acks=True).start()
            time.sleep(1)
        finally:
            stop.set()
            t.join()
        assert not errors, f"non-retryable answers: {errors}"
        assert len(acked) > 200, f"only {len(acked)} spans acknowledged"
        wait_for(lambda: {bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)} >= set(acked), timeout=60,
                 what="every acknowledged span delivered")
        assert a.stop() == 0, a.logs()
    got = [bytes.fromhex(s["span"]["spanId"]) for s in read_jsonl_spans(out)]
    lost = set(acked) - set(got)
    assert not lost
    print(f"kill -9 x10 under load with acknowledgements and a disk queue: {len(acked)} spans acknowledged, lost 0, "
          f"{len(got) - len(set(got))} delivered twice")


def test_kafka_sink_disk_queue_survives_kill_9_and_sigterm_with_the_broker_down(tmp_path):
    """The Kafka sink's disk queue: spans accepted while the broker is down survive kill -9 and a
    SIGTERM (kept on disk, not dropped), and reach the topic once the broker is up."""
    from opentelemetry.proto.trace.v1 import trace_pb2
    from harness import Tansu

    storage, http_port, broker = tmp_path / "queue", free_port(), free_port()

    def gw():
        return Tracepipe(f"""
receivers:
  in: {{ type: otlp, http: {{ endpoint: 127.0.0.1:{http_port} }} }}
sinks:
  bus:
    type: kafka
    inputs: [in]
    brokers: ["127.0.0.1:{broker}"]
    topic: durable
    queue: {{ storage: {{ path: {storage}, max_bytes: 64MiB }} }}
""", "kdurable")

    a = gw()
    with a:
        ids = send(http_port, 6, 50)
        wait_for(lambda: metric_sum(a.metrics(), "tracepipe_sink_queue_spans", sink="bus") == 300, what="300 spans on disk")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
    b = gw()
    with b:
        wait_for(lambda: metric_sum(b.metrics(), "tracepipe_sink_queue_spans", sink="bus") == 300, what="the queue back after kill -9")
        assert b.stop() == 0, b.logs()
    logs = b.logs()
    assert "Stopped with batches in the disk queue" in logs, logs
    assert "reason=shutdown" not in logs.split("tracepipe stopped.")[-1], logs
    with Tansu(port=broker) as kafka:
        kafka.create_topic("durable", partitions=2)
        c = gw()
        with c:
            wait_for(lambda: metric_sum(c.metrics(), "tracepipe_sink_queue_spans", sink="bus") == 0, timeout=60, what="the queue drained into Kafka")
            assert c.stop() == 0, c.logs()
        got = []
        for _, _, value in kafka.records("durable", 1):
            req = trace_pb2.TracesData()
            req.ParseFromString(value)
            got += [s.span_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert set(got) == set(ids), f"{len(set(ids) - set(got))} spans missing"
    print(f"kafka disk queue: {len(ids)} spans accepted with the broker down, kept across kill -9 and SIGTERM; "
          f"{len(set(got))} in the topic once it was up, {len(got) - len(set(got))} twice")
