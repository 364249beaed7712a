"""Process helpers shared by the test harnesses (hub, OIDC provider), and which modules failed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from contextlib import contextmanager

#: test modules with a failed test (filled by tests/conftest.py's report hook)
FAILED_MODULES: set[str] = set()


def module_failed(request) -> bool:
    """True when a test of the requesting (module-scoped) fixture's module failed: dump logs then.
    (A module fixture's ``request.node`` is the module, which never gets a ``rep_call``.)"""
    return request.node.module.__name__ in FAILED_MODULES


@contextmanager
def cleaned_up(request, hub):
    """For a module fixture's hub: on the way out, print its logs when a test of the module failed, then
    remove everything it made (containers, volumes, processes)."""
    try:
        yield hub
    finally:
        if module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
