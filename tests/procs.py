"""Process helpers shared by the test harnesses (hub, OIDC provider)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen | None, grace: float = 15.0) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its group; SIGKILL after ``grace``."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
