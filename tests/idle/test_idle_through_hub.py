"""Idle culling through a real hub, Docker and the GPU exporter over the NVML double.

One hub and one timeline (seconds-scale timeouts from the site config): alice's GPU shows 0 %
and is culled after a warning on her home page; bob's GPU shows 30 % in one window out of four,
carol's kernel runs ``time.sleep(600)``, dave is exempt, erin's org has a long timeout: none of
them is culled over the same period. frank's CPU-only server is culled by jupyterhub-idle-culler.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import docker
import pytest
import websocket
import yaml
from prometheus_client.registry import CollectorRegistry

from exporters.gpu import build_gpu_exporter
from exporters.server import serve
from exporters.testing import FakeGpu, FakeNvmlSource
from gpuhub.core.site import load_site, parse_site
from quota.store import QuotaStore
from tests.harness import ROOT, HubProcess, default_site, execute, login
from tests.procs import module_failed

pytestmark = pytest.mark.docker

TIMEOUT_S, WARN_S, HTTP_S = 15.0, 6.0, 6.0
GPUS = [f"GPU-idletest-{i}" for i in range(5)]
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
HOLDERS = {"alice": GPUS[0], "bob": GPUS[1], "carol": GPUS[2], "dave": GPUS[3], "erin": GPUS[4]}

CONFIG = f"""
exec(compile(open({str(ROOT / "jupyterhub_config.py")!r}).read(), "jupyterhub_config.py", "exec"))
from gpuhub.hub.idle_config import IDLE_SERVICE, apply_idle
if not any(s["name"] == IDLE_SERVICE for s in c.JupyterHub.services):  # until the lead wires it in
    apply_idle(c, site, facts)
"""


def idle_site(instance, port, state, exporter_url=None) -> dict:
    site = default_site(instance, port, state)
    site["gpus"]["devices"] = [{"uuid": u, "model": "H100"} for u in GPUS]
    site["organizations"] = {
        "gist-ai": {
            "members": ["alice", "bob", "carol", "dave", "frank"],
            "gpu_limit": 5,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 1,
        },
        "patient-lab": {"members": ["erin"], "gpu_limit": 1, "gpu_hours_per_month": 100, "idle_timeout_minutes": 30},
    }
    site["idle"] = {
        "window_seconds": 1,
        "timeout_minutes": TIMEOUT_S / 60,
        "warn_minutes": WARN_S / 60,
        "http_timeout_minutes": HTTP_S / 60,
        "check_interval_seconds": 1,
        "gpu_exporters": [exporter_url] if exporter_url else [],
    }
    return site


class Blip(threading.Thread):
    """bob's GPU: 30 % for one second out of every four (one busy window in four)."""

    def __init__(self, gpu: FakeGpu):
        super().__init__(daemon=True)
        self.gpu, self.stop = gpu, threading.Event()

    def run(self):
        while not self.stop.wait(0.05):
            self.gpu.utilization = 30 if int(time.time()) % 4 == 0 else 0


