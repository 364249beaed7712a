"""The GPU queue's dispatcher: one loop per hub, in the quota service, that hands freed devices out in fair order.

Every :data:`INTERVAL_SECONDS` (:meth:`Dispatcher.tick`):

1. :meth:`~quota.queue_store.QueueStore.expire` ends requests waiting past ``quota.max_queue_wait_minutes``
   (their waiting spawns read the message and fail with it);
2. :meth:`~quota.queue_store.QueueStore.recover` puts grants nobody took within :data:`STALE_GRANT_SECONDS`
   back in line at their old place;
3. :meth:`~quota.queue_store.QueueStore.pop_next` grants, one at a time and in fair-share order, every
   request the free devices can serve (devices stay promised until the waiting spawn allocates them,
   :mod:`gpuhub.hub.queue_wait`).

Why a separate process and one loop: the grant is decided in one serialised transaction, so a second popper
could not hand out a device twice, but one loop per hub keeps the order a single decision, and the quota service
already lives exactly as long as its hub (it is started by it and dies with it, :func:`bind_to_hub`).

After a hub restart (``kill -9`` included) the hub has forgotten every pending spawn, so no spawn waits on the
requests still in the queue. The first ticks of a new service therefore re-attach each active request: a server
that is neither pending nor running is started through the hub's REST API (``POST
/users/NAME/servers/SERVER`` with the stored ``user_options``; the quota service's role has the ``servers``
scope for this). Its spawn finds its entry active and joins it (:func:`gpuhub.hub.queue_wait.before_start`), so
it is pending in the hub again: its progress shows its place, ``DELETE`` cancels it, and when its turn comes it
starts once, on the granted devices. A granted request whose server is already running was served before the
crash: it is marked served, not started again.
"""

from __future__ import annotations

import asyncio
import logging

from quota.queue_store import QueueEntry, QueueStore

log = logging.getLogger("gpuhub.quota")

INTERVAL_SECONDS = 2.0
STALE_GRANT_SECONDS = 120.0  # a waiting spawn takes its grant within a second; longer means nobody is waiting


class Dispatcher:
    """Grants queued requests as devices free up, and re-attaches requests a restarted hub forgot.

    ``hub``: the quota service's hub client (``server_state`` and ``start_server``); ``inventory()``: every
    allocatable device (the quota store's, NVML or static)."""

    def __init__(self, queue: QueueStore, inventory, hub):
        self.queue, self.inventory, self.hub = queue, inventory, hub
        # Active entries found by the first round: the previous hub's. Later entries always have a live spawn
        # when they are made (a spawn enqueues them), so only these are re-attached; re-attaching a later one
        # could restart a server its owner just cancelled (the spawn ends a moment before the entry does).
        self.orphans: set[int] | None = None

    async def tick(self) -> list[int]:
        """One round; returns the ids granted."""
        devices = await asyncio.to_thread(self.inventory)
        for e in await asyncio.to_thread(self.queue.expire, None, devices):
            log.info("queue: %s expired: %s", e.server_key, e.message)
        for entry_id in await asyncio.to_thread(self.queue.recover, STALE_GRANT_SECONDS):
            log.warning("queue: grant %s was not taken within %s s; back in line", entry_id, STALE_GRANT_SECONDS)
        granted = []
        while (g := await asyncio.to_thread(self.queue.pop_next, devices)) is not None:
            log.info("queue: granted %s %s to %s (%s)", g.model, ",".join(g.devices), g.server_key, g.entry.org)
            granted.append(g.id)
        await self.attach()
        return granted

    async def attach(self) -> None:
        """Start, through the hub, the servers of the previous hub's active requests (nobody waits for them)."""
        if self.orphans is not None and not self.orphans:  # all re-attached: no need to read the line every round
            return
        entries = await asyncio.to_thread(self.queue.entries)
        if self.orphans is None:
            self.orphans = {e.id for e in entries}
            if self.orphans:
                log.info("queue: %d request(s) from before this hub started; re-attaching them", len(self.orphans))
        self.orphans &= {e.id for e in entries}
        for e in entries:
            if e.id in self.orphans and await self._attach(e):
                self.orphans.discard(e.id)

    async def _attach(self, e: QueueEntry) -> bool:
        """True once ``e`` needs nothing more from this loop (a spawn waits for it, or it is done)."""
        try:
            state = await self.hub.server_state(e.user, e.server_name)
        except Exception as err:  # the hub is not up yet: try again next round
            log.info("queue: hub not reachable for %s yet (%s)", e.server_key, err)
            return False
        if state == "running":
            if e.state == "granted" and await asyncio.to_thread(self.queue.mark_served, e.id):
                log.info("queue: %s was already running; marked served", e.server_key)
            elif e.state == "queued":
                await asyncio.to_thread(self.queue.cancel, e.id, message="its server was started meanwhile")
            return True
        if state == "gone":
            await asyncio.to_thread(self.queue.cancel, e.id, message="the user or server no longer exists")
            return True
        if state == "pending":
            return True
        started = await self.hub.start_server(e.user, e.server_name, dict(e.user_options, queue=True))
        if started:
            log.info("queue: re-attached %s (%s) after a hub restart", e.server_key, e.state)
        return started
