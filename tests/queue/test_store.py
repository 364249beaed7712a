"""The durable queue on SQLite and PostgreSQL: order, grants, no head-of-line blocking, cancel, expiry,
restarts, two concurrent poppers, and the wait histogram."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import insert

from quota import db
from quota.models import allocations, usage_intervals
from quota.queue_store import AlreadyQueued, QueueStore
from tests.queue.kit import MONDAY

OPTS = {"image": "python", "gpus": 1, "gpu_model": "H100", "org": "gist-ai"}


@pytest.fixture
def qs(engine, site, clock):
    return QueueStore(engine, site, clock)


def hold(engine, uuid, user="bob", org="gist-ai", model="H100", at=MONDAY):
    with engine.begin() as conn:
        conn.execute(
            insert(allocations).values(
                device_uuid=uuid,
                server_key=f"{user}/{uuid}",
                user=user,
                org=org,
                model=model,
                interval_id=0,
                allocated_at=at,
            )
        )


def used(engine, org, hours, end, gpus=1, user="x"):
    with engine.begin() as conn:
        conn.execute(
            insert(usage_intervals).values(
                server_key=f"{user}/old",
                user=user,
                server_name="old",
                org=org,
                image="python",
                gpus=gpus,
                model="H100",
                weight=1.0,
                started_at=end - timedelta(hours=hours),
                ended_at=end,
            )
        )


def put(qs, clock, user, org="gist-ai", model="H100", gpus=1, server="", minutes=1):
    e = qs.enqueue(f"{user}/{server}", user, server, org, gpus, model, {**OPTS, "org": org, "gpu_model": model})
    clock.advance(minutes=minutes)
    return e


def test_enqueue_is_durable_across_a_new_store_and_keeps_user_options(qs, db_url, site, clock):
    a = put(qs, clock, "alice", server="big", gpus=2)
    put(qs, clock, "carol", org="cnuh")
    fresh = QueueStore(db.make_engine(db_url), site, clock)  # as after a kill -9 and restart
    rows = fresh.entries()
    assert [(e.server_key, e.state) for e in rows] == [("alice/big", "queued"), ("carol/", "queued")]
    assert rows[0].user_options == {"image": "python", "gpus": 1, "gpu_model": "H100", "org": "gist-ai"}
    assert rows[0].arrived_at == a.arrived_at and rows[0].gpus == 2
    fresh.engine.dispose()


def test_a_server_queues_once(qs, clock):
    put(qs, clock, "alice")
    with pytest.raises(AlreadyQueued, match="already waiting for GPUs; cancel that request first"):
        put(qs, clock, "alice")


def test_pop_grants_then_served_and_the_wait_is_observed(qs, site, clock, engine):
    e = put(qs, clock, "alice", minutes=5)
    g = qs.pop_next(site.gpus.devices)
    assert (g.id, g.devices, g.model) == (e.id, ("GPU-h0",), "H100")
    assert qs.get(e.id).state == "granted"
    assert qs.pop_next(site.gpus.devices) is None  # nothing else queued; the grant is not handed out twice
    assert qs.mark_served(e.id) and qs.get(e.id).state == "served"
    stats = qs.wait_stats()["served"]
    assert (stats["count"], stats["sum"]) == (1, 300.0)
    assert dict(stats["buckets"])["300.0"] == 1 and dict(stats["buckets"])["120.0"] == 0


def test_a_granted_device_is_not_promised_again(qs, site, clock):
    put(qs, clock, "alice")
    put(qs, clock, "carol", org="cnuh")
    first = qs.pop_next(site.gpus.devices)
    second = qs.pop_next(site.gpus.devices)
    assert first.devices != second.devices and {first.id, second.id} == {e.id for e in qs.entries(("granted",))}
    assert qs.promised() == frozenset(first.devices + second.devices)


def test_no_head_of_line_blocking_a_free_a100_goes_to_a_later_request(qs, site, clock, engine):
    for i in range(4):
        hold(engine, f"GPU-h{i}", user=f"u{i}", org="cnuh" if i % 2 else "academy")
    head = put(qs, clock, "alice", model="H100", minutes=10)
    later = put(qs, clock, "bob", model="A100")
    g = qs.pop_next(site.gpus.devices)
    assert (g.id, g.devices) == (later.id, ("GPU-a0",))
    assert qs.get(head.id).state == "queued"


def test_fair_share_serves_the_org_that_used_less_first(qs, site, clock, engine):
    used(engine, "gist-ai", hours=48, end=clock.now - timedelta(hours=1), gpus=4)  # gist-ai far over its share
    used(engine, "cnuh", hours=1, end=clock.now - timedelta(hours=1))
    early = put(qs, clock, "alice")  # gist-ai first in time
    late = put(qs, clock, "carol", org="cnuh")
    f = qs.factors()
    assert f["cnuh"] > f["gist-ai"] and f["academy"] == 1.0
    listing = qs.listing()
    assert [r["id"] for r in listing["requests"]] == [late.id, early.id]
    assert listing["requests"][1]["ahead_other_orgs"] == 1 and listing["requests"][1]["ahead_same_org"] == 0
    assert qs.pop_next(site.gpus.devices).id == late.id


def test_cancel_removes_the_request_and_its_place(qs, clock):
    a = put(qs, clock, "alice")
    b = put(qs, clock, "bob")
    c = put(qs, clock, "carol", org="cnuh")
    assert qs.position(c.id).position == 3
    assert qs.cancel(server_key="bob/") and not qs.cancel(server_key="bob/")
    assert [e.id for e in qs.entries()] == [a.id, c.id]
    p = qs.position(c.id)
    assert (p.position, p.total, p.ahead_same_org, p.ahead_other_orgs) == (2, 2, 0, 1)
    assert qs.get(b.id).state == "cancelled" and qs.wait_stats()["cancelled"]["count"] == 1


def test_expiry_says_how_long_it_waited_and_why(qs, site, clock, engine):
    for i in range(4):
        hold(engine, f"GPU-h{i}", user=f"u{i}", org="academy")
    e = put(qs, clock, "alice", minutes=0)
    clock.advance(minutes=119)
    assert qs.expire() == []
    clock.advance(minutes=1)
    (gone,) = qs.expire()
    assert gone.id == e.id and gone.state == "expired"
    assert gone.message == (
        "waited 120 minutes for 1 x H100 GPU(s) (quota.max_queue_wait_minutes = 120) and was not served: "
        "no H100 GPU was free; start it again later, or ask for fewer GPUs or another model"
    )
    assert qs.wait_stats()["expired"]["count"] == 1 and qs.wait_stats()["expired"]["sum"] == 7200.0


def test_requeue_keeps_the_old_place_and_recover_returns_stale_grants(qs, site, clock):
    a = put(qs, clock, "alice")
    put(qs, clock, "bob")
    g = qs.pop_next(site.gpus.devices)
    assert g.id == a.id and qs.requeue(a.id)
    assert qs.listing()["requests"][0]["id"] == a.id  # first again: its arrival was kept
    g = qs.pop_next(site.gpus.devices)
    clock.advance(minutes=10)
    assert qs.recover(stale_seconds=300) == [g.id] and qs.get(g.id).state == "queued"


def test_the_org_cap_is_respected_with_granted_requests_counted(qs, site, clock, engine):
    site_caps = {k: o.gpu_limit for k, o in site.organizations.items()}
    assert site_caps["gist-ai"] == 6
    for i in range(4):
        hold(engine, f"GPU-h{i}", user=f"u{i}", org="gist-ai")
    put(qs, clock, "alice", model="A100")
    put(qs, clock, "bob", model="A100")
    put(qs, clock, "carol", org="cnuh", model="A100")
    assert qs.pop_next(site.gpus.devices).entry.user == "alice"  # 5 of 6
    assert qs.pop_next(site.gpus.devices).entry.user == "bob"  # 6 of 6
    assert qs.pop_next(site.gpus.devices) is None  # carol's A100: none left; nobody over the cap


def test_two_concurrent_poppers_never_hand_out_a_request_or_device_twice(db_url, site, clock, engine):
    a, b = QueueStore(db.make_engine(db_url), site, clock), QueueStore(db.make_engine(db_url), site, clock)
    users = ["alice", "bob", "carol", "dana"]
    for i in range(12):
        user = users[i % 4]
        org = {"alice": "gist-ai", "bob": "gist-ai", "carol": "cnuh", "dana": "academy"}[user]
        a.enqueue(f"{user}/s{i}", user, f"s{i}", org, 1, None, {"i": i})
        clock.advance(seconds=1)
    grants, errors = [], []
    start = threading.Barrier(2)

    def pop(store):
        start.wait()
        try:
            while (g := store.pop_next(site.gpus.devices)) is not None:
                grants.append(g)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=pop, args=(s,)) for s in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    ids = [g.id for g in grants]
    devices = [d for g in grants for d in g.devices]
    assert len(grants) == 6 and len(set(ids)) == 6 and sorted(devices) == sorted(d.uuid for d in site.gpus.devices)
    assert {e.id for e in a.entries(("granted",))} == set(ids)
    a.engine.dispose()
    b.engine.dispose()


TUESDAY_1330 = MONDAY + timedelta(days=1, hours=3, minutes=30)  # Tue 13:30 Seoul: ml101's window is open


def test_during_a_class_window_the_reserved_gpus_go_only_to_the_course(qs, site, clock, engine):
    clock.now = TUESDAY_1330
    for i in range(2):  # the two unreserved H100s are busy
        hold(engine, f"GPU-h{i}", user=f"u{i}", org="cnuh")
    outsider = put(qs, clock, "alice", minutes=5)
    student = qs.enqueue("erin/", "erin", "", "academy", 1, "H100", {"gpus": 1}, courses=["ml101"])
    g = qs.pop_next(site.gpus.devices)
    assert (g.id, g.devices) == (student.id, ("GPU-h2",))  # its window's device, though alice came first
    assert qs.pop_next(site.gpus.devices) is None  # GPU-h3 is reserved too: not for alice
    assert qs.get(outsider.id).state == "queued"


def test_outside_windows_others_get_the_devices_no_window_needs_soon_first(qs, site, clock, engine):
    clock.now = TUESDAY_1330 - timedelta(hours=2)  # Tue 11:30, the window opens at 13:00
    put(qs, clock, "alice", gpus=4)
    g = qs.pop_next(site.gpus.devices)
    assert g.devices == ("GPU-h0", "GPU-h1", "GPU-h2", "GPU-h3")  # all needed: the reserved ones last
    put(qs, clock, "carol", org="cnuh")
    qs.cancel(g.id)
    assert qs.pop_next(site.gpus.devices).devices == ("GPU-h0",)


def test_migration_0300_downgrades_and_upgrades_again(engine):
    from alembic import command
    from sqlalchemy import inspect

    def run(revision, fn):
        with engine.connect() as conn, conn.begin():
            cfg = db.alembic_config()
            cfg.attributes["connection"] = conn
            fn(cfg, revision)

    run("0200", command.downgrade)
    assert not {"gpuhub_queue", "gpuhub_queue_wait_buckets"} & set(inspect(engine).get_table_names())
    assert db.current_revision(engine) == "0200"
    run("head", command.upgrade)
    assert {"gpuhub_queue", "gpuhub_queue_wait_totals"} <= set(inspect(engine).get_table_names())