@pytest.fixture(scope="module")
def world(request, tmp_path_factory, docker_client):
    tmp = tmp_path_factory.mktemp("idlehub")
    gpus = [FakeGpu(u, utilization=0, memory_used=2 << 30) for u in GPUS]  # memory held, no kernel: idle-held
    hub = HubProcess(tmp)
    exporter_site = parse_site(idle_site(hub.instance, hub.port, hub.state), tmp / "site.yaml")
    registry, sampler = build_gpu_exporter(
        exporter_site,
        docker.from_env(),
        FakeNvmlSource(gpus),
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
    blip = Blip(gpus[1])
    blip.start()
    try:
        hub.start()
        yield hub, gpus
    finally:
        if module_failed(request):
            print(hub.dump_logs())
        blip.stop.set()
        hub.cleanup()
        metrics.close()
        sampler.stop()


def gpuhub_idle(hub, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gpuhub", "--site", str(hub.site_path), "idle", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def running(hub, user: str) -> bool:
    return bool(hub.api("GET", f"/users/{user}").json().get("servers", {}).get(""))


def wait_for(what, fn, timeout: float, hub):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout} s\n{hub.log_lines('gpuhub-idle')}\n{hub.log_tail(40)}")


@pytest.fixture(scope="module")
def timeline(world):
    """Start everyone, then follow alice's warning and cull; returns what was seen."""
    hub, gpus = world
    r = gpuhub_idle(hub, "exempt", "dave", "--hours", "1")
    assert r.returncode == 0 and "exempt from idle culling until" in r.stdout, r.stderr
    for user in ["alice", "bob", "carol", "dave", "erin"]:
        assert hub.spawn(user, {"image": "python", "gpus": 1}).status_code in (201, 202)
    assert hub.spawn("frank", {"image": "python", "gpus": 0}).status_code in (201, 202)
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"]:
        hub.wait_ready(user)
    started = time.monotonic()
    carol = f"{hub.url}/user/carol/"
    try:  # the cell keeps running (and the kernel busy) after we stop listening
        execute(carol, hub.user_token("carol"), "import time; time.sleep(600)", timeout=2, keep_kernel=True)
    except websocket.WebSocketTimeoutException:
        pass
    session = login(hub, "alice")
    seen = {}
    seen["warning"] = wait_for(
        "alice's warning on her home page",
        lambda: (page := session.get(f"{hub.url}/hub/home", timeout=10).text) and "will be stopped at" in page and page,
        TIMEOUT_S + 30,
        hub,
    )
    seen["status_while_warned"] = gpuhub_idle(hub, "status")
    wait_for("alice's server stopped", lambda: not running(hub, "alice"), WARN_S + 30, hub)
    seen["culled_after"] = time.monotonic() - started
    seen["home_after"] = session.get(f"{hub.url}/hub/home", timeout=10).text
    time.sleep(max(0.0, TIMEOUT_S + WARN_S + 5 - (time.monotonic() - started)))  # the others' full period
    seen["survivors"] = {u: running(hub, u) for u in ["bob", "carol", "dave", "erin"]}
    seen["frank_running"] = running(hub, "frank")
    seen["status_after"] = gpuhub_idle(hub, "status", "--format", "json")
    return seen


def ledger(hub) -> QuotaStore:
    return QuotaStore.from_site(load_site(hub.site_path))


def test_warning_on_the_home_page_names_the_gpu_and_the_stop_time(world, timeline):
    page = timeline["warning"]
    assert HOLDERS["alice"] in page and "idle for" in page and "will be stopped at" in page
    status = timeline["status_while_warned"]
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("alice/"))
    assert "warned" in line and HOLDERS["alice"] in line


def test_idle_server_is_stopped_with_gpu_idle_in_the_ledger_and_its_gpu_free(world, timeline):
    hub, _ = world
    store = ledger(hub)
    (row,) = [r for r in store.recently_closed(EPOCH) if r["user"] == "alice"]
    assert row["end_reason"] == "gpu-idle" and row["device_uuids"] == HOLDERS["alice"]
    assert HOLDERS["alice"] not in {h["device_uuid"] for h in store.holdings()}
    assert "was stopped at" in timeline["home_after"] and "idle" in timeline["home_after"]
    assert not hub.containers(user="alice")  # the container is gone; its home volume stays
    assert hub.docker.volumes.list(filters={"name": f"{hub.instance}-home-alice"})
    store.engine.dispose()


def test_busy_kernel_blipping_gpu_exemption_and_org_timeout_are_never_culled(timeline):
    assert timeline["culled_after"] < TIMEOUT_S + WARN_S + 20
    assert timeline["survivors"] == {"bob": True, "carol": True, "dave": True, "erin": True}
    rows = {r["server"]: r for r in json.loads(timeline["status_after"].stdout)["rows"]}
    assert rows["dave/"]["state"] == "exempt"
    assert rows["erin/"]["timeout"] == "30 min 00 s" and rows["bob/"]["timeout"] == "15 s"
    assert rows["carol/"]["idle"] == "0 s"


def test_http_culler_stops_the_idle_cpu_only_server_and_leaves_gpu_servers(world, timeline):
    hub, _ = world
    assert timeline["frank_running"] is False
    store = ledger(hub)
    wait_for(
        "frank's end_reason http-idle",
        lambda: any(r["user"] == "frank" and r["end_reason"] == "http-idle" for r in store.recently_closed(EPOCH)),
        15,
        hub,
    )
    assert timeline["survivors"]["dave"] and timeline["survivors"]["erin"]  # GPU servers idle over HTTP too
    store.engine.dispose()


def test_exempt_errors_name_the_rule_and_exit_2(world):
    hub, _ = world
    r = gpuhub_idle(hub, "exempt", "--org", "no-such-org", "--hours", "2")
    assert r.returncode == 2 and r.stderr.startswith("gpuhub: error: --org 'no-such-org'") and "declared:" in r.stderr
    r = gpuhub_idle(hub, "exempt", "bob", "--hours", "-1")
    assert r.returncode == 2 and "must be >= 0" in r.stderr
