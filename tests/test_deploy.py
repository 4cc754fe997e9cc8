"""deploy/: what can be checked without a cluster, a container engine or systemd as PID 1.

- the Kubernetes manifest parses; its probes, ports and mounted paths agree with the config in
  its ConfigMap, and that config passes `redisgate check` (with the mounts made real in a temp dir);
- the systemd unit passes `systemd-analyze verify` without a warning;
- the Dockerfile has the shape the README promises (it is not built here: no container engine).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from redisgate.config import build_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes" / "asynq-worker-sidecar.yaml"


def _docs():
    docs = [d for d in yaml.safe_load_all(K8S.read_text()) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    pod = next(d for d in docs if d["kind"] == "Pod")
    return config_map, pod


def _containers(pod):
    spec = pod["spec"]
    every = spec.get("initContainers", []) + spec["containers"]
    gate = next(c for c in every if c["name"] == "redisgate")
    worker = next(c for c in every if c["name"] == "worker")
    return gate, worker


def _mounts(pod, container) -> dict[str, dict]:
    """mountPath -> the volume behind it."""
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    return {m["mountPath"]: volumes[m["name"]]
            for m in container.get("volumeMounts", [])}


def _volume_files(volume) -> set[str] | None:
    """The file names a volume provides (None: any key of the ConfigMap/Secret)."""
    source = volume.get("secret") or volume.get("configMap")
    items = source.get("items")
    return None if items is None else {i["path"] for i in items}


def test_manifest_probes_ports_and_mounts_agree_with_its_config(tmp_path):
    config_map, pod = _docs()
    gate, worker = _containers(pod)
    raw = yaml.safe_load(config_map["data"]["redisgate.yaml"])

    # The config file is where the container's command line says, from the ConfigMap.
    config_path = gate["args"][gate["args"].index("--config") + 1]
    mounts = _mounts(pod, gate)
    config_dir = str(Path(config_path).parent)
    assert mounts[config_dir].get("configMap", {}).get("name") == config_map["metadata"]["name"]
    assert Path(config_path).name in config_map["data"]
    assert all(m.get("readOnly") for m in gate["volumeMounts"])

    # Probes: the admin port of the config, /readyz for readiness, /healthz for liveness.
    admin_host, admin_port = raw["admin"]["listen"].rsplit(":", 1)
    assert admin_host in ("0.0.0.0", "::"), "the kubelet probes the Pod IP, not loopback"
    ports = {p["name"]: p["containerPort"] for p in gate["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                        ("startupProbe", "/readyz")):
        http = gate[probe]["httpGet"]
        assert http["path"] == path
        assert ports.get(http["port"], http["port"]) == int(admin_port)
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == admin_port

    # The worker talks to the proxy's listener on the Pod's loopback.
    env = {e["name"]: e for e in worker["env"]}
    assert env["REDIS_ADDR"]["value"] == raw["listen"] == "127.0.0.1:6380"
    assert env["REDIS_USERNAME"]["value"] in raw["users"]
    assert "secretKeyRef" in env["REDIS_PASSWORD"]["valueFrom"]

    # Every file the config reads is in a mounted Secret (secrets) that provides it.
    files = re.findall(r"\$\{file:([^}]+)\}", config_map["data"]["redisgate.yaml"])
    files += [v for k, v in raw["upstream"].get("tls", {}).items() if k in ("ca", "cert", "key")]
    assert files
    for f in files:
        directory, name = str(Path(f).parent), Path(f).name
        assert directory in mounts, f"{f} is not under a mounted volume"
        assert "secret" in mounts[directory], f"{f} should come from a Secret"
        provided = _volume_files(mounts[directory])
        assert provided is None or name in provided, f"{f}: the Secret's items do not include it"
    # Users' passwords: hashes only, never a literal or a reference in the ConfigMap.
    for user in raw["users"].values():
        rules = user["rules"] if isinstance(user, dict) else user
        assert ">" not in rules and re.search(r"#[0-9a-f]{64}", rules)

    # Shutdown: the Pod's grace period is longer than the proxy's drain.
    grace = build_config(dict(raw, upstream={"address": "127.0.0.1:1"})).shutdown_grace
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace

    # `redisgate check` passes on the config with the mounted paths made real here.
    subprocess.run([sys.executable, "-m", "redisgate", "certs", "--out", str(tmp_path / "certs")],
                   check=True, capture_output=True, timeout=60)
    text = config_map["data"]["redisgate.yaml"]
    for directory in mounts:
        local = tmp_path / directory.strip("/").replace("/", "_")
        local.mkdir()
        text = text.replace(directory + "/", f"{local}/")
        if "secret" in mounts[directory]:
            (local / "password").write_text("upstream-secret")
            (local / "password").chmod(0o440)       # the Secret volume's defaultMode
            shutil.copy(tmp_path / "certs" / "ca.crt", local / "ca.crt")
    (tmp_path / "redisgate.yaml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "redisgate", "check", "--config",
                          str(tmp_path / "redisgate.yaml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "OK (1 users" in out.stdout and "warning" not in out.stderr


def test_manifest_runs_redisgate_locked_down():
    _, pod = _docs()
    gate, _ = _containers(pod)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    sc = gate["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert gate.get("restartPolicy") == "Always"   # a native sidecar: stops after the worker


def test_systemd_unit_verifies():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    unit = (DEPLOY / "systemd" / "redisgate.service").read_text()
    for key in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
                "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in unit.splitlines(), key
    # verify wants ExecStart's program to exist: point it at this Python for the check.
    assert "ExecStart=/opt/redisgate/bin/redisgate " in unit
    local = Path("/tmp") / f"redisgate-verify-{Path(sys.executable).stat().st_ino}.service"
    try:
        local.write_text(unit.replace("/opt/redisgate/bin/redisgate", sys.executable))
        out = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                             timeout=60)
    finally:
        local.unlink(missing_ok=True)
    assert out.returncode == 0, out.stderr
    problems = [line for line in (out.stderr + out.stdout).splitlines() if local.name in line]
    assert not problems, problems   # (unknown keys or bad values are only warnings there)


def test_dockerfile_shape():
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+)(?: AS (\w+))?", text, re.M)
    assert len(stages) == 2 and stages[0][1] == "build"
    assert re.search(r"^ARG PYTHON=python:[\d.]+-slim", text, re.M)
    assert "COPY --from=build /wheels /wheels" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
    assert "import redisgate._native._speedups, redisgate._native._lane" in text
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for name in src.split():
            assert (ROOT / name).exists(), f"COPY {name}: not in the repository"
