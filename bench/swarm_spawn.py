"""N GPU servers started at once through the hub in swarm mode: spread over 3 nodes vs all on one node, same run.

    .venv/bin/python bench/swarm_spawn.py [--servers 20] [--timeout 900] [--cluster gpuhub-swb]

Uses a cluster of its own, ``gpuhub-swb`` by default (not the tests' ``gpuhub-swh``, so a test run and the bench
can share the machine; scripts/swarm.sh, brought up if missing, the catalog image loaded where a node lacks it,
left up; ``GPUHUB_SWARM_NAME=gpuhub-swb scripts/swarm.sh down`` removes it). Layout "3 nodes": each node declares
ceil(N/3) simulated H100s, so placement fills every node; layout "1 node": node 1 declares N and the others none.
Simulated GPUs are node labels, so any N has a GPU per server (no CPU-only servers are needed). Per layout a fresh
hub (tests/swarm/test_swarm_hub.py's SwarmHub, one org capped at N) gets N concurrent spawns of a 1-GPU server;
printed: spawn-to-ready wall p50/p95/max of the servers that became ready (from each POST to the first listing,
once a second, that shows it ready), how many did (a spawn can outlast JupyterHub's start_timeout of 300 s on a
small machine: counted, not fatal), the whole batch's wall, and the hub process's CPU-seconds over the batch (its
own, not the nodes'). All nodes are containers on this one machine, so
"3 nodes" shares the same cores: what it can show is the hub's side (placement, service calls, polling), not more
hardware. The nodes' GPU declarations are put back to 2 each afterwards.
"""

from __future__ import annotations

import argparse
import json
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
from tests.swarm.kit import SCRIPT, SwarmScript  # noqa: E402
from tests.swarm.test_swarm_hub import BASE_IMAGE, NODES, SwarmHub  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
GPUHUB = str(ROOT / ".venv" / "bin" / "gpuhub")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def declare(cluster: SwarmScript, counts: list[int]) -> None:
    for i, n in enumerate(counts, 1):
        cluster.sh(GPUHUB, "node", "register", "--docker-host", cluster.sock(1), "--node", f"{cluster.name}-{i}",
                   "--simulate", str(n), "--model", "H100")  # fmt: skip


def spawn_all(hub: SwarmHub, users: list[str], timeout: float) -> dict[str, float | str]:
    """Every user's 1-GPU spawn POSTed at once; then ONE poller (a listing of all users a second, as a status page
    would) notes when each server is first seen ready: {user: seconds from its POST to ready, or why not}.
    One poll per user every 0.2 s (HubProcess.wait_ready) would be 100 requests a second for 20 servers: the hub's
    CPU would then measure the bench's polling, not the spawns."""
    sent: dict[str, float] = {}

    def post(user: str) -> tuple[str, object]:
        sent[user] = time.monotonic()
        return user, hub.spawn(user, {"image": "python", "gpus": 1, "queue": False})

    with ThreadPoolExecutor(len(users)) as pool:
        answers = dict(pool.map(post, users))
    out: dict[str, float | str] = {u: f"{r.status_code} {r.text[:200]}" for u, r in answers.items()
                                   if r.status_code not in (201, 202)}  # fmt: skip
    deadline = time.monotonic() + timeout
    while len(out) < len(users) and time.monotonic() < deadline:
        now = time.monotonic()
        for model in hub.api("GET", "/users").json():
            u = model["name"]
            if u not in sent or u in out:
                continue
            srv = model.get("servers", {}).get("")
            if srv and srv.get("ready"):
                out[u] = now - sent[u]
            elif not srv and not model.get("pending"):
                out[u] = f"failed after {now - sent[u]:.0f} s: {progress_end(hub, u)}"
        time.sleep(1)
    return {u: out.get(u, f"not ready after {timeout:.0f} s") for u in users}


def progress_end(hub: SwarmHub, user: str) -> str:
    """The last message of a failed spawn's progress stream (what the user's spawn page showed)."""
    with hub.api("GET", f"/users/{user}/server/progress", stream=True, timeout=30) as r:
        lines = [raw for raw in r.iter_lines(decode_unicode=True) if raw and raw.startswith("data:")]
    return json.loads(lines[-1][5:]).get("message", "")[:200] if lines else "(no progress events)"


