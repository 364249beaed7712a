"""The usage exporter against a temporary SQLite ledger with the quota schema, with a time-travel clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, update

from exporters.usage import build_usage_exporter
from quota import models as ledger
from tests.clock import Clock
from tests.exporters.helpers import add_interval, utc

KST = ZoneInfo("Asia/Seoul")
BOB_A100 = dict(user="bob", gpus=2, model="A100", weight=0.6)  # two A100s, the site's weight 0.6


def kst(*args) -> datetime:
    return datetime(*args, tzinfo=KST).astimezone(UTC)


def exporter(site, engine, clock):
    return build_usage_exporter(site, engine, registry=CollectorRegistry(), clock=clock)


def value(registry, metric, **labels):
    return registry.get_sample_value(metric, labels)


def test_allocated_gpu_seconds_from_closed_and_open_intervals(site, ledger_engine):
    t0 = utc(2026, 11, 10, 0, 0, 0)
    add_interval(ledger_engine, user="alice", gpus=2, started_at=t0, ended_at=t0 + timedelta(hours=1))
    add_interval(ledger_engine, user="alice", gpus=1, started_at=t0 + timedelta(hours=2))  # open
    add_interval(ledger_engine, **BOB_A100, started_at=t0, ended_at=t0 + timedelta(seconds=100, microseconds=500_000))
    add_interval(ledger_engine, user="carol", org=None, gpus=0, model=None, started_at=t0)  # CPU server, no org
    clock = Clock(t0 + timedelta(hours=3))
    registry, sampler = exporter(site, ledger_engine, clock)
    sampler.refresh()
    h100 = dict(org="gist-ai", model="H100")
    a100 = dict(org="gist-ai", model="A100")
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", **h100) == 2 * 3600 + 3600
    assert value(registry, "gpuhub_org_allocated_weighted_gpu_seconds_total", **h100) == 2 * 3600 + 3600
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", **a100) == pytest.approx(201.0)
    assert value(registry, "gpuhub_org_allocated_weighted_gpu_seconds_total", **a100) == pytest.approx(201.0 * 0.6)
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="cnuh-radiology", model="H100") == 0
    # the open interval grows at scrape time, without another database read
    clock.now += timedelta(seconds=90)
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", **h100) == 2 * 3600 + 3600 + 90
    assert value(registry, "gpuhub_org_running_servers", org="gist-ai") == 1
    assert value(registry, "gpuhub_org_running_servers", org="") == 1  # carol's CPU server
    assert value(registry, "gpuhub_org_running_servers", org="cnuh-radiology") == 0


def test_counters_continue_across_a_restart(site, ledger_engine):
    t0 = utc(2026, 11, 10)
    add_interval(ledger_engine, gpus=1, started_at=t0)
    r1, s1 = exporter(site, ledger_engine, Clock(t0 + timedelta(seconds=500)))
    s1.refresh()
    before = value(r1, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100")
    r2, s2 = exporter(site, ledger_engine, Clock(t0 + timedelta(seconds=530)))  # "restarted" 30 s later
    s2.refresh()
    after = value(r2, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100")
    assert (before, after) == (500, 530)


def test_a_backdated_close_never_makes_a_counter_go_down(site, ledger_engine):
    t0 = utc(2026, 11, 10)
    iid = add_interval(ledger_engine, gpus=1, started_at=t0)
    clock = Clock(t0 + timedelta(seconds=600))
    registry, sampler = exporter(site, ledger_engine, clock)
    sampler.refresh()
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100") == 600
    with ledger_engine.begin() as conn:  # the reconciler closes it at its last heartbeat
        conn.execute(
            update(ledger.usage_intervals)
            .where(ledger.usage_intervals.c.id == iid)
            .values(ended_at=t0 + timedelta(seconds=400), end_reason="lost")
        )
    clock.now += timedelta(seconds=10)
    sampler.refresh()
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100") == 600


def test_budget_used_this_month_in_the_site_time_zone(site, ledger_engine):
    # 2 GPUs of A100 (weight 0.6) from Oct 31 23:00 to Nov 1 01:00 KST: only 1 h is November's.
    add_interval(ledger_engine, **BOB_A100, started_at=kst(2026, 10, 31, 23), ended_at=kst(2026, 11, 1, 1))
    # an open H100 interval since Oct 31 23:30 KST; now is Nov 1 02:00 KST: 2 h in November
    add_interval(ledger_engine, user="alice", gpus=1, started_at=kst(2026, 10, 31, 23, 30))
    # October-only usage does not count
    add_interval(
        ledger_engine,
        user="carol",
        org="cnuh-radiology",
        gpus=1,
        started_at=kst(2026, 10, 20),
        ended_at=kst(2026, 10, 21),
    )
    registry, sampler = exporter(site, ledger_engine, Clock(kst(2026, 11, 1, 2)))
    sampler.refresh()
    used = 2 * 0.6 * 3600 + 1 * 1.0 * 2 * 3600
    assert value(registry, "gpuhub_org_budget_used_seconds", org="gist-ai") == pytest.approx(used)
    assert value(registry, "gpuhub_org_budget_seconds", org="gist-ai") == 100 * 3600
    assert value(registry, "gpuhub_org_budget_used_ratio", org="gist-ai") == pytest.approx(used / (100 * 3600))
    assert value(registry, "gpuhub_org_budget_used_seconds", org="cnuh-radiology") == 0
    assert value(registry, "gpuhub_org_budget_used_ratio", org="free-tier") is None  # budget 0: no ratio
    assert value(registry, "gpuhub_budget_period_start_timestamp_seconds") == kst(2026, 11, 1).timestamp()


def test_month_turning_between_refreshes(site, ledger_engine):
    add_interval(ledger_engine, user="alice", gpus=1, started_at=kst(2026, 11, 30, 23))
    clock = Clock(kst(2026, 11, 30, 23, 30))
    registry, sampler = exporter(site, ledger_engine, clock)
    sampler.refresh()
    assert value(registry, "gpuhub_org_budget_used_seconds", org="gist-ai") == 1800
    clock.now = kst(2026, 12, 1, 0, 10)  # no refresh yet
    assert value(registry, "gpuhub_org_budget_used_seconds", org="gist-ai") == 600
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100") == 4200


def allocation(device: str, user: str, org: str, model: str, interval_id: int, at: datetime) -> dict:
    """A ``gpuhub_allocations`` row: ``device`` held by ``user``'s default server."""
    return dict(
        device_uuid=device,
        server_key=f"{user}/",
        user=user,
        org=org,
        model=model,
        interval_id=interval_id,
        allocated_at=at,
    )


def test_limits_allocations_and_refusals(site, ledger_engine):
    now = utc(2026, 11, 10)
    with ledger_engine.begin() as conn:
        conn.execute(
            insert(ledger.allocations),
            [allocation(f"GPU-{i}", "alice", "gist-ai", "H100", 1, now) for i in range(2)]
            + [allocation("GPU-9", "carol", "cnuh-radiology", "A100", 2, now)],
        )
        conn.execute(
            insert(ledger.spawn_refusals),
            [
                dict(org="gist-ai", reason="gpu-limit", count=7),
                dict(org="", reason="no-org", count=2),
            ],
        )
    registry, sampler = exporter(site, ledger_engine, Clock(now))
    sampler.refresh()
    assert value(registry, "gpuhub_org_gpus_in_use", org="gist-ai", model="H100") == 2
    assert value(registry, "gpuhub_org_gpus_in_use", org="gist-ai", model="A100") == 0
    assert value(registry, "gpuhub_org_gpus_in_use", org="cnuh-radiology", model="A100") == 1
    assert value(registry, "gpuhub_org_gpu_limit", org="gist-ai") == 2
    assert value(registry, "gpuhub_spawn_refusals_total", org="gist-ai", reason="gpu-limit") == 7
    assert value(registry, "gpuhub_spawn_refusals_total", org="", reason="no-org") == 2
    assert value(registry, "gpuhub_exporter_up", exporter="usage") == 1


class BrokenSource:
    def read(self, now, lo, hi):
        raise ConnectionError("database is down")


