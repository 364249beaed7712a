"""QuotaStore against real SQLite and PostgreSQL: allocation, release, ledger, races, outages."""

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from quotakit import make_site

from quota import db
from quota.policy import AllocationRequest
from quota.reconcile import Adopt
from quota.store import QuotaRefused, QuotaStore, QuotaUnavailable


def req(user="alice", org="lab-a", gpus=1, server="", **kw):
    return AllocationRequest(user, server, org, kw.pop("image", "python"), gpus, **kw)


def test_allocate_release_roundtrip_and_idempotent(store, clock):
    g = store.allocate(req(gpus=2))
    assert g.server_key == "alice/" and g.model == "A100" and g.weight == 0.5 and len(g.devices) == 2
    assert [h["device_uuid"] for h in store.holdings()] == sorted(g.devices)
    [iv] = store.open_intervals()
    assert (iv["id"], iv["gpus"], iv["device_uuids"], iv["started_at"]) == (
        g.interval_id,
        2,
        ",".join(g.devices),
        clock.now,
    )
    clock.advance(90)
    closed = store.release("alice/", reason="stopped")
    assert closed["ended_at"] == clock.now and closed["end_reason"] == "stopped"
    assert store.release("alice/", reason="stopped") is None  # idempotent
    assert store.holdings() == [] and store.open_intervals() == []
    # the devices are free again and the same server can start again
    assert store.allocate(req(gpus=2)).devices == g.devices


def test_cpu_only_servers_are_visible_and_free(store, clock):
    g = store.allocate(req(user="erin", org=None, gpus=0, image="cpu"))
    assert g.devices == [] and g.model is None and g.weight == 0.0
    clock.advance(3600)
    status = store.status()
    assert [s["server_key"] for s in status["servers_without_org"]] == ["erin/"]
    assert store.usage_by_org() == {}
    store.release("erin/")


def test_refusals_raise_and_are_counted(store):
    store.allocate(req(user="carol", org="lab-b"))
    store.allocate(req(user="bob", org="lab-b", server="x"))
    with pytest.raises(QuotaRefused) as e:
        store.allocate(req(user="carol", org="lab-b", server="2"))
    assert (e.value.status, e.value.rule) == (429, "org-gpu-limit")
    assert "lab-b has 2 of 2 GPUs in use" in str(e.value)
    with pytest.raises(QuotaRefused, match="already has an open allocation"):
        store.allocate(req(user="carol", org="lab-b"))
    store.record_refusal(None, "unknown-option")
    assert store.refusal_counts() == {
        ("lab-b", "org-gpu-limit"): 1,
        ("lab-b", "server-already-running"): 1,
        ("", "unknown-option"): 1,
    }


def test_idp_groups_grant_membership(store):
    # issue 11: one request type (the duck-typed bridge for the spawner's own type is gone); groups travel in it
    r = AllocationRequest("erin", "", "lab-b", "python", 1, "H100")
    with pytest.raises(QuotaRefused, match="not a member"):
        store.allocate(r)
    assert store.allocate(replace(r, groups=frozenset({"lab-b-staff"}))).devices == ["GPU-h100-0"]


def test_usage_includes_open_intervals_and_splits_at_month_end(store, clock):
    clock.now = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)  # 23:00 in Seoul, one hour before December
    store.allocate(req(gpus=2, gpu_model="H100"))
    clock.advance(1800)
    assert store.org_usage("lab-a") == pytest.approx(2 * 1.0 * 1800)
    clock.advance(5400)  # now 01:00 KST 1 December
    assert store.org_usage("lab-a") == pytest.approx(2 * 3600)  # December so far
    assert store.org_usage("lab-a", month_of=datetime(2026, 11, 15, tzinfo=UTC)) == pytest.approx(2 * 3600)
    org = store.status()["orgs"]["lab-a"]
    assert (org["gpus_in_use"], org["gpu_limit"], org["used_gpu_hours"], org["remaining_gpu_hours"]) == (
        2,
        3,
        2.0,
        98.0,
    )


