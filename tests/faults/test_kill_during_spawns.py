"""F2: kill -9 of the hub (its whole process group: hub, quota service; and its proxy) during 20 concurrent
spawns (CPU-only and GPU, runtime none) -> after the restart and the reconciler's passes the ledger and Docker
agree with what the hub knows."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.faults.figures import record
from tests.harness import default_site

pytestmark = pytest.mark.docker

USERS = [f"f{i:02d}" for i in range(20)]
GPU_USERS = USERS[:8]  # 8 GPU requests for 4 devices; the other 12 start CPU-only servers
RECONCILE_S = 3
# quota/enforcer.py: an interval younger than max(120 s, 2 reconciles) may still be waiting for its container
PENDING_GRACE_S = 120


def f2_site(instance, port, state):
    site = default_site(instance, port, state)
    site["organizations"] = {
        "org-a": {"members": USERS[:10], "gpu_limit": 4, "gpu_hours_per_month": 100, "max_gpus_per_server": 1}
    }
    site["quota"] = {"enforce_interval_seconds": 2, "reconcile_interval_seconds": RECONCILE_S, "grace_seconds": 2}
    return site


def _options(user: str) -> dict:
    # "queue": false: the GPU asks beyond the 4 devices are refused at once as before, not put in line
    return {"image": "python", "gpus": 1, "queue": False} if user in GPU_USERS else {"image": "python", "gpus": 0}


def _spawn_quietly(hub, user: str):
    try:
        return hub.api("POST", f"/users/{user}/server", json=_options(user), timeout=60).status_code
    except requests.RequestException as e:
        return type(e).__name__  # the hub died under the request


def _view(hub) -> dict:
    """Docker, the hub and the ledger, read in that order."""
    running, other = {}, []
    for c in hub.containers(all=True):
        key = f"{c.labels.get('gpuhub.user', '')}/{c.labels.get('gpuhub.server', '')}"
        if c.status == "running":
            running[key] = sorted(d for d in c.labels.get("gpuhub.gpus", "").split(",") if d)
        else:
            other.append((c.name, c.status))
    known, ready = set(), set()
    for u in hub.api("GET", "/users").json():
        for name, srv in (u.get("servers") or {}).items():
            known.add(f"{u['name']}/{name}")
            if srv.get("ready"):
                ready.add(f"{u['name']}/{name}")
    r = requests.get(
        f"{hub.url}/services/gpuhub-quota/status", timeout=10, headers={"Authorization": f"token {hub.admin_token}"}
    )
    r.raise_for_status()
    status = r.json()
    open_iv = {s["server_key"]: sorted(s["devices"]) for o in status["orgs"].values() for s in o["running_servers"]}
    open_iv |= {s["server_key"]: sorted(s["devices"]) for s in status["servers_without_org"]}
    held = {d["uuid"]: d["holder"]["server_key"] for d in status["devices"] if d["holder"]}
    return {"running": running, "other": other, "known": known, "ready": ready, "open": open_iv, "held": held}


def _problems(v: dict) -> list[str]:
    out = [f"unknown running container {k}" for k in v["running"] if k not in v["known"]]
    out += [f"open interval without a running container: {k}" for k in v["open"] if k not in v["running"]]
    out += [f"device {d} held by {k}, which the hub does not know" for d, k in v["held"].items() if k not in v["known"]]
    out += [
        f"device {d} held by {k} but its container has {v['running'].get(k)}"
        for d, k in v["held"].items()
        if d not in v["running"].get(k, [])
    ]
    out += [f"hub says {k} is ready but no container runs" for k in v["ready"] if k not in v["running"]]
    out += [
        f"{k} runs with {devs}, ledger says {v['open'].get(k)}"
        for k, devs in v["running"].items()
        if v["open"].get(k) != devs
    ]
    return out


def test_kill9_during_twenty_concurrent_spawns_leaves_no_orphans(make_hub):
    """Promise F2: after a kill -9 mid-spawn, a restart and the reconciler's passes: 0 unknown running containers,
    every device held by a server the hub knows (with that device in its container) or free, 0 open intervals
    without a container. Measured: seconds from the restart until that holds, and what the kill left behind."""
    hub = make_hub(site_fn=f2_site)
    for u in USERS:
        hub.ensure_user(u)
    pool = ThreadPoolExecutor(len(USERS))
    futures = [pool.submit(_spawn_quietly, hub, u) for u in USERS]
    deadline = time.monotonic() + 60
    while len(hub.containers(all=True)) < 6:  # kill while containers are being created, started, probed
        assert time.monotonic() < deadline, f"no spawns got going:\n{hub.log_tail()}"
        time.sleep(0.05)
    at_kill = len(hub.containers(all=True))
    servers = [srv for u in hub.api("GET", "/users", timeout=10).json() for srv in (u.get("servers") or {}).values()]
    ready_at_kill = sum(1 for srv in servers if srv.get("ready"))
    pending_at_kill = sum(1 for srv in servers if srv.get("pending"))
    hub.kill9()
    killed_at = time.monotonic()
    answers = [f.result() for f in futures]
    pool.shutdown()
    left_behind = len(hub.containers(all=True))
    hub.start()
    restarted = time.monotonic()
    limit = PENDING_GRACE_S + 4 * RECONCILE_S + 20
    problems, view = ["not checked"], {}
    while time.monotonic() - killed_at < limit:
        view = _view(hub)
        problems = _problems(view)
        if not problems and time.monotonic() - restarted > 2 * RECONCILE_S:  # at least one full reconcile pass
            break
        time.sleep(1)
    converged_s = round(time.monotonic() - restarted, 1)
    record(
        "F2",
        f"killed with {pending_at_kill} spawns pending, {ready_at_kill} ready; "
        f"{'consistent' if not problems else 'NOT consistent'} {converged_s} s after the restart; "
        f"{len(view.get('running', {}))} servers running, {len(view.get('other', []))} non-running containers "
        f"left, {len(problems)} problems",
        containers_at_kill=at_kill,
        ready_at_kill=ready_at_kill,
        pending_at_kill=pending_at_kill,
        containers_after_kill=left_behind,
        converged_after_restart_s=converged_s,
        running=sorted(view.get("running", {})),
        held=view.get("held", {}),
        held_devices=len(view.get("held", {})),
        non_running_left=view.get("other", []),
        problems=problems,
        answers=sorted(str(a) for a in answers),
    )
    assert not problems, "\n".join(problems) + f"\n{view}"
    # users whose spawn the kill interrupted can start again
    idle = [u for u in USERS if f"{u}/" not in view["known"]][:3]
    for u in idle:
        r = hub.api("POST", f"/users/{u}/server", json={"image": "python", "gpus": 0}, timeout=60)
        assert r.status_code in (201, 202), (u, r.status_code, r.text)
    for u in idle:
        hub.wait_ready(u)
