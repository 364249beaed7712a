"""The project records in the hub database: DUA acceptances, the stewards' membership changes, extensions.

A thin adapter (the decisions are in :mod:`quota.projects`). Every table is append-only: an acceptance, an add
or remove, an extension is a new row, and the latest row counts, so the history stays for the stewards' review.
Each write and its audit-log row (:mod:`quota.audit`, same database) are ONE transaction: a recorded
acceptance or membership change always has its audit entry, and a failed audit write records nothing.

Every write returns the audit row it appended. ``ProjectStore(engine, clock)``; ``clock()`` returns an aware
datetime (UTC is stored). Project keys and user names are not checked against the site config here: the CLI
and the spawner do that before they write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from gpuhub.core.periods import utc, utcnow
from quota.audit import AuditLog, AuditRow
from quota.db import make_engine, upgrade
from quota.models import project_dua_acceptance, project_extension, project_membership
from quota.projects import (
    AUDIT_DUA_ACCEPTED,
    AUDIT_MEMBERSHIP_ADDED,
    AUDIT_MEMBERSHIP_REMOVED,
    AUDIT_PROJECT_EXTENDED,
    Membership,
)

ADDED, REMOVED = "added", "removed"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
D, M, X = project_dua_acceptance.c, project_membership.c, project_extension.c


@dataclass(frozen=True)
class Acceptance:
    user: str
    sha256: str
    at: datetime
    source: str | None


@dataclass(frozen=True)
class MembershipEvent:
    user: str
    action: str  # ADDED | REMOVED
    by: str
    at: datetime


def _name(what: str, value) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ValueError(f"{what} must be a non-empty name of at most 255 characters, got {value!r}")
    return value


class ProjectStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow):
        self.engine, self.clock = engine, clock
        self.audit = AuditLog(engine, clock)

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], datetime] = utcnow, migrate: bool = True) -> ProjectStore:
        engine = make_engine(url)
        if migrate:
            upgrade(engine)
        return cls(engine, clock)

    def _record(
        self, table, values: dict, action: str, *, project: str, account: str, source=None, target=None, detail=None
    ) -> AuditRow:
        """Insert ``values`` (stamped now) into ``table`` and append its audit row, in one serialised transaction;
        returns the audit row."""
        at = utc(self.clock())
        stamp = "accepted_at" if table is project_dua_acceptance else "at"

        def run(conn: Connection) -> AuditRow:
            conn.execute(insert(table).values(**values, **{stamp: at}))
            # AuditLog's own transaction helpers, so both rows commit together (same engine, same lock)
            return self.audit._append(conn, at, action, project, account, source, target, detail)

        return self.audit._write(run)

    # ------------------------------------------------------------------ DUA

    def accept_dua(self, key: str, user: str, sha256: str, source: str | None) -> AuditRow:
        """Record that ``user`` accepted project ``key``'s DUA whose text hashes to ``sha256``; audit 'dua.accepted'."""
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise ValueError(f"accept_dua: {sha256!r} is not a sha256 hex digest (64 lower-case hex characters)")
        values = {"project": _name("project", key), "user": _name("user", user), "sha256": sha256, "source": source}
        return self._record(
            project_dua_acceptance,
            values,
            AUDIT_DUA_ACCEPTED,
            project=key,
            account=user,
            source=source,
            target="dua",
            detail={"sha256": sha256},
        )

    def accepted_sha256(self, key: str, user: str) -> str | None:
        """The DUA hash ``user`` accepted last for project ``key`` (None: never)."""
        q = select(D.sha256).where(D.project == key, D.user == user).order_by(D.id.desc()).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar()

    def acceptances(self, key: str) -> list[Acceptance]:
        """Every acceptance for project ``key``, oldest first."""
        q = select(D.user, D.sha256, D.accepted_at, D.source).where(D.project == key).order_by(D.id)
        with self.engine.connect() as conn:
            return [Acceptance(r.user, r.sha256, r.accepted_at, r.source) for r in conn.execute(q)]

    # ------------------------------------------------------------------ membership

    def _member_change(self, key: str, user: str, by: str, action: str, audit_action: str) -> AuditRow:
        values = {
            "project": _name("project", key),
            "user": _name("user", user),
            "action": action,
            "by": _name("by", by),
        }
        return self._record(project_membership, values, audit_action, project=key, account=by, target=user)

    def add_member(self, key: str, user: str, by: str) -> AuditRow:
        """``by`` adds ``user`` to project ``key`` (on top of the site config); audit 'membership.added'."""
        return self._member_change(key, user, by, ADDED, AUDIT_MEMBERSHIP_ADDED)

    def remove_member(self, key: str, user: str, by: str) -> AuditRow:
        """``by`` removes ``user`` (also one the site config lists); audit 'membership.removed'."""
        return self._member_change(key, user, by, REMOVED, AUDIT_MEMBERSHIP_REMOVED)

    def membership_events(self, key: str) -> list[MembershipEvent]:
        q = select(M.user, M.action, M.by, M.at).where(M.project == key).order_by(M.id)
        with self.engine.connect() as conn:
            return [MembershipEvent(r.user, r.action, r.by, r.at) for r in conn.execute(q)]

    # ------------------------------------------------------------------ extension

    def extend(self, key: str, new_expires: date, by: str) -> AuditRow:
        """``by`` moves project ``key``'s last day to ``new_expires``; audit 'project.extended'."""
        if isinstance(new_expires, datetime) or not isinstance(new_expires, date):
            raise ValueError(f"extend: new_expires must be a date, got {new_expires!r}")
        values = {"project": _name("project", key), "expires": new_expires, "by": _name("by", by)}
        detail = {"expires": new_expires.isoformat()}
        target = f"expires={new_expires.isoformat()}"  # the export's "data touched" column shows the new day
        return self._record(
            project_extension, values, AUDIT_PROJECT_EXTENDED, project=key, account=by, target=target, detail=detail
        )

    # ------------------------------------------------------------------ reading the overlay

    def membership(self, key: str) -> Membership:
        """The stewards' changes to project ``key``: the latest event per user, the latest extension."""
        return self.memberships([key]).get(key, Membership())

    def memberships(self, keys=None) -> dict[str, Membership]:
        """:meth:`membership` for many projects in two statements (``keys`` None: every project with a change)."""
        mq = select(M.project, M.user, M.action).order_by(M.id)
        xq = select(X.project, X.expires).order_by(X.id)
        if keys is not None:
            keys = list(keys)
            mq, xq = mq.where(M.project.in_(keys)), xq.where(X.project.in_(keys))
        latest: dict[str, dict[str, str]] = {}
        expires: dict[str, date] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(mq):
                latest.setdefault(r.project, {})[r.user] = r.action
            for r in conn.execute(xq):
                expires[r.project] = r.expires
        out = {}
        for key in set(latest) | set(expires):
            events = latest.get(key, {})
            out[key] = Membership(
                added=frozenset(u for u, a in events.items() if a == ADDED),
                removed=frozenset(u for u, a in events.items() if a == REMOVED),
                expires_override=expires.get(key),
            )
        return out
