"""Destruction at the end of a project, with an injected clock and real Docker: the project homes (labelled, and one
named from before the labels), the servers' containers and the quarantined copies go when the project is due
(``retention_days_after_expiry`` after it closes), and the destruction is in the audit chain with each volume's
id; what is not the project's stays; the records still generate and show it; `gpuhub audit verify` passes.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import docker
import pytest

from gpuhub.core import labels as lb
from gpuhub.host.project_network import PROJECT
from quota.audit import AuditLog
from quota.project_expiry import AUDIT_PROJECT_DESTROYED, for_site
from tests.airlock.conftest import make_volume, put_files  # noqa: F401 (fixture)
from tests.projects.recordskit import gpuhub, scenario, site_of, write_site

pytestmark = pytest.mark.docker
TEST_LABEL = "gpuhub.test-expiry"  # on what these tests make (the airlock kit's volumes clean up themselves)
CLOSES = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)  # 2027-01-01 00:00 in Asia/Seoul: the day after expires


@pytest.fixture
def labelled(docker_client):
    """Volumes and containers made here, removed afterwards (by the test label) if the test left any."""
    yield
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}=1"}):
        c.remove(force=True)
    for v in docker_client.volumes.list(filters={"label": f"{TEST_LABEL}=1"}):
        v.remove(force=True)


def _volume(client, name: str, labels: dict) -> str:
    client.volumes.create(name, labels={TEST_LABEL: "1", **labels})
    put_files(client, name, {"work/notes.txt": "환자 요약 notes\n".encode()})
    return name


def _server(client, instance: str, user: str, volume: str, running: bool):
    labels = {lb.MANAGED: "1", lb.HUB: instance, PROJECT: "cohort", lb.USER: user, lb.SERVER: "cohort", TEST_LABEL: "1"}
    kw = dict(network_mode="none", labels=labels, volumes={volume: {"bind": "/home/jovyan", "mode": "rw"}})
    if running:
        return client.containers.run("gpuhub/base-notebook:latest", ["sleep", "600"], detach=True, **kw)
    return client.containers.create("gpuhub/base-notebook:latest", ["true"], **kw)


def _exists(client, name: str) -> bool:
    try:
        client.volumes.get(name)
        return True
    except docker.errors.NotFound:
        return False


def test_expiry_destroys_homes_servers_and_quarantine_and_records_it(
    tmp_path,
    db_url,
    engine,
    clock,
    docker_client,
    make_volume,  # noqa: F811
    labelled,
):
    path = write_site(tmp_path, db_url, {"retention_days_after_expiry": 1})
    site = site_of(path)
    inst = site.hub.instance
    facts = scenario(engine, site, clock, docker_client, make_volume)
    ours = {lb.MANAGED: "1", lb.HUB: inst, PROJECT: "cohort"}
    home = _volume(docker_client, f"{inst}-project-cohort-user-1000", {**ours, lb.UID: "1000"})
    legacy = _volume(docker_client, f"{inst}-project-cohort-user-1001", {})  # before the labels: by its exact name
    keep = [
        _volume(docker_client, f"{inst}-user-alice", {lb.MANAGED: "1", lb.HUB: inst}),  # an ordinary home
        _volume(docker_client, f"{inst}x-project-cohort-user-1000", {**ours, lb.HUB: f"{inst}x"}),  # another hub's
        _volume(docker_client, f"{inst}-project-cohort-user-1000-copy", {}),  # a name that only starts alike
    ]
    stopped = _server(docker_client, inst, "alice", home, running=False)
    running = _server(docker_client, inst, "bob", legacy, running=True)
    quarantine = site.airlock.quarantine_dir
    assert len(list(quarantine.glob("*.bin"))) == 2

    clock.now = CLOSES.replace(day=31, hour=20)  # closed five hours ago, one day of retention: not due
    rc, out, err = gpuhub(path, clock, "project", "expire", "--dry-run")
    assert (rc, out.strip()) == (0, "no project is due for destruction (each is due retention_days_after_expiry "
                                 "days after it closes)"), err  # fmt: skip

    clock.now = datetime(2027, 1, 1, 15, 0, 1, tzinfo=UTC)
    rc, out, err = gpuhub(path, clock, "project", "expire", "--dry-run")
    assert rc == 0, err
    assert f"would destroy volumes {home}, {legacy}; 2 container(s), 2 quarantined file(s)" in out
    assert _exists(docker_client, home) and len(list(quarantine.glob("*.bin"))) == 2

    # the quota service's pass: bob's server still runs, so the enforcer stops it through the hub first
    service = for_site(site, engine, docker_client, clock)
    [deferred] = [o for o in asyncio.run(service.tick()) if o.plan.project == "cohort"]
    assert "still running" in deferred.plan.defer and _exists(docker_client, legacy)

    rc, out, err = gpuhub(path, clock, "project", "expire", "--stop-running")
    assert rc == 0, (out, err)
    assert "project cohort (due since 2027-01-02T00:00:00+09:00): destroyed 2 volume(s), 2 container(s), 2 " in out
    for gone in (home, legacy):
        assert not _exists(docker_client, gone)
    assert all(_exists(docker_client, v) for v in keep)
    for c in (stopped, running):
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(c.id)
    assert list(quarantine.glob("*.bin")) == []

    rows = [r for r in AuditLog(engine).rows() if r.action == AUDIT_PROJECT_DESTROYED and r.project == "cohort"]
    [row] = rows
    assert [v["id"] for v in row.detail["volumes"]] == [home, legacy] and row.detail["complete"]
    assert sorted(q["request"] for q in row.detail["quarantine"]) == [facts["export"], facts["import"]]
    rc, out, _ = gpuhub(path, clock, "project", "expire")
    assert "no project is due" in out  # complete: not looked at again

    rc, out, err = gpuhub(path, clock, "project", "records", "cohort", "--format", "json", "--month", "2027-01")
    assert rc == 0, err
    r = json.loads(out)
    [d] = r["destruction"]
    assert [v["id"] for v in d["volumes"]] == [home, legacy] and d["complete"]
    assert d["datasets_unmounted"] == [f"registry ({tmp_path / 'registry'})"]
    assert [e["approved_by"] for e in r["exports"]] == [["steve", "sara"]]  # the records remain
    assert all(e["purged_at"] for e in r["exports"] + r["imports"])
    assert r["review"]["by_account"][0]["actions"] == {"project.destroyed": 1}
    rc, out, err = gpuhub(path, clock, "project", "records", "cohort", "--format", "html")
    assert rc == 0 and home in out and "Destruction" in out
    rc, out, err = gpuhub(path, clock, "audit", "verify")
    assert rc == 0, (out, err)


def test_a_volume_still_in_use_leaves_the_destruction_incomplete_and_retried(
    tmp_path,
    db_url,
    engine,
    clock,
    docker_client,
    labelled,
):
    path = write_site(tmp_path, db_url)
    site = site_of(path)
    inst = site.hub.instance
    home = _volume(docker_client, f"{inst}-project-cohort-user-1000", {lb.HUB: inst, PROJECT: "cohort"})
    # a container that is not a project server (no project label) holds the volume: Docker refuses its removal
    blocker = docker_client.containers.create(
        "gpuhub/base-notebook:latest", ["true"], network_mode="none", labels={TEST_LABEL: "1"},
        volumes={home: {"bind": "/v", "mode": "ro"}},
    )  # fmt: skip
    clock.now = CLOSES
    rc, out, err = gpuhub(path, clock, "project", "expire")
    assert rc == 1 and "NOT complete" in out and home in out, (out, err)
    assert _exists(docker_client, home)
    blocker.remove(force=True)
    rc, out, err = gpuhub(path, clock, "project", "expire")
    assert rc == 0 and "destroyed 1 volume(s)" in out, (out, err)
    done = [r.detail["complete"] for r in AuditLog(engine).rows() if r.project == "cohort"]
    assert done == [False, True] and not _exists(docker_client, home)
