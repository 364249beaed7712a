"""F3: the hub database unavailable (PostgreSQL stopped ~60 s; SQLite's state disk full), with servers running.

Each scenario runs once per module (a fixture) and the tests below check its observations one promise at a
time, so a broken promise shows by name while the others are still checked. The PostgreSQL outage uses a
private cluster (tests/faults/dbkit.py) on its own port, never the shared test cluster on 55432.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import requests

from tests.faults.dbkit import DockerLifecycles, PrivateCluster, compare, ledger
from tests.faults.figures import record
from tests.harness import default_site, execute, login

pytestmark = pytest.mark.docker

OUTAGE_S = 60
ENFORCE_S = 2  # heartbeat period in the test site
BOB_GPU = {"image": "python", "gpus": 1, "gpu_model": "A100", "org": "gist-ai"}


def f3_site(instance, port, state):
    site = default_site(instance, port, state)
    site["quota"] = {"enforce_interval_seconds": ENFORCE_S, "reconcile_interval_seconds": 3, "grace_seconds": 2}
    return site


def _spawn(hub, user: str, options: dict) -> list:
    try:
        r = hub.api("POST", f"/users/{user}/server", json=options, timeout=60)
    except requests.RequestException as e:
        return [type(e).__name__, str(e)[:200]]
    try:
        return [r.status_code, r.json().get("message", r.text[:300])]
    except ValueError:
        return [r.status_code, r.text[:300]]


def _page(session: requests.Session, url: str, lang: str) -> list:
    try:
        r = session.get(url, headers={"Accept-Language": lang}, timeout=30)
    except requests.RequestException as e:
        return [type(e).__name__, str(e)[:200]]
    r.encoding = "utf-8"  # what the page's <meta charset> declares (JupyterHub's header says only text/html)
    return [r.status_code, r.text]


def _kernel_ok(hub, user: str, token: str) -> bool:
    try:
        return execute(f"{hub.url}/user/{user}/", token, "print(6 * 7)", timeout=20).strip() == "42"
    except Exception:  # noqa: BLE001 - any failure is a failed kernel round trip, counted
        return False


def _wait_hub_db(hub, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if hub.api("GET", "/users/alice", timeout=10).status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the hub's API did not recover {timeout} s after PostgreSQL came back:\n{hub.log_tail()}")


# ----------------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_outage(module_hubs, docker_client):
    """Alice (GPU) and carol (GPU) run; PostgreSQL stops for OUTAGE_S; meanwhile bob asks for a GPU, dana for a
    CPU-only server, carol's container dies, alice runs code every 5 s; then PostgreSQL is back."""
    cluster = PrivateCluster.create()
    cluster.start()
    hub = None
    try:
        since = datetime.now(UTC) - timedelta(seconds=1)
        hub = module_hubs(site_fn=f3_site, db_url=cluster.url)
        docker_times = DockerLifecycles(docker_client, hub.instance)
        hub.start()
        for u in ("alice", "bob", "carol", "dana"):
            hub.ensure_user(u)
        assert hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"}).status_code in (201, 202)
        assert hub.spawn("carol", {"image": "python", "gpus": 1}).status_code in (201, 202)
        hub.wait_ready("alice")
        hub.wait_ready("carol")
        token = hub.user_token("alice")
        assert _kernel_ok(hub, "alice", token)
        (carol_container,) = hub.containers(user="carol")
        browser = login(hub, "dana")  # a person with the hub's page open, in Korean

        cluster.stop()
        down = time.monotonic()
        gpu = _spawn(hub, "bob", BOB_GPU)
        cpu = _spawn(hub, "dana", {"image": "python", "gpus": 0})
        home = _page(browser, f"{hub.url}/hub/home", lang="ko")
        carol_container.kill()  # a server that dies while the database is down
        kernels = []
        while time.monotonic() - down < OUTAGE_S:
            kernels.append(_kernel_ok(hub, "alice", token))
            time.sleep(5)
        cluster.start()
        obs = {
            "outage_s": round(time.monotonic() - down, 1),
            "gpu_spawn": gpu,
            "cpu_spawn": cpu,
            "home_page": home,
            "kernels": kernels,
            "recovered_s": round(_wait_hub_db(hub, 60), 1),
        }
        _after_recovery(hub, token, since, docker_times, obs)
        yield obs
    finally:
        if hub is not None:
            hub.stop()  # while its database is up: a hub whose database is gone takes the full grace to stop
        cluster.destroy()


