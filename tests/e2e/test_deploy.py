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
