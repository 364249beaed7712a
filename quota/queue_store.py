"""The GPU queue in the hub database: durable requests, their order, grants and the wait histogram.

A GPU request refused only because GPUs are busy is stored here with the ``user_options`` it will be started
with; its row lives in ``gpuhub_queue`` (quota.models) next to the ledger, so a hub restart (``kill -9``
included) finds every request in the same order. States: ``queued`` -> ``granted`` (devices chosen, server not
yet started) -> ``served``; ``queued``/``granted`` -> ``cancelled`` (its owner) or ``expired`` (waited past
``quota.max_queue_wait_minutes``); ``granted`` -> ``queued`` again when the start failed (its place kept).
At most one active (queued or granted) row per server: the partial unique index is the guarantee.

:meth:`QueueStore.pop_next` chooses by :func:`quota.queue_order.choose` and marks the winner ``granted`` in ONE
write transaction serialised with the quota store's allocations (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: the
same ``gpuhub_alloc_lock`` row ``FOR UPDATE``), reading inside it what is allocated (``gpuhub_allocations``) and
what is promised to other granted rows (fair share is read just before, as QuotaStore reads the month's usage);
so two poppers (two hub processes, or two threads) can never hand out one request, or one device, twice.

The spawn path (next step; a thin adapter, nothing of it lives here)::

    qs = QueueStore(engine, site)                  # the hub's engine, as QuotaStore's
    # GpuhubSpawner.start(), on a Refusal whose status is 429 and user_options.get("queue", True):
    entry = qs.enqueue(key, user, server_name, org, gpus, model, user_options, courses=courses_charged_to_org)
    # ... then wait in start() (progress() shows qs.position(entry.id) every <= 10 s) until the loop below has
    # marked the entry served, or until it is cancelled / expired (its message becomes the spawn's error).
    # One loop per hub (the quota service), every few seconds and whenever a server stops:
    qs.expire()                                    # ends requests past max wait, with the reason
    while (g := qs.pop_next(quota_store.inventory())) is not None:
        try:                                       # allocate exactly the granted devices:
            QuotaStore(engine, site, inventory=g.device_objects).allocate(request_from(g.user_options))
            start the server of g.server_key with g.user_options (JupyterHub API), then qs.mark_served(g.id)
        except Refusal / start failure:
            qs.requeue(g.id)                       # back in line at its old place
    # After a restart: qs.recover() puts granted rows older than ``stale_seconds`` back in line (a row whose
    # server is already running is marked served by the adapter instead: qs.mark_served(id)).
    # DELETE of the pending server -> qs.cancel(server_key=key).
    # Direct (not queued) allocations leave promised devices alone: QuotaStore(inventory=lambda: [d for d in
    # inventory if d.uuid not in qs.promised()]), so a grant's devices are still free when its server starts.

Times are aware UTC datetimes at the edges and Unix seconds inside :mod:`quota.queue_order`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from gpuhub.core.periods import utc, utcnow
from quota import queue_listing, queue_waits
from quota import queue_order as order
from quota import reservations as rsv
from quota.db import make_engine, run_write, upgrade
from quota.models import allocations, queue, usage_intervals
from quota.placement import node_of_devices

Q = queue.c
ACTIVE = ("queued", "granted")
AGE_SCALE_FRACTION = 0.5  # A = this x quota.max_queue_wait_minutes (quota.queue_order)
USAGE_HORIZON_HALF_LIVES = 10  # usage older than this many half-lives weighs < 0.1 % and is not read
_LOCK = text("SELECT id FROM gpuhub_alloc_lock WHERE id = 1 FOR UPDATE")

REASONS = {
    order.NO_DEVICE: "no {model} GPU was free",
    order.ORG_LIMIT: "organization {org!r} was at its gpu_limit ({limit} GPUs)",
    order.USER_LIMIT: "{user} held the most GPUs one user may hold (gpus.max_gpus_per_user = {user_limit})",
    order.HELD_BACK: "the free {model} GPUs were held for a request that has waited longer",
}


class AlreadyQueued(Exception):
    """The server already has a queued or granted request; cancel it first (DELETE the pending server)."""


@dataclass(frozen=True)
class QueueEntry:
    id: int
    server_key: str
    user: str
    server_name: str
    org: str
    model: str | None
    gpus: int
    courses: tuple[str, ...]
    user_options: dict
    arrived_at: datetime
    state: str
    devices: tuple[str, ...] = ()
    granted_at: datetime | None = None
    ended_at: datetime | None = None
    message: str | None = None

    def as_request(self) -> order.Request:
        return order.Request(
            self.id,
            self.org,
            self.user,
            self.gpus,
            self.model,
            self.arrived_at.timestamp(),
            self.courses,
            self.server_key,
        )


@dataclass(frozen=True)
class Granted:
    """What :meth:`QueueStore.pop_next` hands out: start ``server_key`` with ``user_options`` on ``devices``."""

    entry: QueueEntry
    devices: tuple[str, ...]
    device_objects: tuple  # the inventory's Device objects of ``devices`` (for QuotaStore(inventory=...))
    model: str

    @property
    def id(self) -> int:
        return self.entry.id

    @property
    def server_key(self) -> str:
        return self.entry.server_key

    @property
    def user_options(self) -> dict:
        return self.entry.user_options


def _entry(r) -> QueueEntry:
    return QueueEntry(
        id=r.id,
        server_key=r.server_key,
        user=r.user,
        server_name=r.server_name,
        org=r.org,
        model=r.model,
        gpus=r.gpus,
        courses=tuple(c for c in (r.courses or "").split(",") if c),
        user_options=json.loads(r.user_options),
        arrived_at=r.arrived_at,
        state=r.state,
        devices=tuple(d for d in (r.devices or "").split(",") if d),
        granted_at=r.granted_at,
        ended_at=r.ended_at,
        message=r.message,
    )


class QueueStore:
    """The queue in ``engine``'s database (the hub database); ``clock()`` returns an aware UTC datetime."""

    def __init__(
        self,
        engine: Engine,
        site,
        clock: Callable[[], datetime] = utcnow,
        retry_seconds: float = 30.0,
        offers: Callable[[], Iterable] | None = None,
    ):
        self.engine, self.site, self.clock, self.retry_seconds = engine, site, clock, retry_seconds
        # hub.engine swarm: the nodes' offers (quota.placement.NodeOffer). A grant's devices are then all on one
        # node, and devices of a node that takes no servers (drained, paused, down) are never granted.
        self.offers = offers

    @classmethod
    def from_site(cls, site, clock: Callable[[], datetime] = utcnow, migrate: bool = True) -> QueueStore:
        if migrate and site.hub.db_url is None:  # the default SQLite file lives in the state folder
            site.hub.state_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(site.hub.database_url)
        if migrate:
            upgrade(engine)
        return cls(engine, site, clock)

    @property
    def age_scale(self) -> float:
        return AGE_SCALE_FRACTION * self.site.queue.max_wait_seconds

    def now(self) -> datetime:
        return utc(self.clock())

    # ------------------------------------------------------------------ plumbing

    def _write(self, fn: Callable[[Connection], object], *, lock: bool = False):
        """``fn(conn)`` in one write transaction (serialised with allocations when ``lock``); transient conflicts
        are retried for ``retry_seconds`` (integrity conflicts are not: one active entry per server)."""

        def allocation_lock(conn: Connection) -> None:
            if lock and conn.dialect.name == "postgresql":
                conn.execute(_LOCK)

        return run_write(
            self.engine, fn, first=allocation_lock, retry_seconds=self.retry_seconds, retry_conflicts=False
        )

    def _read(self, fn: Callable[[Connection], object]):
        """``fn(conn)`` in one read transaction; once more on a fresh connection when the pooled one had died (a
        database restart: the spawn path reads the queue before every GPU start)."""
        for attempt in (1, 2):
            try:
                with self.engine.connect() as conn, conn.begin():
                    return fn(conn)
            except DBAPIError as e:
                if attempt == 2 or not e.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ requests

    def enqueue(
        self,
        server_key: str,
        user: str,
        server_name: str,
        org: str,
        gpus: int,
        model: str | None,
        user_options: dict,
        *,
        courses: Iterable[str] = (),
        arrived_at: datetime | None = None,
    ) -> QueueEntry:
        """Put a GPU request in line; raises :class:`AlreadyQueued` if the server has one already.

        ``courses``: the courses charged to ``org`` that the user belongs to (``site.courses_of``), whose class
        windows' devices the request may use; ``user_options`` is what the server will be started with."""
        if not isinstance(gpus, int) or gpus < 1:
            raise ValueError(f"only GPU requests queue: gpus must be a whole number >= 1, got {gpus!r}")
        if org not in self.site.organizations:
            raise ValueError(
                f"organization {org!r} is not in the site config; declared: {', '.join(self.site.organizations)}"
            )
        if model is not None and model not in self.site.gpus.models:
            raise ValueError(f"GPU model {model!r} is not offered here; models: {', '.join(self.site.gpus.models)}")
        row = dict(
            server_key=server_key,
            user=user,
            server_name=server_name,
            org=org,
            model=model,
            gpus=gpus,
            courses=",".join(sorted(set(courses))),
            user_options=json.dumps(user_options, sort_keys=True, separators=(",", ":")),
            arrived_at=utc(arrived_at or self.clock()),
            state="queued",
        )
        try:
            new_id = self._write(lambda conn: conn.execute(insert(queue).values(**row)).inserted_primary_key[0])
        except IntegrityError:
            raise AlreadyQueued(
                f"server {server_key!r} is already waiting for GPUs; cancel that request first "
                "(stop the pending server) or wait for it"
            ) from None
        return self.get(new_id)

    def get(self, entry_id: int) -> QueueEntry | None:
        r = self._read(lambda conn: conn.execute(select(queue).where(Q.id == entry_id)).first())
        return _entry(r) if r else None

    def active_for(self, server_key: str) -> QueueEntry | None:
        q = select(queue).where(Q.server_key == server_key, Q.state.in_(ACTIVE))
        r = self._read(lambda conn: conn.execute(q).first())
        return _entry(r) if r else None

    def entries(self, states: Sequence[str] = ACTIVE, user: str | None = None) -> list[QueueEntry]:
        """Rows in ``states`` in arrival order (``user``: only theirs, for a user's own token)."""
        q = select(queue).where(Q.state.in_(list(states)))
        if user is not None:
            q = q.where(Q.user == user)
        return [_entry(r) for r in self._read(lambda conn: conn.execute(q.order_by(Q.id)).all())]

    def promised(self) -> frozenset[str]:
        """Devices granted to queued requests whose servers have not started yet."""
        q = select(Q.devices).where(Q.state == "granted")
        rows = self._read(lambda conn: conn.execute(q).all())
        return frozenset(d for (devs,) in rows for d in (devs or "").split(",") if d)

    def lengths(self) -> dict[str, int]:
        """Queued (not yet granted) requests per org, every site org present."""
        return {org: n for org, (n, _) in self.waiting().items()}

    def waiting(self) -> dict[str, tuple[int, datetime | None]]:
        """Per org (every site org present): queued requests and the arrival of the oldest (None when none)."""
        q = select(Q.org, func.count(), func.min(Q.arrived_at)).where(Q.state == "queued").group_by(Q.org)
        out: dict[str, tuple[int, datetime | None]] = dict.fromkeys(self.site.organizations, (0, None))
        for org, n, oldest in self._read(lambda conn: conn.execute(q).all()):
            if isinstance(oldest, str):  # SQLite's min() of the text column comes back as text
                oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
            out[org] = (n, oldest)
        return out

    # ------------------------------------------------------------------ ending a request

    def _end(self, conn: Connection, e, state: str, at: datetime, message: str | None) -> bool:
        done = conn.execute(
            update(queue).where(Q.id == e.id, Q.state.in_(ACTIVE)).values(state=state, ended_at=at, message=message)
        ).rowcount
        if done:
            waited = ((e.granted_at if state == "served" else None) or at) - e.arrived_at
            queue_waits.observe(conn, state, max(waited.total_seconds(), 0.0))
        return bool(done)

    def _active_row(self, conn: Connection, entry_id: int | None, server_key: str | None):
        q = select(queue).where(Q.state.in_(ACTIVE))
        q = q.where(Q.id == entry_id) if entry_id is not None else q.where(Q.server_key == server_key)
        return conn.execute(q).first()

    def cancel(
        self, entry_id: int | None = None, *, server_key: str | None = None, message: str = "cancelled by its owner"
    ) -> bool:
        """Remove a queued or granted request (and its place); False when there was none."""
        at = self.now()

        def run(conn):
            r = self._active_row(conn, entry_id, server_key)
            return bool(r) and self._end(conn, r, "cancelled", at, message)

        return self._write(run, lock=True)

    def mark_served(self, entry_id: int) -> bool:
        """The granted request's server started (or was found running): the request is done."""
        at = self.now()

        def run(conn):
            r = self._active_row(conn, entry_id, None)
            return bool(r) and r.state == "granted" and self._end(conn, r, "served", at, None)

        return self._write(run, lock=True)

    def requeue(self, entry_id: int) -> bool:
        """A granted request whose start failed goes back in line at its old place (its arrival is kept)."""
        stmt = (
            update(queue)
            .where(Q.id == entry_id, Q.state == "granted")
            .values(state="queued", devices=None, granted_at=None)
        )
        return bool(self._write(lambda conn: conn.execute(stmt).rowcount, lock=True))

    def recover(self, stale_seconds: float = 300.0) -> list[int]:
        """After a restart: granted rows older than ``stale_seconds`` whose server never started go back in line."""
        cutoff = self.now() - timedelta(seconds=stale_seconds)

        def run(conn):
            ids = [i for (i,) in conn.execute(select(Q.id).where(Q.state == "granted", Q.granted_at < cutoff))]
            if ids:
                conn.execute(update(queue).where(Q.id.in_(ids)).values(state="queued", devices=None, granted_at=None))
            return ids

        return self._write(run, lock=True)

    def expire(self, now: datetime | None = None, devices: Sequence | None = None) -> list[QueueEntry]:
        """End queued requests that waited longer than ``quota.max_queue_wait_minutes``, each with a message that
        says how long it waited and why it was not served (``devices``: the inventory, for the reason)."""
        at = utc(now or self.clock())
        limit = self.site.queue.max_wait_seconds
        cutoff = at - timedelta(seconds=limit)
        factors, node_of = self.factors(at), self.node_of()

        def run(conn):
            rows = conn.execute(select(queue).where(Q.state == "queued", Q.arrived_at <= cutoff).order_by(Q.id)).all()
            if not rows:
                return []
            state = self._state(conn, at, devices or self.site.gpus.devices, factors, node_of)
            out = []
            for r in rows:
                e = _entry(r)
                waited = (at - e.arrived_at).total_seconds() / 60.0
                why = self._why(e, state)
                msg = (
                    f"waited {waited:.0f} minutes for {e.gpus} x {e.model or 'any'} GPU(s) "
                    f"(quota.max_queue_wait_minutes = {self.site.queue.max_wait_minutes:g}) and was not served: "
                    f"{why}; start it again later, or ask for fewer GPUs or another model"
                )
                if self._end(conn, r, "expired", at, msg):
                    out.append(_entry(conn.execute(select(queue).where(Q.id == e.id)).first()))
            return out

        return self._write(run, lock=True)

    # ------------------------------------------------------------------ the order

    def _spans(self, conn: Connection, now: datetime) -> list[order.Span]:
        iv = usage_intervals.c
        since = now - timedelta(seconds=USAGE_HORIZON_HALF_LIVES * self.site.queue.half_life_seconds)
        q = select(iv.org, iv.gpus, iv.weight, iv.started_at, iv.ended_at).where(
            iv.gpus > 0, iv.org.is_not(None), (iv.ended_at.is_(None)) | (iv.ended_at > since)
        )
        return [
            order.Span(
                r.org, r.gpus, r.weight, r.started_at.timestamp(), r.ended_at.timestamp() if r.ended_at else None
            )
            for r in conn.execute(q)
        ]

    def _factors(self, conn: Connection, now: datetime) -> dict[str, float]:
        usage = order.decayed_usage(self._spans(conn, now), now.timestamp(), self.site.queue.half_life_seconds)
        return order.fairshare_factors(usage, self.site.queue.shares)

    def factors(self, now: datetime | None = None) -> dict[str, float]:
        """Each org's current fair-share factor F (quota.queue_order)."""
        at = utc(now or self.clock())
        return self._read(lambda conn: self._factors(conn, at))

    def node_of(self) -> dict[str, str] | None:
        """Swarm: device UUID -> node id of the nodes taking servers (read before a transaction); else None."""
        return None if self.offers is None else node_of_devices(self.offers())

    def _state(
        self,
        conn: Connection,
        now: datetime,
        devices: Sequence,
        factors: dict | None = None,
        node_of: dict[str, str] | None = None,
    ) -> dict:
        a = allocations.c
        held = [
            order.Held(r.device_uuid, r.org, r.user, r.model)
            for r in conn.execute(select(a.device_uuid, a.org, a.user, a.model))
        ]
        taken = {h.device_uuid for h in held}
        queued, granted = [], []
        for r in conn.execute(select(queue).where(Q.state.in_(ACTIVE)).order_by(Q.id)):
            (granted if r.state == "granted" else queued).append(_entry(r))
        for g in granted:  # promised devices count as held (by their org and user) until served or requeued
            held += [order.Held(d, g.org, g.user, g.model or "") for d in g.devices if d not in taken]
            taken |= set(g.devices)
        free = [
            order.Device(d.uuid, d.model, node_of.get(d.uuid, "") if node_of else "")
            for d in devices
            if d.uuid not in taken and (node_of is None or d.uuid in node_of)
        ]
        factors = self._factors(conn, now) if factors is None else factors
        return dict(held=held, free=free, queued=queued, granted=granted, factors=factors)

    def _limits(self) -> order.Limits:
        orgs = self.site.organizations
        return order.Limits({k: o.gpu_limit for k, o in orgs.items()}, self.site.gpus.max_gpus_per_user)

    def _why(self, e: QueueEntry, state: dict) -> str:
        reason = order.blocker(e.as_request(), state["free"], state["held"], self._limits(), state.get("reserved"))
        if reason is None:
            return "others were ahead of it in line and took the GPUs that freed up"
        org = self.site.organizations[e.org]
        return REASONS[reason].format(
            model=e.model or "",
            org=e.org,
            limit=org.gpu_limit,
            user=e.user,
            user_limit=self.site.gpus.max_gpus_per_user,
        )

    def pop_next(
        self, devices: Sequence, now: datetime | None = None, *, inventory: Sequence | None = None
    ) -> Granted | None:
        """Grant the next request that the free devices can serve, in one serialised transaction; None if none.

        ``devices``: the devices that may be handed out (the free ones or the whole inventory: allocated ones and
        those promised to other granted requests are removed inside the transaction). ``inventory`` (default: the
        site's static devices, else ``devices``) places class reservations on devices (quota.reservations)."""
        at = utc(now or self.clock())
        inv = list(inventory or self.site.gpus.devices or devices)
        res = self.site.queue.reservations
        tz, t = self.site.tz, at.timestamp()
        reserved = rsv.reserved_at(res, tz, inv, t) if res else {}
        prefer = rsv.preference(res, tz, inv, t) if res else None
        by_uuid = {d.uuid: d for d in (*inv, *devices)}
        # Fair share is read before the lock (as QuotaStore reads the month's usage): a grant committed meanwhile
        # adds no usage at its first instant, and the lock is then held only for the short reads below.
        factors, node_of = self.factors(at), self.node_of()

        def run(conn):
            s = self._state(conn, at, devices, factors, node_of)
            choice = order.choose(
                [e.as_request() for e in s["queued"]],
                s["free"],
                s["held"],
                s["factors"],
                self._limits(),
                t,
                self.age_scale,
                reserved,
                prefer,
            )
            if choice is None:
                return None
            done = conn.execute(
                update(queue)
                .where(Q.id == choice.request.id, Q.state == "queued")
                .values(state="granted", devices=",".join(choice.devices), granted_at=at)
            ).rowcount
            assert done == 1, "a queued row changed under the allocation lock"
            e = _entry(conn.execute(select(queue).where(Q.id == choice.request.id)).first())
            return Granted(e, choice.devices, tuple(by_uuid[d] for d in choice.devices), choice.model)

        return self._write(run, lock=True)

    def listing(self, now: datetime | None = None, user: str | None = None, devices: Sequence | None = None) -> dict:
        """The queue for operators and users (:func:`quota.queue_listing.listing`)."""
        return queue_listing.listing(self, utc(now or self.clock()), user, list(devices or self.site.gpus.devices))

    def position(self, entry_id: int, now: datetime | None = None, devices: Sequence | None = None):
        """The place in line of a queued request, or None (:func:`quota.queue_listing.position`)."""
        return queue_listing.position(self.listing(now, devices=devices), entry_id)

    # ------------------------------------------------------------------ the histogram

    def wait_stats(self) -> dict[str, dict]:
        """{outcome: {"buckets": [(le, cumulative count)...], "count": n, "sum": seconds}} (quota.queue_waits)."""
        return self._read(queue_waits.read)
