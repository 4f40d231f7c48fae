"""deploy/helm/tracepipe rendered offline with a real Helm (3.8.1, from the npm registry: see
tests/install-peers.sh) for every mode and several value combinations. Every rendered object passes
`kubernetes-validate --strict` (the ServiceMonitor, a CRD, is checked field by field); every
workload runs non-root on a read-only root filesystem without privilege escalation, is probed on
/readyz and /healthz, and runs `run --config` on a ConfigMap whose graph passes `tracepipe
validate` with the container's environment; HPAs, PodDisruptionBudgets, Services and
ServiceMonitors point at what exists; the agent holds its host ports."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import ROOT, tracepipe_bin

CHART = ROOT / "deploy" / "helm" / "tracepipe"
HELM = ROOT / "tests" / ".peers" / "bin" / "helm"

CASES = {
    "gateway": [],
    "gateway-no-hpa-servicemonitor-config-env": ["--set", "gateway.hpa.enabled=false", "--set", "gateway.replicas=4", "--set", "serviceMonitor.enabled=true",
                                                 "--set", "env.EXTRA=1", "--set-file", f"config={Path(__file__).parent / 'helm' / 'custom-graph.yaml'}"],
    "agent": ["--set", "mode=agent"],
    "agent-to-kafka-no-host-ports": ["--set", "mode=agent", "--set", "agent.output=kafka", "--set", "agent.hostPorts=false"],
    "gateway-kafka": ["--set", "mode=gateway-kafka"],
    "gateway-kafka-servicemonitor-no-pdb": ["--set", "mode=gateway-kafka", "--set", "serviceMonitor.enabled=true", "--set", "kafka.sample.pdb.enabled=false"],
}


def helm() -> str:
    assert HELM.exists(), f"helm is not installed at {HELM}: run `bash tests/install-peers.sh`"
    return str(HELM)


def render(args: list) -> list:
    r = subprocess.run([helm(), "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("case", list(CASES))
def test_the_chart_renders_valid_objects(case, tmp_path):
    docs = render(CASES[case])
    plain = [d for d in docs if d["kind"] != "ServiceMonitor"]
    out = tmp_path / "rendered.yaml"
    out.write_text(yaml.safe_dump_all(plain))
    validate = str(Path(sys.executable).parent / "kubernetes-validate")
    r = subprocess.run([validate, "--strict", "--no-warn", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("passed") == len(plain), r.stdout

    maps = {d["metadata"]["name"]: d["data"]["config.yaml"] for d in by_kind(docs, "ConfigMap")}
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "DaemonSet")
    assert workloads
    for w in workloads:
        spec = w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["args"] == ["run", "--config", "/etc/tracepipe/config.yaml"]
        cm = next(v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v)
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        path = tmp_path / f"{w['metadata']['name']}.yaml"
        path.write_text(maps[cm])
        p = subprocess.run([tracepipe_bin(), "validate", "--config", str(path)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env})
        assert p.returncode == 0, f"{case} / {w['metadata']['name']}:\n{p.stdout}{p.stderr}"
        if w["kind"] == "DaemonSet":
            host = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"] if "hostPort" in p}
            if "hostPorts=false" in " ".join(CASES[case]):
                assert not host
            elif "output=kafka" not in " ".join(CASES[case]) and case != "gateway-kafka" and not case.startswith("gateway-kafka"):
                assert {(6831, "UDP"), (6832, "UDP"), (9411, "TCP"), (4317, "TCP")} <= host, host
            else:
                assert {(9411, "TCP"), (4317, "TCP")} <= host, host
    names = {w["metadata"]["name"] for w in by_kind(docs, "Deployment")}
    for h in by_kind(docs, "HorizontalPodAutoscaler"):
        assert h["spec"]["scaleTargetRef"]["name"] in names and h["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    for d in by_kind(docs, "Deployment"):
        has_hpa = any(h["spec"]["scaleTargetRef"]["name"] == d["metadata"]["name"] for h in by_kind(docs, "HorizontalPodAutoscaler"))
        assert has_hpa != ("replicas" in d["spec"]), "a Deployment has either an HPA or fixed replicas"
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads]
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        assert any(pdb["spec"]["selector"]["matchLabels"].items() <= p.items() for p in pods)
    services = by_kind(docs, "Service")
    for s in services:
        assert any(s["spec"]["selector"].items() <= p.items() for p in pods)
    monitors = by_kind(docs, "ServiceMonitor")
    assert bool(monitors) == ("serviceMonitor.enabled=true" in " ".join(CASES[case]))
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1" and m["spec"]["endpoints"][0]["port"] == "metrics"
        assert any(m["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items() and any(p["name"] == "metrics" for p in s["spec"]["ports"]) for s in services)


def test_modes_have_their_shapes():
    gw = render([])
    assert [d["kind"] for d in by_kind(gw, "Deployment")] == ["Deployment"] and not by_kind(gw, "DaemonSet")
    svc = by_kind(gw, "Service")[0]
    assert {p["port"] for p in svc["spec"]["ports"]} == {4317, 4318, 9411, 8282, 8888}
    kafka = render(["--set", "mode=gateway-kafka"])
    assert sorted(d["metadata"]["name"] for d in by_kind(kafka, "Deployment")) == ["rel-tracepipe-group", "rel-tracepipe-sample"]
    assert len(by_kind(kafka, "DaemonSet")) == 1 and len(by_kind(kafka, "HorizontalPodAutoscaler")) == 2 and len(by_kind(kafka, "PodDisruptionBudget")) == 2
    # The scaled-out tier runs deploy/scale-out's graphs unchanged.
    maps = {d["metadata"]["name"]: d["data"]["config.yaml"] for d in by_kind(kafka, "ConfigMap")}
    for name, f in (("rel-tracepipe-agent", "agent.yaml"), ("rel-tracepipe-group", "gateway-1-group.yaml"), ("rel-tracepipe-sample", "gateway-2-sample.yaml")):
        assert maps[name].strip() == (ROOT / "deploy" / "scale-out" / f).read_text().strip(), f
        assert (CHART / "files" / "scale-out" / f).read_text() == (ROOT / "deploy" / "scale-out" / f).read_text()
    # The gateway and agent graphs are the plain manifests' (deploy/kubernetes), byte for byte.
    for mode, manifest in (("gateway", "gateway.yaml"), ("agent", "agent.yaml")):
        plain = yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / manifest).read_text())
        want = next(d for d in plain if d and d["kind"] == "ConfigMap")["data"]["config.yaml"]
        assert (CHART / "files" / f"{mode}.yaml").read_text() == want, mode
    # A graph and environment given as values reach the ConfigMap and the container.
    custom = render(CASES["gateway-no-hpa-servicemonitor-config-env"])
    assert by_kind(custom, "ConfigMap")[0]["data"]["config.yaml"] == (Path(__file__).parent / "helm" / "custom-graph.yaml").read_text()
    c = by_kind(custom, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "EXTRA", "value": "1"} in c["env"] and by_kind(custom, "Deployment")[0]["spec"]["replicas"] == 4
    # The agent sends to this release's gateway Service by default.
    agent = render(["--set", "mode=agent"])
    env = {e["name"]: e["value"] for e in by_kind(agent, "DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["GATEWAY_ENDPOINT"] == f"http://{by_kind(gw, 'Service')[0]['metadata']['name']}:4317"


@pytest.mark.parametrize("args,message", [
    (["--set", "mode=sidecar"], 'mode must be gateway, agent or gateway-kafka, not "sidecar"'),
    (["--set", "mode=agent", "--set", "agent.output=file"], 'agent.output must be gateway or kafka, not "file"'),
    (["--set", "mode=gateway-kafka", "--set-file", f"config={Path(__file__).parent / 'helm' / 'custom-graph.yaml'}"], "config is not used in gateway-kafka mode"),
])
def test_bad_values_fail_with_a_clear_message(args, message):
    r = subprocess.run([helm(), "template", "rel", str(CHART), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and message in r.stderr, r.stderr


def test_helm_lint_passes():
    r = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_istio_addresses_match_the_chart_installed_as_tracepipe():
    """README's "Point Istio at tracepipe" names `tracepipe-gateway`: the chart's gateway Service
    when the release is called `tracepipe`, with the same ports and receivers as the manifest."""
    from test_deploy import check_istio_addresses

    r = subprocess.run([helm(), "template", "tracepipe", str(CHART)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    check_istio_addresses([d for d in yaml.safe_load_all(r.stdout) if d])
