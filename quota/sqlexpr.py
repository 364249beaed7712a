"""SQL fragments that do interval arithmetic inside the database, exactly, on SQLite and PostgreSQL.

Aggregating a million intervals in Python is too slow, so the clipped duration
``min(end or now, hi) - max(start, lo)`` is computed in SQL as integer epoch microseconds:
PostgreSQL's ``extract(epoch ...)`` is numeric (exact); on SQLite the fixed-width UTC text is
split into whole seconds (``strftime('%s')``) and the six microsecond digits, because SQLite's own
date functions keep only milliseconds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import bindparam, text
from sqlalchemy.sql.elements import TextClause

from quota.models import UtcDateTime

TIME_PARAMS = ("lo", "hi", "now")


class Dialect:
    def __init__(self, name: str):
        if name not in ("sqlite", "postgresql"):
            raise ValueError(f"quota supports sqlite and postgresql databases, not {name!r}")
        self.name = name

    def least(self, a: str, b: str) -> str:
        return f"min({a}, {b})" if self.name == "sqlite" else f"least({a}, {b})"

    def greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})" if self.name == "sqlite" else f"greatest({a}, {b})"

    def epoch_us(self, x: str) -> str:
        """Integer microseconds since the epoch of the UTC timestamp expression ``x``."""
        if self.name == "sqlite":
            return (f"(CAST(strftime('%s', substr({x}, 1, 19)) AS INTEGER) * 1000000"
                    f" + CAST(substr({x}, 21, 6) AS INTEGER))")
        return f"CAST(extract(epoch FROM {x}) * 1000000 AS bigint)"

    def clipped_us(self) -> str:
        """Microseconds of each row's interval inside [:lo, :hi), open intervals charged to :now."""
        end = self.epoch_us(self.least("coalesce(ended_at, :now)", ":hi"))
        start = self.epoch_us(self.greatest("started_at", ":lo"))
        return self.greatest(f"{end} - {start}", "0")


# Rows that can overlap [:lo, :hi); the indexes on started_at / ended_at serve it.
OVERLAP_WHERE = "started_at < :hi AND (ended_at IS NULL OR ended_at > :lo) AND started_at < :now"


def timed(sql: str) -> TextClause:
    """text() with the time parameters it uses typed as UTC datetimes (so SQLite gets the stored format)."""
    clause = text(sql)
    used = [p for p in TIME_PARAMS if f":{p}" in sql]
    return clause.bindparams(*(bindparam(p, type_=UtcDateTime) for p in used))


def window(lo: datetime, hi: datetime, now: datetime) -> dict:
    return {"lo": lo, "hi": hi, "now": now}
