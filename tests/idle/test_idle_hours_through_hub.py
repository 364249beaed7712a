"""Idle-allocated GPU-hours on /hub/operators and in ``gpuhub quota status``, through a real hub, Docker, gpuhub-idle
and the GPU exporter over the NVML double (the site of tests/idle/test_idle_through_hub.py, one server only).

erin's GPU sits at 0 % with memory held (idle-held) under patient-lab's 30-minute timeout, so it is never culled
while the idle service records its idle span every second (quota.usage_records). The page and the CLI show the same
month figure from the ledger, and it is the exporter's Prometheus counter less at most a few idle windows.
"""

from __future__ import annotations

import re
import time

import docker
import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporters.gpu import build_gpu_exporter
from exporters.server import serve
from exporters.testing import FakeGpu, FakeNvmlSource
from gpuhub.core.site import parse_site
from tests.harness import HubProcess, login
from tests.idle.test_idle_through_hub import CONFIG, GPUS, idle_site
from tests.procs import module_failed

pytestmark = pytest.mark.docker

IDLE_FOR_S = 8.0  # how long erin's GPU idles before the operators' page is read


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    tmp = tmp_path_factory.mktemp("idlehours")
    hub = HubProcess(tmp)
    site = idle_site(hub.instance, hub.port, hub.state)
    registry, sampler = build_gpu_exporter(
        parse_site(site, tmp / "site.yaml"),
        docker.from_env(),
        FakeNvmlSource([FakeGpu(u, utilization=0, memory_used=2 << 30) for u in GPUS]),
        registry=CollectorRegistry(),
        interval=0.2,
        containers_interval=0.5,
    )
    sampler.start()
    metrics = serve(registry, "127.0.0.1:0")
    hub.site = idle_site(hub.instance, hub.port, hub.state, f"http://127.0.0.1:{metrics.port}")
    hub.site["hub"]["bind_url"] = hub.url
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    hub.config_file = tmp / "idle_jupyterhub_config.py"
    hub.config_file.write_text(CONFIG)
    try:
        hub.start()
        yield hub
    finally:
        if module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()
        metrics.close()
        sampler.stop()


def exporter_idle_seconds(hub) -> dict[str, float]:
    """``gpuhub_gpu_idle_allocated_seconds_total`` per org, as Prometheus scrapes it."""
    text = requests.get(hub.site["idle"]["gpu_exporters"][0] + "/metrics", timeout=10).text
    return {
        s.labels["org"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gpuhub_gpu_idle_allocated_seconds_total"
    }


def test_operators_page_and_cli_show_the_idle_gpu_hours_gpuhub_idle_recorded(hub):
    assert hub.spawn("erin", {"image": "python", "gpus": 1}).status_code in (201, 202)
    hub.wait_ready("erin")
    deadline = time.monotonic() + IDLE_FOR_S + 60
    while hub.cli_json("quota", "status")["this_month"]["idle_gpu_hours"]["patient-lab"] * 3600 < IDLE_FOR_S:
        assert time.monotonic() < deadline, f"no idle span for erin's GPU\n{hub.log_lines('gpuhub-idle')}"
        time.sleep(1)
    admin = login(hub, "operator", (hub.state / "admin-password").read_text().strip())
    html = admin.get(f"{hub.url}/hub/operators", headers={"Accept-Language": "en-US"}, timeout=30).text
    read_at = time.monotonic()
    prom = exporter_idle_seconds(hub)
    month = hub.cli_json("quota", "status")["this_month"]["idle_gpu_hours"]  # one function, two front-ends
    apart = time.monotonic() - read_at
    shown = {
        org: float(hours)
        for org, hours in re.findall(r'<tr data-org="([^"]+)">.*?data-idle-hours="([^"]+)"', html, flags=re.S)
    }
    assert "Idle-allocated GPU-hours this month" in html and shown["gist-ai"] == 0.0, shown
    erin = shown["patient-lab"] * 3600
    print(f"patient-lab idle: ledger {erin:.1f} s, Prometheus {prom['patient-lab']:.1f} s ({apart:.1f} s apart)")
    assert erin >= IDLE_FOR_S and -1 <= prom["patient-lab"] - erin <= 6 + apart, (erin, prom)
    # the span grows by each check (1 s) while erin idles on; the CLI read it a moment later
    assert shown["patient-lab"] <= month["patient-lab"] <= shown["patient-lab"] + (apart + 2) / 3600, month
    hub.stop_server("erin")
