"""The queue's series from the store: lengths per org, the wait histogram by outcome, fair-share factors;
registered beside the other quota series (the usage exporter) and clean for promtool."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest

from exporters.usage import build_usage_exporter
from quota.queue_store import QueueStore
from tests.exporters.conftest import promtool  # noqa: F401
from tests.exporters.test_prometheus import promtool_check_metrics


def test_queue_series_pass_promtool_and_say_what_happened(engine, site, clock, promtool):  # noqa: F811
    qs = QueueStore(engine, site, clock)
    for user, org in (("alice", "gist-ai"), ("bob", "gist-ai"), ("carol", "cnuh")):
        qs.enqueue(f"{user}/", user, "", org, 1, "H100", {"gpus": 1})
        clock.advance(minutes=2)
    g = qs.pop_next(site.gpus.devices)
    qs.mark_served(g.id)
    qs.cancel(server_key="carol/")
    clock.advance(minutes=200)
    qs.expire()
    registry, _ = build_usage_exporter(site, engine, registry=CollectorRegistry(), clock=clock)
    get = registry.get_sample_value
    assert get("gpuhub_queue_length", {"org": "gist-ai"}) == 0 and get("gpuhub_queue_length", {"org": "academy"}) == 0
    assert get("gpuhub_queue_wait_seconds_count", {"outcome": "served"}) == 1
    assert get("gpuhub_queue_wait_seconds_sum", {"outcome": "served"}) == 360.0
    assert get("gpuhub_queue_wait_seconds_count", {"outcome": "cancelled"}) == 1
    assert get("gpuhub_queue_wait_seconds_bucket", {"outcome": "expired", "le": "7200.0"}) == 0
    assert get("gpuhub_queue_wait_seconds_bucket", {"outcome": "expired", "le": "14400.0"}) == 1
    assert get("gpuhub_org_fairshare_factor", {"org": "academy"}) == 1.0
    promtool_check_metrics(promtool, generate_latest(registry).decode())


def test_queue_length_counts_waiting_requests_per_org(engine, site, clock):
    qs = QueueStore(engine, site, clock)
    qs.enqueue("alice/", "alice", "", "gist-ai", 1, "H100", {})
    qs.enqueue("alice/b", "alice", "b", "gist-ai", 2, None, {}, arrived_at=clock.now - timedelta(minutes=1))
    registry, _ = build_usage_exporter(site, engine, registry=CollectorRegistry(), clock=clock)
    assert registry.get_sample_value("gpuhub_queue_length", {"org": "gist-ai"}) == 2
    assert registry.get_sample_value("gpuhub_queue_oldest_wait_seconds", {"org": "gist-ai"}) == 60.0
    assert registry.get_sample_value("gpuhub_queue_oldest_wait_seconds", {"org": "cnuh"}) == 0.0
