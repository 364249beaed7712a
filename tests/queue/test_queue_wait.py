"""The spawn path's queue logic on SQLite and PostgreSQL, without a hub: the spawner adapter
(gpuhub.hub.queue_wait) on a stand-in spawner and the dispatcher (gpuhub.hub.queue_dispatch) with a stand-in hub
client, both on the real quota and queue stores. The real hub and Docker: tests/queue/test_spawn_queue.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
import yaml
from tornado import web

from gpuhub.core.keys import server_key
from gpuhub.hub import queue_wait, runtime
from gpuhub.hub.queue_dispatch import Dispatcher
from quota.policy import AllocationRequest
from tests.queue.kit import site_data

H100 = {"image": "python", "gpus": 1, "gpu_model": "H100"}


class User:
    def __init__(self, name):
        self.name = name


class Spawner:
    """What queue_wait reads of a GpuhubSpawner."""

    handler = None
    log = logging.getLogger("test")

    def __init__(self, path, user, options, name=""):
        self.site_config, self.user, self.name, self.user_options = str(path), User(user), name, dict(options)
        self.progress_events: list[dict] = []
        self._log_name = server_key(user, name)

    site = property(lambda self: runtime.site(self.site_config))
    server_key = property(lambda self: server_key(self.user.name, self.name))

    def _groups(self):
        return frozenset()

    def emit(self, progress, message):
        self.progress_events.append({"progress": progress, "message": message})


class Hub:
    """The quota service's hub client: every server in ``states`` (default "pending"); starts are recorded."""

    def __init__(self, **states):
        self.states, self.started = states, []

    async def server_state(self, user, server):
        return self.states.get(server_key(user, server), "pending")

    async def start_server(self, user, server, options):
        self.started.append((server_key(user, server), options))
        return True


@pytest.fixture
def path(tmp_path, db_url):
    p = tmp_path / "site.yaml"
    data = site_data(hub={"state_dir": str(tmp_path / "state"), "db_url": db_url})
    for org in data["organizations"].values():
        org["gpu_hours_per_month"] = 100
    p.write_text(yaml.safe_dump(data))
    return p


def fill_h100(path) -> None:
    """alice holds every H100 (four servers)."""
    store = runtime.quota_store(path)
    for name in "abcd":
        store.allocate(AllocationRequest("alice", name, "gist-ai", "python", 1, "H100"))


async def until(predicate, timeout=10.0):
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_busy_waits_is_granted_in_turn_and_refusals_that_waiting_cannot_fix_are_not_queued(path):
    async def story():
        fill_h100(path)
        qs, _ = queue_wait.stores(path)
        carol = Spawner(path, "carol", H100)
        waiting = asyncio.create_task(queue_wait.before_start(carol))
        await until(lambda: any("position 1 of 1" in e["message"] for e in carol.progress_events))
        assert [e.server_key for e in qs.entries()] == ["carol/"]

        now = Spawner(path, "dana", {**H100, "queue": False})
        await queue_wait.before_start(now)  # "queue": false -> today's 429, nothing queued
        assert now.queue_ticket.refusal.rule == "no-free-device" and "queue" not in now.user_options
        assert [e.server_key for e in qs.entries()] == ["carol/"]
        with pytest.raises(web.HTTPError) as bad:
            await queue_wait.before_start(Spawner(path, "dana", {**H100, "queue": "yes"}))
        assert bad.value.status_code == 400 and "option 'queue' must be true or false" in bad.value.log_message

        dispatcher = Dispatcher(qs, runtime.quota_store(path).inventory, Hub())
        assert await dispatcher.tick() == [] and not waiting.done()
        freed = next(h["device_uuid"] for h in runtime.quota_store(path).holdings() if h["server_key"] == "alice/b")
        runtime.quota_store(path).release("alice/b")
        assert len(await dispatcher.tick()) == 1
        await asyncio.wait_for(waiting, 10)
        request = AllocationRequest("carol", "", "cnuh", "python", 1, "H100")
        grant = queue_wait.take_grant(carol, request)
        held = {h["server_key"]: h for h in runtime.quota_store(path).holdings()}
        assert grant.devices == [freed] and held["carol/"]["device_uuid"] == freed, held
        assert qs.entries() == [] and [e.server_key for e in qs.entries(states=("served",))] == ["carol/"]
        assert f"Your turn: H100 {freed} granted" in carol.progress_events[-1]["message"]

    asyncio.run(story())


def test_cancel_expiry_and_a_restarted_hubs_requests(path):
    async def story():
        fill_h100(path)
        qs, _ = queue_wait.stores(path)
        bob = Spawner(path, "bob", H100, name="x")
        task = asyncio.create_task(queue_wait.before_start(bob))
        await until(lambda: qs.active_for("bob/x") is not None)
        task.cancel()  # what a DELETE of the pending server (and a hub shutdown) does first
        await asyncio.gather(task, return_exceptions=True)
        assert qs.active_for("bob/x").state == "queued"  # a shutdown alone leaves it in line
        await queue_wait.after_stop(Spawner(path, "bob", H100, name="x"))  # the next hub's start-up stop: kept
        assert qs.active_for("bob/x") is not None
        await queue_wait.after_stop(bob)  # the DELETE's stop of the interrupted wait: cancelled
        assert qs.active_for("bob/x") is None and qs.entries(states=("cancelled",))[0].server_key == "bob/x"

        dana = Spawner(path, "dana", H100)
        task = asyncio.create_task(queue_wait.before_start(dana))
        await until(lambda: qs.active_for("dana/") is not None)
        expired = qs.expire(now=qs.now() + timedelta(minutes=121))
        assert [e.server_key for e in expired] == ["dana/"]
        with pytest.raises(web.HTTPError) as end:
            await asyncio.wait_for(task, 10)
        assert end.value.status_code == 429 and end.value.log_message.startswith("waited 121 minutes for 1 x H100")

        # requests of a hub that died: re-attached through the hub API with their stored options
        qs.enqueue("carol/", "carol", "", "cnuh", 1, "H100", {"image": "python", "gpus": 1, "gpu_model": "H100"})
        qs.enqueue("erin/", "erin", "", "academy", 1, "H100", {"image": "python", "gpus": 1, "gpu_model": "H100"})
        hub = Hub(**{"carol/": "stopped", "erin/": "pending"})
        later = qs.enqueue("bob/y", "bob", "y", "gist-ai", 1, "H100", H100)
        dispatcher = Dispatcher(qs, runtime.quota_store(path).inventory, hub)
        qs.cancel(later.id)
        await dispatcher.tick()
        assert hub.started == [("carol/", {**H100, "queue": True})]  # erin's spawn is pending already
        await dispatcher.tick()
        assert len(hub.started) == 1  # once
        qs.enqueue("bob/z", "bob", "z", "gist-ai", 1, "H100", H100)  # made while this hub runs: never re-attached
        hub.states["bob/z"] = "stopped"
        await dispatcher.tick()
        assert len(hub.started) == 1

    asyncio.run(story())
