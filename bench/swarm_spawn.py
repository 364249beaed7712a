"""N GPU servers started at once through the hub in swarm mode: spread over 3 nodes vs all on one node, same run.

    .venv/bin/python bench/swarm_spawn.py [--servers 6] [--timeout 900]

Uses the test cluster ``gpuhub-swh`` (scripts/swarm.sh, brought up if missing, left up; ``scripts/swarm.sh down``
with GPUHUB_SWARM_NAME=gpuhub-swh removes it). Layout "3 nodes": each node declares ceil(N/3) simulated H100s, so
placement fills every node; layout "1 node": node 1 declares N and the others none. Per layout a fresh hub
(tests/swarm/test_swarm_hub.py's SwarmHub) gets N concurrent spawns of a 1-GPU server; printed: spawn-to-ready
wall p50/p95/max, the whole batch's wall, and the hub process's CPU-seconds over the batch (its own, not the
nodes'). All nodes are containers on this one machine, so "3 nodes" shares the same cores: what it can show is
the hub's side (placement, service calls, polling), not more hardware. The nodes' GPU declarations are put
back to 2 each afterwards.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stats import percentile as pct  # noqa: E402
from gpuhub.host import swarm  # noqa: E402
from tests.swarm.test_swarm_hub import BASE_IMAGE, NAME, NODES, SCRIPT, SwarmHub, sh, sock  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GPUHUB = str(ROOT / ".venv" / "bin" / "gpuhub")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def declare(counts: list[int]) -> None:
    for i, n in enumerate(counts, 1):
        sh(GPUHUB, "node", "register", "--docker-host", sock(1), "--node", f"{NAME}-{i}", "--simulate", str(n),
           "--model", "H100")  # fmt: skip


def one(hub: SwarmHub, user: str, timeout: float) -> float:
    t0 = time.monotonic()
    r = hub.spawn(user, {"image": "python", "gpus": 1})
    if r.status_code not in (201, 202):
        raise RuntimeError(f"{user}: {r.status_code} {r.text[:300]}")
    hub.wait_ready(user, timeout=timeout)
    return time.monotonic() - t0


def layout(name: str, counts: list[int], servers: int, client, timeout: float) -> dict:
    declare(counts)
    users = [f"bench{i}" for i in range(servers)]
    with tempfile.TemporaryDirectory() as tmp:
        hub = SwarmHub(Path(tmp), client, users=tuple(users))
        try:
            hub.start()
            for u in users:
                hub.ensure_user(u)
            cpu0, t0 = cpu_seconds(hub.proc.pid), time.monotonic()
            with ThreadPoolExecutor(servers) as pool:
                walls = list(pool.map(lambda u: one(hub, u, timeout), users))
            batch, cpu = time.monotonic() - t0, cpu_seconds(hub.proc.pid) - cpu0
            placed = sorted({s["Spec"]["Labels"]["gpuhub.node"] for s in hub.services()})
        finally:
            hub.cleanup()
    return {"layout": name, "walls": walls, "batch": batch, "cpu": cpu, "nodes": placed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=6)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    sh(SCRIPT, "up")
    sh(SCRIPT, "load", BASE_IMAGE)
    client = swarm.swarm_client(sock(1))
    per = math.ceil(args.servers / NODES)
    try:
        rows = [
            layout("3 nodes", [per] * NODES, args.servers, client, args.timeout),
            layout("1 node", [args.servers] + [0] * (NODES - 1), args.servers, client, args.timeout),
        ]
    finally:
        declare([2] * NODES)
    print(f"{args.servers} GPU servers started at once through the hub (hub.engine: swarm), {os.cpu_count()} cores")
    print(f"{'layout':<8} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'batch s':>8} {'hub CPU-s':>10}  nodes used")
    for r in rows:
        w = r["walls"]
        print(f"{r['layout']:<8} {pct(w, 0.5):7.1f} {pct(w, 0.95):7.1f} {max(w):7.1f} {r['batch']:8.1f} "
              f"{r['cpu']:10.2f}  {', '.join(r['nodes'])}")  # fmt: skip
    base = rows[1]
    print(f"3 nodes vs 1 node: p50 {pct(rows[0]['walls'], 0.5) / pct(base['walls'], 0.5):.2f}x, "
          f"hub CPU {rows[0]['cpu'] / base['cpu']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
