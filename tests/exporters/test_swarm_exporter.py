"""The GPU exporter as one task per Swarm node (docker-stack.yml): which GPUs a node's exporter answers for,
the token as a Docker secret file, and the stack's files agreeing with each other and with promtool.

The real deployment onto a three-node Swarm is tests/swarm/test_swarm_stack.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry

from exporters import server
from exporters.gpu import build_gpu_exporter
from exporters.server import MetricsConfigError, metrics_token, node_devices
from exporters.testing import FakeDocker, gpuhub_labels
from gpuhub import node_cli
from tests.exporters.helpers import ROOT, make_site

STACK = ROOT / "docker-stack.yml"
SWARM_PROM = ROOT / "exporters" / "prometheus" / "prometheus-swarm.yml"
CID = "b" * 64


def swarm_site(tmp_path, runtime="none"):
    return make_site(tmp_path, hub={"engine": "swarm"}, gpus=_gpus(runtime))


def _gpus(runtime):
    return {
        "runtime": runtime,
        "devices": [{"uuid": "GPU-site-list-0", "model": "H100"}],  # a hub-wide list no node may claim
        "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}},
    }


def test_single_host_exporter_answers_for_the_sites_devices(tmp_path):
    site = make_site(tmp_path, gpus=_gpus("none"))
    assert [d.uuid for d in node_devices(site, "anyhost")] == ["GPU-site-list-0"]


def test_a_swarm_nodes_exporter_claims_none_of_the_sites_list(tmp_path):
    # With hub.engine swarm, gpus.devices is unused: a node claims only what it has (NVML) or declared.
    assert node_devices(swarm_site(tmp_path), "node-a") == ()
    assert node_devices(swarm_site(tmp_path, "nvidia"), "node-a") == ()


def test_simulated_gpus_are_those_node_register_declares(tmp_path):
    got = node_devices(swarm_site(tmp_path), "gpuhub-sws-2", 2, "H100")
    declared = node_cli.simulated_gpus("gpuhub-sws-2", 2, "H100")
    assert [(d.uuid, d.model) for d in got] == declared
    assert [d.uuid for d in got] == ["GPU-sim-gpuhub-sws-2-0", "GPU-sim-gpuhub-sws-2-1"]


@pytest.mark.parametrize(
    ("hub", "runtime", "n", "model", "node", "says"),
    [
        ({}, "none", 2, "H100", "n1", "needs hub.engine: swarm"),
        ({"engine": "swarm"}, "nvidia", 2, "H100", "n1", "gpus.runtime: none"),
        ({"engine": "swarm"}, "none", 2, "B200", "n1", "gpus.models key"),
        ({"engine": "swarm"}, "none", -1, "H100", "n1", "N must be >= 0"),
        ({"engine": "swarm"}, "none", 2, "H100", "", "GPUHUB_NODE"),
    ],
)
def test_simulate_refuses_what_it_cannot_declare(tmp_path, hub, runtime, n, model, node, says):
    site = make_site(tmp_path, hub=hub, gpus=_gpus(runtime))
    with pytest.raises(MetricsConfigError, match=says):
        node_devices(site, node, n, model)


def test_node_exporter_serves_its_own_gpus_and_its_engines_holders(tmp_path):
    """Inventory = the node's declared GPUs; allocation = its own engine's labelled containers."""
    site = swarm_site(tmp_path)
    docker = FakeDocker()
    docker.add(CID, gpuhub_labels("alice", "gist-ai", ["GPU-sim-n2-1"]), name="/jupyter-alice")
    devices = node_devices(site, "n2", 2, "H100")
    registry, sampler = build_gpu_exporter(site, docker, registry=CollectorRegistry(), devices=devices)
    sampler.sample_once()
    info = {s.labels["uuid"] for m in registry.collect() if m.name == "gpuhub_gpu_info" for s in m.samples}
    assert info == {"GPU-sim-n2-0", "GPU-sim-n2-1"}
    held = dict(uuid="GPU-sim-n2-1", model="H100", org="gist-ai", user="alice", server="")
    assert registry.get_sample_value("gpuhub_gpu_allocated", held) == 1
    assert registry.get_sample_value("gpuhub_gpu_unallocated", {"uuid": "GPU-sim-n2-0", "model": "H100"}) == 1
    assert registry.get_sample_value("gpuhub_gpu_unallocated", {"uuid": "GPU-sim-n2-1", "model": "H100"}) is None


def test_cli_hands_the_nodes_simulated_gpus_to_the_exporter(tmp_path, monkeypatch):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(_site_data(hub={"engine": "swarm"})))
    seen = {}
    monkeypatch.setattr(server, "run_gpu_exporter", lambda site, listen, **kw: seen.update(kw) or 0)
    monkeypatch.setenv("GPUHUB_NODE", "gpuhub-sws-3")
    assert server.main_gpu(["--site", str(site_file), "--simulate", "2", "--model", "H100"]) == 0
    assert seen["node"] == "gpuhub-sws-3"
    assert [d.uuid for d in seen["devices"]] == ["GPU-sim-gpuhub-sws-3-0", "GPU-sim-gpuhub-sws-3-1"]


def test_cli_refuses_simulate_on_a_single_host_site(tmp_path, caplog):
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(_site_data()))
    assert server.main_gpu(["--site", str(site_file), "--simulate", "2", "--model", "H100"]) == 2
    assert "--simulate declares a Swarm node's simulated GPUs: it needs hub.engine: swarm" in caplog.text


def _site_data(**overrides):
    from tests.exporters.helpers import site_data

    return site_data(gpus=_gpus("none"), **overrides)


# ------------------------------------------------------------------ the token as a Docker secret


def test_token_from_the_file_named_by_NAME_FILE(tmp_path):
    site = make_site(tmp_path, metrics_token_env="GPUHUB_METRICS_TOKEN")
    secret = tmp_path / "gpuhub_metrics_token"
    secret.write_text("s3cret\n")
    assert metrics_token(site, {"GPUHUB_METRICS_TOKEN_FILE": str(secret)}) == "s3cret"
    both = {"GPUHUB_METRICS_TOKEN": "from-env", "GPUHUB_METRICS_TOKEN_FILE": str(secret)}
    assert metrics_token(site, both) == "from-env"  # the variable itself wins


@pytest.mark.parametrize(("content", "says"), [(None, "cannot be read"), ("  \n", "is empty")])
def test_token_file_missing_or_empty_fails_at_start(tmp_path, content, says):
    site = make_site(tmp_path, metrics_token_env="GPUHUB_METRICS_TOKEN")
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(MetricsConfigError, match=says):
        metrics_token(site, {"GPUHUB_METRICS_TOKEN_FILE": str(secret)})


# ------------------------------------------------------------------ the stack's files


def test_swarm_prometheus_config_passes_promtool(promtool):
    res = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(SWARM_PROM)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_stack_and_prometheus_config_agree():
    """What prometheus-swarm.yml keeps is what docker-stack.yml labels; the token path is the secret's."""
    stack = yaml.safe_load(STACK.read_text())
    prom = yaml.safe_load(SWARM_PROM.read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "gpuhub-gpu")
    keeps = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    exporter = stack["services"]["gpu-exporter"]
    assert exporter["deploy"]["mode"] == "global"
    assert (
        keeps[("__meta_dockerswarm_service_label_gpuhub_exporter",)] == exporter["deploy"]["labels"]["gpuhub.exporter"]
    )
    assert (
        keeps[("__meta_dockerswarm_network_label_gpuhub_monitoring",)]
        == (stack["networks"]["monitoring"]["labels"]["gpuhub.monitoring"])
    )
    assert job["authorization"]["credentials_file"] == "/run/secrets/gpuhub_metrics_token"
    assert exporter["environment"]["GPUHUB_METRICS_TOKEN_FILE"] == "/run/secrets/gpuhub_metrics_token"
    assert "--listen 0.0.0.0:9835" in " ".join(exporter["command"])
    assert any(r.get("replacement") == "$1:9835" for r in job["relabel_configs"])
    assert stack["services"]["prometheus"]["deploy"]["placement"]["constraints"] == ["node.role == manager"]


def test_stack_file_parses_with_docker_compose(tmp_path):
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose is needed to parse docker-stack.yml (apt install docker-compose)"
    site, token = tmp_path / "site.yaml", tmp_path / "token"
    site.write_text("{}")
    token.write_text("t")
    env = {"PATH": "/usr/bin:/bin", "GPUHUB_SITE_FILE": str(site), "GPUHUB_METRICS_TOKEN_PATH": str(token)}
    res = subprocess.run([compose, "-f", str(STACK), "config"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "mode: global" in res.stdout
