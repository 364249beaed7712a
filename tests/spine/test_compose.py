"""docker-compose.yml is accepted by docker-compose and wires what production needs."""

import os
import shutil
import subprocess

import yaml

from tests.harness import ROOT


def compose_config(**env) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed; `make test` installs Debian's docker-compose"
    return subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def test_compose_config_is_accepted_and_only_the_hub_gets_docker_sock():
    out = compose_config(GPUHUB_OIDC_CLIENT_SECRET="s3cret", GPUHUB_METRICS_TOKEN="tok")
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    services = doc["services"]
    assert {"hub", "postgres", "prometheus", "grafana", "gpu-exporter", "usage-exporter"} <= set(services)
    rw_sock = [
        name
        for name, s in services.items()
        if any("/var/run/docker.sock" in str(v) and not str(v).endswith(":ro") for v in s.get("volumes", []))
    ]
    assert rw_sock == ["hub"], rw_sock
    assert services["hub"]["image"] == "gpuhub/hub:latest" and "build" not in services["hub"]  # gpuhub images build hub
    assert services["usage-exporter"]["network_mode"] == "host"  # its db_url is PostgreSQL on 127.0.0.1
    assert doc["networks"]["users"]["name"] == "gpuhub-users"
    assert doc["networks"]["users"]["driver_opts"]["com.docker.network.bridge.enable_icc"] == "false"
    assert services["hub"]["network_mode"] == "host" and "ports" not in services["hub"]
    assert all(p.startswith("127.0.0.1:") for p in services["prometheus"]["ports"] + services["grafana"]["ports"])
    gpu = services["gpu-exporter"]  # NVML inside the container: the toolkit mounts libnvidia-ml for a request
    (request,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert request["driver"] == "nvidia" and request["capabilities"] == ["utility"] and gpu["pid"] == "host"


def test_compose_refuses_to_start_without_the_oidc_secret():
    env = {k: v for k, v in os.environ.items() if k != "GPUHUB_OIDC_CLIENT_SECRET"}
    out = subprocess.run(
        [shutil.which("docker-compose"), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "GPUHUB_METRICS_TOKEN": "tok"},
    )
    assert out.returncode != 0 and "GPUHUB_OIDC_CLIENT_SECRET" in out.stderr
