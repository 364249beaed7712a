"""Destruction at the end of a project (PIPA Art. 28-5 and 21: destroy without delay once the period is over):
what is due (pure, clock injected) and the one run that destroys it and records it.

A project is due ``projects.P.retention_days_after_expiry`` days (default 0) after it closes (the day after its
effective last day, 00:00 in the site time zone: an extension moves it). Then what held its data goes: the
containers of its servers (with them the datasets' mounts; the admission rules already refuse a closed
project's start), the project homes (Docker volumes labelled ``gpuhub.project=KEY`` of this hub instance, or
named ``<instance>-project-KEY-user-UID`` from before the label), its closed network, and the quarantined copies
of its airlock requests. Each run appends ONE audit row ``project.destroyed`` with what it destroyed (each
volume's id and creation time, each container, each quarantined file with its request and sha256) and whether
nothing is left (``complete``); a run that could not remove everything (a volume still in use) records what it
did and the errors, and the next run tries again. A project whose destruction is complete is not looked at again.
The records stay: the audit rows and the airlock's request rows are the processing records
(:mod:`quota.project_records`), kept ``audit.records_retention_days`` after the project ends.

:func:`due` and :func:`plan` are pure; :class:`ProjectExpiry` runs them against the Docker adapter
(:class:`gpuhub.host.project_expiry.ProjectRoom`), the quarantine folder and the hub database. It runs every
:data:`INTERVAL_SECONDS` in the quota service (which leaves a project whose server still runs to the enforcer's
stop through the hub, and destroys it on a later pass) and on demand as ``gpuhub project expire [--dry-run]``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from gpuhub.core.periods import utc, utcnow
from gpuhub.core.projects import Project
from gpuhub.core.site import Site
from gpuhub.host.project_expiry import ProjectRoom
from quota import projects as qp
from quota.audit import AuditLog
from quota.models import airlock_request, audit_log
from quota.project_store import ProjectStore

AUDIT_PROJECT_DESTROYED = "project.destroyed"
ACCOUNT = "gpuhub-expiry"  # the audit account of the service's own destruction runs
INTERVAL_SECONDS = 300.0
R, A = airlock_request.c, audit_log.c


def destroy_at(project: Project, membership: qp.Membership, tz) -> datetime:
    """The first instant the project's data is due for destruction."""
    return qp.effective_closes_at(project, membership, tz) + timedelta(days=project.retention_days_after_expiry)


def due(site: Site, memberships: dict[str, qp.Membership], now: datetime, complete: set[str]) -> dict[str, datetime]:
    """{project key: its destroy_at} for every project due at ``now`` whose destruction is not yet complete."""
    out = {}
    for key, project in site.projects.items():
        when = destroy_at(project, memberships.get(key, qp.NO_CHANGES), site.tz)
        if now >= when and key not in complete:
            out[key] = when
    return out


@dataclass(frozen=True)
class Leftovers:
    """What still holds a project's data: as the Docker adapter and the quarantine folder found it."""

    volumes: tuple[dict, ...] = ()  # {"id", "name", "created_at", "labels"}
    containers: tuple[dict, ...] = ()  # {"id", "name", "user", "server", "running"}
    network: str | None = None
    quarantine: tuple[dict, ...] = ()  # {"request", "file", "sha256", "state"}

    @property
    def empty(self) -> bool:
        return not (self.volumes or self.containers or self.network or self.quarantine)


@dataclass(frozen=True)
class Plan:
    """One project's destruction: ``defer`` says why not now (a server still running in the service's run)."""

    project: str
    destroy_at: datetime
    leftovers: Leftovers
    datasets: tuple[str, ...] = ()
    defer: str | None = None


@dataclass
class Outcome:
    plan: Plan
    destroyed: dict = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    audit_id: int | None = None

    @property
    def complete(self) -> bool:
        return not self.errors and self.plan.defer is None


def plan(project: Project, when: datetime, leftovers: Leftovers, *, stop_running: bool) -> Plan:
    """The destruction of ``project`` (pure); without ``stop_running`` a running server defers it."""
    running = [c["name"] for c in leftovers.containers if c.get("running")]
    defer = None
    if running and not stop_running:
        defer = f"server(s) {', '.join(running)} still running; the enforcer stops them through the hub first"
    datasets = tuple(f"{n} ({d.source})" for n, d in sorted(project.datasets.items()))
    return Plan(project.key, when, leftovers, datasets, defer)


