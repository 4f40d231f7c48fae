"""A real `Agent.emitBatch` datagram (thrift compact), captured from the Python jaeger-client by
a UDP socket standing in for the agent; used to replay load."""

import socket
import subprocess
from pathlib import Path

from harness import ROOT

_cache = {}


def datagram() -> bytes:
    if "pkt" not in _cache:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.settimeout(30)
        port = s.getsockname()[1]
        p = subprocess.Popen([str(ROOT / "tests/.venv-jaegerclient/bin/python"), str(Path(__file__).parent / "peers/jaeger_client_send.py"), "const", str(port), "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        data, _ = s.recvfrom(65535)
        p.wait(timeout=30)
        _cache["pkt"] = data
    return _cache["pkt"]
