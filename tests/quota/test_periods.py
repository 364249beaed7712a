"""Month bounds, exact splitting and charge arithmetic (property tests)."""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuhub.core import periods as p

ZONES = [ZoneInfo("Asia/Seoul"), ZoneInfo("UTC"), ZoneInfo("America/New_York")]

instants = st.datetimes(min_value=datetime(1985, 1, 1), max_value=datetime(2099, 1, 1), timezones=st.just(UTC))
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400))
zones = st.sampled_from(ZONES)


@st.composite
def near_month_edge(draw):
    """An instant within a few seconds of a month boundary of the drawn zone."""
    tz = draw(zones)
    year, month = draw(st.integers(1985, 2098)), draw(st.integers(1, 12))
    edge = p.month_start(year, month, tz)
    return tz, edge + timedelta(microseconds=draw(st.integers(-3_000_000, 3_000_000)))


def _check_split(start, end, tz):
    pieces = p.split_by_month(start, end, tz)
    assert sum((x.duration for x in pieces), timedelta(0)) == end - start
    if start == end:
        assert pieces == []
        return
    assert pieces[0].start == start and pieces[-1].end == end
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start
        assert (b.year, b.month) == p.next_month(a.year, a.month)
    for x in pieces:
        lo, hi = p.month_bounds(x.year, x.month, tz)
        assert lo <= x.start < x.end <= hi
        assert p.month_of(x.start, tz) == (x.year, x.month)
    return pieces


@settings(max_examples=300, deadline=None)
@given(instants, durations, zones)
def test_split_parts_sum_to_whole_and_stay_in_one_month(start, dur, tz):
    _check_split(start, start + dur, tz)


@settings(max_examples=300, deadline=None)
@given(near_month_edge(), st.integers(0, 10_000_000))
def test_split_at_month_edges(edge, micros):
    tz, start = edge
    _check_split(start, start + timedelta(microseconds=micros), tz)


@settings(max_examples=300, deadline=None)
@given(instants, durations, zones, st.integers(0, 8), st.sampled_from([1.0, 0.6, 0.5, 1.7]))
def test_charge_of_parts_equals_charge_of_whole(start, dur, tz, gpus, weight):
    pieces = p.split_by_month(start, start + dur, tz)
    whole = p.charge(gpus, weight, dur)
    parts = sum(p.charge(gpus, weight, x.duration) for x in pieces)
    assert parts == pytest.approx(whole, rel=1e-12, abs=1e-9)
    assert whole == pytest.approx(gpus * weight * dur.total_seconds(), rel=1e-12, abs=1e-9)


def test_seoul_month_bounds_are_utc_instants():
    lo, hi = p.month_bounds(2026, 11, ZoneInfo("Asia/Seoul"))
    assert lo == datetime(2026, 10, 31, 15, 0, tzinfo=UTC)
    assert hi == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    assert p.month_bounds(2026, 12, ZoneInfo("UTC")) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_split_exact_example_across_new_year_in_seoul():
    tz = ZoneInfo("Asia/Seoul")
    start = datetime(2026, 12, 31, 14, 30, tzinfo=UTC)  # 23:30 KST
    pieces = p.split_by_month(start, start + timedelta(hours=1), tz)
    assert [(x.period, x.duration) for x in pieces] == [
        ("2026-12", timedelta(minutes=30)),
        ("2027-01", timedelta(minutes=30)),
    ]


def test_interval_charge_open_and_clipped():
    t0 = datetime(2026, 11, 30, 14, 0, tzinfo=UTC)
    lo, hi = p.month_bounds(2026, 11, ZoneInfo("Asia/Seoul"))
    # open interval, 2 GPUs x 0.5, charged to now (2 h later) but clipped to November (first hour only)
    assert p.interval_charge(2, 0.5, t0, None, t0 + timedelta(hours=2), lo, hi) == 3600.0
    assert p.interval_charge(2, 0.5, t0, None, t0 + timedelta(hours=2)) == 7200.0


def test_naive_datetimes_and_bad_periods_are_refused():
    with pytest.raises(ValueError, match="naive"):
        p.split_by_month(datetime(2026, 1, 1), datetime(2026, 2, 1), ZoneInfo("UTC"))
    with pytest.raises(ValueError, match="YYYY-MM"):
        p.parse_period("2026-13")
    with pytest.raises(ValueError, match="before it starts"):
        p.split_by_month(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), ZoneInfo("UTC"))


def test_day_bounds_cover_the_month():
    tz = ZoneInfo("America/New_York")  # 2026-11 has the DST change: one 25-hour day
    days = p.day_bounds(2026, 11, tz)
    assert len(days) == 30
    assert days[0][1] == p.month_start(2026, 11, tz) and days[-1][2] == p.month_start(2026, 12, tz)
    assert sorted({(hi - lo).total_seconds() / 3600 for _, lo, hi in days}) == [24.0, 25.0]


@pytest.mark.parametrize(
    "instant, zone, expected",
    [
        (datetime(2026, 11, 30, 15, 30, tzinfo=UTC), "Asia/Seoul", "2026-12"),  # 00:30 on Dec 1 in Seoul
        (datetime(2026, 11, 30, 14, 59, 59, tzinfo=UTC), "Asia/Seoul", "2026-11"),
        (datetime(2027, 1, 1, 3, 0, tzinfo=UTC), "America/New_York", "2026-12"),  # still New Year's Eve there
        (datetime(2026, 11, 30, 15, 30, tzinfo=UTC), "UTC", "2026-11"),
    ],
)
def test_period_of_reads_the_month_in_the_given_zone(instant, zone, expected):
    assert p.period_of(instant, ZoneInfo(zone)) == expected
