"""Statements and daily usage: exact charges, month splits, open intervals, renderers."""

import csv
import io
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from gpuhub.core import periods
from quota import billing
from quota.models import usage_intervals
from quota.policy import AllocationRequest


def add(engine, user, org, model, gpus, weight, start, end, key=None):
    with engine.begin() as conn:
        conn.execute(
            insert(usage_intervals).values(
                server_key=key or f"{user}/{start.timestamp()}",
                user=user,
                server_name="",
                org=org,
                image="python",
                device_uuids="",
                gpus=gpus,
                model=model,
                weight=weight,
                started_at=start,
                ended_at=end,
                end_reason="stopped" if end else None,
                heartbeat_at=start,
            )
        )


def test_n_gpus_of_weight_w_for_t_seconds_cost_n_w_t(store, site, clock):
    T = 12345.678901
    store.allocate(AllocationRequest("alice", "", "lab-a", "python", 2, "A100"))
    clock.advance(T)
    store.release("alice/")
    [row] = billing.statement(store, site, "2026-11", now=clock.now)
    assert row["gpu_seconds"] == pytest.approx(2 * T, rel=1e-12)
    assert row["weighted_gpu_hours"] == pytest.approx(2 * 0.5 * T / 3600, rel=1e-12)
    assert (row["org"], row["user"], row["gpu_model"], row["intervals"]) == ("lab-a", "alice", "A100", 1)
    assert row["amount"] == round(2 * 0.5 * T / 3600 * 2500, 2) and row["currency"] == "KRW"


def test_interval_across_month_end_is_split_exactly_and_open_counts_to_now(engine, site):
    start = datetime(2026, 11, 30, 14, 30, tzinfo=UTC)  # 23:30 KST on 30 November
    add(engine, "alice", "lab-a", "H100", 1, 1.0, start, start + timedelta(minutes=75))
    add(engine, "bob", "lab-a", "H100", 2, 1.0, start, None)  # still running
    now = start + timedelta(hours=2)
    nov = {r["user"]: r for r in billing.statement(engine, site, "2026-11", now=now)}
    dec = {r["user"]: r for r in billing.statement(engine, site, "2026-12", now=now)}
    assert nov["alice"]["gpu_seconds"] == 1800 and dec["alice"]["gpu_seconds"] == 2700
    assert nov["bob"]["gpu_seconds"] == 2 * 1800 and dec["bob"]["gpu_seconds"] == 2 * 5400
    assert billing.statement(engine, site, "2027-01", now=now) == []


def test_grouping_org_filter_and_rates(engine, site):
    t = datetime(2026, 11, 5, tzinfo=UTC)
    add(engine, "alice", "lab-a", "H100", 1, 1.0, t, t + timedelta(hours=1))
    add(engine, "alice", "lab-a", "H100", 1, 1.0, t + timedelta(hours=2), t + timedelta(hours=3))
    add(engine, "carol", "lab-b", "B200", 1, 2.0, t, t + timedelta(hours=1))  # a model with no rate
    add(engine, "carol", "lab-b", None, 0, 0.0, t, t + timedelta(hours=9))  # CPU-only: not billed
    rows = billing.statement(engine, site, "2026-11", now=t + timedelta(days=1))
    assert [(r["org"], r["user"], r["gpu_model"], r["intervals"], r["weighted_gpu_hours"]) for r in rows] == [
        ("lab-a", "alice", "H100", 2, 2.0),
        ("lab-b", "carol", "B200", 1, 2.0),
    ]
    assert rows[0]["amount"] == 8000.0 and "amount" not in rows[1]
    rows = billing.statement(engine, site, "2026-11", org="lab-b", now=t + timedelta(days=1))
    assert [r["org"] for r in rows] == ["lab-b"]


def test_random_ledger_matches_python_reference(engine, site):
    rnd = random.Random(7)
    base = datetime(2026, 10, 25, tzinfo=UTC)
    now = datetime(2026, 12, 3, tzinfo=UTC)
    rows = []
    for i in range(150):
        start = base + timedelta(seconds=rnd.uniform(0, 35 * 86400), microseconds=rnd.randrange(10**6))
        end = None if i % 10 == 0 else min(now, start + timedelta(seconds=rnd.uniform(0, 5 * 86400)))
        if start >= now:
            continue
        org, gpus, w = rnd.choice(["lab-a", "lab-b"]), rnd.randint(1, 4), rnd.choice([1.0, 0.5])
        rows.append((org, gpus, w, start, end))
        add(engine, f"u{i % 7}", org, "H100" if w == 1.0 else "A100", gpus, w, start, end, key=f"k{i}")
    for period in ("2026-10", "2026-11", "2026-12"):
        lo, hi = periods.period_bounds(period, site.tz)
        want = {}
        for org, gpus, w, s, e in rows:
            want[org] = want.get(org, 0.0) + periods.interval_charge(gpus, w, s, e, now, lo, hi) / 3600
        got = {}
        for r in billing.statement(engine, site, period, now=now):
            got[r["org"]] = got.get(r["org"], 0.0) + r["weighted_gpu_hours"]
        for org in set(want) | set(got):
            assert got.get(org, 0.0) == pytest.approx(want.get(org, 0.0), rel=1e-12, abs=1e-9)
        daily = billing.daily(engine, site, period, now=now)
        for org in ("lab-a", "lab-b"):
            assert sum(d["weighted_gpu_hours"] for d in daily[org]) == pytest.approx(want.get(org, 0.0), rel=1e-9)


def test_daily_splits_at_local_midnight(engine, site):
    start = datetime(2026, 11, 9, 14, 0, tzinfo=UTC)  # 23:00 KST 9 November
    add(engine, "alice", "lab-a", "H100", 2, 1.0, start, start + timedelta(hours=3))
    days = {
        d["date"]: d["weighted_gpu_hours"]
        for d in billing.daily(engine, site, "2026-11", now=start + timedelta(days=1))["lab-a"]
    }
    assert days["2026-11-09"] == pytest.approx(2.0) and days["2026-11-10"] == pytest.approx(4.0)
    assert sum(days.values()) == pytest.approx(6.0) and len(days) == 30


def test_renderers(store, site, clock):
    store.allocate(AllocationRequest("alice", "", "lab-a", "python", 1, "H100"))
    clock.advance(3600)
    out = json.loads(billing.render(store, "2026-11", fmt="json", now=clock.now))
    assert isinstance(out, list) and out[0]["weighted_gpu_hours"] == pytest.approx(1.0)
    assert {"org", "user", "gpu_model", "gpu_seconds", "weighted_gpu_hours"} <= set(out[0])
    rows = list(csv.DictReader(io.StringIO(billing.render(store, "2026-11", fmt="csv", now=clock.now))))
    assert rows[0]["org"] == "lab-a" and float(rows[0]["weighted_gpu_hours"]) == pytest.approx(1.0)
    assert rows[0]["amount"] == "4000.0" and rows[0]["currency"] == "KRW"
    page = billing.render(store, "2026-11", fmt="html", now=clock.now)
    assert "<svg" in page and "lab-a" in page
    assert "stroke-dasharray" in page and "% of its" in page  # the budget line and the share used
    with pytest.raises(ValueError, match="json, csv, html"):
        billing.render(store, "2026-11", fmt="xml")
