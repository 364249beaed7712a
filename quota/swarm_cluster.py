"""``hub.engine: swarm``: the quota side's two reads of the cluster — what the nodes offer, and which servers run.

- :class:`SwarmOffers` gives the quota store its placement offers (:class:`quota.placement.NodeOffer`) for each
  decision: the nodes' GPU labels (:mod:`gpuhub.host.swarm`) mapped to the site's model keys, re-read from the
  manager at most every ``ttl`` seconds. A drained, paused or down node offers nothing, so a node that goes away
  stops being offered within ``ttl`` of the manager noticing (the manager notices a dead node in ~5-15 s: its
  heartbeat period). A failed read keeps the last offers for one more ``ttl`` and then offers nothing (GPU spawns
  are refused with ``no-free-device`` rather than placed on a cluster we cannot see).
- :func:`services_view` is the reconciler's view of the user servers when they are Swarm services (the hub's
  engine, a manager, sees the containers of its own node only): one :class:`quota.reconcile.ContainerView` per
  service, from its newest task. A task whose desired state is no longer ``running`` (its node went down, or it
  exited) is a finished server; it finished at the task's last status time, or, for a task of a node that is
  down, at the node's last status change (the best time the manager knows).

The Docker client (a manager's engine) is injected; the clock too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from gpuhub.core import labels as lb
from gpuhub.host import swarm
from gpuhub.host.dockerenv import docker_time
from quota.placement import NodeOffer, offers_from_swarm
from quota.reconcile import ContainerView

log = logging.getLogger(__name__)

#: a task in one of these states holds (or is about to hold) its node's GPUs
LIVE_TASK_STATES = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"})


class SwarmOffers:
    """Callable: the cluster's offers now (cached ``ttl`` seconds). Thread-safe: spawners decide concurrently."""

    def __init__(
        self, client, models: Mapping[str, object], ttl: float = 3.0, clock: Callable[[], float] = time.monotonic
    ):
        self.client, self.models, self.ttl, self.clock = client, tuple(models), ttl, clock
        self._lock = threading.Lock()
        self._at: float | None = None
        self._offers: tuple[NodeOffer, ...] = ()
        self._warned: set[str] = set()

    def __call__(self) -> tuple[NodeOffer, ...]:
        with self._lock:
            now = self.clock()
            if self._at is not None and now - self._at < self.ttl:
                return self._offers
            try:
                offers, skipped = offers_from_swarm(swarm.read_nodes(self.client), self.models)
            except Exception as e:  # the manager does not answer: keep what we knew for one more ttl, then nothing
                log.warning("cannot read the swarm's nodes (%s); GPUs are offered from the last read", e)
                if self._at is not None and now - self._at < 2 * self.ttl:
                    return self._offers
                self._offers = ()
                return ()
            for s in skipped:
                if s not in self._warned:
                    self._warned.add(s)
                    log.warning("swarm GPU not offered: %s", s)
            self._at, self._offers = now, tuple(offers)
            return self._offers

    def forget(self) -> None:
        with self._lock:
            self._at = None


def _newest(tasks: list[dict]) -> dict | None:
    return max(tasks, key=lambda t: (t.get("Version", {}).get("Index", 0), t.get("CreatedAt", ""))) if tasks else None


def services_view(client, instance: str) -> list[ContainerView]:
    """Our labelled services as the reconciler sees them (one per service, from its newest task)."""
    services = client.api.services(filters={"label": [f"{lb.HUB}={instance}", f"{lb.MANAGED}=1"]})
    if not services:
        return []
    nodes = {n["ID"]: n for n in client.api.nodes()}
    tasks: dict[str, list[dict]] = {}
    for t in client.api.tasks(filters={"service": [s["ID"] for s in services]}):
        tasks.setdefault(t.get("ServiceID", ""), []).append(t)
    out = []
    for s in services:
        labels = dict((s.get("Spec") or {}).get("Labels") or {})
        task = _newest(tasks.get(s["ID"], []))
        out.append(task_view(s["Spec"]["Name"], labels, task, nodes))
    return out


def task_view(name: str, labels: dict, task: dict | None, nodes: Mapping[str, dict]) -> ContainerView:
    if task is None:  # created, no task yet: pending (the reconciler's grace period covers it)
        return ContainerView(name=name, labels=labels, running=True)
    status = task.get("Status") or {}
    at = docker_time(status.get("Timestamp"))
    node = nodes.get(task.get("NodeID", ""), {})
    node_state = (node.get("Status") or {}).get("State")
    live = task.get("DesiredState") == "running" and status.get("State") in LIVE_TASK_STATES
    if live and node_state in (None, "ready"):
        return ContainerView(name=name, labels=labels, running=True, started_at=at)
    finished = at
    if node_state not in (None, "ready"):  # the node is down: it was last heard of when its status changed
        finished = docker_time(node.get("UpdatedAt")) or at
    return ContainerView(name=name, labels=labels, running=False, started_at=at, finished_at=finished)