def with_start_concurrency(hub: SwarmHub, slots: int) -> None:
    """The stock config, then ``GpuhubSpawner.start_concurrency = slots`` (0: the stock rule, 2 x cores)."""
    if slots:
        stock = str(hub.config_file)
        config = hub.tmp / "jupyterhub_config.py"
        config.write_text(f"exec(compile(open({stock!r}).read(), {stock!r}, 'exec'))\n"
                          f"c.GpuhubSpawner.start_concurrency = {slots}\n")  # fmt: skip
        hub.config_file = config


def layout(name: str, counts: list[int], servers: int, cluster: SwarmScript, client, args) -> dict:
    declare(cluster, counts)
    users = [f"bench{i}" for i in range(servers)]
    timeout = args.timeout
    with tempfile.TemporaryDirectory() as tmp:
        hub = SwarmHub(Path(tmp), client, users=users, kit=cluster)
        with_start_concurrency(hub, args.start_concurrency)
        try:
            hub.start()
            for u in users:
                hub.ensure_user(u)
            cpu0, t0 = cpu_seconds(hub.proc.pid), time.monotonic()
            results = spawn_all(hub, users, timeout)
            batch, cpu = time.monotonic() - t0, cpu_seconds(hub.proc.pid) - cpu0
            placed = sorted({s["Spec"]["Labels"]["gpuhub.node"] for s in hub.services()})
        finally:
            hub.cleanup()
    walls = [w for w in results.values() if isinstance(w, float)]
    failed = [f"{u}: {w}" for u, w in results.items() if not isinstance(w, float)]
    print(f"{name}: {len(walls)}/{servers} ready, batch {batch:.1f} s, hub CPU {cpu:.2f} s; not ready: {failed}",
          flush=True)  # fmt: skip
    return {"layout": name, "walls": walls, "failed": failed, "batch": batch, "cpu": cpu, "nodes": placed}


def load_image(cluster: SwarmScript) -> None:
    """The catalog image onto the nodes that lack it (scripts/swarm.sh load)."""
    for i in range(1, cluster.nodes + 1):
        if cluster.sh("docker", "-H", cluster.sock(i), "image", "inspect", BASE_IMAGE, check=False).returncode:
            cluster.sh(SCRIPT, "load", BASE_IMAGE)
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--servers", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--cluster", default="gpuhub-swb", help="the bench's own cluster (GPUHUB_SWARM_NAME)")
    ap.add_argument("--start-concurrency", type=int, default=0,
                    help="GpuhubSpawner.start_concurrency for the bench's hubs (0: the stock 2 x cores)")  # fmt: skip
    args = ap.parse_args()
    cluster = SwarmScript(args.cluster, NODES, 2)
    cluster.sh(SCRIPT, "up")
    load_image(cluster)
    client = swarm.swarm_client(cluster.sock(1))
    per = math.ceil(args.servers / NODES)
    try:
        rows = [
            layout("3 nodes", [per] * NODES, args.servers, cluster, client, args),
            layout("1 node", [args.servers] + [0] * (NODES - 1), args.servers, cluster, client, args),
        ]
    finally:
        declare(cluster, [2] * NODES)
    slots = args.start_concurrency or f"{2 * (os.cpu_count() or 1)} (stock)"
    print(f"{args.servers} GPU servers started at once through the hub (hub.engine: swarm), {os.cpu_count()} cores, "
          f"cluster {args.cluster}, start slots {slots}")  # fmt: skip
    head = f"{'layout':<8} {'ready':>6} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'batch s':>8} {'hub CPU-s':>10}"
    print(f"{head}  nodes used")
    for r in rows:
        w = r["walls"] or [float("nan")]  # none ready: the table says nan, the line above says why
        print(f"{r['layout']:<8} {len(r['walls']):>3}/{args.servers:<2} {pct(w, 0.5):7.1f} {pct(w, 0.95):7.1f} "
              f"{max(w):7.1f} {r['batch']:8.1f} {r['cpu']:10.2f}  {', '.join(r['nodes'])}")  # fmt: skip
    spread, one_node = rows
    if spread["walls"] and one_node["walls"] and one_node["cpu"]:
        print(f"3 nodes vs 1 node: p50 {pct(spread['walls'], 0.5) / pct(one_node['walls'], 0.5):.2f}x, "
              f"hub CPU {spread['cpu'] / one_node['cpu']:.2f}x")  # fmt: skip
    return 0 if not (spread["failed"] or one_node["failed"]) else 1


if __name__ == "__main__":
    sys.exit(main())
