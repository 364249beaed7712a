"""The spawner's side of the GPU queue: wait in line instead of a 429, then take exactly the granted devices.

Why the wait happens in ``run_pre_spawn_hook`` and not in ``start()``: JupyterHub reads ``start_timeout`` and
starts its clock when it calls ``start()`` (``asyncio.wait_for(spawner.start(), spawner.start_timeout)`` in
``User.spawn``), and nothing a spawner does later changes it. The pre-spawn hook runs inside the same pending
spawn (the progress stream is open, a ``DELETE`` of the pending server interrupts it) but before that clock,
so ``start_timeout`` keeps meaning what operators set it for, the real start, and a queued request may wait up
to ``quota.max_queue_wait_minutes``. ``http_timeout`` only starts once ``start()`` returns.

:func:`before_start` (from ``GpuhubSpawner.run_pre_spawn_hook``) decides GPU requests once:

- a request the policy would refuse for a reason waiting cannot fix (400, 403, 409) is left to ``start()``,
  which refuses it as before;
- otherwise it allocates directly, leaving alone the devices promised to granted queue entries
  (:meth:`quota.queue_store.QueueStore.promised`); granted, or refused with a non-429 -> kept for ``start()``;
- refused with 429 (``no-free-device``, ``org-gpu-limit``, ``user-gpu-limit``) and ``"queue"`` not false ->
  enqueued (:class:`quota.queue_store.QueueStore`) with the ``user_options`` it will be started with; the
  spawn then waits, showing its place in line when it changes and every :data:`REFRESH_SECONDS`, until the dispatcher
  (:mod:`gpuhub.hub.queue_dispatch`, one loop per hub in the quota service) grants it devices; this spawner
  then allocates exactly those devices and marks the entry served (the grant was promised, so no direct
  allocation took them meanwhile; if one did, the entry goes back to its old place).

``start()`` then takes the decision with :func:`take_grant`. A request that finds its server's entry already
active (the dispatcher re-attaching a request after a hub restart, or the user pressing start again) joins it.
Cancel: JupyterHub's ``DELETE`` of a pending server cancels the spawn and then runs ``User.stop``, whose
post-stop hook calls :func:`after_stop`, which cancels the entry if this spawn was (about to be) waiting for
it. A hub shutdown cancels the spawn task too but stops no server, and the next hub's start-up stop of servers
that were pending when it died has no wait in its process: both leave the entry in line
(:mod:`gpuhub.hub.queue_dispatch`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.exc import DBAPIError
from tornado import web

from gpuhub.hub import i18n, reservation_watch, runtime
from gpuhub.hub.i18n import N_
from gpuhub.hub.options import validate_options
from quota.policy import BUSY, AllocationRequest, Refusal
from quota.queue_store import QueueEntry, QueueStore
from quota.store import Grant, QuotaStore, QuotaUnavailable

QUEUE_OPTION = "queue"
POLL_SECONDS = 1.0  # how often a waiting spawn reads its entry (a grant is picked up within this)
CHECK_SECONDS = 5.0  # how often the place in line is recomputed; a change is shown at once
REFRESH_SECONDS = 10.0  # an unchanged place is shown again this often (the issue asks for <= 10 s)
RULE_QUEUE_TYPE = "queue-type"
RULE_EXPIRED = "queue-expired"
RULE_CANCELLED = "queue-cancelled"

WAITING = N_(
    "Waiting in line for {gpus} x {model} GPU(s): position {position} of {total} "
    "({same} ahead from {org}, {others} from other organizations), estimated wait {wait}"
)
QUEUED = N_("All {model} GPUs you may use are busy: your request is in line and starts when its turn comes")
GRANTED = N_("Your turn: {model} {devices} granted after waiting {waited}")
RESERVED_SOON = N_(
    "GPU {device} of this server is reserved for course {course}'s class window from {at}: the server is "
    "stopped then; save your work before, or start it again on other GPUs"
)
UNKNOWN_WAIT = N_("not known yet")
MINUTES = N_("{minutes} min")
UNDER_A_MINUTE = N_("under a minute")

_lock = threading.Lock()
_stores: dict[str, tuple[QueueStore, QuotaStore]] = {}


@dataclass
class Ticket:
    """What :func:`before_start` decided for this spawn, for :func:`take_grant` in ``start()``."""

    request: AllocationRequest
    grant: Grant | None = None
    refusal: Refusal | None = None


def stores(site_config: str | Path) -> tuple[QueueStore, QuotaStore]:
    """(the queue, a quota store whose inventory leaves out promised devices), on the hub's quota engine."""
    key = str(Path(site_config).resolve())
    with _lock:
        if key not in _stores:
            base = runtime.quota_store(key)
            qs = QueueStore(base.engine, base.site, offers=base.offers)

            def unpromised():
                promised = qs.promised()
                return [d for d in base.inventory() if d.uuid not in promised]

            def unpromised_offers():  # hub.engine swarm: the same, node by node (quota.placement)
                promised = qs.promised()
                return [replace(o, devices=tuple(d for d in o.devices if d.uuid not in promised))
                        for o in base.offers()]  # fmt: skip

            offers = unpromised_offers if base.offers is not None else None
            _stores[key] = (qs, QuotaStore(base.engine, base.site, inventory=unpromised, offers=offers))
        return _stores[key]


