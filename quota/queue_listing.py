"""The queue as people see it: each request's place in line, who is ahead, an estimated wait (read-only).

Used by ``gpuhub queue list``, the queue API and (next) the spawn progress stream through
:meth:`quota.queue_store.QueueStore.listing` / ``position``. One read transaction: the same state
:meth:`~quota.queue_store.QueueStore.pop_next` decides on, so the order shown is the order served (as long as
nothing changes in between; a freed A100 may still let a later request go first, see quota.queue_order).

Estimated wait (:func:`quota.queue_order.estimate_wait`): the GPUs of the request's model wanted by the requests
ahead of it plus its own, less the free ones, times the mean session of that model over the last 7 days
(:data:`DEFAULT_SESSION_SECONDS` when the ledger has none) divided by the model's device count. Rough by design
(notebook sessions have no end time); ``None`` when no device of the model exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from quota import queue_order as order
from quota import reservations as rsv
from quota.models import usage_intervals

DEFAULT_SESSION_SECONDS = 3600.0
WINDOWS_AHEAD = 7 * 86400.0  # upcoming class windows shown with the queue


@dataclass(frozen=True)
class Position:
    position: int  # 1 = next
    total: int
    ahead_same_org: int
    ahead_other_orgs: int
    estimated_wait_seconds: float  # inf when no device of the model exists
    factor: float  # the org's fair-share factor F


def mean_session(conn, model: str | None, now: datetime) -> float:
    iv = usage_intervals.c
    q = select(iv.started_at, iv.ended_at).where(iv.gpus > 0, iv.ended_at > now - timedelta(days=7))
    if model:
        q = q.where(iv.model == model)
    spans = [(r.ended_at - r.started_at).total_seconds() for r in conn.execute(q.limit(1000))]
    return sum(spans) / len(spans) if spans else DEFAULT_SESSION_SECONDS


def window_row(w: rsv.Window, tz) -> dict:
    return {
        "course": w.course,
        "org": w.org,
        "gpus": w.gpus,
        "model": w.model,
        "start": datetime.fromtimestamp(w.start, tz).isoformat(),
        "end": datetime.fromtimestamp(w.end, tz).isoformat(),
    }


def _row(e, place: dict | None, s: dict, inv, at: datetime, limits, sessions) -> dict:
    row = {
        "id": e.id,
        "server": e.server_key,
        "user": e.user,
        "org": e.org,
        "gpus": e.gpus,
        "model": e.model,
        "state": e.state,
        "arrived_at": e.arrived_at.isoformat(),
        "waited_seconds": round((at - e.arrived_at).total_seconds(), 1),
        "factor": round(s["factors"].get(e.org, 1.0), 6),
    }
    if place is None:  # granted: its server is being started
        return {**row, "position": None, "devices": list(e.devices)}
    wants = [q for q in s["queued"] if e.model is None or q.model in (None, e.model)]
    gpus_ahead = sum(q.gpus for q in wants if s["places"][q.id]["position"] < place["position"])
    n_model = sum(1 for d in inv if e.model is None or d.model == e.model)
    held = sum(1 for h in s["held"] if e.model is None or h.model == e.model)
    wait = order.estimate_wait(gpus_ahead, e.gpus, n_model, sessions(e.model), held)
    return {
        **row,
        "position": place["position"],
        "ahead_same_org": place["ahead_same_org"],
        "ahead_other_orgs": place["ahead_other_orgs"],
        "estimated_wait_seconds": None if math.isinf(wait) else round(wait, 1),
        "blocked_by": order.blocker(e.as_request(), s["free"], s["held"], limits),
    }


def listing(store, at: datetime, user: str | None, inv: list) -> dict:
    """Every active request (``user``: only theirs, placed in the whole line) with its place, waited seconds,
    estimated wait and org factor, in line order then the granted ones; the factors and shares; and (for
    operators, ``user`` None) the class windows of the next 7 days."""
    site = store.site
    node_of = store.node_of()

    def run(conn):
        s = store._state(conn, at, inv, node_of=node_of)
        requests = [e.as_request() for e in s["queued"]]
        s["places"] = {p["id"]: p for p in order.line(requests, s["factors"], at.timestamp(), store.age_scale)}
        cache: dict = {}

        def sessions(model):
            if model not in cache:
                cache[model] = mean_session(conn, model, at)
            return cache[model]

        limits = store._limits()
        rows = [
            _row(e, s["places"].get(e.id), s, inv, at, limits, sessions)
            for e in sorted(s["queued"], key=lambda e: s["places"][e.id]["position"]) + s["granted"]
            if user is None or e.user == user
        ]
        return rows, s["factors"]

    rows, factors = store._read(run)
    windows = rsv.upcoming(site.queue.reservations, site.tz, at.timestamp(), WINDOWS_AHEAD)
    return {
        "at": at.isoformat(),
        "requests": rows,
        "factors": {org: factors.get(org, 1.0) for org in site.organizations},
        "shares": dict(site.queue.shares),
        "reservations": [window_row(w, site.tz) for w in windows] if user is None else [],
    }


def position(listing_: dict, entry_id: int) -> Position | None:
    rows = [r for r in listing_["requests"] if r["position"] is not None]
    for r in rows:
        if r["id"] == entry_id:
            wait = r["estimated_wait_seconds"]
            return Position(
                r["position"],
                len(rows),
                r["ahead_same_org"],
                r["ahead_other_orgs"],
                math.inf if wait is None else wait,
                r["factor"],
            )
    return None