def _after_recovery(hub, token: str, since, docker_times, obs: dict) -> None:
    """Bob's GPU spawn again, alice's kernel, both stopped; then the ledger against Docker's own times."""
    gpu, cpu, kernels = obs["gpu_spawn"], obs["cpu_spawn"], obs["kernels"]
    obs["spawn_after"] = _spawn(hub, "bob", BOB_GPU)
    if obs["spawn_after"][0] in (201, 202):
        hub.wait_ready("bob")
        hub.stop_server("bob")
    obs["kernel_after"] = _kernel_ok(hub, "alice", token)
    hub.stop_server("alice")
    deadline = time.monotonic() + 40  # the reconciler closes carol's interval from Docker's finish time
    while (
        time.monotonic() < deadline and (ledger(hub.site_path, since).get("carol/") or [{}])[-1].get("ended_at") is None
    ):
        time.sleep(1)
    obs["runs"] = docker_times.runs()
    docker_times.close()
    rows = ledger(hub.site_path, since)
    obs["problems"], obs["worst"] = compare(obs["runs"], rows, start_slack_s=30, end_slack_s=2 * ENFORCE_S + 1)
    obs["end_reasons"] = {k: [r.get("end_reason") for r in v] for k, v in rows.items()}
    record(
        "F3-postgres",
        f"PostgreSQL down {obs['outage_s']} s: {sum(kernels)}/{len(kernels)} kernel round trips ok, "
        f"GPU spawn -> {gpu[0]} ({gpu[1][:60]}), CPU spawn -> {cpu[0]}, home page -> {obs['home_page'][0]}, "
        f"hub API back {obs['recovered_s']} s "
        f"after the restart, {len(obs['problems'])} lost/duplicated/mistimed intervals "
        f"(worst start {obs['worst']['start_error_s']} s, end {obs['worst']['end_error_s']} s off Docker's)",
        **{k: v for k, v in obs.items() if k not in ("runs", "home_page")},
        intervals=sum(len(v) for v in rows.values()),
    )


def test_running_servers_keep_serving_kernels_while_postgres_is_down(pg_outage):
    """Promise: a database outage does not touch running servers (the proxy and the servers need no database)."""
    assert pg_outage["kernels"] and all(pg_outage["kernels"]), pg_outage["kernels"]
    assert pg_outage["kernel_after"]


def test_spawns_fail_closed_while_postgres_is_down_and_work_after(pg_outage):
    """Promise: nothing starts while the database is down (no container, no GPU handed out unrecorded), and
    spawns work again as soon as it is back."""
    assert pg_outage["gpu_spawn"][0] not in (200, 201, 202) and pg_outage["cpu_spawn"][0] not in (200, 201, 202)
    runs = pg_outage["runs"]
    assert "dana/" not in runs and len(runs.get("bob/", [])) == 1, runs  # bob's one run is after the recovery
    assert pg_outage["spawn_after"][0] in (201, 202), pg_outage["spawn_after"]


def test_ledger_matches_dockers_own_times_after_the_outage(pg_outage):
    """Promise: after recovery 0 lost, 0 duplicated intervals; each opens before its container starts and closes
    within one heartbeat of Docker's die time, carol's (died during the outage) at Docker's finish time."""
    assert not pg_outage["problems"], "\n".join(pg_outage["problems"])
    assert pg_outage["end_reasons"]["carol/"] == ["container-exited"], pg_outage["end_reasons"]


def test_spawn_refusal_while_postgres_is_down_is_503_naming_hub_db_url(pg_outage):
    """Promise (README, Recovery): while the database is unreachable new servers fail closed with 503 and a message
    naming hub.db_url, GPU and CPU-only alike.

    JupyterHub looks the API token (or the login cookie) up in hub.db_url before gpuhub's spawner runs; without
    gpuhub.hub.db_guard that failed lookup was answered 403 "Missing or invalid credentials." (named neither the
    database nor a fix)."""
    for what in ("gpu_spawn", "cpu_spawn"):
        status, message = pg_outage[what]
        assert status == 503 and "hub.db_url" in message, (what, status, message)