def _http_error(status: int, message: str, rule: str) -> web.HTTPError:
    error = web.HTTPError(status, message, reason=rule)
    error.headers = {"X-Gpuhub-Rule": rule}
    return error


def _minutes(msgs: i18n.Messages, seconds: float) -> str:
    if seconds < 60:  # "0 min" would read as "no wait"
        return msgs.gettext(UNDER_A_MINUTE)
    return msgs.gettext(MINUTES).format(minutes=f"{math.ceil(seconds / 60)}")


def queue_wanted(spawner) -> bool:
    """Take ``"queue"`` out of ``user_options`` (the options contract knows no such key) and return it."""
    options = spawner.user_options if isinstance(spawner.user_options, dict) else {}
    wanted = options.get(QUEUE_OPTION, True)
    if QUEUE_OPTION in options:
        spawner.user_options = {k: v for k, v in options.items() if k != QUEUE_OPTION}
    if not isinstance(wanted, bool):
        raise _http_error(
            400,
            f"option 'queue' must be true or false, got {type(wanted).__name__}; leave it out to wait in line "
            "when GPUs are busy, or send false for an immediate 429",
            RULE_QUEUE_TYPE,
        )
    return wanted


async def before_start(spawner) -> None:
    """Decide a GPU request before ``start()``: allocate now, or wait in line for a grant (see module doc)."""
    spawner.progress_events = []
    spawner.queue_ticket = None
    spawner.queue_hook_ran, spawner.queue_waiting = True, False
    wanted = queue_wanted(spawner)
    options = dict(spawner.user_options or {})
    site = spawner.site
    if options.get("project"):  # not queued (yet): project servers are admitted in start() (gpuhub.hub.projects)
        return
    try:
        request = validate_options(options, site, user=spawner.user.name, server_name=spawner.name,
                                   groups=spawner._groups())  # fmt: skip
    except Refusal:
        return  # start() refuses it with its rule, as for any request
    if not request.gpus:
        return
    qs, direct = stores(spawner.site_config)
    try:
        entry = await asyncio.to_thread(qs.active_for, spawner.server_key)
    except DBAPIError as e:  # the database is down: start() allocates directly and fails closed (503, hub.db_url)
        spawner.log.warning("%s: GPU queue unreadable (%s); not queueing", spawner._log_name, type(e).__name__)
        return
    ticket = spawner.queue_ticket = Ticket(request)
    try:
        if entry is not None and (entry.org, entry.gpus, entry.model) != (request.org, request.gpus, request.gpu_model):
            await asyncio.to_thread(qs.cancel, entry.id, message="replaced by a new request for the same server")
            entry = None
        if entry is None:
            try:
                ticket.grant = await asyncio.to_thread(direct.allocate, request, count=False)
                return
            except Refusal as r:
                if r.status != BUSY or not wanted:  # answered now: counted as any refusal; a queued one is not
                    await asyncio.to_thread(direct.count_refusal_quietly, request, r)
                    ticket.refusal = r
                    return
            courses = [c for c in site.courses_of(request.user, request.groups) if site.courses[c].org == request.org]
            spawner.queue_waiting = True  # before the entry exists: a DELETE from now on cancels it (after_stop)
            entry = await asyncio.to_thread(
                qs.enqueue, spawner.server_key, request.user, spawner.name, request.org, request.gpus,
                request.gpu_model, options, courses=courses,
            )  # fmt: skip
            spawner.emit(18, _text(spawner, QUEUED, model=request.gpu_model or ""))
        spawner.queue_waiting = True  # this process waits for it: a stop of this server now cancels it
        ticket.grant = await wait_for_turn(spawner, qs, entry, request)
        spawner.queue_waiting = False
    except QuotaUnavailable as e:
        raise web.HTTPError(503, str(e)) from None


def _text(spawner, msgid: str, **facts) -> str:
    """``msgid`` in the spawn's language (the progress event); ``emit`` logs it as given."""
    text = i18n.Messages(i18n.request_locale(spawner.handler)).gettext(msgid).format(**facts)
    return " ".join(text.split())  # no model chosen: "{model} GPU" reads "GPU", not "GPU GPU"


def _waiting_text(spawner, entry: QueueEntry, pos) -> str:
    msgs = i18n.Messages(i18n.request_locale(spawner.handler))
    wait = msgs.gettext(UNKNOWN_WAIT) if pos.estimated_wait_seconds == float("inf") else None
    text = msgs.gettext(WAITING).format(
        gpus=entry.gpus,
        model=entry.model or "",
        position=pos.position,
        total=pos.total,
        same=pos.ahead_same_org,
        org=entry.org,
        others=pos.ahead_other_orgs,
        wait=wait or _minutes(msgs, pos.estimated_wait_seconds),
    )
    return " ".join(text.split())


