"""Class windows at run time: warn the servers of others that hold a window's GPUs, stop them when it opens.

:func:`quota.reservations.notices` (pure) says which servers hold a device that a class window (``courses.COURSE.
reservations``) needs: within ``quota.reservation_notice_minutes`` of its start ("warn") or now that it runs
("stop"); the course's own servers (charged to the course's org, by a member) are spared. This module is its
three thin adapters:

- :class:`ReservationWatch`, a loop of the ``gpuhub-quota`` service (:mod:`gpuhub.hub.quota_service`, every
  :data:`INTERVAL_SECONDS`): logs each warning once, and at the window's start stops each such server through
  the hub's REST API (the same path as a user's stop: route, container, release) and then records the reason
  ``reservation-window`` in the ledger (the spawner closes every stop as ``stopped``; like the idle culler, the
  loop replaces it, :meth:`quota.store.QuotaStore.set_end_reason`). The freed devices are then the course's:
  the queue's dispatcher grants its members' waiting requests on its next round (:mod:`quota.queue_order`
  keeps reserved devices from everyone else).
- :func:`home_notices` for the home page's banner (:mod:`gpuhub.hub.pages`): the user's servers that are warned.
- :func:`grant_notices` for the spawn progress of a new server that got such a device (only when no other was
  free: new allocations prefer devices no window needs soon).

Why in the quota service and not in the hub: the stop goes through the hub's public API like the enforcer's,
and a slow Docker stop never stalls the hub's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from gpuhub.core.keys import split_server_key
from gpuhub.core.periods import utcnow
from quota import reservations as rsv

log = logging.getLogger("gpuhub.quota")

INTERVAL_SECONDS = 2.0  # a window's start is acted on within this (plus the stop itself)
RETRY_STOP_SECONDS = 30.0  # a stop the hub did not carry out is asked for again after this
END_REASON = "reservation-window"  # the ledger's end_reason of a server stopped for a class window


@dataclass(frozen=True)
class Holder:
    """One held device, as :func:`quota.reservations.notices` reads it."""

    device_uuid: str
    server_key: str
    user: str
    org: str | None
    interval_id: int = 0


def holders(rows: Iterable[dict]) -> list[Holder]:
    """The quota store's holdings (``gpuhub_allocations`` rows) as :class:`Holder`."""
    return [Holder(r["device_uuid"], r["server_key"], r["user"], r["org"], int(r["interval_id"] or 0)) for r in rows]


def current_notices(site, inventory, rows: Iterable[dict], now: float) -> list[rsv.Notice]:
    """Every warn/stop notice at ``now`` (Unix seconds) for the holdings ``rows``."""
    q = site.queue
    if not q.reservations:
        return []
    full = site.gpus.devices or tuple(inventory)
    return rsv.notices(
        q.reservations, site.tz, full, holders(rows), now, q.notice_minutes * 60.0, rsv.course_members(site)
    )


def when(site, notice: rsv.Notice) -> str:
    """The window's start in the site's zone, as the notices show it."""
    return datetime.fromtimestamp(notice.window.start, site.tz).strftime("%Y-%m-%d %H:%M %Z")


class ReservationWatch:
    """The quota service's loop: warn (log) before a window, stop others' servers on its GPUs at its start.

    ``store``: the quota store (holdings, inventory, end reasons); ``hub``: the service's hub client
    (``stop_server``); ``clock()``: an aware UTC datetime."""

    def __init__(self, site, store, hub, clock=utcnow):
        self.site, self.store, self.hub, self.clock = site, store, hub, clock
        self.warned: set[tuple[str, float]] = set()  # (server key, window start) already logged
        self.stopping: dict[int, float] = {}  # interval id -> when its stop was asked (monotonic)
        self.relabel: set[int] = set()  # intervals whose ledger reason is still to be set

    async def tick(self) -> list[str]:
        """One round; returns the server keys it asked the hub to stop."""
        if not self.site.queue.reservations:
            return []
        rows = await asyncio.to_thread(self.store.holdings)
        now = self.clock().timestamp()
        stopped = []
        for n in current_notices(self.site, self.store.inventory(), rows, now):
            holder = next(r for r in rows if r["device_uuid"] == n.device_uuid)
            if n.action == "warn":
                if (n.server_key, n.window.start) not in self.warned:
                    self.warned.add((n.server_key, n.window.start))
                    log.warning("reservation: warned %s: %s", n.server_key, n.message)
            elif await self._stop(n, int(holder["interval_id"] or 0)):
                stopped.append(n.server_key)
        await self._relabel()
        return stopped

    async def _stop(self, n: rsv.Notice, interval_id: int) -> bool:
        asked = self.stopping.get(interval_id)
        if asked is not None and time.monotonic() - asked < RETRY_STOP_SECONDS:
            return False
        self.stopping[interval_id] = time.monotonic()
        self.relabel.add(interval_id)
        log.warning(
            "reservation: stopping %s (GPU %s) at the start of course %s's class window (%s)",
            n.server_key, n.device_uuid, n.window.course, when(self.site, n),
        )  # fmt: skip
        user, server = split_server_key(n.server_key)
        await self.hub.stop_server(user, server)
        return True

    async def _relabel(self) -> None:
        for interval_id in list(self.relabel):
            state = await asyncio.to_thread(self.store.set_end_reason, interval_id, END_REASON)
            if state != "open":  # set, or closed for another reason first (the container died)
                self.relabel.discard(interval_id)
                self.stopping.pop(interval_id, None)
                if state == "set":
                    log.info("reservation: interval %s closed as %s", interval_id, END_REASON)


def home_notices(site, store, user: str, now: datetime | None = None) -> list[dict]:
    """The warned and stopping servers of ``user`` for the home page: server name, device, course, start."""
    try:
        rows = [r for r in store.holdings() if r["user"] == user] if site.queue.reservations else []
    except Exception:  # noqa: BLE001 - a page must render even when the database is away
        return []
    out = []
    for n in current_notices(site, store.inventory(), rows, (now or utcnow()).timestamp()):
        out.append(
            {
                "server": split_server_key(n.server_key)[1] or "default",
                "device": n.device_uuid,
                "course": n.window.course,
                "at": when(site, n),
                "action": n.action,
            }
        )
    return out


def grant_notices(site, grant, request, inventory, now: datetime | None = None) -> list[rsv.Notice]:
    """Notices for a server just granted ``grant.devices`` (the spawn progress tells the user at once)."""
    rows = [
        dict(device_uuid=d, server_key=grant.server_key, user=request.user, org=request.org, interval_id=0)
        for d in grant.devices
    ]
    return current_notices(site, inventory, rows, (now or utcnow()).timestamp())
