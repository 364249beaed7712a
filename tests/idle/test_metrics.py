"""The idle series: gpuhub_gpu_idle_seconds from the GPU exporter's own sampler (same definition as the
culler), gpuhub_idle_culls_total from the ledger's end_reason; both pass promtool."""

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import update

from exporters.gpu import build_gpu_exporter
from exporters.testing import FakeDocker, FakeGpu, FakeNvmlSource, gpuhub_labels
from exporters.usage import build_usage_exporter
from quota import models
from tests.exporters.helpers import add_interval, make_site
from tests.exporters.test_prometheus import promtool_check_metrics


class Wall:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def test_gpu_idle_seconds_counts_windows_resets_on_use_and_starts_with_the_holder(tmp_path, promtool):
    site = make_site(tmp_path, idle={"window_seconds": 30})
    gpu = FakeGpu("GPU-fake-0", utilization=0, memory_used=4 << 30)  # memory held, no kernel: idle-held
    docker = FakeDocker()
    wall = Wall(1_800_000_000.0)
    registry, sampler = build_gpu_exporter(
        site, docker, FakeNvmlSource([gpu]), registry=CollectorRegistry(), clock=wall, containers_interval=0.0
    )
    labels = dict(org="gist-ai", user="alice", server="", uuid="GPU-fake-0")

    def step(seconds):
        for _ in range(int(seconds)):
            wall.t += 1
            sampler.sample_once()
        return registry.get_sample_value("gpuhub_gpu_idle_seconds", labels)

    step(600)  # idle for 10 minutes with nobody holding it
    docker.add("a" * 64, gpuhub_labels("alice", "gist-ai", ["GPU-fake-0"]))
    assert step(1) == 0.0  # the new holder does not inherit the free GPU's idle time
    assert step(120) == 120.0  # bounded by the holder's 120 s (the GPU itself has been idle 720 s)
    gpu.utilization = 30
    assert step(1) == 0.0
    gpu.utilization = 0
    assert step(65) == 30.0
    promtool_check_metrics(promtool, generate_latest(registry).decode())


def test_idle_culls_total_by_org_and_kind_from_the_ledger(ledger_engine, tmp_path, promtool):
    site = make_site(tmp_path)
    now = datetime.now(UTC)
    for reason, user in [("gpu-idle", "alice"), ("gpu-idle", "bob"), ("http-idle", "alice"), ("stopped", "carol")]:
        iid = add_interval(ledger_engine, user=user, started_at=now - timedelta(hours=1), ended_at=now)
        with ledger_engine.begin() as conn:
            conn.execute(
                update(models.usage_intervals).where(models.usage_intervals.c.id == iid).values(end_reason=reason)
            )
    registry, sampler = build_usage_exporter(site, ledger_engine, registry=CollectorRegistry())
    sampler.refresh()
    get = registry.get_sample_value
    assert get("gpuhub_idle_culls_total", {"org": "gist-ai", "kind": "gpu"}) == 2
    assert get("gpuhub_idle_culls_total", {"org": "gist-ai", "kind": "http"}) == 1
    assert get("gpuhub_idle_culls_total", {"org": "cnuh-radiology", "kind": "gpu"}) == 0  # pre-created
    promtool_check_metrics(promtool, generate_latest(registry).decode())