def test_heartbeat_close_at_and_time_roundtrip(store, clock):
    clock.now = datetime(2026, 11, 10, 3, 0, 0, 123456, tzinfo=UTC)
    store.allocate(req())
    store.allocate(req(user="bob", server="nb"))
    later = clock.advance(61.000001)
    assert store.heartbeat() == 2
    assert store.heartbeat(server_keys=["bob/nb"]) == 1
    rows = {r["server_key"]: r for r in store.open_intervals()}
    assert rows["alice/"]["heartbeat_at"] == later and rows["alice/"]["started_at"].microsecond == 123456
    assert rows["alice/"]["started_at"].tzinfo is not None
    # the reconciler closes at Docker's finish time; a time before the start is clamped to the start
    closed = store.release("alice/", clock.now - timedelta(days=1), "container-exited")
    assert closed["ended_at"] == closed["started_at"] and closed["end_reason"] == "container-exited"
    assert [r["server_key"] for r in store.open_intervals()] == ["bob/nb"]


@pytest.mark.parametrize("closed_as", ["stopped", "container-exited"])
def test_a_culled_server_gets_its_reason_whoever_closed_its_interval(store, clock, closed_as):
    """The culler's stop closes the interval through the spawner ("stopped") or, when the reconciler sees the
    container gone first, as "container-exited" (seen in CI); either way the ledger ends up saying why."""
    g = store.allocate(req())
    assert store.set_end_reason(g.interval_id, "http-idle") == "open"
    clock.advance(30)
    closed = store.release("alice/", reason=closed_as)
    assert store.set_end_reason(g.interval_id, "http-idle") == "set"
    assert store.set_end_reason(g.interval_id, "http-idle") == "set"  # asked again: unchanged
    [row] = [r for r in store.recently_closed(clock.now - timedelta(hours=1)) if r["id"] == g.interval_id]
    assert row["end_reason"] == "http-idle" and row["ended_at"] == closed["ended_at"]
    assert store.set_end_reason(g.interval_id, "gpu-idle") == "other"  # a second culler does not rename it


def test_a_server_that_closed_for_another_reason_keeps_it(store, clock):
    g = store.allocate(req())
    store.release("alice/", reason="container-missing")
    assert store.set_end_reason(g.interval_id, "gpu-idle") == "other"
    assert store.recently_closed(clock.now - timedelta(hours=1))[0]["end_reason"] == "container-missing"


def test_status_lists_devices_and_holders(store):
    store.allocate(req(gpu_model="H100"))
    st = store.status()
    holders = {d["uuid"]: d["holder"] for d in st["devices"]}
    assert holders["GPU-h100-0"] == {"server_key": "alice/", "user": "alice", "org": "lab-a"}
    assert sum(h is None for h in holders.values()) == 7
    assert st["period"] == "2026-11" and st["orgs"]["lab-a"]["running_servers"][0]["devices"] == ["GPU-h100-0"]


def test_warnings_are_announced_once_and_uids_never_reused(store, clock):
    assert store.announce_warning("lab-a", 0.8, clock.now, "80 %") is True
    assert store.announce_warning("lab-a", 0.8, clock.now, "80 %") is False
    assert store.announced_warnings("lab-a", clock.now) == {0.8}
    assert store.announced_warnings("lab-a", clock.now + timedelta(days=30)) == frozenset()
    a, b = store.uid_for("alice"), store.uid_for("bob")
    assert (a, b, store.uid_for("alice")) == (20000, 20001, 20000)


def test_adopt_records_a_running_container_and_refuses_conflicts(store, clock):
    a = Adopt("jupyter-erin", "erin", "", "lab-b", "python", ("GPU-h100-3",), "H100", clock.now - timedelta(hours=1))
    g = store.adopt(a)
    assert g.devices == ["GPU-h100-3"] and g.started_at == clock.now - timedelta(hours=1)
    with pytest.raises(QuotaRefused, match="already recorded"):
        store.adopt(Adopt("other", "zed", "", "lab-b", "python", ("GPU-h100-3",), "H100", clock.now))
    assert store.org_usage("lab-b") == pytest.approx(3600)


@pytest.mark.parametrize(
    "bad_url", ["postgresql+psycopg://nobody@127.0.0.1:1/none", "sqlite:////nonexistent-dir/for/sure/hub.sqlite"]
)
def test_unreachable_database_fails_closed(bad_url, site, clock):
    s = QuotaStore(db.make_engine(bad_url), site, clock)
    with pytest.raises(QuotaUnavailable, match="unavailable .* cannot be started"):
        s.allocate(req())
    with pytest.raises(QuotaUnavailable):
        s.status()


