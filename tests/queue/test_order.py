"""The queue's order, pure: Slurm's classic fair-share factor, first-come within an org, no head-of-line blocking,
never starving (hypothesis), and long-run delivered shares that approach the configured shares."""

from __future__ import annotations

import heapq
import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from quota import queue_order as order

H = 168 * 3600.0
A = 3600.0
LIMITS = order.Limits({"a": 99, "b": 99, "c": 99}, 99)


def req(i, org, at, gpus=1, model="H100", user=None):
    return order.Request(i, org, user or f"u{i}", gpus, model, at)


def devs(h=0, a=0):
    return [order.Device(f"GPU-h{i}", "H100") for i in range(h)] + [order.Device(f"GPU-a{i}", "A100") for i in range(a)]


def test_fairshare_factor_is_slurms_classic_formula():
    f = order.fairshare_factors({"a": 50.0, "b": 50.0}, {"a": 0.5, "b": 0.25, "c": 0.25})
    assert f["c"] == 1.0  # used nothing
    assert math.isclose(f["a"], 2 ** (-0.5 / 0.5)) and math.isclose(f["b"], 2 ** (-0.5 / 0.25))
    assert order.fairshare_factors({}, {"a": 1.0}) == {"a": 1.0}


def test_decayed_usage_halves_per_half_life_and_counts_running_servers_to_now():
    one_hour = [order.Span("a", 2, 0.5, 0.0, 3600.0)]
    at_end = order.decayed_usage(one_hour, 3600.0, H)["a"]
    assert math.isclose(at_end, 3600.0, rel_tol=1e-2)  # 2 x 0.5 x 1 h, barely decayed
    assert math.isclose(order.decayed_usage(one_hour, 3600.0 + H, H)["a"], at_end / 2)
    running = order.decayed_usage([order.Span("a", 1, 1.0, 0.0, None)], 7200.0, H)["a"]
    assert math.isclose(running, 7200.0, rel_tol=1e-2)


def test_first_come_within_an_org_and_fair_share_across():
    rs = [req(1, "a", 0.0), req(2, "a", 10.0), req(3, "b", 20.0)]
    line = order.ranked(rs, {"a": 0.25, "b": 1.0}, 30.0, A)
    assert [r.id for r in line] == [3, 1, 2]


def test_no_head_of_line_blocking_a_later_a100_goes_while_the_head_wants_an_h100():
    rs = [req(1, "a", 0.0, model="H100"), req(2, "b", 100.0, model="A100")]
    c = order.choose(rs, devs(h=0, a=1), [], {"a": 1.0, "b": 0.1}, LIMITS, 200.0, A)
    assert (c.request.id, c.devices, c.passed_over) == (2, ("GPU-a0",), ((1, order.NO_DEVICE),))


def test_caps_pass_a_request_over_and_name_why():
    held = [order.Held("GPU-h0", "a", "u1", "H100")]
    limits = order.Limits({"a": 1, "b": 5}, 5)
    rs = [req(1, "a", 0.0), req(2, "b", 50.0)]
    c = order.choose(rs, devs(h=2)[1:], held, {}, limits, 60.0, A)
    assert c.request.id == 2 and c.passed_over == ((1, order.ORG_LIMIT),)
    assert order.blocker(rs[0], devs(h=2)[1:], held, limits) == order.ORG_LIMIT


def test_a_long_waiting_big_request_holds_its_models_free_devices_back():
    big, small = req(1, "a", 0.0, gpus=4), req(2, "b", 10.0)
    early = order.choose([big, small], devs(h=2), [], {}, LIMITS, A / 2, A)
    assert early.request.id == 2  # not waited long: the small one backfills
    late = order.choose([big, small], devs(h=2), [], {}, LIMITS, A + 1, A)
    assert late is None  # the 2 free H100s pile up for the 4-GPU request


def test_reserved_devices_only_for_the_course():
    rs = [req(1, "a", 0.0), order.Request(2, "b", "erin", 1, "H100", 5.0, ("ml101",))]
    reserved = {"GPU-h0": "ml101"}
    c = order.choose(rs, devs(h=1), [], {"a": 1.0, "b": 0.01}, LIMITS, 10.0, A, reserved)
    assert c.request.id == 2


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 20_000), st.floats(0.001, 1.0)), min_size=2, max_size=40),
    st.floats(0, 30_000),
)
def test_never_overtaken_by_a_request_that_arrived_more_than_the_age_scale_later(reqs, now):
    """The no-starvation bound: whatever the fair-share factors, r ranks above every request that arrived more
    than A after it, so only the finitely many that arrived before arrival(r) + A can ever go first."""
    rs = [req(i, org, at) for i, (org, at, _) in enumerate(reqs)]
    factors = {org: f for org, _, f in reqs}
    now = max(now, max(r.arrived_at for r in rs))
    pos = {r.id: k for k, r in enumerate(order.ranked(rs, factors, now, A))}
    for r in rs:
        for s in rs:
            if s.arrived_at > r.arrived_at + A:
                assert pos[r.id] < pos[s.id]


