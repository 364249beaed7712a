"""This month's operator numbers that the usage intervals do not hold: refusals by rule, idle-allocated GPU-hours.

Both are durable rows in the hub database (migration 0500), so ``/hub/operators`` and ``gpuhub quota status``
read the same numbers through the same function, :func:`month_report`, whatever restarted in between.

**Refusals.** ``gpuhub_spawn_refusals`` is a counter since the ledger began, with no time. Each refusal the
store counts there is also kept as one ``gpuhub_refusal_events`` row (time, org, user, rule id) by
:func:`add_refusal`, in the counter's transaction; the store writes both after the refusal was decided and
outside the deciding transaction, and a failure to write them is logged, never answered (the person still
gets the 4xx and its rule id).

**Idle-allocated GPU-hours.** The idle service (:mod:`gpuhub.hub.idle_service`) reads every held device's idle
seconds (:mod:`quota.idle`: consecutive windows at or under ``idle.gpu_threshold``) once per check and hands
them to :func:`record_idle`: a device idle for ``s`` seconds at ``now`` has been idle since ``now - s`` (never
before its server started); :func:`plan_spans` extends the device's open span while the run goes on, or closes
it and opens a new one when the run was broken. A span's GPU-hours are ``ended_at - started_at``, where
``ended_at`` is the last check that still found it idle. This month's figure clips each span to the month.

How it relates to Prometheus: ``increase(gpuhub_gpu_idle_allocated_seconds_total[month]) / 3600`` from the GPU
exporter counts every sample at or under the threshold (also dips shorter than a window, and a MIG unit as its
memory share), and restarts with the exporter. The figure here counts only whole idle windows as the culler
sees them, each unit as one GPU, so it is a durable lower bound: per idle run it misses at most the run's first
window plus the partial one, and up to one check interval at the end (about 2 to 3 windows with the defaults).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from gpuhub.core.periods import month_bounds, month_bounds_at, parse_period, period_of, utc
from quota.models import idle_spans, refusal_events
from quota.policy import current_id

SP = idle_spans.c
RE = refusal_events.c


# ---------------------------------------------------------------- pure: spans and month sums


@dataclass(frozen=True)
class IdleReading:
    """One held device at one check of the idle service: ``idle_seconds`` None or 0 means not idle (or no data)."""

    interval_id: int
    device_uuid: str
    server_key: str
    user: str
    org: str | None
    model: str | None
    started_at: datetime  # the server's interval start: a span never starts before it
    idle_seconds: float | None


@dataclass(frozen=True)
class OpenSpan:
    id: int
    started_at: datetime
    ended_at: datetime


@dataclass
class SpanPlan:
    extend: list[int] = field(default_factory=list)  # open spans still idle: ended_at = now
    close: list[int] = field(default_factory=list)  # open spans whose run ended (busy, no data, server gone)
    open: list[dict] = field(default_factory=list)  # new spans (rows of gpuhub_idle_spans)


def plan_spans(spans: Mapping[tuple[int, str], OpenSpan], readings: Iterable[IdleReading], now: datetime) -> SpanPlan:
    """What one check changes. A run continues when its reading's idle start is no later than the open span's
    last idle check; otherwise the span closes and a new one opens (never overlapping the old one)."""
    plan, seen = SpanPlan(), set()
    for r in readings:
        key = (r.interval_id, r.device_uuid)
        seen.add(key)
        cur = spans.get(key)
        if not r.idle_seconds or r.idle_seconds <= 0:
            if cur is not None:
                plan.close.append(cur.id)
            continue
        since = max(now - timedelta(seconds=r.idle_seconds), utc(r.started_at))
        if cur is not None and since <= cur.ended_at:
            plan.extend.append(cur.id)
            continue
        if cur is not None:
            plan.close.append(cur.id)
            since = max(since, cur.ended_at)
        row = dict(interval_id=r.interval_id, device_uuid=r.device_uuid, server_key=r.server_key, user=r.user)
        plan.open.append(row | dict(org=r.org, model=r.model, started_at=since, ended_at=now, is_open=True))
    plan.close += [cur.id for key, cur in spans.items() if key not in seen]
    return plan


def clipped_seconds(start: datetime, end: datetime, lo: datetime, hi: datetime) -> float:
    """Seconds of [start, end) inside [lo, hi)."""
    return max(0.0, (min(end, hi) - max(start, lo)).total_seconds())


def idle_hours_by_org(spans: Iterable[Mapping], lo: datetime, hi: datetime) -> dict[str, float]:
    """{org: idle-allocated GPU-hours in [lo, hi)}; a span of no organization counts under ``""``."""
    out: dict[str, float] = {}
    for s in spans:
        org = s["org"] or ""
        out[org] = out.get(org, 0.0) + clipped_seconds(s["started_at"], s["ended_at"], lo, hi) / 3600.0
    return out


def refusals_by_org(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """{org: {rule id: n}} from (org, rule, n) rows; an id an older release stored counts under today's."""
    out: dict[str, dict[str, int]] = {}
    for org, rule, n in rows:
        rules = out.setdefault(org or "", {})
        rid = current_id(rule)
        rules[rid] = rules.get(rid, 0) + int(n)
    return out


