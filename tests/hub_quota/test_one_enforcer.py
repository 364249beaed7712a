"""One enforcer, always: after a hub stop or crash and a restart, exactly one gpuhub-quota service for that
hub runs, and it is the process bound to the service's port (issue 17, item 6)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import ROOT, HubProcess
from tests.procs import free_port

pytestmark = pytest.mark.docker


def quota_services(site_path: Path) -> list[int]:
    """Pids of the gpuhub-quota service processes started for the site config ``site_path`` (from /proc)."""
    want = f"GPUHUB_SITE_CONFIG={site_path}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"service" in argv and b"quota" in argv and want in environ:
            pids.append(int(entry.name))
    return pids


def port_holders(port: int) -> set[int]:
    """Pids listening on 127.0.0.1:``port`` (``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {int(p) for p in re.findall(r"pid=(\d+)", out)}


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout} s")
        time.sleep(0.2)


def one_enforcer(hub: HubProcess) -> int:
    """Wait until the hub's quota service serves its port; assert it is the only one for this hub."""
    port = hub.site["hub"]["quota_service_port"]
    wait_for(lambda: port_holders(port), 30, f"a listener on the quota service port {port}")
    time.sleep(2)  # a second service (the bug: the next hub's own, dying on "Address already in use") shows now
    pids = quota_services(hub.site_path)
    assert len(pids) == 1, f"quota services for this hub: {pids}\n{hub.log_lines('quota')}"
    assert port_holders(port) == set(pids), (port_holders(port), pids)
    ppid = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert ppid == hub.proc.pid, (ppid, hub.proc.pid)
    return pids[0]


@pytest.mark.parametrize("how", ["sigterm-group", "kill9-hub-and-proxy"])
def test_one_quota_service_after_restart(tmp_path, docker_client, how):
    hub = HubProcess(tmp_path)
    try:
        hub.start()
        first = one_enforcer(hub)
        if how == "sigterm-group":
            hub.stop()  # SIGTERM to the hub's process group, as systemd or Ctrl-C do
        else:
            hub.kill9()  # kill -9 of the hub and its proxy: no cleanup runs in the hub
        wait_for(lambda: not quota_services(hub.site_path), 10, f"the old quota service {first} exiting")
        hub.start()
        second = one_enforcer(hub)
        assert second != first
        assert "Address already in use" not in hub.log_path.read_text(errors="replace")
    finally:
        hub.cleanup()
    assert not quota_services(hub.site_path)


# The race the fix closes: the hub (re)starts its service and is gone before the service's first statement.
HUB_GONE = """
import os, subprocess, sys
p = subprocess.Popen([sys.executable, "-m", "gpuhub", "service", "quota"], start_new_session=True,
                     env=dict(os.environ, GPUHUB_HUB_PID=str(os.getpid())), stdout=subprocess.DEVNULL,
                     stderr=open(os.environ["SERVICE_LOG"], "ab"))
print(p.pid, flush=True)
os._exit(0)
"""

HUB_DIES_LATER = """
import os, subprocess, sys, time
p = subprocess.Popen([sys.executable, "-m", "gpuhub", "service", "quota"], start_new_session=True,
                     env=dict(os.environ, GPUHUB_HUB_PID=str(os.getpid())), stdout=subprocess.DEVNULL,
                     stderr=open(os.environ["SERVICE_LOG"], "ab"))
print(p.pid, flush=True)
time.sleep(float(sys.argv[1]))
os._exit(0)
"""


@pytest.mark.parametrize("script,hub_lives", [(HUB_GONE, 0), (HUB_DIES_LATER, 6)], ids=["hub-gone", "hub-dies-later"])
def test_service_dies_with_a_hub_that_is_going_away(tmp_path, docker_client, script, hub_lives):
    """A service whose hub died before or after its start exits, and never holds the port (at most 3 s
    after the hub's death, even when the hub died while the service was still importing)."""
    hub = HubProcess(tmp_path)  # only for its site config (SQLite state under tmp_path); no hub runs
    hub.state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = dict(
        hub.env(),
        JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api",
        JUPYTERHUB_API_TOKEN="t" * 32,
        JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{port}",
        PYTHONPATH=str(ROOT),
        SERVICE_LOG=str(tmp_path / "service.log"),
    )
    fake_hub = subprocess.run(
        [sys.executable, "-c", script, str(hub_lives)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    pid = int(fake_hub.stdout.split()[0])
    try:
        # gone (or a zombie) AND the port free: a process in the middle of exiting has an empty cmdline (so it is
        # no longer listed as a quota service) but may hold its socket for a few more milliseconds
        wait_for(
            lambda: (
                (not Path(f"/proc/{pid}").exists() or pid not in quota_services(hub.site_path))
                and not port_holders(port)
            ),
            3,
            f"the service {pid} of the dead hub exiting and its port {port} free",
        )
        if not hub_lives:
            assert "that started this service is gone" in (tmp_path / "service.log").read_text()
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