RACE = [
    # caps per org, devices, expected grants: caps below the devices -> every org reaches its cap exactly
    ({"ra": 2, "rb": 3, "rc": 2}, 7, {"org-gpu-limit", "no-free-device"}),
    # caps above the devices -> exactly all 8 devices, the rest refused by cap or lack of devices
    ({"ra": 4, "rb": 4, "rc": 4}, 8, {"org-gpu-limit", "no-free-device"}),
]  # (with no releases, "every org reaches its cap" and "every device is taken" follow in both cases)


@pytest.mark.parametrize("caps,expected,rules", RACE, ids=["caps-bind", "devices-bind"])
def test_sixty_concurrent_spawns_never_share_a_device(db_url, engine, clock, caps, expected, rules):
    users = {org: [f"{org}-u{i}" for i in range(20)] for org in caps}
    site = make_site(
        organizations={
            org: {"members": users[org], "gpu_limit": cap, "gpu_hours_per_month": 1000, "max_gpus_per_server": 2}
            for org, cap in caps.items()
        },
        gpus={**make_site().raw["gpus"], "max_gpus_per_user": 8},
    )
    # three stores on three engines, as if the hub, the quota service and the CLI raced each other
    engines = [engine] + [db.make_engine(db_url) for _ in range(2)]
    stores = [QuotaStore(e, site, clock) for e in engines]
    store = stores[0]
    barrier = threading.Barrier(60)
    grants, refusals, errors = [], [], []
    lock = threading.Lock()

    def spawn(i, org, user):
        barrier.wait()
        try:
            # alternate models so concurrent grants pick different devices: only the lock keeps the caps
            g = stores[i % 3].allocate(req(user=user, org=org, gpu_model=("H100", "A100")[i % 2]))
            with lock:
                grants.append((org, g))
        except QuotaRefused as e:
            with lock:
                refusals.append(e)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [
        threading.Thread(target=spawn, args=(i, org, u))
        for i, (org, u) in enumerate((o, u) for o in caps for u in users[o])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert len(grants) == expected and len(refusals) == 60 - expected
    uuids = [d for _, g in grants for d in g.devices]
    assert len(uuids) == len(set(uuids)) == expected
    for org, cap in caps.items():
        n = sum(1 for o, _ in grants if o == org)
        assert n <= cap and (n == cap or expected == 8), (org, n, cap)
    assert {e.rule for e in refusals} <= rules and all(e.message for e in refusals)
    assert len(store.holdings()) == expected and len(store.open_intervals()) == expected
    assert sum(store.refusal_counts().values()) == 60 - expected
    for e in engines[1:]:
        e.dispose()


def test_refusal_counter_speaks_the_rule_table(store, engine):
    """One vocabulary: the counter holds rule ids of quota.policy.Rule, a made-up org is never a label, the
    organization a request was for is, and ids an older release stored count under the id that replaced them."""
    from sqlalchemy import insert

    from quota.models import spawn_refusals

    with pytest.raises(QuotaRefused) as e:
        store.allocate(req(org="no-such-org"))
    assert (e.value.status, e.value.rule) == (400, "unknown-org")
    with pytest.raises(QuotaRefused) as e:
        store.allocate(req(org=None, gpus=3))  # alice's only organization, lab-a, allows 2 per server
    assert (e.value.status, e.value.rule) == (400, "max-gpus-per-server")
    assert "lab-a allows at most 2" in e.value.message
    with pytest.raises(ValueError, match="not an admission rule id"):
        store.record_refusal(None, "gpu-limit")
    with engine.begin() as conn:
        conn.execute(
            insert(spawn_refusals),
            [
                dict(org="lab-a", reason="unknown-gpu-model", count=2),
                dict(org="lab-a", reason="cpu-only-image", count=1),
            ],
        )
    store.record_refusal("lab-a", "unknown-model")
    assert store.refusal_counts() == {
        ("", "unknown-org"): 1,
        ("lab-a", "max-gpus-per-server"): 1,
        ("lab-a", "unknown-model"): 3,
        ("lab-a", "image-cpu-only"): 1,
    }
