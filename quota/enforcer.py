"""The quota enforcer's periodic work: budgets and reconciliation, with no web stack.

Every ``quota.enforce_interval_seconds`` it heartbeats open intervals, charges usage and
applies :mod:`quota.budget` (warnings at 80/95/100 %, stops after the grace) and the secure projects' close
(:meth:`QuotaService.expire_projects`: a running project server is warned ``expiry_notice_minutes`` before its
project closes and stopped when it closes, each audited once); every
``quota.reconcile_interval_seconds`` (and once at start) it compares Docker's containers with
the ledger (:mod:`quota.reconcile`). Stops go through an injected hub client (anything with
``async stop_server(user, server)``), so this module needs neither tornado nor JupyterHub;
the hub-managed service that runs it is :mod:`gpuhub.hub.quota_service`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import docker
from sqlalchemy import select

from gpuhub.core import keys
from gpuhub.core import labels as lb
from gpuhub.core.keys import split_server_key
from gpuhub.core.periods import utcnow
from gpuhub.core.site import SERVER_START_TIMEOUT_SECONDS
from gpuhub.host.dockerenv import docker_time
from gpuhub.host.project_network import PROJECT  # the label on project servers: the project key
from quota import budget, reconcile
from quota import projects as qp
from quota.models import audit_log
from quota.project_store import ProjectStore

log = logging.getLogger("gpuhub.quota")


class _Everything:
    """Every server key (the hub's pending servers unknown this pass)."""

    def __contains__(self, key: object) -> bool:
        return True


_ALL = _Everything()


class ServerStopper(Protocol):
    """What the enforcer needs of the hub: stop one server through its REST API; the server keys whose spawn is
    pending now (the reconciler keeps their devices up to the start limit)."""

    async def stop_server(self, user: str, server: str) -> None: ...

    async def pending_servers(self) -> set[str]: ...


def docker_view(client, instance: str) -> list[reconcile.ContainerView]:
    """Our labelled containers as the reconciler sees them (read BEFORE the database)."""
    out = []
    for c in client.containers.list(all=True, filters={"label": [f"{lb.HUB}={instance}", f"{lb.MANAGED}=1"]}):
        state = c.attrs.get("State", {})
        out.append(
            reconcile.ContainerView(
                name=c.name,
                labels=c.labels,
                running=bool(state.get("Running")),
                started_at=docker_time(state.get("StartedAt")),
                finished_at=docker_time(state.get("FinishedAt")),
            )
        )
    return out


@dataclass(frozen=True)
class ProjectServer:
    """A running project server as Docker labels it."""

    project: str
    user: str
    server: str
    container: str


def project_servers(client, instance: str) -> list[ProjectServer]:
    rows = client.api.containers(filters={"label": [f"{lb.HUB}={instance}", f"{lb.MANAGED}=1", PROJECT]})
    return [
        ProjectServer(r["Labels"][PROJECT], r["Labels"].get(lb.USER, ""), r["Labels"].get(lb.SERVER, ""),
                      (r.get("Names") or ["?"])[0].lstrip("/"))
        for r in rows
    ]  # fmt: skip


def expiry_plan(
    site, servers, memberships: dict, now: datetime, done: set
) -> list[tuple[str, ProjectServer, dict, bool]]:
    """(action, server, detail, new) due now (pure): ``project.expired`` (stop it, every run while it still runs)
    for a server whose project has closed, ``project.expiry-warned`` for one within its project's
    ``expiry_notice_minutes``; ``done`` holds the (action, project, user, server, closes_at) already audited:
    those are not ``new`` (a warning already given is left out)."""
    out = []
    for s in servers:
        project = site.projects.get(s.project)
        if project is None:
            continue
        closes = qp.effective_closes_at(project, memberships.get(s.project, qp.NO_CHANGES), site.tz)
        if now >= closes:
            action = qp.AUDIT_PROJECT_EXPIRED
        elif now >= closes - timedelta(minutes=project.expiry_notice_minutes):
            action = qp.AUDIT_PROJECT_EXPIRY_WARNED
        else:
            continue
        new = (action, s.project, s.user, s.server, closes.isoformat()) not in done
        if new or action == qp.AUDIT_PROJECT_EXPIRED:
            detail = {"server": s.server, "container": s.container, "closes_at": closes.isoformat()}
            out.append((action, s, detail, new))
    return out


class QuotaService:
    """The periodic work; each step is a plain method so tests can drive it with a fake clock."""

    def __init__(self, site, store, hub: ServerStopper | None, docker_client, clock=utcnow):
        self.site, self.store, self.hub, self.docker, self.clock = site, store, hub, docker_client, clock
        self.messages: dict[str, str] = {}
        self.projects = ProjectStore(store.engine, clock) if site.projects else None
        self._project_done: set | None = None  # (action, project, user, server, closes_at) already audited

    async def enforce(self) -> list[str]:
        """Heartbeat, then warn and stop per org; returns the server keys it asked the hub to stop."""
        now = self.clock()
        await asyncio.to_thread(self.store.heartbeat, now)
        open_rows = await asyncio.to_thread(self.store.open_intervals)
        usage = await asyncio.to_thread(self.store.usage_by_org, now)  # one query for every org
        stopped = []
        for key, org in self.site.organizations.items():
            running = [
                budget.RunningServer(r["server_key"], r["user"], int(r["gpus"] or 0), float(r["weight"] or 0.0))
                for r in open_rows
                if r.get("org") == key
            ]
            used = usage.get(key, 0.0)
            announced = await asyncio.to_thread(self.store.announced_warnings, key, now)
            verdict = budget.evaluate(
                key,
                org.gpu_hours_per_month,
                used,
                running,
                now,
                announced=announced,
                warn_fractions=self.site.quota.warn_fractions,
                grace_seconds=self.site.quota.grace_seconds,
            )
            for fraction in verdict.warnings_due:
                log.warning("budget %d %% reached: %s", round(fraction * 100), verdict.message)
                await asyncio.to_thread(self.store.announce_warning, key, fraction, now, verdict.message)
            for server_key in verdict.stop:
                user, server = split_server_key(server_key)
                log.warning("stopping %s: %s", server_key, verdict.message)
                if self.hub:
                    await self.hub.stop_server(user, server)
                stopped.append(server_key)
        return stopped + await self.expire_projects()

    def _audited(self, since: datetime) -> set:
        """What earlier runs (of this or a previous service process) already warned or expired."""
        a = audit_log.c
        q = select(a.action, a.project, a.target, a.detail).where(
            a.action.in_([qp.AUDIT_PROJECT_EXPIRED, qp.AUDIT_PROJECT_EXPIRY_WARNED]), a.at >= since
        )
        with self.store.engine.connect() as conn:
            rows = conn.execute(q).all()
        out = set()
        for r in rows:
            detail = json.loads(r.detail or "{}")
            out.add((r.action, r.project, r.target, detail.get("server", ""), detail.get("closes_at")))
        return out

    async def expire_projects(self) -> list[str]:
        """Warn running project servers ``expiry_notice_minutes`` before their project closes and stop them when
        it has closed (each audited once: ``project.expiry-warned``, ``project.expired``); returns the server
        keys it asked the hub to stop."""
        if self.projects is None:
            return []
        now = self.clock()
        servers = await asyncio.to_thread(project_servers, self.docker, self.site.hub.instance)
        if not servers:
            return []
        if self._project_done is None:
            self._project_done = await asyncio.to_thread(self._audited, now - timedelta(days=2))
        memberships = await asyncio.to_thread(self.projects.memberships, sorted({s.project for s in servers}))
        stopped = []
        for action, s, detail, new in expiry_plan(self.site, servers, memberships, now, self._project_done):
            closes_at = detail["closes_at"]
            if action == qp.AUDIT_PROJECT_EXPIRED:
                log.warning("stopping %s/%s: project %s closed at %s", s.user, s.server, s.project, closes_at)
                if self.hub:
                    await self.hub.stop_server(s.user, s.server)
                stopped.append(keys.server_key(s.user, s.server))
            else:
                log.warning("warning %s/%s: project %s closes at %s", s.user, s.server, s.project, closes_at)
            if not new:
                continue
            await asyncio.to_thread(
                self.projects.audit.append, action, project=s.project, account="gpuhub-quota", target=s.user,
                detail=detail,
            )  # fmt: skip
            self._project_done.add((action, s.project, s.user, s.server, closes_at))
        return stopped

    async def reconcile(self) -> reconcile.Plan:
        """Make the ledger match Docker: close dead servers' intervals, stop or adopt strangers."""
        view = docker_view
        if self.site.hub.engine == "swarm":  # servers are services on several nodes: read the manager's tasks
            from quota.swarm_cluster import services_view as view
        starting = await self._pending_servers()  # before Docker: a spawn pending now has its interval already
        containers = await asyncio.to_thread(view, self.docker, self.site.hub.instance)
        rows = await asyncio.to_thread(self.store.open_intervals)
        now = self.clock()
        since = now - timedelta(seconds=2 * self.site.quota.reconcile_interval_seconds + 60)
        closed = await asyncio.to_thread(self.store.recently_closed, since)
        plan = reconcile.plan(
            containers,
            [reconcile.IntervalView.from_row(r) for r in rows],
            now,
            unknown=self.site.quota.unknown_containers,
            hub_id=self.site.hub.instance,
            pending_grace_seconds=max(120.0, 2 * self.site.quota.reconcile_interval_seconds),
            recently_closed=[reconcile.IntervalView.from_row(r) for r in closed],
            held_devices=[r_dev for r in rows for r_dev in (r.get("device_uuids") or "").split(",") if r_dev],
            starting=starting,
            start_limit_seconds=SERVER_START_TIMEOUT_SECONDS + 60,
        )
        for c in plan.close:
            log.info("closing %s at %s (%s)", c.server_key, c.at.isoformat(), c.reason)
        for a in plan.adopt:
            log.warning("adopting container %s as %s/%s", a.container, a.user, a.server_name)
        applied = await asyncio.to_thread(self.store.apply_plan, plan)  # the ledger side: closes, adoptions
        for container, why in applied["refused"]:
            log.warning("not adopting %s: %s", container, why)
        for s in plan.stop:
            log.warning("stopping container %s (%s)", s.container, s.reason)
            await asyncio.to_thread(self._remove_container, s.container)
        for note in plan.notes:
            log.warning("reconcile: %s", note)
        return plan

    async def _pending_servers(self):
        """Server keys the hub reports as pending; unknown (no hub, or it did not answer) counts as all pending
        only up to the start limit: the short grace then applies to none, so no live spawn loses its GPUs."""
        if self.hub is None or not hasattr(self.hub, "pending_servers"):
            return set()
        try:
            return await self.hub.pending_servers()
        except Exception as e:  # noqa: BLE001 - the hub restarting: keep every young interval this pass
            log.warning("reconcile: the hub's pending servers are unknown (%s); keeping young intervals", e)
            return _ALL

    def _remove_container(self, name: str) -> None:
        if self.site.hub.engine == "swarm":  # a server's service (removing it stops its task on its node)
            try:
                self.docker.api.remove_service(name)
            except docker.errors.NotFound:
                pass
            return
        try:
            c = self.docker.containers.get(name)
            c.stop(timeout=self.site.containers.stop_timeout_seconds)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass
