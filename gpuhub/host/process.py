"""This process's tie to its parent: the kernel's parent-death signal (Linux ``prctl``).

A hub-managed service must not outlive its hub (a stale one holds its port and serves the old site
config). Setting the signal is the entry point's first act, before any heavy import, so a hub that dies
while the service is still starting takes the service with it.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def run_bound(argv: list[str]) -> None:
    """``python -m gpuhub.host.process MODULE [ARG...]``: run MODULE as ``__main__`` tied to its parent.

    The parent-death signal and the parent's pid (``$GPUHUB_HUB_PID``, read by
    ``gpuhub.hub.quota_service.bind_to_hub``) are taken before MODULE's own imports, which take
    seconds for a hub service (jupyterhub, tornado, docker): a hub that dies meanwhile takes the service with it.
    """
    ppid = os.getppid()
    set_parent_death_signal(signal.SIGTERM)
    os.environ.setdefault("GPUHUB_HUB_PID", str(ppid))
    if not argv:
        raise SystemExit("usage: python -m gpuhub.host.process MODULE [ARG...]")
    sys.argv = list(argv)
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_bound(sys.argv[1:])
