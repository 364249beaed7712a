"""This process's tie to its parent: the kernel's parent-death signal (Linux ``prctl``).

A hub-managed service must not outlive its hub (a stale one holds its port and serves the old site
config). Setting the signal is the entry point's first act, before any heavy import, so a hub that dies
while the service is still starting takes the service with it.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies; False where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
