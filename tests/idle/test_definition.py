"""quota.idle by time travel: windows, the server clock, warn-then-cull, exemptions, timeouts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota import idle
from quota.idle import CLEAR, CULL, WARN, Planner, ServerView, WindowLog
from tests.quota.quotakit import make_site

W = 30.0
T0 = 1_800_000_000.0  # a multiple of 30


def feed(log: WindowLog, start: float, seconds: int, util) -> float:
    """One sample a second; ``util(t)`` gives the utilisation. Returns the end time."""
    for i in range(seconds):
        log.observe(start + i, util(start + i))
    return start + seconds


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("zero", 600.0),  # 20 complete zero windows
        ("at-threshold", 600.0),  # 5 % is still idle (<=)
        ("one-busy-second-per-minute", 0.0),  # 30 % in one window per minute: never more than 30 s
        ("busy-now", 0.0),  # a busy sample in the current window resets at once
    ],
)
def test_idle_seconds_of_a_device(pattern, expected):
    log = WindowLog(W, 0.05)
    util = {
        "zero": lambda t: 0.0,
        "at-threshold": lambda t: 0.05,
        "one-busy-second-per-minute": lambda t: 0.3 if int(t) % 60 == 0 else 0.0,
        "busy-now": lambda t: 0.9 if t >= T0 + 605 else 0.0,
    }[pattern]
    end = feed(log, T0, 610, util)
    got = log.idle_seconds(end)
    if pattern == "one-busy-second-per-minute":
        assert got <= W
    else:
        assert got == expected


def test_idle_clock_starts_within_one_window_of_the_load_stopping_and_resets_when_it_resumes():
    log = WindowLog(W, 0.05)
    t = feed(log, T0, 300, lambda t: 0.8)
    stop = t
    t = feed(log, t, 2 * int(W) + 1, lambda t: 0.0)
    assert log.idle_seconds(t) > 0 and t - log.idle_seconds(t) - stop <= W
    t = feed(log, t, 3, lambda t: 0.5)
    assert log.idle_seconds(t) == 0.0


def test_missing_data_is_never_idle():
    log = WindowLog(W, 0.05)
    assert log.idle_seconds(T0) is None
    t = feed(log, T0, 300, lambda t: 0.0)
    assert log.idle_seconds(t + 600) is None  # the exporter stopped sampling 10 minutes ago
    t2 = feed(log, t + 600, 61, lambda t: 0.0)  # back: the gap ends the run, only the new windows count
    assert log.idle_seconds(t2) <= 60.0
    log.observe(t2 + 1, None)  # NVML gave no number: nothing invented
    assert log.idle_seconds(t2 + 1) <= 60.0


def view(key="alice/", idle_s=0.0, busy=False, timeout=1800.0, started=T0 - 10_000, exempt=None, devices=("G0",)):
    return ServerView(
        key=key,
        user=key.split("/")[0],
        org="gist-ai",
        devices=devices,
        started_at=started,
        device_idle=dict.fromkeys(devices, idle_s),
        kernels_busy=busy,
        timeout_seconds=timeout,
        exempt_until=exempt,
    )


def run(planner, views_at):
    """views_at(now) -> [ServerView]; one tick a window for an hour. Returns {time offset: verdicts}."""
    out = {}
    for k in range(121):
        now = T0 + k * W
        out[k * W] = planner.tick(views_at(now), now)
    return out


def test_warn_then_cull_at_the_timeout():
    planner = Planner(warn_seconds=600.0)
    log = run(planner, lambda now: [view(idle_s=now - T0)])  # idle from T0 on
    actions = {t: v[0].action for t, v in log.items() if v[0].action}
    assert actions == {1200.0: WARN, 1800.0: CULL, **{t: CULL for t in actions if t > 1800}}
    warn = log[1200.0][0]
    assert warn.cull_at == T0 + 1800.0 and warn.idle_seconds == 1200.0


@pytest.mark.parametrize("reason", ["kernel-busy", "kernel-unknown", "gpu-blip", "no-data"])
def test_never_culled_when_anything_is_active_or_unknown(reason):
    planner = Planner(warn_seconds=600.0)

    def views(now):
        v = view(idle_s=now - T0)
        if reason == "kernel-busy":  # time.sleep(600) in a cell: busy for the whole hour
            return [view(idle_s=now - T0, busy=True)]
        if reason == "kernel-unknown":
            return [view(idle_s=now - T0, busy=None)]
        if reason == "gpu-blip":  # 30 % in one window per minute
            return [view(idle_s=(now - T0) % 60)]
        return [ServerView(**{**v.__dict__, "device_idle": {"G0": None}})]

    log = run(planner, views)
    assert all(v[0].action is None for v in log.values())


def test_activity_withdraws_the_warning_and_restarts_the_clock():
    planner = Planner(warn_seconds=600.0)
    busy_at = T0 + 1500  # after the warning, before the cull
    log = run(planner, lambda now: [view(idle_s=now - T0 if now < busy_at else now - busy_at)])
    actions = [(t, v[0].action) for t, v in sorted(log.items()) if v[0].action]
    assert actions[:2] == [(1200.0, WARN), (1500.0, CLEAR)]
    assert (2700.0, WARN) in actions and (3300.0, CULL) in actions


def test_the_warning_is_always_up_for_warn_minutes_before_a_cull():
    """Idle far beyond the timeout when the culler first sees it (restart, exemption ending): warn first."""
    planner = Planner(warn_seconds=600.0)
    log = run(planner, lambda now: [view(idle_s=10_000 + now - T0, exempt=T0 + 900)])
    actions = [(t, v[0].action) for t, v in sorted(log.items()) if v[0].action]
    assert actions[0] == (900.0, WARN) and actions[1] == (1500.0, CULL)
    assert log[0.0][0].exempt and log[0.0][0].reason == "exempt"


def test_a_new_holder_does_not_inherit_the_previous_holders_idle_time():
    planner = Planner(warn_seconds=600.0)
    v = planner.tick([view(idle_s=50_000, started=T0 - 60)], T0)[0]
    assert v.idle_seconds == 60 and v.action is None


def test_a_server_is_as_idle_as_its_busiest_gpu():
    v = ServerView(
        key="a/",
        user="a",
        org=None,
        devices=("G0", "G1"),
        started_at=0,
        device_idle={"G0": 900, "G1": 30},
        kernels_busy=False,
        timeout_seconds=60,
    )
    assert idle.server_idle_seconds(v, idle.Clock(), T0) == 30


def test_timeouts_per_org_and_course():
    site = make_site(
        organizations={
            "gist-ai": {
                "members": ["alice"],
                "gpu_limit": 2,
                "idle_timeout_minutes": 90,
                "idle_http_timeout_minutes": 30,
            },
            "kaist-nlp": {"members": ["bob"], "gpu_limit": 2},
        },
        idle={"timeout_minutes": 20, "http_timeout_minutes": 60},
        courses={"ml101": {"org": "kaist-nlp", "students": ["erin"], "idle_timeout_minutes": 5}},
    )
    assert idle.gpu_timeout_seconds(site, "alice", "gist-ai") == 5400
    assert idle.http_timeout_seconds(site, "alice", "gist-ai") == 1800
    assert idle.gpu_timeout_seconds(site, "bob", "kaist-nlp") == 1200
    assert idle.gpu_timeout_seconds(site, "erin", "kaist-nlp") == 300
    assert idle.gpu_timeout_seconds(site, "nobody", None) == 1200
    assert sorted(idle.all_http_timeouts(site)) == [1800, 3600]


def test_long_timeouts_are_reachable():
    """An org may set hours: the window log counts runs of any length in O(1)."""
    log = WindowLog(W, 0.05)
    t = feed(log, T0, 8 * 3600, lambda t: 0.0)
    assert log.idle_seconds(t) == 8 * 3600  # t is a window boundary: all 960 windows are complete


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.sampled_from([None, 0.0, 0.05, 0.06, 0.5])), max_size=60),
    st.integers(0, 200),
)
def test_window_log_agrees_with_the_definition_on_all_windows(samples, later):
    log = WindowLog(10.0, 0.05, keep=1000)
    t = T0
    for dt, util in samples:
        t += dt
        log.observe(t, util)
    now = t + later
    assert log.idle_seconds(now) == idle.idle_seconds(log.windows(), now, 10.0, 0.05)
