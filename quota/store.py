"""The quota store: allocation, release and the usage ledger in the hub database (thin adapter).

Every allocation reads the holdings, decides with :func:`quota.policy.decide` and writes the device
rows plus the open usage interval in ONE transaction, serialised per database: SQLite takes the
write lock up front (``BEGIN IMMEDIATE``), PostgreSQL locks the single ``gpuhub_alloc_lock`` row
``FOR UPDATE`` before it reads the holdings (the month's usage is read just before the lock). The
device primary key is the last line of defence: a duplicate can never commit.
Transient conflicts (busy, serialisation, deadlock, key clash) are retried; an unreachable database
raises :class:`QuotaUnavailable` so the spawner fails closed instead of handing out GPUs unrecorded.

Refusals are :class:`quota.policy.Refusal` (``QuotaRefused`` here, the same class); each one is counted
in ``gpuhub_spawn_refusals`` under its rule id, with the organization only when the site has it (so a
made-up ``org`` cannot add label values to ``gpuhub_spawn_refusals_total``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, case, delete, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gpuhub.core.keys import server_key as key_of
from gpuhub.core.periods import month_bounds_at, month_of, period_key, utc, utcnow
from gpuhub.core.site import Device, Site
from quota import budget as budget_rules
from quota import policy, reservations
from quota.db import make_engine, retry_pause, transient, upgrade, write_gate
from quota.models import (
    UtcDateTime,
    alloc_lock,
    allocations,
    budget_warnings,
    spawn_refusals,
    usage_intervals,
    user_ids,
)
from quota.policy import AllocationRequest, Holding, Refusal, Rule, Snapshot, current_id
from quota.reconcile import Adopt, Plan
from quota.sqlexpr import OVERLAP_WHERE, Dialect, timed, window
from quota.usage_records import add_refusal

log = logging.getLogger(__name__)

IV = usage_intervals.c
# How the interval of a server the hub was asked to stop closes: by the spawner's stop ("stopped"), or by the
# reconciler when it sees the container gone during that stop, before the spawner's close ("container-exited").
CLOSED_BY_A_HUB_STOP = ("stopped", "container-exited")

# Statements of the hot path, built once (construction cost more than the round trips).
_LOCK = select(alloc_lock.c.id).where(alloc_lock.c.id == 1).with_for_update()
_HOLDINGS = select(
    allocations.c.device_uuid, allocations.c.server_key, allocations.c.user, allocations.c.org, allocations.c.model
)
_INSERT_INTERVAL = insert(usage_intervals)
_INSERT_ALLOCATIONS = insert(allocations)
_OPEN_ID = select(IV.id).where(IV.server_key == bindparam("key"), IV.ended_at.is_(None)).scalar_subquery()
_PUBLIC = [c for c in usage_intervals.c if c.name not in ("started_us", "ended_us")]  # the contract's columns
# Close the open interval (never before its start) and return it; closed rows are never touched again.
_CLOSE = (
    update(usage_intervals)
    .where(IV.server_key == bindparam("key"), IV.ended_at.is_(None))
    .values(
        ended_at=case(
            (IV.started_at > bindparam("at", type_=UtcDateTime), IV.started_at),
            else_=bindparam("at", type_=UtcDateTime),
        ),
        end_reason=bindparam("reason"),
    )
    .returning(*_PUBLIC)
)
_FREE = delete(allocations).where(allocations.c.server_key == bindparam("key"))


QuotaRefused = Refusal  # what the store raises: the policy's one refusal class, under the name its callers catch


class QuotaUnavailable(Exception):
    """The quota database cannot be reached; GPU spawns must be refused until it is back."""


@dataclass(frozen=True)
class Grant:
    server_key: str
    devices: list[str]
    model: str | None
    weight: float
    interval_id: int
    started_at: datetime | None = None
    warnings: tuple[str, ...] = ()  # e.g. "org has used 83 % of its budget" (for the spawn progress page)
    node_id: str | None = None  # hub.engine swarm: the Swarm node that holds ``devices`` (quota.placement)
    node: str | None = None  # its hostname


def _hold(conn: Connection, who, key: str, devices, model, weight: float, started_at, heartbeat_at) -> int:
    """Open ``key``'s usage interval and allocate ``devices`` to it from ``started_at``; returns the interval id.

    ``who`` (an allocation request or an adopted container) gives the user, server name, org and image."""
    interval_id = conn.execute(
        _INSERT_INTERVAL,
        dict(
            server_key=key,
            user=who.user,
            server_name=who.server_name,
            org=who.org,
            image=who.image,
            device_uuids=",".join(devices),
            gpus=len(devices),
            model=model,
            weight=weight,
            started_at=started_at,
            heartbeat_at=heartbeat_at,
        ),
    ).inserted_primary_key[0]
    if devices:
        conn.execute(
            _INSERT_ALLOCATIONS,
            [
                dict(
                    device_uuid=d,
                    server_key=key,
                    user=who.user,
                    org=who.org,
                    model=model or "",
                    interval_id=interval_id,
                    allocated_at=started_at,
                )
                for d in devices
            ],
        )
    return interval_id


class QuotaStore:
    """Quota state in ``engine``'s database; ``clock()`` returns an aware UTC datetime."""

    def __init__(
        self,
        engine: Engine,
        site: Site,
        clock: Callable[[], datetime] = utcnow,
        inventory: Callable[[], Iterable[Device]] | Iterable[Device] | None = None,
        max_attempts: int = 20,
        retry_seconds: float = 30.0,
        offers: Callable[[], Iterable] | None = None,
    ):
        self.engine, self.site, self.clock = engine, site, clock
        self._inventory = inventory
        # hub.engine swarm: the nodes' offers (quota.placement.NodeOffer), read for each decision; they replace
        # the inventory, so a server's devices are all on one node and a drained or down node offers nothing
        self.offers = offers
        self.max_attempts, self.retry_seconds = max_attempts, retry_seconds
        self.sql = Dialect(engine.dialect.name)

    @classmethod
    def from_site(cls, site: Site, clock: Callable[[], datetime] = utcnow, **kw) -> QuotaStore:
        """The store on the hub database of ``site``, migrated to the latest schema."""
        url = site.hub.database_url
        if url.startswith("sqlite") and site.hub.db_url is None:
            site.hub.state_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url)
        upgrade(engine)
        return cls(engine, site, clock, **kw)

    # ------------------------------------------------------------------ plumbing

    def now(self) -> datetime:
        return utc(self.clock())

    def inventory(self) -> tuple[Device, ...]:
        inv = self._inventory
        if self.offers is not None:
            return tuple(d for o in self.offers() for d in o.devices)
        if inv is None:
            return self.site.gpus.devices
        return tuple(inv() if callable(inv) else inv)

    def _unavailable(self, e: Exception) -> QuotaUnavailable:
        url = self.engine.url.render_as_string(hide_password=True)
        detail = str(getattr(e, "orig", e) or e).strip().splitlines()[0][:200]
        return QuotaUnavailable(
            f"quota database {url} is unavailable ({type(e).__name__}: {detail}); GPU servers cannot be "
            "started or recorded until it is back; check that the database is running (hub.db_url)"
        )

    def _lock(self, conn: Connection) -> None:
        """Serialise allocation decisions (SQLite: BEGIN IMMEDIATE already holds the write lock)."""
        if self.sql.name == "postgresql":
            conn.execute(_LOCK)

    def _write(self, fn: Callable[[Connection], object], *, lock: bool = False):
        """Run ``fn(conn)`` in one write transaction, retrying transient conflicts for a bounded time."""
        give_up = time.monotonic() + self.retry_seconds
        for attempt in range(self.max_attempts):
            try:
                with write_gate(self.engine), self.engine.connect() as conn:  # one queue per engine (quota.db)
                    conn.execution_options(quota_write=True)
                    with conn.begin():
                        if lock:
                            self._lock(conn)
                        return fn(conn)
            except DBAPIError as e:
                if transient(e) and attempt + 1 < self.max_attempts and time.monotonic() < give_up:
                    retry_pause(attempt)
                    continue
                if isinstance(e, IntegrityError):
                    raise
                raise self._unavailable(e) from e
            except PoolTimeout as e:
                raise self._unavailable(e) from e
        raise AssertionError("unreachable")

    def _read(self, fn: Callable[[Connection], object]):
        try:
            with self.engine.connect() as conn, conn.begin():
                return fn(conn)
        except (DBAPIError, PoolTimeout) as e:
            raise self._unavailable(e) from e

    # ------------------------------------------------------------------ allocation

    def allocate(self, req: AllocationRequest, *, count: bool = True) -> Grant:
        """Take devices for ``req`` and open its usage interval, or raise (and count) its :class:`Refusal`.

        ``req.groups`` are the user's hub groups, through which membership may come (``idp_groups``).
        The rules that need only the site are checked before the transaction, the rest inside it.
        ``count=False``: the caller decides whether the refusal is one (a request that waits in the GPU queue
        is not; :meth:`count_refusal_quietly` counts one that is).
        """
        checked = policy.check(self.site, req)
        if isinstance(checked, Refusal):
            if count:
                self.count_refusal_quietly(req, checked)
            raise checked
        out = self._write(lambda conn: self._allocate(conn, checked))
        if isinstance(out, Refusal):  # counted after the deciding transaction: a failed count is no failed answer
            if count:
                self.count_refusal_quietly(req, out)
            raise out
        return out

    def _allocate(self, conn: Connection, req: AllocationRequest) -> Grant | Refusal:
        now = self.now()
        # Read before taking the lock, to keep the serialised part short: a grant committed meanwhile adds
        # no usage at its start instant, and a second open interval for the key fails the unique index.
        if req.org and isinstance(req.gpus, int) and req.gpus > 0:
            is_open, used = self._open_and_usage(conn, req.server_key, req.org, now)
        else:
            is_open, used = conn.execute(select(_OPEN_ID), {"key": req.server_key}).scalar(), 0.0
        self._lock(conn)
        holdings = tuple(Holding(*r) for r in conn.execute(_HOLDINGS))
        offers = tuple(self.offers()) if self.offers is not None and req.gpus else None
        inventory = () if offers is not None else self.inventory()
        reserved: dict = {}
        if offers is None and req.gpus and self.site.queue.reservations:  # class windows (quota.reservations)
            reserved, inventory = self._reservations(req, inventory, now)
        opened = frozenset({req.server_key}) if is_open else frozenset()
        snap = Snapshot(holdings, used, opened, inventory, offers, reserved)
        decision = policy.decide(self.site, req, snap)
        if isinstance(decision, Refusal):
            return decision
        interval_id = _hold(conn, req, req.server_key, decision.devices, decision.model, decision.weight, now, now)
        note = ()
        if decision.devices:
            org = self.site.organizations[req.org]
            msg = budget_rules.admission_note(org.key, org.gpu_hours_per_month, used, self.site.quota.warn_fractions)
            note = (msg,) if msg else ()
        return Grant(
            req.server_key, list(decision.devices), decision.model, decision.weight, interval_id, now, note,
            decision.node_id, decision.node,
        )  # fmt: skip

    def _reservations(self, req: AllocationRequest, inventory: tuple, now: datetime) -> tuple[dict, tuple]:
        """Devices a class window open now keeps from ``req`` and ``inventory`` in its preference order."""
        site = self.site
        courses = [c for c in site.courses_of(req.user, req.groups) if site.courses[c].org == req.org]
        full = site.gpus.devices or inventory
        return reservations.for_allocation(site.queue.reservations, site.tz, full, inventory, courses, now.timestamp())

    def record_refusal(self, org: str | None, rule: Refusal | Rule | str, user: str | None = None) -> None:
        """Count a refusal decided outside the store (the spawner's parsing of ``user_options``), and keep it as
        an event of ``user``'s (:mod:`quota.usage_records`: this month's refusals by rule).

        ``rule`` is the refusal, its rule or its id; an id that is not in the rule table is refused
        (ValueError), so the counter and the metric only ever carry the table's ids.
        """
        if isinstance(rule, Refusal):
            org, rule_id = rule.org or org, rule.rule
        else:
            rule_id = (rule if isinstance(rule, Rule) else Rule.of(rule)).id
        self._write(lambda conn: self._bump_refusal(conn, org, rule_id, user))

    def count_refusal_quietly(self, req: AllocationRequest, refusal: Refusal) -> None:
        """Count ``refusal`` of ``req`` (as :meth:`allocate` does unless ``count=False``); neither an outage nor a
        failed write may hide the refusal's own reason."""
        try:
            self.record_refusal(req.org, refusal, req.user)
        except Exception as e:  # noqa: BLE001 (the refusal is the answer; its count is bookkeeping)
            log.warning("refusal %s not counted: %s", refusal.rule, e)

    def _bump_refusal(self, conn: Connection, org: str | None, rule_id: str, user: str | None = None) -> None:
        label = org if isinstance(org, str) and org in self.site.organizations else ""
        ins = (sqlite_insert if self.sql.name == "sqlite" else pg_insert)(spawn_refusals)
        conn.execute(
            ins.values(org=label, reason=rule_id, count=1).on_conflict_do_update(
                index_elements=["org", "reason"], set_={"count": spawn_refusals.c.count + 1}
            )
        )
        add_refusal(conn, self.now(), label, user, rule_id)

    def adopt(self, a: Adopt) -> Grant:
        """Record a running container found by the reconciler (``unknown_containers: adopt``)."""

        def run(conn):
            held = set(
                conn.execute(
                    select(allocations.c.device_uuid).where(allocations.c.device_uuid.in_(a.devices))
                ).scalars()
            )
            key = key_of(a.user, a.server_name)
            if held or conn.execute(select(IV.id).where(IV.server_key == key, IV.ended_at.is_(None))).first():
                return Rule.ADOPT_CONFLICT.refuse(container=a.container, held=sorted(held), key=key)
            model = a.model if a.devices else None
            weight = self.site.weight_of(model) if model in self.site.gpus.models else (1.0 if model else 0.0)
            start = min(utc(a.started_at), self.now())
            iid = _hold(conn, a, key, a.devices, model, weight, start, self.now())
            return Grant(key, list(a.devices), model, weight, iid, start)

        out = self._write(run, lock=True)
        if isinstance(out, Refusal):
            raise out
        return out

    # ------------------------------------------------------------------ release / ledger upkeep

    def release(self, server_key: str, at: datetime | None = None, reason: str = "stopped") -> dict | None:
        """Close ``server_key``'s open interval at ``at`` (default now) and free its devices.

        Idempotent: returns the closed interval as a dict, or None when nothing was open.
        """
        at = utc(at) if at is not None else self.now()

        def run(conn):
            row = conn.execute(_CLOSE, {"key": server_key, "at": at, "reason": reason}).mappings().first()
            conn.execute(_FREE, {"key": server_key})
            return dict(row) if row else None

        return self._write(run)

    def apply_plan(self, plan: Plan) -> dict:
        """Apply a reconcile plan's ledger side (closes, adoptions); stopping containers is the caller's job."""
        # a container that ended at c.at (Docker's finish time) while nobody was watching
        closed = [self.release(c.server_key, c.at, c.reason) for c in plan.close]
        adopted, refused = [], []
        for a in plan.adopt:
            try:
                adopted.append(self.adopt(a))
            except QuotaRefused as e:
                refused.append((a.container, e.message))
        return {"closed": [c for c in closed if c], "adopted": adopted, "refused": refused}

    def heartbeat(self, now: datetime | None = None, server_keys: Iterable[str] | None = None) -> int:
        """Mark open intervals (all, or ``server_keys``) as seen alive at ``now``; returns rows touched."""
        now = utc(now) if now is not None else self.now()
        stmt = update(usage_intervals).where(IV.ended_at.is_(None))
        if server_keys is not None:
            stmt = stmt.where(IV.server_key.in_(list(server_keys)))
        return self._write(lambda conn: conn.execute(stmt.values(heartbeat_at=now)).rowcount)

    # ------------------------------------------------------------------ reads

    def open_intervals(self) -> list[dict]:
        q = select(*_PUBLIC).where(IV.ended_at.is_(None)).order_by(IV.id)
        return self._read(lambda conn: [dict(r) for r in conn.execute(q).mappings()])

    def recently_closed(self, since: datetime) -> list[dict]:
        q = select(*_PUBLIC).where(IV.ended_at >= utc(since)).order_by(IV.id)
        return self._read(lambda conn: [dict(r) for r in conn.execute(q).mappings()])

    def holdings(self) -> list[dict]:
        q = select(allocations).order_by(allocations.c.device_uuid)
        return self._read(lambda conn: [dict(r) for r in conn.execute(q).mappings()])

    def refusal_counts(self) -> dict[tuple[str, str], int]:
        """{(org, rule id): count}; counts an older release stored under a former id are added to the current one."""

        def run(conn):
            counts: dict[tuple[str, str], int] = {}
            for r in conn.execute(select(spawn_refusals)):
                key = (r.org, current_id(r.reason))
                counts[key] = counts.get(key, 0) + r.count
            return counts

        return self._read(run)

    def _usage(
        self, conn: Connection, now: datetime, org: str | None = None, month_at: datetime | None = None
    ) -> dict[str, float]:
        """Weighted GPU-seconds per org in the month containing ``month_at`` (default ``now``)."""
        lo, hi = month_bounds_at(month_at or now, self.site.tz)
        where = OVERLAP_WHERE + " AND gpus > 0 AND org IS NOT NULL" + (" AND org = :org" if org else "")
        q = timed(
            f"SELECT org, sum(gpus * weight * ({self.sql.clipped_us()})) FROM gpuhub_usage_intervals "
            f"WHERE {where} GROUP BY org"
        )
        params = window(lo, hi, now) | ({"org": org} if org else {})
        return {o: float(us or 0) / 1e6 for o, us in conn.execute(q, params)}

    def _open_and_usage(self, conn: Connection, key: str, org: str, now: datetime) -> tuple[bool, float]:
        """One round trip: is ``key`` open, and ``org``'s weighted GPU-seconds this month."""
        lo, hi = month_bounds_at(now, self.site.tz)
        q = timed(
            f"SELECT (SELECT id FROM gpuhub_usage_intervals WHERE server_key = :key AND ended_at IS NULL), "
            f"(SELECT sum(gpus * weight * ({self.sql.clipped_us()})) FROM gpuhub_usage_intervals "
            f"WHERE org = :org AND gpus > 0 AND {OVERLAP_WHERE})"
        )
        is_open, us = conn.execute(q, window(lo, hi, now) | {"key": key, "org": org}).one()
        return is_open is not None, float(us or 0) / 1e6

    def org_usage(self, org: str, month_of: datetime | None = None) -> float:
        """Weighted GPU-seconds of ``org`` in the month containing ``month_of`` (default now), open intervals to now."""
        now = self.now()
        at = utc(month_of) if month_of is not None else None
        return self._read(lambda conn: self._usage(conn, now, org=org, month_at=at)).get(org, 0.0)

    def usage_by_org(self, month_of: datetime | None = None) -> dict[str, float]:
        now = self.now()
        at = utc(month_of) if month_of is not None else None
        return self._read(lambda conn: self._usage(conn, now, month_at=at))

    def status(self, now: datetime | None = None) -> dict:
        """Per org (GPUs in use/limit, budget used/remaining, running servers) and per device (holder)."""
        now = utc(now) if now is not None else self.now()

        def run(conn):
            held = [dict(r) for r in conn.execute(select(allocations)).mappings()]
            running = [
                dict(r) for r in conn.execute(select(*_PUBLIC).where(IV.ended_at.is_(None)).order_by(IV.id)).mappings()
            ]
            return held, running, self._usage(conn, now)

        held, running, usage = self._read(run)
        orgs = {}
        for key, org in self.site.organizations.items():
            used_h = usage.get(key, 0.0) / 3600.0
            orgs[key] = {
                "display_name": org.display_name,
                "gpus_in_use": sum(1 for h in held if h["org"] == key),
                "gpu_limit": org.gpu_limit,
                "budget_gpu_hours": org.gpu_hours_per_month,
                "used_gpu_hours": round(used_h, 6),
                "remaining_gpu_hours": round(org.gpu_hours_per_month - used_h, 6),
                "running_servers": [_server(r, now) for r in running if r["org"] == key],
            }
        by_uuid = {h["device_uuid"]: h for h in held}
        inventory = self.inventory()
        known = {d.uuid for d in inventory}
        devices = [{"uuid": d.uuid, "model": d.model, "holder": _holder(by_uuid.get(d.uuid))} for d in inventory]
        devices += [
            {"uuid": u, "model": h["model"], "holder": _holder(h), "not_in_inventory": True}
            for u, h in sorted(by_uuid.items())
            if u not in known
        ]
        y, m = month_of(now, self.site.tz)
        return {
            "period": period_key(y, m),
            "at": now.isoformat(),
            "orgs": orgs,
            "devices": devices,
            "servers_without_org": [_server(r, now) for r in running if r["org"] not in orgs],
        }

    # ------------------------------------------------------------------ budgets

    def announced_warnings(self, org: str, now: datetime | None = None) -> frozenset[float]:
        """Budget fractions already announced for ``org`` in the month containing ``now``."""
        period = self._period(now)
        q = select(budget_warnings.c.fraction).where(budget_warnings.c.org == org, budget_warnings.c.period == period)
        return self._read(lambda conn: frozenset(conn.execute(q).scalars()))

    def announce_warning(self, org: str, fraction: float, now: datetime | None = None, message: str = "") -> bool:
        """Record that ``fraction`` was announced this month; False when it already was (announce once)."""
        now = utc(now) if now is not None else self.now()
        period = self._period(now)
        used_h = self.org_usage(org, now) / 3600.0
        budget_h = self.site.organizations[org].gpu_hours_per_month if org in self.site.organizations else 0.0

        def run(conn):
            ins = (sqlite_insert if self.sql.name == "sqlite" else pg_insert)(budget_warnings)
            res = conn.execute(
                ins.values(
                    org=org,
                    period=period,
                    fraction=float(fraction),
                    used_gpu_hours=used_h,
                    budget_gpu_hours=budget_h,
                    announced_at=now,
                    message=message[:2000],
                )
                .on_conflict_do_nothing()
                .returning(budget_warnings.c.org)
            )
            return res.first() is not None

        return self._write(run)

    def _period(self, now: datetime | None) -> str:
        return period_key(*month_of(utc(now) if now is not None else self.now(), self.site.tz))

    def budget_warnings(self, period: str | None = None) -> list[dict]:
        q = select(budget_warnings).order_by(budget_warnings.c.org, budget_warnings.c.fraction)
        if period:
            q = q.where(budget_warnings.c.period == period)
        return self._read(lambda conn: [dict(r) for r in conn.execute(q).mappings()])

    # ------------------------------------------------------------------ user ids

    def uid_for(self, user: str, first_uid: int = 20000) -> int:
        """A stable numeric uid per user, never reused (for file ownership in shared volumes)."""

        def run(conn):
            uid = conn.execute(select(user_ids.c.uid).where(user_ids.c.user == user)).scalar()
            if uid is None:
                top = conn.execute(text("SELECT max(uid) FROM gpuhub_user_ids")).scalar()
                uid = max(first_uid, (top or 0) + 1)
                conn.execute(insert(user_ids).values(user=user, uid=uid, created_at=self.now()))
            return uid

        return self._write(run, lock=True)

    # ------------------------------------------------------------------ idle culls (gpuhub.hub.idle_service)

    def set_end_reason(self, interval_id: int, reason: str, replaces: tuple[str, ...] = CLOSED_BY_A_HUB_STOP) -> str:
        """Name why a culled server stopped: a stop the hub carried out closes as one of ``replaces``; the
        loop that asked for the stop turns that into ``reason`` (``gpu-idle``, ``http-idle``,
        ``reservation-window``). Only the reason changes, never the times or charges. Returns ``open`` (not
        closed yet), ``set`` or ``other`` (closed for a reason the stop did not cause)."""

        def run(conn):
            row = conn.execute(select(IV.ended_at, IV.end_reason).where(IV.id == interval_id)).first()
            if row is None or row.ended_at is None:
                return "open" if row is not None else "other"
            if row.end_reason not in replaces:
                return "set" if row.end_reason == reason else "other"
            conn.execute(
                update(usage_intervals)
                .where(IV.id == interval_id, IV.end_reason.in_(replaces))
                .values(end_reason=reason)
            )
            return "set"

        return self._write(run)


def _server(r: dict, now: datetime) -> dict:
    return {
        "server_key": r["server_key"],
        "user": r["user"],
        "gpus": r["gpus"],
        "model": r["model"],
        "devices": [d for d in r["device_uuids"].split(",") if d],
        "image": r["image"],
        "started_at": r["started_at"].isoformat(),
        "running_seconds": max(0.0, (now - r["started_at"]).total_seconds()),
    }


def _holder(h: dict | None) -> dict | None:
    return None if h is None else {"server_key": h["server_key"], "user": h["user"], "org": h["org"]}
