"""The GPU queue through a real hub and Docker: wait in line instead of a 429, served in fair order, exactly once.

One story on one hub (each container start costs seconds on the shared cores): every GPU allocated, requests from
three organizations wait (none 429) and see their place in the progress stream; ``"queue": false`` still gets
today's 429; a 403 budget refusal is never queued; a free A100 and a CPU-only server start while H100 requests
wait; a user's token lists only its own entries; cancel (DELETE of the pending server) removes a request and its
place; the waits outlast a low ``start_timeout``; as servers stop, grants follow the listing's fair-share order
with no device held twice; after ``kill -9`` of the hub and proxy the request still queued is there in the same
order and is served exactly once.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import requests
import yaml

from gpuhub.core.site import load_site
from quota.queue_store import QueueStore
from tests.harness import BASE_IMAGE, HubProcess, default_site

pytestmark = pytest.mark.docker

H100, A100 = {"image": "python", "gpus": 1, "gpu_model": "H100"}, {"image": "python", "gpus": 1, "gpu_model": "A100"}
START_TIMEOUT = 40  # JupyterHub's start_timeout here (the real start; on loaded shared cores one takes up to ~20 s)


def queue_site(instance: str, port: int, state) -> dict:
    site = default_site(instance, port, state)
    site["images"] = {
        "python": {"image": BASE_IMAGE, "display_name": "Python"},
        "cpu": {"image": BASE_IMAGE, "display_name": "CPU only", "gpu": False},
    }
    org = {"gpu_limit": 4, "gpu_hours_per_month": 100, "max_gpus_per_server": 1}
    site["organizations"] = {
        "ga": {**org, "members": ["alice", "bob"], "share": 2},
        "cn": {**org, "members": ["carol", "cara"]},
        "ac": {**org, "members": ["dana", "dave"]},
        "broke": {**org, "members": ["gus"], "gpu_hours_per_month": 0.001},
    }
    site["gpus"]["max_gpus_per_user"] = 2
    site["quota"]["max_queue_wait_minutes"] = 30
    return site


@pytest.fixture
def hub(tmp_path, docker_client, request, hub_db_url):
    instance = f"gpuhubtest{os.urandom(3).hex()}"
    db_url = hub_db_url
    h = HubProcess(tmp_path, instance=instance, db_url=db_url)
    h.site = queue_site(instance, h.port, h.state)
    if db_url:
        h.site["hub"]["db_url"] = db_url
    h.site_path.write_text(yaml.safe_dump(h.site))
    config = tmp_path / "jupyterhub_config.py"  # the stock config, then a low start_timeout
    config.write_text(
        f"exec(compile(open({str(HubProcess.config_file)!r}).read(), {str(HubProcess.config_file)!r}, 'exec'))\n"
        f"c.GpuhubSpawner.start_timeout = {START_TIMEOUT}\n"
    )
    h.config_file = config
    yield h.start()
    if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
        print(h.dump_logs())
    h.cleanup()


def queue(h: HubProcess, token: str | None = None) -> dict:
    r = requests.get(
        f"{h.url}/services/gpuhub-quota/queue", headers={"Authorization": f"token {token or h.admin_token}"}, timeout=30
    )
    assert r.status_code == 200, r.text
    return r.json()


def line(h: HubProcess) -> list[str]:
    """Servers waiting, in the order they will be served (the listing's fair-share order)."""
    return [r["server"] for r in sorted(queue(h)["requests"], key=lambda r: r["position"] or 0) if r["position"]]


def spawn(h: HubProcess, server: str, options: dict):
    user, _, name = server.partition("/")
    return h.spawn(user, options, server=name)


def pending(h: HubProcess, server: str) -> bool:
    user, _, name = server.partition("/")
    srv = h.api("GET", f"/users/{user}").json().get("servers", {}).get(name)
    return bool(srv and srv.get("pending") == "spawn")


def progress_until(h: HubProcess, server: str, needle: str, timeout: float = 20) -> list[str]:
    """Progress messages of a pending spawn, read from JupyterHub's event stream until one contains ``needle``."""
    user, _, name = server.partition("/")
    path = f"/users/{user}/servers/{name}/progress" if name else f"/users/{user}/server/progress"
    seen, deadline = [], time.monotonic() + timeout
    with h.api("GET", path, stream=True, timeout=timeout) as r:
        for raw in r.iter_lines(decode_unicode=True):
            if raw and raw.startswith("data:"):
                seen.append(json.loads(raw[5:]).get("message", ""))
                if needle in seen[-1]:
                    return seen
            if time.monotonic() > deadline:
                break
    raise AssertionError(f"no progress message with {needle!r} from {server}: {seen}")


def held_uuids(h: HubProcess) -> list[str]:
    """The GPUs of running containers (label gpuhub.gpus): a duplicate means a device held twice."""
    return [u for c in h.containers() for u in (c.labels.get("gpuhub.gpus") or "").split(",") if u]


def wait_ready(h: HubProcess, server: str, timeout: float = 60) -> float:
    user, _, name = server.partition("/")
    t0 = time.monotonic()
    h.wait_ready(user, name, timeout=timeout)
    uuids = held_uuids(h)
    assert len(uuids) == len(set(uuids)), uuids
    return time.monotonic() - t0


def store_of(h: HubProcess) -> QueueStore:
    return QueueStore.from_site(load_site(h.site_path), migrate=False)


def test_busy_gpu_requests_wait_in_fair_order_and_survive_a_hub_kill(hub, tmp_path):
    h = hub
    for s in ("alice", "bob", "carol"):  # every H100, one A100
        assert spawn(h, s, H100 if s != "carol" else A100).status_code in (201, 202)
    for s in ("alice", "bob", "carol"):
        wait_ready(h, s)

    # H100 requests from three organizations wait in line: no 429, and each sees its place
    waiting = ["dana/", "cara/", "alice/two", "bob/gone"]
    for s in waiting:
        r = spawn(h, s, H100)
        assert r.status_code == 202, (s, r.status_code, r.text[:300])
    queued_at = time.monotonic()
    seen = progress_until(h, "dana/", "of 4 (")  # refreshed every few seconds: all four are in line now
    assert seen[-1].startswith("Waiting in line for 1 x H100 GPU(s): position "), seen
    assert "ahead from ac" in seen[-1] and "estimated wait" in seen[-1], seen

    # "queue": false keeps today's immediate 429; a budget refusal (403) is never queued
    r = spawn(h, "bob/now", {**H100, "queue": False})
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (429, "no-free-device"), r.text[:300]
    assert "try again later" in r.json()["message"], r.json()
    r = spawn(h, "gus", H100)
    assert (r.status_code, r.headers.get("X-Gpuhub-Rule")) == (403, "budget-exhausted"), r.text[:300]
    assert "gus" not in {e["user"] for e in queue(h)["requests"]}

    # a free A100 and a CPU-only server start while H100 requests wait ahead of them
    assert spawn(h, "dave", A100).status_code in (201, 202)
    assert spawn(h, "gus/cpu", {"image": "cpu", "gpus": 0}).status_code in (201, 202)
    wait_ready(h, "dave")
    wait_ready(h, "gus/cpu")

    # a user's own token sees only their own entries (placed in the whole line)
    mine = queue(h, h.user_token("cara"))
    assert [e["server"] for e in mine["requests"]] == ["cara/"] and mine["requests"][0]["position"] in (1, 2, 3, 4)

    # cancel = DELETE of the pending server: the request and its place are gone
    assert "bob/gone" in line(h)
    h.stop_server("bob", "gone")
    assert "bob/gone" not in line(h) and len(line(h)) == 3
    assert store_of(h).entries(states=("cancelled",))[0].server_key == "bob/gone"

    # the waits outlast JupyterHub's start_timeout
    time.sleep(max(0.0, START_TIMEOUT + 2 - (time.monotonic() - queued_at)))
    assert all(pending(h, s) for s in ("dana/", "cara/", "alice/two")), h.log_lines("queue")

    # as H100s free up, grants follow the listing's order; hand-over times for the report
    handovers = []
    for holder in ("alice", "bob"):
        expected = line(h)[0]
        h.stop_server(holder)
        handovers.append(wait_ready(h, expected))
        assert expected not in line(h)
    print(f"queue hand-over seconds (GPU freed -> next server ready): {[round(t, 1) for t in handovers]}")
    last = line(h)
    assert len(last) == 1, last

    # kill -9 of hub and proxy with one request still queued: same line after restart, served exactly once
    h.kill9()
    h.start()
    deadline = time.monotonic() + 30
    while not pending(h, last[0]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert line(h) == last and pending(h, last[0]), h.log_lines("queue")
    freed = next(s for s in ("dana/", "cara/", "alice/two") if s not in last)
    h.stop_server(*freed.partition("/")[::2])
    wait_ready(h, last[0])
    user, _, name = last[0].partition("/")
    assert [c.labels.get("gpuhub.server", "") for c in h.containers(all=True, user=user)].count(name) == 1
    served = [e for e in store_of(h).entries(states=("served",)) if e.server_key == last[0]]
    assert len(served) == 1 and not store_of(h).entries(), store_of(h).entries()
