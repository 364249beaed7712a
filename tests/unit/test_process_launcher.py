"""``python -m gpuhub.host.process MODULE``: a hub service started this way dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A "hub" that starts the service through the launcher, prints the service's pid, then waits to be killed.
HUB = textwrap.dedent(
    """
    import subprocess, sys, time
    p = subprocess.Popen([sys.executable, "-m", "gpuhub.host.process", "tests.unit._sleeper", "60"],
                         stdout=subprocess.PIPE, text=True)
    print(p.pid, flush=True)
    print(p.stdout.readline().strip(), flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_service_dies_with_its_hub_and_knows_the_hubs_pid():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("GPUHUB_HUB_PID", None)
    hub = subprocess.Popen([sys.executable, "-c", HUB], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        service_pid = int(hub.stdout.readline())
        banner = hub.stdout.readline().strip()
        assert banner == f"argv=['60'] hub_pid={hub.pid}", banner
        assert _alive(service_pid)
        os.kill(hub.pid, signal.SIGKILL)
        hub.wait(10)
        deadline = time.monotonic() + 5
        while _alive(service_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(service_pid), "the service outlived the hub that started it"
    finally:
        hub.kill()


def test_without_a_module_it_says_how_to_call_it():
    out = subprocess.run([sys.executable, "-m", "gpuhub.host.process"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "usage: python -m gpuhub.host.process MODULE" in out.stderr
