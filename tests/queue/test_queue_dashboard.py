"""The GPU queue on Grafana's spawns dashboard and in the alert rules: what they query is what the usage
exporter serves from a real queue store (a renamed series would leave a panel or the alert silently empty)."""

from __future__ import annotations

import json
import re

import yaml
from prometheus_client import CollectorRegistry, generate_latest

from exporters.usage import build_usage_exporter
from quota.queue_store import QueueStore
from tests.harness import ROOT

BOARD = ROOT / "exporters" / "grafana" / "dashboards" / "gpuhub-spawns.json"
RULES = ROOT / "exporters" / "prometheus" / "rules.yml"
QUEUE_SERIES = re.compile(r"\b(gpuhub_(?:queue_\w+|org_fairshare_factor))\b")


def panel_exprs() -> dict[str, list[str]]:
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in json.loads(BOARD.read_text())["panels"]}


def exported_names(engine, site, clock) -> set[str]:
    qs = QueueStore(engine, site, clock)
    qs.enqueue("alice/", "alice", "", "gist-ai", 1, "H100", {"gpus": 1})
    registry, _ = build_usage_exporter(site, engine, registry=CollectorRegistry(), clock=clock)
    text = generate_latest(registry).decode()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_spawns_dashboard_shows_length_oldest_wait_quantiles_by_outcome_and_fair_share(engine, site, clock):
    panels = panel_exprs()
    exprs = [e for es in panels.values() for e in es]
    for name in ("gpuhub_queue_length", "gpuhub_queue_oldest_wait_seconds", "gpuhub_org_fairshare_factor"):
        assert any(name in e and 'org=~"$org"' in e for e in exprs), name  # per org, the org picker applies
    quantiles = [e for e in exprs if "gpuhub_queue_wait_seconds_bucket" in e]
    assert {e.split(",")[0] for e in quantiles} == {"histogram_quantile(0.5", "histogram_quantile(0.95"}, quantiles
    assert all("by (le, outcome)" in e for e in quantiles), quantiles  # p50/p95 per outcome
    used = set(QUEUE_SERIES.findall(" ".join(exprs)))
    assert used and used <= exported_names(engine, site, clock), used


def test_the_oldest_wait_alert_reads_an_exported_series_with_the_30_minute_threshold(engine, site, clock):
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    (alert,) = [r for r in rules if r.get("alert") == "GpuhubQueueOldestWaitLong"]
    assert alert["expr"].strip() == "gpuhub_queue_oldest_wait_seconds > 1800"
    assert set(QUEUE_SERIES.findall(alert["expr"])) <= exported_names(engine, site, clock)
