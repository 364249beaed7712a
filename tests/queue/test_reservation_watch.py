"""The quota service's class-window watch on a real quota store (SQLite and PostgreSQL) with a travelling clock
and a recording hub client: others' servers on a window's GPUs are warned once within the notice, stopped at the
start with the ledger reason ``reservation-window``; the course's own servers are spared; the home page's
notices and a new server's spawn notice say the same."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from gpuhub.hub import reservation_watch as rw
from quota.policy import AllocationRequest
from quota.store import QuotaStore
from tests.clock import Clock
from tests.queue.kit import make_site
from tests.queue.test_reservation_store import orgs

START = datetime(2026, 12, 8, 4, 0, tzinfo=UTC)  # Tue 13:00 in Seoul: ml101's window (GPU-h3, GPU-h2) opens


class Hub:
    def __init__(self):
        self.stopped: list[tuple[str, str]] = []

    async def stop_server(self, user: str, server: str) -> None:
        self.stopped.append((user, server))


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path, organizations=orgs())


def test_warned_once_then_stopped_at_the_start_with_the_reason_in_the_ledger(engine, site, caplog):
    clock = Clock(START - timedelta(minutes=20))
    store = QuotaStore(engine, site, clock)
    for user, server in (("bob", "a"), ("bob", "b"), ("carol", ""), ("erin", "")):  # carol: GPU-h2, erin: GPU-h3
        store.allocate(AllocationRequest(user, server, None, "python", 1, "H100"))
    hub = Hub()
    watch = rw.ReservationWatch(site, store, hub, clock)
    caplog.set_level("INFO", "gpuhub.quota")

    assert asyncio.run(watch.tick()) == [] and "warned" not in caplog.text  # 20 min before: outside the notice
    clock.advance(minutes=10)
    asyncio.run(watch.tick())
    asyncio.run(watch.tick())
    assert caplog.text.count("reservation: warned carol/: GPU GPU-h2 is reserved for course 'ml101'") == 1
    assert "warned erin/" not in caplog.text and "warned bob/" not in caplog.text  # the course's own; unreserved
    (n,) = rw.home_notices(site, store, "carol", clock())
    assert n == {"server": "default", "device": "GPU-h2", "course": "ml101", "at": "2026-12-08 13:00 KST",
                 "action": "warn"}  # fmt: skip

    clock.now = START
    assert asyncio.run(watch.tick()) == ["carol/"] and hub.stopped == [("carol", "")]
    assert asyncio.run(watch.tick()) == []  # asked once (again only after RETRY_STOP_SECONDS)
    (iv,) = [r for r in store.open_intervals() if r["user"] == "carol"]
    store.release("carol/", START + timedelta(seconds=3), "container-exited")  # the hub's poll saw it exit
    asyncio.run(watch.tick())
    (closed,) = [r for r in store.recently_closed(START) if r["id"] == iv["id"]]
    assert closed["end_reason"] == "reservation-window"
    assert rw.home_notices(site, store, "carol", clock()) == []


def test_a_new_server_on_a_gpu_a_window_needs_soon_is_told(site):
    grant = SimpleNamespace(server_key="carol/", devices=["GPU-h3"])
    req = SimpleNamespace(user="carol", org="cnuh")
    (n,) = rw.grant_notices(site, grant, req, site.gpus.devices, START - timedelta(minutes=5))
    assert (n.action, n.window.course) == ("warn", "ml101")
    assert rw.grant_notices(site, grant, req, site.gpus.devices, START - timedelta(hours=2)) == []
    erin = SimpleNamespace(user="erin", org="academy")
    assert rw.grant_notices(site, grant, erin, site.gpus.devices, START - timedelta(minutes=5)) == []