class ProjectExpiry:
    """``ProjectExpiry(site, engine, room, clock)``; ``room``: a :class:`gpuhub.host.project_expiry.ProjectRoom`
    (anything with ``leftovers(key)`` and ``destroy(leftovers) -> (destroyed, errors)``)."""

    def __init__(self, site: Site, engine: Engine, room, clock: Callable[[], datetime] = utcnow):
        self.site, self.engine, self.room, self.clock = site, engine, room, clock
        self.audit = AuditLog(engine, clock)

    def _complete(self) -> set[str]:
        q = select(A.project, A.detail).where(A.action == AUDIT_PROJECT_DESTROYED)
        with self.engine.connect() as conn:
            return {r.project for r in conn.execute(q) if json.loads(r.detail or "{}").get("complete")}

    def _quarantined(self, key: str) -> tuple[dict, ...]:
        q = select(R.id, R.quarantine_file, R.sha256, R.state).where(R.project == key, R.purged_at.is_(None))
        with self.engine.connect() as conn:
            rows = list(conn.execute(q.order_by(R.id)))
        return tuple({"request": r.id, "file": r.quarantine_file, "sha256": r.sha256, "state": r.state} for r in rows)

    def plans(self, *, stop_running: bool = False) -> list[Plan]:
        """What is due now, with what is left of each project (reads Docker and the database, changes nothing)."""
        now = self.clock()
        memberships = ProjectStore(self.engine).memberships(self.site.projects)
        out = []
        for key, when in due(self.site, memberships, now, self._complete()).items():
            found = self.room.leftovers(key)
            left = Leftovers(found.volumes, found.containers, found.network, self._quarantined(key))
            out.append(plan(self.site.projects[key], when, left, stop_running=stop_running))
        return out

    def run(self, *, dry_run: bool = False, stop_running: bool = False) -> list[Outcome]:
        """Destroy what is due and record each project's run; ``dry_run``: only say what would go."""
        outcomes = [Outcome(p) for p in self.plans(stop_running=stop_running)]
        if dry_run:
            return outcomes
        for o in outcomes:
            if o.plan.defer is None:
                self._destroy(o)
        return outcomes

    def _destroy(self, o: Outcome) -> None:
        left = o.plan.leftovers
        destroyed, errors = self.room.destroy(left)
        gone_files, quarantine = [], Path(self.site.airlock.quarantine_dir)
        for q in left.quarantine:
            try:
                (quarantine / q["file"]).unlink(missing_ok=True)
                gone_files.append(q)
            except OSError as e:
                errors.append(f"quarantine file {q['file']} of request {q['request']}: {e.strerror}")
        now = utc(self.clock())
        detail = {
            "destroy_at": o.plan.destroy_at.isoformat(),
            "volumes": destroyed.get("volumes", []),
            "containers": destroyed.get("containers", []),
            "network": destroyed.get("network"),
            "quarantine": gone_files,
            "datasets": list(o.plan.datasets),
            "complete": not errors,
            "errors": errors,
        }
        ids = [q["request"] for q in gone_files]

        def run(conn: Connection) -> int:
            if ids:
                conn.execute(update(airlock_request).where(R.id.in_(ids)).values(purged_at=now))
            target = f"project {o.plan.project}: {len(detail['volumes'])} volume(s), {len(gone_files)} file(s)"
            row = self.audit._append(conn, now, AUDIT_PROJECT_DESTROYED, o.plan.project, ACCOUNT, None, target, detail)
            return row.id

        o.destroyed, o.errors = detail, errors
        o.audit_id = self.audit._write(run)

    async def tick(self) -> list[Outcome]:
        """The quota service's periodic pass (running servers defer: the enforcer stops them through the hub)."""
        if not self.site.projects:  # nothing can ever be due: no reads every pass
            return []
        return await asyncio.to_thread(self.run)


def for_site(site: Site, engine: Engine, docker_client, clock: Callable[[], datetime] = utcnow) -> ProjectExpiry:
    """The quota service's instance: this hub instance's rooms on ``docker_client``'s engine."""
    return ProjectExpiry(site, engine, ProjectRoom(docker_client, site.hub.instance), clock)
