"""Quota rules through the real hub and Docker: races, restarts, billing, budgets, the form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.harness import ROOT, HubProcess, default_site, login
from tests.hub_quota.race import check_race, check_refusal_counts, spawn_at_once

pytestmark = pytest.mark.docker


def race_site(instance: str, port: int, state: Path) -> dict:
    site = default_site(instance, port, state)
    site["organizations"] = {
        "org-a": {
            "members": [f"u{i:02d}" for i in range(25)],
            "gpu_limit": 2,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 2,
        },
        "org-b": {
            "members": [f"u{i:02d}" for i in range(25, 50)],
            "gpu_limit": 1,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 1,
        },
    }
    site["gpus"]["max_gpus_per_user"] = 2
    return site


def _race(hub: HubProcess) -> None:
    members = {f"u{i:02d}": "org-a" if i < 25 else "org-b" for i in range(50)}
    race = spawn_at_once(hub, members, {"image": "python", "gpus": 1})
    # 4 GPUs, but org-a may hold 2 and org-b 1: exactly 3 servers get GPUs, the 47 others a 429 with the rule.
    check_race(race, members, {"org-a": 2, "org-b": 1}, free=4)
    check_refusal_counts(hub.site_path, race, members)
    uuids = [c.labels["gpuhub.gpus"] for c in hub.containers()]
    assert len(uuids) == 3 and all(uuids) and len(set(uuids)) == 3, uuids
    assert {c.labels["gpuhub.user"] for c in hub.containers()} == set(race.granted)
    for u in race.granted:
        hub.stop_server(u)


def _hub_with(tmp_path, site_fn=race_site, db_url=None) -> HubProcess:
    instance = f"gpuhubtest{os.urandom(3).hex()}"
    hub = HubProcess(tmp_path, instance=instance, db_url=db_url)
    hub.site = site_fn(instance, hub.port, hub.state)
    if db_url:
        hub.site["hub"]["db_url"] = db_url
    hub.site_path.write_text(__import__("yaml").safe_dump(hub.site))
    return hub


@pytest.fixture
def make_hub(tmp_path, docker_client, request):
    hubs = []

    def make(**kw):
        (tmp_path / f"h{len(hubs)}").mkdir(exist_ok=True)
        hub = _hub_with(tmp_path / f"h{len(hubs)}", **kw)
        hubs.append(hub)
        return hub.start()

    yield make
    for hub in hubs:
        if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
            print(hub.dump_logs())
        hub.cleanup()


def test_fifty_concurrent_spawns_sqlite(make_hub):
    _race(make_hub())


def test_fifty_concurrent_spawns_postgres(make_hub, postgres_url, request):
    import sqlalchemy

    name = f"race_{os.urandom(4).hex()}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    _race(make_hub(db_url=url))


def test_hub_kill9_keeps_servers_allocations_and_ledger(make_hub):
    hub = make_hub(site_fn=default_site)
    assert hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"}).status_code in (201, 202)
    hub.wait_ready("alice")
    assert hub.run_code("alice", "x = 41; print(x + 1)").strip() == "42"
    before = quota_status(hub)
    (container,) = hub.containers(user="alice")
    hub.kill9()  # hub, proxy and quota service: the whole process group
    time.sleep(1)
    hub.start()
    hub.wait_ready("alice", timeout=60)
    assert hub.run_code("alice", "print('still here')").strip() == "still here"
    (again,) = hub.containers(user="alice")
    assert again.id == container.id
    after = quota_status(hub)
    assert after["orgs"]["gist-ai"]["gpus_in_use"] == 1
    held = [d for d in after["devices"] if d["holder"]]
    assert held == [d for d in before["devices"] if d["holder"]]
    (server,) = after["orgs"]["gist-ai"]["running_servers"]
    (server_before,) = before["orgs"]["gist-ai"]["running_servers"]
    assert server["started_at"] == server_before["started_at"]  # the same open interval, no gap
    hub.stop_server("alice")
    rows = statement(hub)
    assert [r["user"] for r in rows] == ["alice"]  # one interval, not two


def quota_status(hub) -> dict:
    r = requests.get(
        f"{hub.url}/services/gpuhub-quota/status", headers={"Authorization": f"token {hub.admin_token}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    return r.json()


def statement(hub, *extra) -> list[dict]:
    period = datetime.now(UTC).astimezone(__import__("zoneinfo").ZoneInfo("Asia/Seoul")).strftime("%Y-%m")
    out = subprocess.run(
        [sys.executable, "-m", "gpuhub.cli", "billing", "statement", "--period", period, "--format", "json", *extra],
        env={**os.environ, "GPUHUB_SITE_CONFIG": str(hub.site_path)},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_statement_charges_gpus_times_weight_times_seconds(make_hub):
    hub = make_hub(site_fn=default_site)
    t0 = time.time()
    assert hub.spawn("alice", {"image": "python", "gpus": 2, "gpu_model": "A100"}).status_code in (201, 202)
    hub.wait_ready("alice")
    time.sleep(8)
    hub.stop_server("alice")
    elapsed = time.time() - t0
    (row,) = [r for r in statement(hub) if r["user"] == "alice"]
    assert row["org"] == "gist-ai" and row["gpu_model"] == "A100"
    weighted_seconds = row["weighted_gpu_hours"] * 3600
    assert abs(weighted_seconds - 2 * 0.6 * elapsed) <= 2 * 0.6 * 2, (row, elapsed)
    assert abs(row["gpu_seconds"] - 2 * elapsed) <= 2 * 2, (row, elapsed)


def budget_site(instance, port, state):
    site = default_site(instance, port, state)
    site["organizations"]["gist-ai"]["gpu_hours_per_month"] = 0.004  # 14.4 weighted GPU-seconds
    site["quota"] = {
        "enforce_interval_seconds": 1,
        "grace_seconds": 3,
        "min_remaining_gpu_hours": 0,
        "reconcile_interval_seconds": 5,
    }
    return site


def test_budget_enforcer_warns_then_stops_within_the_documented_bound(make_hub):
    from gpuhub.core.site import load_site
    from quota.budget import site_overage_bound

    hub = make_hub(site_fn=budget_site)
    assert hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"}).status_code in (201, 202)
    hub.wait_ready("alice")
    session = login(hub, "alice")
    deadline = time.monotonic() + 90
    saw_warning = False
    while time.monotonic() < deadline:
        servers = hub.api("GET", "/users/alice").json()["servers"]
        if not servers:
            break
        if not saw_warning:
            page = session.get(f"{hub.url}/hub/home").text
            saw_warning = "alert-warning" in page or "alert-danger" in page
        time.sleep(0.5)
    else:
        raise AssertionError("the enforcer did not stop alice's server")
    assert saw_warning, "no budget warning on the home page before the stop"
    site = load_site(hub.site_path)
    used = quota_status(hub)["orgs"]["gist-ai"]["used_gpu_hours"] * 3600
    overage = used - 0.004 * 3600
    bound = site_overage_bound(site, "gist-ai")
    assert 0 <= overage <= bound, (overage, bound)
    r = hub.spawn("alice", {"image": "python", "gpus": 1})
    assert r.status_code == 403 and "weighted GPU-hours" in r.json()["message"], r.text
    assert hub.spawn("alice", {"image": "python", "gpus": 0}).status_code in (201, 202)  # CPU still works
    hub.wait_ready("alice")
    hub.stop_server("alice")


def test_dead_container_frees_its_gpu_at_dockers_finish_time(make_hub):
    hub = make_hub(site_fn=default_site)
    assert hub.spawn("carol", {"image": "python", "gpus": 1}).status_code in (201, 202)
    hub.wait_ready("carol")
    (c,) = hub.containers(user="carol")
    c.kill()
    c.reload()
    from gpuhub.host.dockerenv import docker_time
    from gpuhub.hub.runtime import quota_store

    finished = docker_time(c.attrs["State"]["FinishedAt"])
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and quota_status(hub)["orgs"]["cnuh-radiology"]["gpus_in_use"]:
        time.sleep(0.5)
    assert quota_status(hub)["orgs"]["cnuh-radiology"]["gpus_in_use"] == 0
    (closed,) = [
        r for r in quota_store(hub.site_path).recently_closed(finished - timedelta(minutes=5)) if r["user"] == "carol"
    ]
    assert closed["end_reason"] == "container-exited"
    assert abs((closed["ended_at"] - finished).total_seconds()) < 0.01, (closed, finished)
    # the freed GPU can be taken again
    assert hub.spawn("bob", {"image": "python", "gpus": 1, "org": "cnuh-radiology"}).status_code in (201, 202)
    hub.wait_ready("bob")
    hub.stop_server("bob")


def test_spawn_form_shows_orgs_budget_and_free_gpus(make_hub):
    hub = make_hub(site_fn=default_site)
    assert hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"}).status_code in (201, 202)
    # the page declares <meta charset="utf-8"> (JupyterHub sends no charset header, so requests would guess latin-1)
    page = login(hub, "bob").get(f"{hub.url}/hub/spawn/bob/second").content.decode("utf-8")
    assert "GIST AI Lab" in page and "CNUH Radiology" in page
    assert "GPUs in use 1 / 2" in page  # alice holds one of gist-ai's two
    assert "H100 (weight 1.0) — 1 of 2 free" in page  # the catalog's text (an em dash, not the entity)
    assert "A100 (weight 0.6) — 2 of 2 free" in page
    hub.wait_ready("alice")
    hub.stop_server("alice")


@pytest.mark.parametrize(
    "options",
    [
        {"image": "python", "gpus": 3},
        {"image": "python", "gpus": 1, "devices": ["GPU-sim-h100-0"]},
        {"image": "debian:bookworm-slim"},
        {"image": "python", "gpus": 1, "gpu_model": "GPU-sim-h100-0"},
        {"image": "python", "gpus": 2, "org": "cnuh-radiology"},
    ],
)
def test_tampered_rest_options_cannot_exceed_limits(hub, options):
    """Refusals only: one module hub (the default site) serves every case."""
    r = hub.spawn("bob", options)
    assert 400 <= r.status_code < 500, r.text
    assert hub.containers(all=True, user="bob") == []


def test_container_that_died_while_the_hub_was_down_is_closed_at_its_finish_time(make_hub):
    from gpuhub.host.dockerenv import docker_time
    from gpuhub.hub.runtime import quota_store

    hub = make_hub(site_fn=default_site)
    assert hub.spawn("alice", {"image": "python", "gpus": 1}).status_code in (201, 202)
    hub.wait_ready("alice")
    hub.kill9()
    (c,) = hub.containers(user="alice")
    c.kill()
    c.reload()
    finished = docker_time(c.attrs["State"]["FinishedAt"])
    time.sleep(2)
    hub.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and quota_status(hub)["orgs"]["gist-ai"]["gpus_in_use"]:
        time.sleep(0.5)
    (closed,) = [
        r for r in quota_store(hub.site_path).recently_closed(finished - timedelta(minutes=5)) if r["user"] == "alice"
    ]
    assert closed["end_reason"] == "container-exited"
    assert abs((closed["ended_at"] - finished).total_seconds()) < 0.01  # not the restart time


def test_unknown_labelled_container_is_stopped_by_the_reconciler(make_hub, docker_client):
    hub = make_hub(site_fn=default_site)
    stranger = docker_client.containers.run(
        "gpuhub/base-notebook:latest",
        ["sleep", "600"],
        detach=True,
        name=f"{hub.instance}-stranger",
        labels={
            "gpuhub.managed": "1",
            "gpuhub.hub": hub.instance,
            "gpuhub.user": "mallory",
            "gpuhub.server": "",
            "gpuhub.gpus": "GPU-sim-h100-0",
            "gpuhub.org": "gist-ai",
        },
    )
    deadline = time.monotonic() + 30  # reconcile_interval_seconds is 5 in the test site
    while time.monotonic() < deadline:
        try:
            stranger.reload()
        except Exception:
            break
        if stranger.status != "running":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the reconciler left an unknown labelled container running")
    assert quota_status(hub)["orgs"]["gist-ai"]["gpus_in_use"] == 0


def nvidia_site(instance, port, state):
    site = default_site(instance, port, state)
    site["gpus"]["runtime"] = "nvidia"
    return site


def test_runtime_nvidia_hands_devices_to_docker_and_fails_closed_without_the_toolkit(make_hub):
    """No GPU here: Docker refuses the device request, which proves it was made; the GPU is freed."""
    from gpuhub.hub.runtime import quota_store

    hub = make_hub(site_fn=nvidia_site)
    r = hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"})
    assert r.status_code == 503, r.text
    message = r.json()["message"]
    assert "GPU-sim-h100-0" in message and "NVIDIA container toolkit" in message, message
    assert "gpu" in message.lower()
    hub.wait_containers_gone(user="alice")
    assert quota_status(hub)["orgs"]["gist-ai"]["gpus_in_use"] == 0
    (closed,) = quota_store(hub.site_path).recently_closed(datetime.now(UTC) - timedelta(minutes=5))
    assert closed["end_reason"] == "spawn-failed"
    # a CPU server still starts: the failed GPU request does not poison later spawns
    assert hub.spawn("alice", {"image": "python", "gpus": 0}).status_code in (201, 202)
    hub.wait_ready("alice")
    hub.stop_server("alice")
