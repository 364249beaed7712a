"""This month's refusals by rule and idle-allocated GPU-hours (quota.usage_records): the month arithmetic by time
travel (pure), then the rows on real SQLite and PostgreSQL through the store, as the operators' page and
``gpuhub quota status`` read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from gpuhub.core.periods import month_bounds_at
from quota.models import refusal_events
from quota.policy import AllocationRequest
from quota.store import QuotaRefused
from quota.usage_records import (
    IdleReading,
    OpenSpan,
    by_rule,
    idle_hours_by_org,
    month_report,
    plan_spans,
    record_idle,
    refusals_by_org,
)
from tests.clock import Clock

SEOUL_DEC_1 = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # midnight in Asia/Seoul: November ends here


def reading(idle, iid=1, uuid="GPU-h100-0", started=SEOUL_DEC_1 - timedelta(hours=5), org="lab-a"):
    return IdleReading(iid, uuid, f"u{iid}/", f"u{iid}", org, "H100", started, idle)


# ---------------------------------------------------------------- pure


def test_a_continuing_run_extends_its_span_and_a_broken_one_starts_anew():
    clock = Clock(SEOUL_DEC_1 - timedelta(hours=2))
    first = plan_spans({}, [reading(600.0)], clock())
    assert first.close == [] and first.extend == []
    [row] = first.open
    assert (row["started_at"], row["ended_at"]) == (clock.now - timedelta(seconds=600), clock.now)
    span = OpenSpan(7, row["started_at"], row["ended_at"])
    clock.advance(60)
    assert plan_spans({(1, "GPU-h100-0"): span}, [reading(660.0)], clock()).extend == [7]  # same run, a minute on
    # busy in between: idle again for 30 s only, which began after the span's last idle check
    again = plan_spans({(1, "GPU-h100-0"): span}, [reading(30.0)], clock())
    assert again.close == [7] and again.open[0]["started_at"] == clock.now - timedelta(seconds=30)
    for gone in (reading(0.0), reading(None)):  # busy, or no data: the run ends where it was last seen idle
        assert plan_spans({(1, "GPU-h100-0"): span}, [gone], clock()).close == [7]
    assert plan_spans({(1, "GPU-h100-0"): span}, [], clock()).close == [7]  # the server stopped


def test_a_span_never_starts_before_its_server_or_overlaps_the_last_one():
    now = SEOUL_DEC_1
    started = now - timedelta(minutes=3)
    [row] = plan_spans({}, [reading(3600.0, started=started)], now).open  # the exporter saw the device idle longer
    assert row["started_at"] == started
    old = OpenSpan(3, now - timedelta(minutes=20), now - timedelta(minutes=10))
    plan = plan_spans({(1, "GPU-h100-0"): old}, [reading(300.0, started=now - timedelta(hours=1))], now)
    assert plan.close == [3] and plan.open[0]["started_at"] == now - timedelta(minutes=5)


def test_idle_hours_are_clipped_to_the_month_in_the_site_timezone(site):
    clock = Clock(SEOUL_DEC_1 + timedelta(hours=3))
    lo, hi = month_bounds_at(clock(), site.tz)
    assert lo == SEOUL_DEC_1
    spans = [
        {"org": "lab-a", "started_at": SEOUL_DEC_1 - timedelta(hours=1), "ended_at": SEOUL_DEC_1 + timedelta(hours=2)},
        {"org": "lab-a", "started_at": SEOUL_DEC_1 + timedelta(minutes=150), "ended_at": clock.now},
        {"org": None, "started_at": SEOUL_DEC_1 - timedelta(hours=9), "ended_at": SEOUL_DEC_1 - timedelta(hours=8)},
    ]
    assert idle_hours_by_org(spans, lo, hi) == {"lab-a": pytest.approx(2.5), "": 0.0}
    last = month_bounds_at(clock.advance(days=-1), site.tz)  # yesterday was November
    assert idle_hours_by_org(spans, *last) == {"lab-a": pytest.approx(1.0), "": pytest.approx(1.0)}


def test_refusals_by_rule_use_todays_ids_and_put_the_most_frequent_first():
    got = refusals_by_org([("lab-a", "org-gpu-limit", 2), ("", "unknown-gpu-model", 1), ("lab-b", "unknown-model", 4)])
    assert got == {"lab-a": {"org-gpu-limit": 2}, "": {"unknown-model": 1}, "lab-b": {"unknown-model": 4}}
    assert by_rule(got) == [("unknown-model", 5), ("org-gpu-limit", 2)]


# ---------------------------------------------------------------- the database (SQLite and PostgreSQL)


def ask(user="carol", org="lab-b", server=""):
    return AllocationRequest(user, server, org, "python", 1)


def test_refusals_of_this_month_only_while_the_counter_keeps_them_all(store, clock):
    clock.now = SEOUL_DEC_1 - timedelta(hours=1)  # 23:00 on 30 November in Seoul
    store.allocate(ask("carol"))
    store.allocate(ask("bob", server="x"))
    with pytest.raises(QuotaRefused) as e:
        store.allocate(ask("carol", server="2"))
    assert e.value.rule == "org-gpu-limit"
    store.record_refusal(None, "unknown-option", "erin")
    november = month_report(store)
    assert november["period"] == "2026-11"
    assert november["refusals"] == {"lab-b": {"org-gpu-limit": 1}, "": {"unknown-option": 1}}
    clock.advance(hours=2)  # December in Seoul
    with pytest.raises(QuotaRefused):
        store.allocate(ask("bob", server="y"))
    december = month_report(store)
    assert (december["period"], december["refusals_by_rule"]) == ("2026-12", [("org-gpu-limit", 1)])
    assert month_report(store, period="2026-11")["refusals"] == november["refusals"]
    assert store.refusal_counts()[("lab-b", "org-gpu-limit")] == 2  # since the ledger began
    with store.engine.connect() as conn:
        users = sorted(conn.execute(select(refusal_events.c.user, refusal_events.c.rule)).all())
    assert [tuple(u) for u in users] == [
        ("bob", "org-gpu-limit"),
        ("carol", "org-gpu-limit"),
        ("erin", "unknown-option"),
    ]


def test_a_refusal_that_cannot_be_recorded_is_still_the_refusal(store, engine, caplog):
    """The 429 and its rule id reach the person even when the event table is gone (a bad restore, say)."""
    store.allocate(ask("carol"))
    store.allocate(ask("bob", server="x"))
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE gpuhub_refusal_events"))
    with pytest.raises(QuotaRefused) as e:
        store.allocate(ask("carol", server="2"))
    assert (e.value.status, e.value.rule) == (429, "org-gpu-limit")
    assert "refusal org-gpu-limit not counted" in caplog.text
    assert store.holdings() and len(store.open_intervals()) == 2  # nothing else changed


def test_idle_checks_become_this_months_idle_gpu_hours(store, clock):
    clock.now = SEOUL_DEC_1 - timedelta(minutes=30)
    grant = store.allocate(AllocationRequest("alice", "", "lab-a", "python", 2))
    [iv] = store.open_intervals()
    a, b = grant.devices
    idle_for: dict[str, float | None] = {a: 0.0, b: None}
    for minute in range(1, 61):  # one check a minute for an hour: a idle from minute 10, b from minute 40 to 50
        clock.advance(60)
        if minute >= 10:
            idle_for[a] = (minute - 10) * 60.0
        idle_for[b] = (minute - 40) * 60.0 if 40 <= minute <= 50 else 0.0
        readings = [
            IdleReading(iv["id"], u, iv["server_key"], "alice", "lab-a", "H100", iv["started_at"], s)
            for u, s in idle_for.items()
        ]
        record_idle(store, readings)
    report = month_report(store)  # December: from Seoul's midnight, 30 minutes into the run
    assert report["period"] == "2026-12"
    assert report["idle_gpu_hours"] == {"lab-a": pytest.approx(0.5 + 10 / 60), "lab-b": 0.0, "lab-c": 0.0}
    assert month_report(store, period="2026-11")["idle_gpu_hours"]["lab-a"] == pytest.approx(20 / 60)
    store.release("alice/")
    clock.advance(60)
    record_idle(store, [])  # the server is gone: its spans close where they were last seen idle
    assert month_report(store)["idle_gpu_hours"]["lab-a"] == pytest.approx(0.5 + 10 / 60)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM gpuhub_idle_spans WHERE is_open")).scalar() == 0


def test_the_ledgers_idle_hours_are_the_exporters_counter_less_a_few_windows_per_run():
    """The relation the module doc states, on one trace: the GPU exporter's counter (every sample at or under the
    threshold, as exporters.gpu adds it) against the spans the culler's checks make from quota.idle's windows."""
    from quota.idle import WindowLog

    window, threshold, t0 = 1.0, 0.05, SEOUL_DEC_1.timestamp()
    log, prom, spans, next_id = WindowLog(window, threshold), 0.0, {}, 1
    closed: list[OpenSpan] = []
    busy = [(50.0, 53.0), (80.0, 80.5)]  # two busy moments break the idle time into three runs
    for i in range(1, 481):  # a sample every 0.25 s for 120 s; a check every second
        t = i * 0.25
        util = 0.6 if any(a <= t < b for a, b in busy) else 0.0
        log.observe(t0 + t, util)
        prom += 0.25 if util <= threshold else 0.0
        if i % 4:
            continue
        now = datetime.fromtimestamp(t0 + t, UTC)
        plan = plan_spans(spans, [reading(log.idle_seconds(t0 + t), started=SEOUL_DEC_1)], now)
        for sid in plan.extend:
            spans = {k: OpenSpan(s.id, s.started_at, now) if s.id == sid else s for k, s in spans.items()}
        closed += [s for s in spans.values() if s.id in plan.close]
        spans = {k: s for k, s in spans.items() if s.id not in plan.close}
        for row in plan.open:
            spans[(row["interval_id"], row["device_uuid"])] = OpenSpan(next_id, row["started_at"], row["ended_at"])
            next_id += 1
    runs = closed + list(spans.values())
    ledger = sum((s.ended_at - s.started_at).total_seconds() for s in runs)
    print(f"exporter counter {prom:.2f} s, ledger {ledger:.2f} s over {len(runs)} runs")
    assert len(runs) == 3 and ledger <= prom <= ledger + len(runs) * 3 * window