def run_queue(rates, shares, gpus=8, hours=24 * 60, seed=1, bounded=False):
    """A small event simulation with :func:`order.choose`; returns delivered GPU-hours per org and max wait."""
    rng = random.Random(seed)
    arrivals = []
    for org, rate in rates.items():
        t = 0.0
        while (t := t + rng.expovariate(rate / 3600)) < hours * 3600:
            arrivals.append((t, org, rng.expovariate(1 / 3600)))
    arrivals.sort()
    events = [(t, 1, i) for i, (t, _, _) in enumerate(arrivals)]
    heapq.heapify(events)
    free, queue, held, running = devs(h=gpus), {}, {}, {}
    delivered, waits = dict.fromkeys(rates, 0.0), []
    closed, t_closed = dict.fromkeys(rates, 0.0), 0.0  # decayed usage of ended sessions (decayed_usage is linear)
    while events:
        t, kind, i = heapq.heappop(events)
        at, org, length = arrivals[i]
        closed = {o: u * 2 ** (-(t - t_closed) / H) for o, u in closed.items()}
        t_closed = t
        if kind == 0:
            free += held.pop(i)
            for o, u in order.decayed_usage([running.pop(i)], t, H).items():
                closed[o] += u
        else:
            queue[i] = req(i, org, at)
        for j in [j for j, r in queue.items() if t - r.arrived_at > 2 * A]:  # max wait = 2 A, as in the store
            del queue[j]
        while queue and free:
            now_use = order.decayed_usage(running.values(), t, H)
            f = order.fairshare_factors({o: closed[o] + now_use.get(o, 0.0) for o in closed}, shares)
            c = order.choose(queue.values(), free, [], f, order.Limits(dict.fromkeys(rates, gpus), gpus), t, A)
            if c is None:
                break
            r = queue.pop(c.request.id)
            held[r.id] = [d for d in free if d.uuid in c.devices]
            free = [d for d in free if d.uuid not in c.devices]
            running[r.id] = order.Span(r.org, 1, 1.0, t, t + length)
            delivered[r.org] += length / 3600
            waits.append(t - r.arrived_at)
            heapq.heappush(events, (t + length, 0, r.id))
    return delivered, max(waits), queue


def test_long_run_delivered_shares_approach_configured_shares_under_overload():
    shares = {"a": 0.5, "b": 0.3, "c": 0.2}
    delivered, _, _ = run_queue({"a": 8.0, "b": 5.0, "c": 4.0}, shares, hours=24 * 30)  # each org over its share
    total = sum(delivered.values())
    for org, s in shares.items():
        assert abs(delivered[org] / total - s) < 0.03, (org, delivered[org] / total, s)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 10_000), st.floats(0.5, 3.0), st.floats(0.5, 3.0), st.floats(0.5, 3.0))
def test_never_starves_under_bounded_load(seed, ra, rb, rc):
    """Arrivals at most 9/h on 8 GPUs of 1 h mean sessions (load < 1.2 only in bursts): every request is served,
    none waits more than a day, nothing is left in line."""
    delivered, max_wait, left = run_queue(
        {"a": ra, "b": rb, "c": rc}, {"a": 0.7, "b": 0.2, "c": 0.1}, hours=24 * 5, seed=seed
    )
    assert not left and max_wait < 24 * 3600


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from("abc"),
            st.integers(0, 7200),
            st.sampled_from([1, 2, 4]),
            st.sampled_from(["H100", "A100", None]),
        ),
        min_size=1,
        max_size=25,
    ),
    st.integers(0, 4),
    st.integers(0, 3),
    st.integers(0, 6),
)
def test_no_head_of_line_blocking_property(reqs, free_h, free_a, held_a):
    """Whatever is queued: the request granted is the first in line that can be served, everyone ranked above it
    is blocked by something of its own (model not free, its org's or user's cap, devices held for a long waiter),
    and nothing is granted only when nobody in line can be served with what is free."""
    now = 7200.0
    rs = [req(i, org, float(at), gpus, model) for i, (org, at, gpus, model) in enumerate(reqs)]
    held = [order.Held(f"GPU-x{i}", "a", "ua", "A100") for i in range(held_a)]
    limits = order.Limits({"a": 6, "b": 4, "c": 8}, 99)
    free = devs(h=free_h, a=free_a)
    factors = {"a": 0.3, "b": 0.6, "c": 0.9}
    c = order.choose(rs, free, held, factors, limits, now, A)
    line = order.ranked(rs, factors, now, A)
    stop = line.index(c.request) if c else len(line)
    passed = dict(c.passed_over) if c else {}
    if c:
        assert set(passed) == {r.id for r in line[:stop]}  # all ranked above it were passed over, with a reason
    for k, r in enumerate(line[:stop]):
        own = order.blocker(r, free, held, limits)
        long_waiter_above = any(
            q.model and now - q.arrived_at >= A and order.blocker(q, free, held, limits) == order.NO_DEVICE
            for q in line[:k]
        )
        assert own is not None or long_waiter_above, (r, passed.get(r.id))
    if c is None:
        held_back = any(
            r.model and now - r.arrived_at >= A and order.blocker(r, free, held, limits) == order.NO_DEVICE
            for r in line
        )
        assert held_back or all(order.blocker(r, free, held, limits) is not None for r in line)
    else:
        assert order.blocker(c.request, free, held, limits) is None
        assert len(c.devices) == c.request.gpus and len(set(c.devices)) == c.request.gpus
        assert {d.uuid for d in free if d.model == c.model} >= set(c.devices)
