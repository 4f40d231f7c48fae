"""The manifests in deploy/ stay true: every tracepipe `config.yaml` held in a ConfigMap passes
`tracepipe validate` (with the environment variables the Deployment sets), and every Deployment
that mounts a ConfigMap runs the binary with `run --config` at the mounted path."""

import subprocess
from pathlib import Path

import pytest
import yaml

from harness import ROOT, tracepipe_bin

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def documents(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_manifest_glob_is_not_empty():
    """The parametrized test below would be skipped, not failed, if the glob found nothing."""
    names = {p.name for p in MANIFESTS}
    assert len(names) >= 3 and "gateway-kafka.yaml" in names, names


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_configmap_config_validates(manifest, tmp_path):
    docs = documents(manifest)
    maps = {d["metadata"]["name"]: d["data"]["config.yaml"] for d in docs if d["kind"] == "ConfigMap"}
    workloads = [d for d in docs if d["kind"] in ("Deployment", "DaemonSet")]
    assert maps and workloads, f"{manifest.name}: no ConfigMap or no workload"
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        container = spec["containers"][0]
        volume = next(v for v in spec["volumes"] if "configMap" in v)
        config = maps[volume["configMap"]["name"]]
        mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])["mountPath"]
        assert container["args"] == ["run", "--config", f"{mount}/config.yaml"], container["args"]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        path = tmp_path / f"{w['metadata']['name']}.yaml"
        path.write_text(config)
        p = subprocess.run([tracepipe_bin(), "validate", "--config", str(path)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
        assert p.returncode == 0, f"{manifest.name} / {w['metadata']['name']}:\n{p.stdout}{p.stderr}"


def test_gateway_kafka_embeds_the_scale_out_files_unchanged():
    """deploy/kubernetes/gateway-kafka.yaml runs exactly the topology of deploy/scale-out/ (the
    files the scale-out e2e test runs)."""
    docs = documents(ROOT / "deploy" / "kubernetes" / "gateway-kafka.yaml")
    maps = {d["metadata"]["name"]: d["data"]["config.yaml"] for d in docs if d["kind"] == "ConfigMap"}
    files = {"tracepipe-agent": "agent.yaml", "tracepipe-group": "gateway-1-group.yaml", "tracepipe-sample": "gateway-2-sample.yaml"}
    assert set(maps) == set(files)
    for cm, f in files.items():
        assert maps[cm] == (ROOT / "deploy" / "scale-out" / f).read_text(), f"{cm} differs from deploy/scale-out/{f}"


def _tool(name: str) -> str:
    """A tool installed into the test venv by tests/install-peers.sh (requirements.txt)."""
    import sys

    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is not installed in {path.parent}: run `bash tests/install-peers.sh`"
    return str(path)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_passes_strict_kubernetes_schema_validation(manifest):
    """`kubernetes-validate --strict` (the API's OpenAPI schemas; unknown fields rejected)."""
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", "--no-warn", str(manifest)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(documents(manifest)), r.stdout


def test_strict_validation_rejects_an_unknown_field(tmp_path):
    """The check above can fail: the gateway manifest with one misspelt container field."""
    docs = documents(ROOT / "deploy" / "kubernetes" / "gateway.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", "--no-warn", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "imagePullPolcy" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_dockerfile_passes_hadolint():
    """hadolint (every rule, failing at `info`) on deploy/Dockerfile; and the same linter on a
    Dockerfile with an unpinned base image that runs as root fails (so the check can fail)."""
    hadolint = _tool("hadolint")
    r = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([hadolint, "--failure-threshold", "info", "-"], input="FROM debian:latest\nRUN apt-get install curl\n", capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "DL3007" in r.stdout, r.stdout + r.stderr


def test_the_image_ships_a_stripped_binary_as_non_root():
    """What deploy/README.md promises of the image, read from the Dockerfile (no Docker engine on
    the build machines): a multi-stage build whose release binary has neither debug info nor
    symbols, copied into a slim runtime stage that runs as a non-root user."""
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = [l for l in text.splitlines() if l.startswith("FROM ")]
    assert len(stages) == 2 and " AS build" in stages[0], stages
    assert "CARGO_PROFILE_RELEASE_STRIP=symbols" in text and "CARGO_PROFILE_RELEASE_DEBUG=0" in text
    user = [l for l in text.splitlines() if l.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in ("0", "root"), user


def _istio_addresses() -> list:
    """(service, namespace, port) of every address README's "Point Istio at tracepipe" gives."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("### Point Istio at tracepipe", 1)[1].split("\n### ", 1)[0]
    found = [(s, ns, int(p)) for s, ns, p in re.findall(r"service:\s*([\w-]+)\.([\w-]+)\.svc\.cluster\.local,\s*port:\s*(\d+)", section)]
    found += [(s, ns, int(p)) for s, ns, p in re.findall(r"address[=:]\s*([\w-]+)\.([\w-]+):(\d+)", section)]
    return found


def test_readme_istio_addresses_reach_a_receiver_of_the_right_protocol():
    """Every address README tells Istio to send to is a Service of deploy/kubernetes with that
    port, whose target port is a container port of the workload it selects, where the graph has a
    receiver of the protocol Istio speaks there listening."""
    check_istio_addresses([d for m in MANIFESTS for d in documents(m)])


def check_istio_addresses(docs: list):
    """README's Istio addresses against a set of Kubernetes objects (the manifests, or the Helm
    chart rendered as release `tracepipe`: test_helm.py)."""
    addresses = _istio_addresses()
    assert len(addresses) >= 4, addresses  # zipkin (new and old Istio), opentelemetry, lightstep
    protocol = {9411: ("zipkin", None), 4317: ("otlp", "grpc"), 8282: ("lightstep", "grpc")}
    for service, _ns, port in addresses:
        svc = next((d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == service), None)
        assert svc, f"README names Service {service}, which deploy/kubernetes does not define"
        sp = next((p for p in svc["spec"]["ports"] if p["port"] == port), None)
        assert sp, f"Service {service} has no port {port}"
        workload = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet") and d["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items())
        spec = workload["spec"]["template"]["spec"]
        cport = next((p["containerPort"] for p in spec["containers"][0]["ports"] if p["name"] == sp["targetPort"] or p["containerPort"] == sp["targetPort"]), None)
        assert cport, f"Service {service} port {port} targets {sp['targetPort']}, which the container does not expose"
        cm = next(v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v)
        graph = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm)["data"]["config.yaml"])
        kind, transport = protocol[port]
        listening = []
        for name, r in graph["receivers"].items():
            endpoint = (r.get(transport) or {}).get("endpoint") if transport else r.get("endpoint")
            if r["type"] == kind and endpoint and str(endpoint).rsplit(":", 1)[1] == str(cport):
                listening.append(name)
        assert listening, f"{service}:{port} -> container port {cport}: no {kind} receiver listens there in ConfigMap {cm}"
