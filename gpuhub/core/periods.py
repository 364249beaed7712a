"""Calendar periods and charge arithmetic (pure).

Budgets are per calendar month in the site's time zone, but every instant we store or compare is an
aware UTC datetime: a month is the half-open UTC interval [first instant of the month in the zone,
first instant of the next month). Splitting an interval at those bounds is exact (timedelta, integer
microseconds), so the parts always add back to the whole and no second is billed twice.

charge = gpus x weight x seconds = weighted GPU-seconds; budgets are in weighted GPU-hours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def utc(dt: datetime) -> datetime:
    """``dt`` as an aware UTC datetime; naive input is refused so a local time never sneaks in."""
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        raise ValueError(f"naive datetime {dt!r}: pass an aware datetime (e.g. datetime.now(UTC))")
    return dt.astimezone(UTC)


def utcnow() -> datetime:
    """The default clock."""
    return datetime.now(UTC)


def _local_midnight(d: date, tz: tzinfo) -> datetime:
    # fold=0 resolves a nonexistent midnight (DST gap) to the transition instant, still inside the day.
    return datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)


def month_start(year: int, month: int, tz: tzinfo) -> datetime:
    """First instant (UTC) of ``year-month`` in the zone ``tz``."""
    return _local_midnight(date(year, month, 1), tz)


def next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def month_of(instant: datetime, tz: tzinfo) -> tuple[int, int]:
    """(year, month) that ``instant`` falls in, read in the zone ``tz``."""
    local = utc(instant).astimezone(tz)
    return local.year, local.month


def month_bounds(year: int, month: int, tz: tzinfo) -> tuple[datetime, datetime]:
    """[start, end) of the month as UTC instants."""
    return month_start(year, month, tz), month_start(*next_month(year, month), tz)


def month_bounds_at(instant: datetime, tz: tzinfo) -> tuple[datetime, datetime]:
    """Bounds of the month containing ``instant``."""
    return month_bounds(*month_of(instant, tz), tz)


def period_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def period_of(instant: datetime, tz: tzinfo) -> str:
    """'YYYY-MM' of the month ``instant`` falls in, read in the zone ``tz`` (not the host's)."""
    return period_key(*month_of(instant, tz))


def parse_period(period: str) -> tuple[int, int]:
    """'YYYY-MM' -> (year, month), with a message that shows the expected form."""
    m = PERIOD_RE.match(period or "")
    if not m:
        raise ValueError(f"period {period!r} is not of the form YYYY-MM, e.g. 2026-11")
    return int(m.group(1)), int(m.group(2))


def period_bounds(period: str, tz: tzinfo) -> tuple[datetime, datetime]:
    return month_bounds(*parse_period(period), tz)


def day_bounds(year: int, month: int, tz: tzinfo) -> list[tuple[date, datetime, datetime]]:
    """Each local day of the month with its [start, end) as UTC instants."""
    out = []
    d = date(year, month, 1)
    while d.month == month:
        nxt = d + timedelta(days=1)
        out.append((d, _local_midnight(d, tz), _local_midnight(nxt, tz)))
        d = nxt
    return out


@dataclass(frozen=True)
class Piece:
    """The part of an interval that lies in one month."""

    year: int
    month: int
    start: datetime
    end: datetime

    @property
    def period(self) -> str:
        return period_key(self.year, self.month)

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


def split_by_month(start: datetime, end: datetime, tz: tzinfo) -> list[Piece]:
    """Split [start, end) exactly at month boundaries of ``tz``; an empty interval gives no pieces."""
    start, end = utc(start), utc(end)
    if end < start:
        raise ValueError(f"interval ends ({end.isoformat()}) before it starts ({start.isoformat()})")
    pieces = []
    year, month = month_of(start, tz)
    cur = start
    while cur < end:
        _, hi = month_bounds(year, month, tz)
        stop = min(hi, end)
        if stop > cur:
            pieces.append(Piece(year, month, cur, stop))
        cur = stop
        year, month = next_month(year, month)
    return pieces


def overlap(start: datetime, end: datetime, lo: datetime, hi: datetime) -> timedelta:
    """Length of [start, end) ∩ [lo, hi) (zero when disjoint)."""
    a, b = max(utc(start), utc(lo)), min(utc(end), utc(hi))
    return b - a if b > a else timedelta(0)


def seconds(td: timedelta) -> float:
    """timedelta -> seconds, exact to the microsecond (integer arithmetic before the one division)."""
    return (td.days * 86400 + td.seconds) + td.microseconds / 1_000_000


def epoch_us(dt: datetime) -> int:
    """Integer microseconds since 1970-01-01 UTC (what the ledger's ``*_us`` columns hold)."""
    d = utc(dt) - EPOCH
    return (d.days * 86400 + d.seconds) * 1_000_000 + d.microseconds


def charge(gpus: int, weight: float, duration: timedelta | float) -> float:
    """Weighted GPU-seconds for ``gpus`` devices of ``weight`` held for ``duration``."""
    secs = seconds(duration) if isinstance(duration, timedelta) else float(duration)
    if gpus < 0 or weight < 0 or secs < 0:
        raise ValueError(f"charge needs gpus, weight and duration >= 0, got {gpus}, {weight}, {secs}")
    return gpus * weight * secs


def interval_charge(
    gpus: int,
    weight: float,
    start: datetime,
    end: datetime | None,
    now: datetime,
    lo: datetime | None = None,
    hi: datetime | None = None,
) -> float:
    """Charge of one interval inside [lo, hi); an open interval (end None) is charged up to ``now``."""
    stop = utc(end) if end is not None else utc(now)
    lo = utc(lo) if lo is not None else utc(start)
    hi = utc(hi) if hi is not None else stop
    return charge(gpus, weight, overlap(start, stop, lo, hi))