def test_a_page_opened_while_postgres_is_down_says_why_in_the_persons_language(pg_outage):
    """Promise: a person who opens the hub's home page while the database is down gets 503 and the cause in the
    page's language (Korean here), naming hub.db_url, instead of being sent to log in again."""
    status, html = pg_outage["home_page"]
    assert status == 503 and "hub.db_url" in html and "허브 데이터베이스" in html, (status, html[-800:])


# ----------------------------------------------------------------------------------------------- SQLite disk full


@pytest.fixture(scope="module")
def disk_full(module_hubs, tmp_path_factory):
    """The hub on SQLite with its state_dir on an 8 MB tmpfs; alice runs; the disk is filled to the last byte;
    bob asks for a GPU; alice runs code; the filler is removed; bob asks again."""
    state = tmp_path_factory.mktemp("tmpfs-state")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(state)], check=True)
    try:
        hub = module_hubs(site_fn=f3_site, state=state)
        hub.start()
        for u in ("alice", "bob"):
            hub.ensure_user(u)
        assert hub.spawn("alice", {"image": "python", "gpus": 1, "gpu_model": "H100"}).status_code in (201, 202)
        hub.wait_ready("alice")
        token = hub.user_token("alice")
        assert _kernel_ok(hub, "alice", token)  # the server's token cache holds it, as for a user at work
        filler = state / "filler"
        _fill(filler)
        obs = {"spawn_when_full": _spawn(hub, "bob", BOB_GPU), "kernel_while_full": _kernel_ok(hub, "alice", token)}
        obs["integrity_when_full"] = _integrity(state / "jupyterhub.sqlite", readonly=True)
        filler.unlink()
        time.sleep(1)
        obs["spawn_after"] = _spawn(hub, "bob", BOB_GPU)
        if obs["spawn_after"][0] in (201, 202):
            hub.wait_ready("bob")
            hub.stop_server("bob")
        hub.stop_server("alice")
        hub.stop()
        obs["integrity_after"] = _integrity(state / "jupyterhub.sqlite")
        con = sqlite3.connect(state / "jupyterhub.sqlite")
        obs["open_intervals_after"] = con.execute(
            "SELECT count(*) FROM gpuhub_usage_intervals WHERE ended_at IS NULL"
        ).fetchone()[0]
        con.close()
        full = obs["spawn_when_full"]
        record(
            "F3-sqlite-full",
            f"state disk full: spawn -> {full[0]} ({full[1][:60]}), running kernel ok {obs['kernel_while_full']}, "
            f"integrity_check {obs['integrity_when_full']} (full) / {obs['integrity_after']} (after), "
            f"spawn after freeing -> {obs['spawn_after'][0]}",
            **obs,
        )
        yield obs
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _fill(path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 4096, 1):  # to the last byte
            try:
                while os.write(fd, b"\0" * chunk):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def _integrity(db, readonly: bool = False) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True) if readonly else sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def test_full_state_disk_corrupts_nothing_and_spawns_work_once_there_is_room(disk_full):
    """Promise: a full disk corrupts nothing (PRAGMA integrity_check ok while full and after), running servers keep
    serving, no interval is left open, and spawns work again once space is freed."""
    assert disk_full["integrity_when_full"] == "ok" and disk_full["integrity_after"] == "ok"
    assert disk_full["kernel_while_full"]
    assert disk_full["spawn_when_full"][0] not in (200, 201, 202)
    assert disk_full["spawn_after"][0] in (201, 202), disk_full["spawn_after"]
    assert disk_full["open_intervals_after"] == 0


def test_spawn_on_a_full_state_disk_gets_a_clear_error(disk_full):
    """Promise: a spawn on a full state disk is refused with 503 and an error that names the cause and hub.db_url.

    JupyterHub's own commit at the start of the spawn (jupyterhub/user.py spawn -> db.commit) raises "database or
    disk is full" before gpuhub's spawner runs; without gpuhub.hub.db_guard the hub answered a bare 500."""
    status, message = disk_full["spawn_when_full"]
    assert status == 503 and "hub.db_url" in message and "disk is full" in message, (status, message)