async def wait_for_turn(spawner, qs: QueueStore, entry: QueueEntry, request: AllocationRequest) -> Grant:
    """Wait until the dispatcher grants ``entry``, then allocate exactly its devices; raise when it ends."""
    shown = checked = 0.0
    last = None
    while True:
        e = await asyncio.to_thread(qs.get, entry.id)
        if e.state == "granted":
            grant = await _take_granted(spawner, qs, e, request)
            if grant is not None:
                return grant
            continue
        if e.state == "expired":
            raise _http_error(BUSY, e.message or "the request waited too long", RULE_EXPIRED)
        if e.state in ("cancelled", "served"):
            raise _http_error(409, f"this GPU request was {e.state}: {e.message or ''}".rstrip(": "), RULE_CANCELLED)
        if time.monotonic() - checked >= CHECK_SECONDS:
            pos = await asyncio.to_thread(qs.position, e.id)
            text = _waiting_text(spawner, e, pos) if pos is not None else last
            if text and (text != last or time.monotonic() - shown >= REFRESH_SECONDS):  # a change now, else 10 s
                spawner.emit(20, text)
                last, shown = text, time.monotonic()
            checked = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


async def _take_granted(spawner, qs: QueueStore, e: QueueEntry, request: AllocationRequest) -> Grant | None:
    """Allocate the granted devices; None when they were taken after all (the entry is back in line)."""
    base = runtime.quota_store(spawner.site_config)
    devices = [d for d in base.inventory() if d.uuid in e.devices]
    granted_offers = None
    if base.offers is not None:  # hub.engine swarm: placed on the node that holds the granted devices (all on one)

        def granted_offers():
            return [replace(o, devices=tuple(d for d in o.devices if d.uuid in e.devices)) for o in base.offers()]

    store = QuotaStore(base.engine, base.site, inventory=devices, offers=granted_offers)
    try:
        grant = await asyncio.to_thread(store.allocate, request)
    except Refusal as r:
        if r.status == BUSY:
            await asyncio.to_thread(qs.requeue, e.id)
            return None
        await asyncio.to_thread(qs.cancel, e.id, message=r.message)
        raise
    if not await asyncio.to_thread(qs.mark_served, e.id):  # put back in line meanwhile (stale): ours now
        await asyncio.to_thread(qs.cancel, e.id, message="served by an earlier grant")
    waited = (qs.now() - e.arrived_at).total_seconds()
    msgs = i18n.Messages(i18n.request_locale(spawner.handler))
    spawner.emit(22, _text(spawner, GRANTED, model=grant.model, devices=", ".join(grant.devices),
                           waited=_minutes(msgs, waited)))  # fmt: skip
    return grant


def events_of_this_spawn(spawner) -> list:
    """The progress events ``start()`` begins with: those of :func:`before_start` for this spawn, else none (the
    progress stream counts events by index, so the list the hook filled must be kept, not replaced)."""
    if getattr(spawner, "queue_hook_ran", False):
        spawner.queue_hook_ran = False
        return spawner.progress_events
    return []


def take_grant(spawner, request: AllocationRequest) -> Grant:
    """``start()``'s allocation (blocking: run it off the loop): what :func:`before_start` decided for this very
    request (its grant, or its refusal raised), else a direct allocation that leaves promised devices alone."""
    ticket = getattr(spawner, "queue_ticket", None)
    spawner.queue_ticket = None
    grant = None
    if ticket is not None and ticket.request.server_key == request.server_key and ticket.request.gpus == request.gpus:
        if ticket.refusal is not None:
            raise ticket.refusal
        grant = ticket.grant
    if grant is None:
        _, direct = stores(spawner.site_config)
        grant = direct.allocate(request)
    warn_reserved(spawner, request, grant)
    return grant


def warn_reserved(spawner, request: AllocationRequest, grant: Grant) -> None:
    """Tell a new server at once when it got a GPU that a class window needs soon (only when no other was free:
    allocations prefer devices no window needs soon); it is stopped at the window's start."""
    if not grant.devices or not spawner.site.queue.reservations:
        return
    site = spawner.site
    inventory = runtime.quota_store(spawner.site_config).inventory()
    for n in reservation_watch.grant_notices(site, grant, request, inventory):
        spawner.emit(26, _text(spawner, RESERVED_SOON, device=n.device_uuid, course=n.window.course,
                               at=reservation_watch.when(site, n)))  # fmt: skip
        spawner.log.warning("%s: %s", spawner._log_name, n.message)


async def after_stop(spawner) -> None:
    """``User.stop`` of a server whose spawn waited in line in this process (a DELETE of the pending server, which
    interrupts the wait first): its request leaves the line. A stop without a wait here leaves the queue alone:
    at start-up the hub stops the servers that were pending when it died, and those requests must stay."""
    waiting, spawner.queue_waiting = getattr(spawner, "queue_waiting", False), False
    if not waiting:
        return
    try:
        qs, _ = stores(spawner.site_config)
        if await asyncio.to_thread(qs.cancel, server_key=spawner.server_key):
            spawner.log.info("%s: queued GPU request cancelled (server stopped)", spawner._log_name)
    except Exception:
        spawner.log.exception("could not cancel the queued request of %s", spawner.server_key)
