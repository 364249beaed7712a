"""Prometheus side: promtool on config, rules, rule tests, dashboards and both exporters' output;
and a real Prometheus server scraping the usage exporter backed by a SQLite ledger."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import build_gpu_exporter
from exporters.server import serve
from exporters.testing import FakeDocker, FakeGpu, FakeNvmlSource, FakeProcess, gpuhub_labels, make_proc_tree
from exporters.usage import build_usage_exporter
from tests.exporters.helpers import ROOT, add_interval, site_data
from tests.procs import free_port

PROM_DIR = ROOT / "exporters" / "prometheus"
GRAFANA_DIR = ROOT / "exporters" / "grafana"
TOKEN = "prometheus-test-token"


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def ok(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, f"{res.args} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout + res.stderr


def promtool_check_metrics(promtool: str, text: str) -> None:
    res = run([promtool, "check", "metrics"], input=text)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
        f"promtool check metrics complained:\n{res.stdout}{res.stderr}"
    )


# ---------------------------------------------------------------- config and rules


def test_prometheus_config_checks_with_its_secret_files(promtool, tmp_path):
    conf = tmp_path / "prometheus"
    shutil.copytree(PROM_DIR, conf)
    (conf / "secrets").mkdir(exist_ok=True)
    for name in ("hub-metrics-token", "gpuhub-metrics-token"):
        (conf / "secrets" / name).write_text("token\n")
    out = ok(run([promtool, "check", "config", str(conf / "prometheus.yml")]))
    assert "SUCCESS: 10 rules found" in out
    ok(run([promtool, "check", "config", "--syntax-only", str(PROM_DIR / "prometheus.yml")]))
    jobs = {j["job_name"]: j for j in yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["scrape_configs"]}
    assert jobs["jupyterhub"]["metrics_path"] == "/hub/metrics"
    assert set(jobs) == {"jupyterhub", "gpuhub-gpu", "gpuhub-usage"}


def test_rules_check_and_unit_tests(promtool):
    ok(run([promtool, "check", "rules", str(PROM_DIR / "rules.yml")]))
    out = ok(run([promtool, "test", "rules", "rules_test.yml"], cwd=PROM_DIR))
    assert "SUCCESS" in out


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((GRAFANA_DIR / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for t in panel["targets"]:
                out.append((f"{path.name}: {panel['title']}", t["expr"]))
    return out


def test_grafana_provisioning_and_dashboards(promtool, tmp_path):
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/gpuhub.yml").read_text())["datasources"][0]
    prov = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/gpuhub.yml").read_text())["providers"][0]
    assert prov["type"] == "file" and prov["options"]["path"]
    boards = [json.loads(p.read_text()) for p in sorted((GRAFANA_DIR / "dashboards").glob("*.json"))]
    assert {b["uid"] for b in boards} == {"gpuhub-org-usage", "gpuhub-gpu-health", "gpuhub-spawns"}
    for b in boards:
        ids = [p["id"] for p in b["panels"]]
        assert len(ids) == len(set(ids)), b["uid"]
        for p in b["panels"]:
            assert p["datasource"]["uid"] == ds["uid"], (b["uid"], p["title"])
    # every panel query is valid PromQL: check them as recording rules with promtool
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    subst = {"$__rate_interval": "1m", "$__range": "1h", "$org": ".*"}
    rules = []
    for i, (where, expr) in enumerate(exprs):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        assert "$" not in expr, where
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    f = tmp_path / "dashboard_exprs.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    ok(run([promtool, "check", "rules", str(f)]))


# ---------------------------------------------------------------- exposition lint


def test_gpu_exporter_output_with_every_series_passes_promtool(promtool, tmp_path, site):
    cid = "c" * 64
    docker = FakeDocker()
    docker.add(cid, gpuhub_labels("alice", "gist-ai", ["GPU-fake-0"]))
    proc = make_proc_tree(tmp_path / "proc", {4242: f"0::/docker/{cid}\n"})
    gpus = [
        FakeGpu("GPU-fake-0", utilization=90, processes=[FakeProcess(4242, sm_percent=80, mem_percent=20)]),
        FakeGpu("GPU-p", migs=[FakeGpu("MIG-0", processes=[FakeProcess(77)])]),
        FakeGpu("GPU-bad", fail={"power"}),
    ]
    registry, sampler = build_gpu_exporter(
        site, docker, FakeNvmlSource(gpus), registry=CollectorRegistry(), proc_root=str(proc)
    )
    sampler.sample_once()
    sampler.sample_once()
    text = generate_latest(registry).decode()
    assert 'user="alice"' in text and "gpuhub_gpu_energy_joules_total" in text
    promtool_check_metrics(promtool, text)


def start_exporter(kind: str, site_file: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """Run ``python -m exporters KIND`` on a free port; returns the process and its /metrics URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporters", kind, "--site", str(site_file), "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"exporter on (http://\S+/metrics)", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    pytest.fail(f"{kind} exporter did not start:\n{''.join(lines)}{proc.stderr.read()}", pytrace=False)