def by_rule(refusals: Mapping[str, Mapping[str, int]]) -> list[tuple[str, int]]:
    """[(rule id, n)] over all organizations, most frequent first."""
    total: dict[str, int] = {}
    for rules in refusals.values():
        for rule, n in rules.items():
            total[rule] = total.get(rule, 0) + n
    return sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------- the database


def add_refusal(conn: Connection, at: datetime, org: str, user: str | None, rule_id: str) -> None:
    """One refusal event (called by :meth:`quota.store.QuotaStore.record_refusal` beside its counter)."""
    conn.execute(insert(refusal_events).values(at=utc(at), org=org, user=(user or "")[:255], rule=rule_id))


def record_idle(store, readings: Iterable[IdleReading], now: datetime | None = None) -> SpanPlan:
    """Apply one check of the idle service (all held devices' readings) to ``gpuhub_idle_spans``; one write
    transaction, and none at all when no device is idle or was."""
    now = utc(now) if now is not None else store.now()
    readings = list(readings)

    q = select(SP.id, SP.interval_id, SP.device_uuid, SP.started_at, SP.ended_at).where(SP.is_open.is_(True))
    rows = store._read(lambda conn: conn.execute(q).all())  # the idle service is the only writer of spans
    plan = plan_spans({(r.interval_id, r.device_uuid): OpenSpan(r.id, r.started_at, r.ended_at) for r in rows},
                      readings, now)  # fmt: skip

    def run(conn: Connection) -> SpanPlan:
        if plan.close:
            conn.execute(update(idle_spans).where(SP.id.in_(plan.close)).values(is_open=False))
        if plan.extend:
            conn.execute(update(idle_spans).where(SP.id.in_(plan.extend)).values(ended_at=now))
        if plan.open:
            conn.execute(insert(idle_spans), plan.open)
        return plan

    # no write transaction (SQLite: no write lock beside the hub's allocations) when no device is or was idle
    return store._write(run) if plan.close or plan.extend or plan.open else plan


def month_report(store, now: datetime | None = None, period: str | None = None) -> dict:
    """This month's (or ``period``'s) refusals and idle-allocated GPU-hours, for the operators' page and the CLI.

    ``idle_gpu_hours`` has every organization of the site (0.0 when none idled); ``refusals`` is
    ``{org: {rule: n}}`` with ``""`` for a request that named no organization of the site."""
    now = utc(now) if now is not None else store.now()
    tz = store.site.tz
    lo, hi = month_bounds(*parse_period(period), tz) if period else month_bounds_at(now, tz)

    def run(conn: Connection):
        counted = conn.execute(
            select(RE.org, RE.rule, func.count()).where(RE.at >= lo, RE.at < hi).group_by(RE.org, RE.rule)
        ).all()
        spans = conn.execute(select(SP.org, SP.started_at, SP.ended_at).where(SP.started_at < hi, SP.ended_at > lo))
        return counted, [dict(s) for s in spans.mappings()]

    counted, spans = store._read(run)
    idle = dict.fromkeys(store.site.organizations, 0.0) | idle_hours_by_org(spans, lo, min(hi, now))
    refusals = refusals_by_org(counted)
    return {
        "period": period or period_of(now, tz),
        "idle_gpu_hours": {k: round(v, 6) for k, v in idle.items()},
        "refusals": refusals,
        "refusals_by_rule": by_rule(refusals),
    }


def report_table(report: dict) -> str:
    """The month's lines under ``gpuhub quota status``'s table (plain text, English as the CLI is)."""
    lines = [f"this month ({report['period']}): idle-allocated GPU-hours per org, refusals by rule"]
    lines += [f"  idle  {org or '-'}  {h:.2f}" for org, h in report["idle_gpu_hours"].items()]
    lines += [f"  refused  {rule}  {n}" for rule, n in report["refusals_by_rule"]] or ["  refused  none"]
    return "\n".join(lines)
