"""SQL fragments that do interval arithmetic inside the database, exactly, on SQLite and PostgreSQL.

Aggregating a million intervals in Python is too slow, so the clipped duration
``min(end or now, hi) - max(start, lo)`` is computed in SQL on integer epoch microseconds. The
ledger keeps them in generated columns (``started_us``/``ended_us``, computed by the database from
``started_at``/``ended_at`` so no writer can forget them): parsing dates per row per query was most of
the cost of a statement. On PostgreSQL the epoch comes from an interval (exact numeric); on SQLite
the fixed-width UTC text is split into whole seconds (``julianday``, rounded: exact) and the six
microsecond digits, because SQLite's own date functions keep only milliseconds.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache

from sqlalchemy import bindparam, text
from sqlalchemy.sql.elements import TextClause

from gpuhub.core.periods import epoch_us
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
        """Integer microseconds since the epoch of the UTC timestamp expression ``x`` (immutable SQL)."""
        if self.name == "sqlite":
            return (
                f"(CAST(round((julianday(substr({x}, 1, 19)) - 2440587.5) * 86400) AS INTEGER) * 1000000"
                f" + CAST(substr({x}, 21, 6) AS INTEGER))"
            )
        return f"CAST(extract(epoch FROM ({x} - timestamptz '1970-01-01 00:00:00+00')) * 1000000 AS bigint)"

    def clipped_us(self) -> str:
        """Microseconds of each row's interval inside [:lo, :hi), open intervals charged to :now."""
        end = self.least("coalesce(ended_us, :now_us)", ":hi_us")
        start = self.greatest("started_us", ":lo_us")
        return self.greatest(f"{end} - {start}", "0")


# Rows that can overlap [lo, hi) by now. Only the *_us columns, so that on SQLite the covering index
# gpuhub_usage_billing answers the whole statement without touching the table or sorting.
OVERLAP_WHERE = "started_us < :hi_us AND started_us < :now_us AND coalesce(ended_us, :now_us) > :lo_us"


@lru_cache(maxsize=64)
def timed(sql: str) -> TextClause:
    """text() with the time parameters it uses typed as UTC datetimes (so SQLite gets the stored format)."""
    clause = text(sql)
    used = [p for p in TIME_PARAMS if re.search(rf":{p}\b", sql)]
    return clause.bindparams(*(bindparam(p, type_=UtcDateTime) for p in used))


def window(lo: datetime, hi: datetime, now: datetime) -> dict:
    """Parameters for OVERLAP_WHERE and clipped_us(): the bounds as datetimes and as epoch microseconds."""
    return {"lo": lo, "hi": hi, "now": now, "lo_us": epoch_us(lo), "hi_us": epoch_us(hi), "now_us": epoch_us(now)}
