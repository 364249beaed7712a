"""Budget warnings, grace and stops; the documented overage bound, by time travel."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from quotakit import make_site

from quota import budget
from quota.budget import RunningServer, evaluate
from quota.policy import AllocationRequest, Decision, Holding, Snapshot, decide
from quota.store import QuotaRefused

T0 = datetime(2026, 11, 10, 3, 0, tzinfo=UTC)


def test_warnings_due_once_each_and_in_order():
    v = evaluate("lab", 100, 81 * 3600, [], T0)
    assert v.warnings_due == (0.8,) and not v.over_budget and "81.00 of 100" in v.message
    v = evaluate("lab", 100, 96 * 3600, [], T0, announced={0.8})
    assert v.warnings_due == (0.95,)
    v = evaluate("lab", 100, 100 * 3600, [], T0, announced={0.8, 0.95})
    assert v.warnings_due == (1.0,) and v.over_budget and v.stop == ()  # nothing running, nothing to stop
    assert evaluate("lab", 100, 50 * 3600, [], T0).warnings_due == ()


def test_grace_then_stop_only_gpu_servers():
    running = [RunningServer("a/", "a", 2, 1.0), RunningServer("b/", "b", 0, 0.0)]  # rate 2 GPU-s per s
    v = evaluate("lab", 1, 3600 + 2 * 299, running, T0, grace_seconds=300)
    assert v.over_budget and v.stop == () and v.stop_due_at == T0 + timedelta(seconds=1)
    assert v.over_since == T0 - timedelta(seconds=299)
    v = evaluate("lab", 1, 3600 + 2 * 300, running, T0, grace_seconds=300)
    assert v.stop == ("a/",) and "being stopped" in v.message


def test_admission_note_and_zero_budget():
    assert "85 %" in budget.admission_note("lab", 100, 85 * 3600, (0.8, 0.95))
    assert budget.admission_note("lab", 100, 10 * 3600, (0.8, 0.95)) is None
    v = evaluate("lab", 0, 10, [RunningServer("a/", "a", 1, 1.0)], T0, grace_seconds=0)
    assert v.over_budget and v.stop == ("a/",)


def test_site_bound_formula():
    site = make_site()  # lab-c: 4 GPUs, max weight 1.0, E 30 s, G 300 s, stop 5 + 5 s
    assert budget.site_overage_bound(site, "lab-c") == 4 * 1.0 * (30 + 300 + 10)


class Sim:
    """Continuous-time model of one org: admissions by the real policy, an enforcer every E s."""

    def __init__(self, site, org):
        self.site, self.org = site, org
        self.servers = {}  # key -> [start, end or None, gpus, weight, devices]

    def used(self, t):
        return sum(
            g * w * ((e if e is not None and e < t else t) - s).total_seconds()
            for s, e, g, w, _ in self.servers.values()
            if s < t
        )

    def running(self, t):
        return {k: v for k, v in self.servers.items() if v[1] is None or v[1] > t}

    def try_start(self, t, key, gpus):
        holdings = tuple(Holding(d, k, k, self.org, "H100") for k, v in self.running(t).items() for d in v[4])
        out = decide(self.site, AllocationRequest(key, "", self.org, "python", gpus), Snapshot(holdings, self.used(t)))
        if isinstance(out, Decision):
            self.servers[key] = [t, None, gpus, out.weight, out.devices]


@settings(max_examples=100, deadline=None)
@given(
    E=st.floats(5, 120),
    G=st.floats(0, 600),
    S=st.floats(0, 30),
    phase=st.floats(0, 1),
    k=st.integers(1, 4),
    budget_h=st.floats(0.05, 1),
    attempts=st.lists(st.tuples(st.floats(0, 2 * 3600), st.integers(1, 2)), min_size=1, max_size=12),
)
def test_overage_never_exceeds_the_documented_bound(E, G, S, phase, k, budget_h, attempts):
    org = {
        "sim": {
            "members": [f"u{i}" for i in range(12)],
            "gpu_limit": k,
            "gpu_hours_per_month": budget_h,
            "max_gpus_per_server": 2,
        }
    }
    site = make_site(
        organizations=org, quota={"enforce_interval_seconds": E, "grace_seconds": G, "min_remaining_gpu_hours": 0.01}
    )
    sim = Sim(site, "sim")
    starts = sorted((T0 + timedelta(seconds=a), f"u{i}", g) for i, (a, g) in enumerate(attempts))
    tick = T0 + timedelta(seconds=phase * E)
    while starts or any(v[1] is None for v in sim.servers.values()):
        while starts and starts[0][0] <= tick:
            t, key, gpus = starts.pop(0)
            sim.try_start(t, key, gpus)
        running = [RunningServer(k_, k_, v[2], v[3]) for k_, v in sim.running(tick).items()]
        v = evaluate("sim", budget_h, sim.used(tick), running, tick, grace_seconds=G)
        for key_ in v.stop:
            if sim.servers[key_][1] is None:
                sim.servers[key_][1] = tick + timedelta(seconds=S)  # the stop completes S later
        tick += timedelta(seconds=E)
    overage = sim.used(tick + timedelta(days=1)) - budget_h * 3600
    bound = budget.overage_bound_gpu_seconds(k, 1.0, E, G, S)
    assert overage <= bound + 1e-6


def test_store_time_travel_enforcement_within_bound(store, clock, site):
    """lab-c: 1 GPU-hour budget, 4 H100s running; enforcer every 30 s, stops take 10 s."""
    E, S, G = 30, 10, site.quota.grace_seconds
    for i in range(2):
        store.allocate(AllocationRequest("dave" if i == 0 else "dave2", f"s{i}", "lab-c", "python", 2, "H100"))
    pending, announced = {}, []
    for _ in range(400):
        now = clock.advance(E)
        for key, at in list(pending.items()):
            if at <= now:
                store.release(key, at, "budget-exhausted")
                del pending[key]
        store.heartbeat(now)
        running = [
            RunningServer(r["server_key"], r["user"], r["gpus"], r["weight"])
            for r in store.open_intervals()
            if r["org"] == "lab-c" and r["server_key"] not in pending
        ]
        v = evaluate(
            "lab-c",
            1,
            store.org_usage("lab-c"),
            running,
            now,
            announced=store.announced_warnings("lab-c", now),
            grace_seconds=G,
        )
        for f in v.warnings_due:
            assert store.announce_warning("lab-c", f, now, v.message)
            announced.append(f)
        for key in v.stop:
            pending[key] = now + timedelta(seconds=S)
        if not store.open_intervals() and not pending:
            break
    overage = store.org_usage("lab-c") - 3600
    assert announced == [0.8, 0.95, 1.0]
    assert 0 < overage <= budget.site_overage_bound(site, "lab-c", stop_seconds=S)
    with pytest.raises(QuotaRefused) as e:
        store.allocate(AllocationRequest("dave", "again", "lab-c", "python", 1))
    assert e.value.rule == "budget-exhausted" and "of 1 weighted GPU-hours" in e.value.message
