"""``gpuhub_queue_wait_seconds``, durable: the wait histogram of ended queue requests in the hub database.

Two tables (quota.models): ``gpuhub_queue_wait_buckets`` holds the CUMULATIVE count per (outcome, le) and
``gpuhub_queue_wait_totals`` the count and sum per outcome; :func:`observe` bumps them inside the transaction
that ends a request (:mod:`quota.queue_store`), so the histogram continues across restarts and does not depend
on the queue's history rows being kept. Outcomes: served (the wait until its grant), cancelled, expired.
"""

from __future__ import annotations

import math

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from quota.models import queue_wait_buckets, queue_wait_totals

OUTCOMES = ("served", "cancelled", "expired")
WAIT_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)
BOUNDS = (*WAIT_BUCKETS, math.inf)


def le_label(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def observe(conn: Connection, outcome: str, seconds: float) -> None:
    """Count one wait; an outcome's rows are made on its first observation (callers hold the queue's write lock)."""
    t, b = queue_wait_totals.c, queue_wait_buckets.c
    if conn.execute(select(t.outcome).where(t.outcome == outcome)).first() is None:
        conn.execute(insert(queue_wait_totals).values(outcome=outcome, count=0, sum_seconds=0.0))
        conn.execute(insert(queue_wait_buckets), [dict(outcome=outcome, le=le_label(x), count=0) for x in BOUNDS])
    conn.execute(
        update(queue_wait_totals)
        .where(t.outcome == outcome)
        .values(count=t.count + 1, sum_seconds=t.sum_seconds + seconds)
    )
    hit = [le_label(x) for x in BOUNDS if seconds <= x]
    conn.execute(update(queue_wait_buckets).where(b.outcome == outcome, b.le.in_(hit)).values(count=b.count + 1))


def read(conn: Connection) -> dict[str, dict]:
    """{outcome: {"buckets": [(le, cumulative count), ...], "count": n, "sum": seconds}} for every outcome."""
    totals = {r.outcome: r for r in conn.execute(select(queue_wait_totals))}
    buckets: dict[str, dict[str, int]] = {}
    for r in conn.execute(select(queue_wait_buckets)):
        buckets.setdefault(r.outcome, {})[r.le] = r.count
    out = {}
    for outcome in OUTCOMES:
        have, tot = buckets.get(outcome, {}), totals.get(outcome)
        out[outcome] = {
            "buckets": [(le_label(x), have.get(le_label(x), 0)) for x in BOUNDS],
            "count": tot.count if tot else 0,
            "sum": tot.sum_seconds if tot else 0.0,
        }
    return out
