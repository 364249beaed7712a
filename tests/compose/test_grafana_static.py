"""Grafana in docker-compose.yml, checked without starting it (no offline Grafana image here): the compose
service mounts what the provisioning names, every datasource uid a dashboard, panel, query or variable uses
is provisioned, and every query parses as PromQL (promtool; the live stack test also asks its Prometheus)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.harness import ROOT

GRAFANA = ROOT / "exporters" / "grafana"
#: Grafana's built-in variables and the dashboards' own, replaced by values of the same kind
SUBST = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "${org}": ".*", "$org": ".*"}


def _uids_in(node) -> list[str]:
    """Every datasource uid a dashboard (or part of it) refers to."""
    out = []
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and "uid" in ds:
            out.append(ds["uid"])
        for v in node.values():
            out += _uids_in(v)
    elif isinstance(node, list):
        for v in node:
            out += _uids_in(v)
    return out


def _panels(panels: list) -> list:
    out = []
    for p in panels:
        out.append(p)
        out += _panels(p.get("panels", []))  # rows hold panels
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and query variable, Grafana variables replaced."""
    out = []
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        exprs = [
            (f"{path.name}: {p.get('title')}", t["expr"])
            for p in _panels(board.get("panels", []))
            for t in p.get("targets", [])
            if t.get("expr")
        ]
        for v in board.get("templating", {}).get("list", []):
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if v.get("type") == "query" and isinstance(q, str) and q.startswith("label_values("):
                metric = q[len("label_values(") :].rsplit(",", 1)[0].strip()  # label_values(METRIC, label)
                exprs.append((f"{path.name}: variable {v['name']}", metric))
        for where, expr in exprs:
            for k, val in SUBST.items():
                expr = expr.replace(k, val)
            assert "$" not in expr, (where, expr)
            out.append((where, expr))
    return out


def compose_services() -> dict:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is not installed; `make test` installs Debian's docker-compose"
    env = {**os.environ, "GPUHUB_OIDC_CLIENT_SECRET": "s", "GPUHUB_METRICS_TOKEN": "t"}
    r = subprocess.run(
        [exe, "-f", str(ROOT / "docker-compose.yml"), "config"], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["services"]


def test_grafana_is_behind_a_profile_and_mounts_what_its_provisioning_names():
    services = compose_services()
    grafana = services["grafana"]
    assert grafana["profiles"] == ["grafana"]  # `docker-compose up` alone leaves it out
    mounts = {m["target"]: Path(m["source"]) for m in grafana["volumes"] if isinstance(m, dict) and m.get("source")}
    if not mounts:  # docker-compose 1.29 prints the short syntax
        mounts = {v.split(":")[1]: Path(v.split(":")[0]) for v in grafana["volumes"] if v.startswith("/")}
    assert mounts["/etc/grafana/provisioning"] == GRAFANA / "provisioning"
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/gpuhub.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == GRAFANA / "dashboards"
    (ds,) = yaml.safe_load((GRAFANA / "provisioning/datasources/gpuhub.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"  # the compose service, its port
    assert "internal" in grafana["networks"] and "internal" in services["prometheus"]["networks"]


def test_every_datasource_uid_a_dashboard_uses_is_provisioned():
    provisioned = {
        d["uid"] for d in yaml.safe_load((GRAFANA / "provisioning/datasources/gpuhub.yml").read_text())["datasources"]
    }
    boards = sorted((GRAFANA / "dashboards").glob("*.json"))
    assert len(boards) == 3
    for path in boards:
        board = json.loads(path.read_text())
        used = set(_uids_in(board)) - {"-- Grafana --", "grafana"}  # Grafana's built-in annotation source
        assert used and used <= provisioned, (path.name, used - provisioned)
        for p in _panels(board["panels"]):
            for t in p.get("targets", []):
                assert t.get("expr"), (path.name, p.get("title"), "a panel query without PromQL")


def test_every_dashboard_query_parses_with_promtool(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed; `make test` installs Debian's prometheus (promtool)"
    queries = dashboard_queries()
    assert len(queries) >= 30
    rules = [{"record": f"dashboard:q{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    f = tmp_path / "dashboard_queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