@pytest.mark.parametrize("kind", ["usage", "gpu"])
def test_exporter_binary_output_passes_promtool(kind, promtool, tmp_path, ledger_engine):
    now = datetime.now(UTC)
    add_interval(ledger_engine, gpus=1, started_at=now - timedelta(minutes=5))
    data = site_data(
        hub={"state_dir": str(tmp_path), "db_url": str(ledger_engine.url)},
        metrics_token_env="GPUHUB_TEST_METRICS_TOKEN",
    )
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(data))
    env = {**os.environ, "GPUHUB_TEST_METRICS_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
    proc, url = start_exporter(kind, site_file, env)
    try:
        assert requests.get(url, timeout=10).status_code == 401
        r = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert r.status_code == 200
        assert f'gpuhub_exporter_up{{exporter="{kind}"}} 1.0' in r.text
        if kind == "usage":
            assert 'gpuhub_org_allocated_gpu_seconds_total{model="H100",org="gist-ai"}' in r.text
        else:
            assert 'gpuhub_gpu_info{index="",model="H100",name="",parent_uuid="",uuid="GPU-fake-0"} 1.0' in r.text
        promtool_check_metrics(promtool, r.text)
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a clean stop


# ---------------------------------------------------------------- a real Prometheus


def test_real_prometheus_scrapes_ledger_gpu_seconds(prometheus_bin, tmp_path, site, ledger_engine):
    start = datetime.now(UTC) - timedelta(seconds=1000)
    add_interval(ledger_engine, user="alice", gpus=1, started_at=start)  # open
    add_interval(
        ledger_engine, user="bob", gpus=2, started_at=start - timedelta(hours=2), ended_at=start - timedelta(hours=1)
    )  # closed: 7200 GPU-seconds
    closed = 7200.0
    registry, sampler = build_usage_exporter(site, ledger_engine, registry=CollectorRegistry())
    sampler.refresh()
    sampler.start()
    exporter = serve(registry, "127.0.0.1:0", TOKEN)
    (tmp_path / "token").write_text(TOKEN)
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "gpuhub-usage",
                        "authorization": {"type": "Bearer", "credentials_file": str(tmp_path / "token")},
                        "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    query = 'gpuhub_org_allocated_gpu_seconds_total{org="gist-ai",model="H100",job="gpuhub-usage"}'
    try:
        deadline = time.monotonic() + 60
        result = []
        while time.monotonic() < deadline and not result:
            time.sleep(0.5)
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                body = requests.get(f"{api}/query", params={"query": query}, timeout=5).json()
            except requests.ConnectionError:
                continue
            result = body.get("data", {}).get("result", [])
        assert result, "Prometheus never stored the series:\n" + (tmp_path / "prometheus.log").read_text()
        time.sleep(2)  # a few more scrapes
        at = time.time()
        body = requests.get(f"{api}/query", params={"query": query, "time": f"{at:.3f}"}, timeout=5).json()
        (sample,) = body["data"]["result"]
        got = float(sample["value"][1])
        ledger_value = closed + (at - start.timestamp())  # 1 GPU open since `start`
        print(f"prometheus {got:.3f} vs ledger {ledger_value:.3f} GPU-seconds")
        assert abs(got - ledger_value) <= 2.0, (got, ledger_value)
        up = requests.get(f"{api}/query", params={"query": 'up{job="gpuhub-usage"}'}, timeout=5).json()
        assert up["data"]["result"][0]["value"][1] == "1"  # the bearer token worked
    finally:
        prom.terminate()
        try:
            prom.wait(15)
        except subprocess.TimeoutExpired:
            prom.kill()
        log.close()
        exporter.close()
        sampler.stop()