def test_ledger_outage_reports_down_and_keeps_serving(site, ledger_engine):
    t0 = utc(2026, 11, 10)
    add_interval(ledger_engine, gpus=1, started_at=t0)
    clock = Clock(t0 + timedelta(seconds=100))
    registry, sampler = exporter(site, ledger_engine, clock)
    sampler.refresh()
    good = sampler.source
    sampler.source = BrokenSource()
    clock.now += timedelta(seconds=10)
    sampler.refresh()
    assert value(registry, "gpuhub_exporter_up", exporter="usage") == 0
    assert value(registry, "gpuhub_exporter_errors_total", exporter="usage", source="ledger") == 1
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100") == 110
    sampler.source = good
    sampler.refresh()
    assert value(registry, "gpuhub_exporter_up", exporter="usage") == 1


def test_before_the_first_read_only_site_series_are_served(site):
    registry, sampler = build_usage_exporter(site, source=BrokenSource(), registry=CollectorRegistry())
    assert value(registry, "gpuhub_org_gpu_limit", org="gist-ai") == 2
    assert value(registry, "gpuhub_org_allocated_gpu_seconds_total", org="gist-ai", model="H100") is None
    assert value(registry, "gpuhub_exporter_up", exporter="usage") == 0


def test_sql_sums_match_quota_periods_arithmetic(site, ledger_engine):
    """Closed rows are summed in SQL; the result equals gpuhub.core.periods.interval_charge row by row."""
    from gpuhub.core.periods import interval_charge, month_bounds_at

    t0 = utc(2026, 11, 3, 4, 5, 6)
    rows = []
    for i in range(25):
        start = t0 + timedelta(minutes=37 * i, microseconds=123_457 * i)
        end = start + timedelta(seconds=911 * i + 1, microseconds=999_999 - i)
        gpus, weight = 1 + i % 3, (1.0, 0.6)[i % 2]
        add_interval(
            ledger_engine,
            user=f"u{i}",
            gpus=gpus,
            model=("H100", "A100")[i % 2],
            weight=weight,
            started_at=start,
            ended_at=end,
        )
        rows.append((gpus, weight, start, end))
    now = utc(2026, 11, 20)
    registry, sampler = exporter(site, ledger_engine, Clock(now))
    sampler.refresh()
    lo, hi = month_bounds_at(now, KST)
    expected = sum(interval_charge(g, w, s, e, now, lo, hi) for g, w, s, e in rows)
    assert value(registry, "gpuhub_org_budget_used_seconds", org="gist-ai") == pytest.approx(expected, abs=1e-6)
    weighted = sum(
        value(registry, "gpuhub_org_allocated_weighted_gpu_seconds_total", org="gist-ai", model=m)
        for m in ("H100", "A100")
    )
    assert weighted == pytest.approx(sum(interval_charge(g, w, s, e, now) for g, w, s, e in rows), abs=1e-6)


def test_frozen_sums_are_cached_and_refreshed(ledger_engine):
    """Rows closed before the frozen bound are summed once; recent closes are read every time."""
    from exporters.usage import SqlLedgerSource

    now = utc(2026, 11, 20, 12)
    lo, hi = utc(2026, 10, 31, 15), utc(2026, 11, 30, 15)
    key = ("gist-ai", "H100")
    add_interval(ledger_engine, user="old", started_at=utc(2026, 11, 10), ended_at=utc(2026, 11, 10, 1))
    source = SqlLedgerSource(ledger_engine)
    assert source.read(now, lo, hi).closed_seconds[key] == 3600
    add_interval(ledger_engine, user="recent", started_at=now - timedelta(hours=3), ended_at=now - timedelta(hours=1))
    reading = source.read(now, lo, hi)
    assert reading.closed_seconds[key] == 3600 + 7200
    assert reading.month_closed_weighted["gist-ai"] == 3600 + 7200
    # closed late with an ended_at older than the frozen bound: picked up at the next re-freeze
    add_interval(ledger_engine, user="late", started_at=utc(2026, 11, 2), ended_at=utc(2026, 11, 3))
    assert source.read(now, lo, hi).closed_seconds[key] == 3600 + 7200
    later = source.read(now + timedelta(hours=6), lo, hi)
    assert later.closed_seconds[key] == 3600 + 7200 + 86400
    assert later.month_closed_weighted["gist-ai"] == 3600 + 7200 + 86400
