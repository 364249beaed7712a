"""Where a start's CPU goes: the machine's busy time, split into the servers' containers (their cgroups), the
Docker engine (dockerd, containerd and the servers' own shims) and the hub's process tree (hub, proxy, its
services); the rest is everything else the machine ran meanwhile (other work, the bench's own client).

Linux /proc only. Process figures are utime+stime plus the reaped children's (cutime+cstime), so a short-lived
child (runc under a shim, a hub subprocess) is counted once, in its parent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from bench.image_start import cpu_seconds

TICK = os.sysconf("SC_CLK_TCK")


def busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy since boot (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None  # exited meanwhile


def _seconds(pids) -> float:
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def tree(root: int) -> set[int]:
    """``root`` and its live descendants."""
    parent = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields:
            parent[pid] = int(fields[1])
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += [child for child, ppid in parent.items() if ppid == pid and child not in out]
    return out


def engine_pids(container_ids) -> set[int]:
    """This host's dockerd, containerd and the shims of ``container_ids`` (other containers' shims come and
    go; engines inside containers, such as Docker-in-Docker nodes, are in other pid namespaces)."""
    ids = tuple(container_ids)
    ours = os.readlink("/proc/self/ns/pid")
    out = set()
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ours:
                continue
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            if comm in ("dockerd", "containerd"):
                out.add(pid)
            elif comm.startswith("containerd-shim"):
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                if any(i in cmd for i in ids):
                    out.add(pid)
        except OSError:
            pass
    return out


@dataclass
class Snapshot:
    busy: float
    hub: float
    engine_daemons: float


def snapshot(hub_pid: int) -> Snapshot:
    """Before a phase: the machine's busy time, the hub tree's and the engine daemons' CPU so far."""
    return Snapshot(busy_seconds(), _seconds(tree(hub_pid)), _seconds(engine_pids(())))


def split(before: Snapshot, hub_pid: int, container_ids: list[str]) -> dict[str, float]:
    """CPU-seconds of a phase that started at ``before``, by part. The servers' containers and shims were
    created in the phase, so their whole use counts."""
    shims = engine_pids(container_ids) - engine_pids(())
    parts = {
        "containers": sum(cpu_seconds(i) for i in container_ids),
        "engine": _seconds(engine_pids(())) - before.engine_daemons + _seconds(shims),
        "hub": _seconds(tree(hub_pid)) - before.hub,
    }
    parts["total"] = busy_seconds() - before.busy
    parts["other"] = parts["total"] - parts["containers"] - parts["engine"] - parts["hub"]
    return parts
