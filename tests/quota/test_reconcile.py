"""Reconcile plans: Docker's containers vs the ledger's open intervals."""

from datetime import UTC, datetime, timedelta

import pytest

from quota.reconcile import Adopt, Close, ContainerView, IntervalView, Plan, Stop, plan

UTC = UTC
NOW = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def c(user, server="", running=True, gpus="", started=NOW - 2 * HOUR, finished=None, hub="h1", name=None, **labels):
    lb = {
        "gpuhub.managed": "1",
        "gpuhub.hub": hub,
        "gpuhub.user": user,
        "gpuhub.server": server,
        "gpuhub.org": labels.get("org", "lab-a"),
        "gpuhub.image": "python",
        "gpuhub.gpus": gpus,
        "gpuhub.gpu-model": labels.get("model", "H100" if gpus else ""),
    }
    return ContainerView(name or f"jupyter-{user}-{server}", lb, running, started, finished)


def iv(i, key, started=NOW - 2 * HOUR, hb=NOW - timedelta(minutes=1), devices=(), ended=None):
    return IntervalView(i, key, started, hb, tuple(devices), ended)


def test_healthy_state_gives_an_empty_plan():
    p = plan([c("alice", gpus="G0,G1")], [iv(1, "alice/", devices=("G1", "G0"))], NOW)
    assert p == Plan() and p.empty


def test_exited_container_closes_at_dockers_finish_time():
    died = NOW - 30 * timedelta(minutes=1)
    p = plan([c("alice", running=False, finished=died)], [iv(1, "alice/")], NOW)
    assert p.close == (Close(1, "alice/", died, "container-exited"),) and p.stop == ()


def test_missing_container_closes_at_last_heartbeat_after_the_pending_grace():
    hb = NOW - timedelta(minutes=7)
    p = plan([], [iv(1, "alice/", hb=hb), iv(2, "bob/", started=NOW - timedelta(seconds=20), hb=None)], NOW)
    assert p.close == (Close(1, "alice/", hb, "container-missing"),)  # bob's spawn is still creating its container
    # an old exited container of an earlier run does not count as this interval's container
    old = c("alice", running=False, started=NOW - 9 * HOUR, finished=NOW - 8 * HOUR)
    assert plan([old], [iv(1, "alice/", hb=hb)], NOW).close == (Close(1, "alice/", hb, "container-missing"),)


def test_a_spawn_the_hub_still_calls_pending_keeps_its_devices_up_to_the_start_limit():
    """A class waiting for start slots: allocated, no container yet, older than the short grace."""
    waiting = iv(1, "alice/", started=NOW - timedelta(seconds=200), hb=None, devices=("G0",))
    kw = dict(pending_grace_seconds=120, start_limit_seconds=360)
    assert plan([], [waiting], NOW, starting={"alice/"}, **kw).close == ()
    assert plan([], [waiting], NOW, **kw).close == (Close(1, "alice/", waiting.started_at, "container-missing"),)
    stuck = iv(1, "alice/", started=NOW - timedelta(seconds=400), hb=None)  # pending past the hub's own timeout
    assert plan([], [stuck], NOW, starting={"alice/"}, **kw).close == (
        Close(1, "alice/", stuck.started_at, "container-missing"),
    )


def test_unknown_running_container_is_stopped_by_default():
    p = plan([c("mallory", gpus="G3"), c("ghost", running=False, finished=NOW)], [], NOW)
    assert p.stop == (Stop("jupyter-mallory-", "mallory/", "unknown-container"),) and p.close == ()


def test_adopt_policy_opens_an_interval_from_labels_unless_it_conflicts():
    started = NOW - 3 * HOUR
    p = plan([c("erin", "nb", gpus="G2", started=started, org="lab-b")], [], NOW, unknown="adopt")
    assert p.adopt == (Adopt("jupyter-erin-nb", "erin", "nb", "lab-b", "python", ("G2",), "H100", started),)
    p = plan([c("erin", gpus="G2")], [], NOW, unknown="adopt", held_devices=["G2"])
    assert p.stop == (Stop("jupyter-erin-", "erin/", "devices-held-elsewhere"),) and p.adopt == ()
    # already released (the spawner is stopping it): do not bill it twice
    closed = iv(9, "erin/", started=NOW - 4 * HOUR, ended=NOW - timedelta(seconds=5))
    p = plan([c("erin", gpus="G2")], [], NOW, unknown="adopt", recently_closed=[closed])
    assert p.stop == (Stop("jupyter-erin-", "erin/", "already-released"),)
    two = [c("erin", gpus="G2", name="a"), c("erin", gpus="G3", name="b")]
    p = plan(two, [], NOW, unknown="adopt")
    assert [a.container for a in p.adopt] == ["a"] and p.stop == (Stop("b", "erin/", "duplicate-container"),)


def test_device_mismatch_is_stopped_and_closed():
    p = plan([c("alice", gpus="G0,G5")], [iv(1, "alice/", devices=("G0",))], NOW)
    assert p.stop == (Stop("jupyter-alice-", "alice/", "device-mismatch"),)
    assert p.close == (Close(1, "alice/", NOW, "device-mismatch"),) and p.notes


def test_other_hubs_and_unmanaged_containers_are_ignored():
    foreign = c("alice", hub="other")
    unmanaged = ContainerView("postgres", {}, True, NOW)
    assert plan([foreign, unmanaged], [], NOW, hub_id="h1").empty
    with pytest.raises(ValueError, match="stop' or 'adopt"):
        plan([], [], NOW, unknown="ignore")


def test_plan_applies_to_the_store(store, clock):
    from quota.policy import AllocationRequest

    g = store.allocate(AllocationRequest("alice", "", "lab-a", "python", 1, "H100"))
    clock.advance(600)
    rows = [IntervalView.from_row(r) for r in store.open_intervals()]
    died = clock.now - timedelta(seconds=100)
    adopted = c("carol", gpus="GPU-h100-3", org="lab-b", started=clock.now - timedelta(seconds=50))
    p = plan(
        [c("alice", running=False, finished=died, gpus=g.devices[0]), adopted],
        rows,
        clock.now,
        unknown="adopt",
        held_devices=[h["device_uuid"] for h in store.holdings()],
    )
    out = store.apply_plan(p)
    assert [r["ended_at"] for r in out["closed"]] == [died] and len(out["adopted"]) == 1
    assert [r["server_key"] for r in store.open_intervals()] == ["carol/"]
    assert store.org_usage("lab-a") == pytest.approx(500)
