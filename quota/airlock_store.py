"""The airlock's records and quarantine: requests, checks, reviews, transitions; files copied by the service.

The decisions are in :mod:`quota.airlock` (states, two-person rule, roles) and :mod:`quota.disclosure` (the
automatic checks); this module keeps them. Every state change writes its transition row and its audit row
(:mod:`quota.audit`, ``airlock.<direction>.<state>``) in ONE transaction, serialised with every other audit
append, and the request is re-read inside that transaction: two stewards approving at the same moment are seen
one after the other, and the unique (request, reviewer) index is the last line of defence.

Files never come from the client: the service reads the named file from the Docker volume itself
(:class:`gpuhub.host.airlock_volumes.VolumeFiles`: a created, never started helper container; every path component
stat'ed, no links, a regular file under ``airlock.max_copy_mb``; the module says why not the host mountpoint). The
copy lands in ``airlock.quarantine_dir`` (mode 0700, on the host, mounted into no container) under a random name;
its sha256 and size are what the reviewers approve and what is released. The automatic checks run on that copy.

Release writes the approved copy, once, into a target volume the same way (``exports/PROJECT/NAME`` in the
requester's ordinary home for an export, ``imports/NAME`` in the project home for an import), owned by the
user's UID; an existing file of that name is kept and the release gets a random suffix before the extension.
The write happens inside the transaction that records ``released`` (so two releases can never both write).
:meth:`AirlockStore.purge` deletes the quarantined copies of rejected, revoked and cancelled requests
``airlock.retention_days`` after their decision (the rows stay: they are the processing records).
"""

from __future__ import annotations

import csv
import hashlib
import posixpath
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from gpuhub.core.periods import utc, utcnow
from gpuhub.core.projects import Project
from gpuhub.core.site import Site
from gpuhub.host.airlock_volumes import Copied, NotAFile, TooLarge, VolumeFiles
from quota import airlock as al
from quota import disclosure
from quota.audit import AuditLog
from quota.db import make_engine, upgrade
from quota.models import airlock_check, airlock_request, airlock_review, airlock_transition
from quota.projects import NO_CHANGES, Membership, is_member, is_open

R, C, V, T = airlock_request.c, airlock_check.c, airlock_review.c, airlock_transition.c
MAX_IDENTIFIER_FILES = 200
DOWNLOADED = "download"  # released_to of an export its requester downloaded once from the airlock page


# ---------------------------------------------------------------- views


@dataclass(frozen=True)
class RequestView:
    id: int
    project: str
    direction: str
    requester: str
    state: str
    path: str
    name: str
    why: str
    sha256: str
    size: int
    client_sha256: str | None
    needed: int
    submitted_at: datetime
    updated_at: datetime
    released_to: str | None
    purged_at: datetime | None
    checks: list[dict] = field(default_factory=list)
    reviews: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = asdict(self)
        for k in ("submitted_at", "updated_at", "purged_at"):
            d[k] = d[k].isoformat() if d[k] else None
        for item in d["reviews"] + d["history"]:
            item["at"] = item["at"].isoformat()
        return d

    @property
    def checks_failed(self) -> bool:
        return any(not c["passed"] for c in self.checks)


def identifier_values(project: Project) -> tuple[dict[str, frozenset[str]], list[disclosure.Finding]]:
    """The values of every ``identifier_columns`` column, read from the datasets' CSV files on the host
    (``dataset.column`` -> values), and a failed finding for each column that could not be read."""
    values: dict[str, set[str]] = {}
    problems: list[disclosure.Finding] = []
    for ds in project.datasets.values():
        if not ds.identifier_columns:
            continue
        labels = {col: f"{ds.name}.{col}" for col in ds.identifier_columns}
        if not ds.is_host_path:
            for label in labels.values():
                problems.append(
                    disclosure.Finding(
                        "identifier-value",
                        False,
                        f"{label}: dataset {ds.name} is the "
                        f"Docker volume {ds.source}, not read by the checks; check the file by hand",
                    )
                )
            continue
        src = Path(ds.source)
        files = [src] if src.is_file() else sorted(src.rglob("*.csv"))[:MAX_IDENTIFIER_FILES] if src.is_dir() else []
        found: set[str] = set()
        for f in files:
            try:
                with open(f, encoding="utf-8-sig", newline="") as fh:
                    reader = csv.DictReader(fh)
                    cols = [c for c in ds.identifier_columns if c in (reader.fieldnames or ())]
                    found.update(cols)
                    for row in reader:
                        for col in cols:
                            v = (row.get(col) or "").strip()
                            if len(v) >= disclosure.MIN_IDENTIFIER_LENGTH:
                                values.setdefault(labels[col], set()).add(v)
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                problems.append(
                    disclosure.Finding(
                        "identifier-value",
                        False,
                        f"dataset {ds.name}: cannot read {f} ({e}); its identifier values were not checked",
                    )
                )
        for col in set(ds.identifier_columns) - found:
            problems.append(
                disclosure.Finding(
                    "identifier-value",
                    False,
                    f"{labels[col]}: no CSV file of dataset "
                    f"{ds.name} under {ds.source} has a column {col!r}; fix identifier_columns",
                )
            )
    return {k: frozenset(v) for k, v in values.items()}, problems


# ---------------------------------------------------------------- the store


class _Fresh:
    """A new request row seen as coming from no state (its first transition's ``from_state`` is null)."""

    def __init__(self, row):
        self._row = row
        self.state = None

    def __getattr__(self, name):
        return getattr(self._row, name)


class AirlockStore:
    """``AirlockStore(engine, site, clock, docker_client)``: the site gives ``airlock`` settings, the projects
    (stewards, approvals needed, identifier columns) and the time zone; the docker client reads the volumes."""

    def __init__(
        self,
        engine: Engine,
        site: Site,
        clock: Callable[[], datetime] = utcnow,
        docker_client=None,
        labels: Mapping[str, str] | None = None,
    ):
        self.engine, self.site, self.clock = engine, site, clock
        self.settings = site.airlock
        self.audit = AuditLog(engine, clock)
        self.volumes = VolumeFiles(docker_client, self.settings.helper_image, labels) if docker_client else None
        self._identifiers: dict[str, tuple] = {}

    @classmethod
    def from_url(cls, url: str, site: Site, clock=utcnow, docker_client=None, migrate: bool = True) -> AirlockStore:
        engine = make_engine(url)
        if migrate:
            upgrade(engine)
        return cls(engine, site, clock, docker_client)

    @property
    def quarantine(self) -> Path:
        q = self.settings.quarantine_dir
        q.mkdir(mode=0o700, parents=True, exist_ok=True)
        q.chmod(0o700)  # also when an operator made the folder: only the service reads the files under review
        return q

    def _project(self, key: str) -> Project:
        project = self.site.projects.get(key)
        if project is None:
            yours = ", ".join(sorted(self.site.projects)) or "(none)"
            raise al.AirlockRule.UNKNOWN_PROJECT.refuse(project=key, yours=yours)
        return project

    # ------------------------------------------------------------------ writing

    def _transition(
        self,
        conn: Connection,
        row,
        to_state: str,
        actor: str,
        at: datetime,
        *,
        reason: str = "",
        source: str | None = None,
        detail: dict | None = None,
    ) -> int:
        action = al.audit_action(row.direction, to_state)
        target = f"{row.direction} {row.id}: {row.path}"
        body = {"id": row.id, "from": row.state, "to": to_state, "sha256": row.sha256, **(detail or {})}
        if reason:
            body["reason"] = reason
        audit = self.audit._append(conn, at, action, row.project, actor, source, target, body)
        conn.execute(
            insert(airlock_transition).values(
                request_id=row.id,
                from_state=row.state,
                to_state=to_state,
                actor=actor,
                reason=reason,
                at=at,
                audit_id=audit.id,
            )
        )
        conn.execute(update(airlock_request).where(R.id == row.id).values(state=to_state, updated_at=at))
        return audit.id

    def _row(self, conn: Connection, request_id: int):
        return conn.execute(select(airlock_request).where(R.id == request_id)).first()

    def _decision_view(self, conn: Connection, row) -> al.Request:
        project = self._project(row.project)
        reviews = tuple(
            al.Review(r.reviewer, r.decision, r.reason, r.at)
            for r in conn.execute(
                select(V.reviewer, V.decision, V.reason, V.at).where(V.request_id == row.id).order_by(V.id)
            )
        )
        failed = conn.execute(select(C.id).where(C.request_id == row.id, C.passed.is_(False)).limit(1)).first()
        return al.Request(
            id=row.id,
            project=row.project,
            direction=row.direction,
            requester=row.requester,
            state=row.state,
            needed=row.needed,
            stewards=frozenset(project.stewards),
            checks_failed=failed is not None,
            reviews=reviews,
        )

    def submit(
        self,
        key: str,
        requester: str,
        direction: str,
        path: str,
        why: str,
        *,
        source_volume: str,
        groups: frozenset[str] = frozenset(),
        membership: Membership = NO_CHANGES,
        client_sha256: str | None = None,
        source: str | None = None,
    ) -> RequestView:
        """``requester`` asks to move ``path`` (relative to ``source_volume``'s root: the project home for an
        export, the ordinary home for an import) through the airlock; copies it, runs the checks; returns the
        request in ``checks_done``. Refusals are :class:`quota.airlock.AirlockRefusal`."""
        direction = al.check_direction(direction)
        project = self._project(key)
        home = "project home" if direction == al.EXPORT else "home"
        rel = al.check_path(path, home)
        text = al.check_why(why, direction)
        if not is_member(project, membership, requester, groups) and requester not in project.stewards:
            stewards = ", ".join(project.stewards) or "(none)"
            raise al.AirlockRule.NOT_MEMBER.refuse(user=requester, project=key, direction=direction, stewards=stewards)
        if not is_open(project, membership, self.site.timezone, self.clock()):
            raise al.AirlockRule.PROJECT_CLOSED.refuse(project=key, expires=project.expires.isoformat())
        if self.volumes is None:
            raise RuntimeError("AirlockStore.submit needs a docker client to read the file from the volume")
        qname = f"{secrets.token_hex(16)}.bin"
        qpath = self.quarantine / qname
        try:
            copied = self.volumes.read_into(source_volume, rel, qpath, self.settings.max_copy_bytes)
        except NotAFile as e:
            qpath.unlink(missing_ok=True)
            raise al.AirlockRule.NOT_A_FILE.refuse(path=rel, home=home, what=e.what) from None
        except TooLarge as e:
            qpath.unlink(missing_ok=True)
            raise al.AirlockRule.FILE_TOO_LARGE.refuse(path=rel, size=e.size, limit=e.limit) from None
        except BaseException:
            qpath.unlink(missing_ok=True)
            raise
        at = utc(self.clock())
        values = dict(
            project=key,
            direction=direction,
            requester=requester,
            path=rel,
            name=posixpath.basename(rel),
            why=text,
            state=al.SUBMITTED,
            needed=al.needed_approvals(project, direction),
            source_volume=source_volume,
            sha256=copied.sha256,
            size=copied.size,
            client_sha256=client_sha256,
            quarantine_file=qname,
            submitted_at=at,
            updated_at=at,
        )

        def run(conn: Connection) -> int:
            rid = conn.execute(insert(airlock_request).values(**values)).inserted_primary_key[0]
            row = self._row(conn, rid)
            detail = {"size": copied.size, "why": text, "volume": source_volume}
            self._transition(conn, _Fresh(row), al.SUBMITTED, requester, at, source=source, detail=detail)
            return rid

        rid = self.audit._write(run)
        self._run_checks(rid, project, qpath, client_sha256, copied)
        return self.get(rid)

    def _identifier_values(self, project: Project):
        stamp = []
        for ds in project.datasets.values():
            if ds.identifier_columns and ds.is_host_path:
                try:
                    st = Path(ds.source).stat()
                    stamp.append((ds.source, st.st_mtime_ns, st.st_size))
                except OSError:
                    stamp.append((ds.source, None, None))
        cached = self._identifiers.get(project.key)
        if cached is None or cached[0] != stamp:
            cached = (stamp, *identifier_values(project))
            self._identifiers[project.key] = cached
        return cached[1], cached[2]

    def _run_checks(self, rid: int, project: Project, qpath: Path, client_sha256, copied: Copied) -> None:
        row = self.get_row(rid)
        direction = row.direction
        values, problems = self._identifier_values(project) if direction == al.EXPORT else ({}, [])
        try:
            findings = disclosure.check_file(
                row.name,
                qpath.read_bytes(),
                self.settings,
                direction=direction,
                identifiers=values if direction == al.EXPORT else None,
            )
        except Exception as e:  # noqa: BLE001 - a checker bug must not strand the request in 'submitted'
            findings = [
                disclosure.Finding(
                    "checks-error",
                    False,
                    f"the automatic checks failed ({type(e).__name__}: "
                    f"{e}); review the file by hand and report the error to an operator",
                )
            ]
        if direction == al.EXPORT:
            findings += problems
        if client_sha256 is not None:
            same = client_sha256 == copied.sha256
            findings.append(
                disclosure.Finding(
                    "client-hash",
                    same,
                    "the client's sha256 matches the file read from the volume"
                    if same
                    else f"the client said sha256 {client_sha256}, the file in the volume "
                    f"is {copied.sha256}: what is reviewed and released is the file's real content",
                )
            )
        failed = sorted({f.rule for f in findings if not f.passed})
        at = utc(self.clock())

        def run(conn: Connection) -> None:
            row = self._row(conn, rid)
            al.checks_done(self._decision_view(conn, row), bool(failed))  # raises unless still submitted
            if findings:
                conn.execute(insert(airlock_check), [dict(request_id=rid, **f.as_dict()) for f in findings])
            self._transition(
                conn, row, al.CHECKS_DONE, al.SYSTEM, at, detail={"failed": failed, "findings": len(findings)}
            )

        self.audit._write(run)

    def _act(self, request_id: int, user: str, action: str, source: str | None = None, **kw) -> RequestView:
        at = utc(self.clock())

        def run(conn: Connection) -> None:
            row = self._row(conn, request_id)
            if row is None:
                raise al.AirlockRule.NOT_FOUND.refuse(direction="airlock", id=request_id)
            step = al.apply(self._decision_view(conn, row), action, user, at=at, **kw)
            if action == "review":
                conn.execute(
                    insert(airlock_review).values(
                        request_id=row.id, reviewer=user, decision=kw["decision"], reason=step.reason, at=at
                    )
                )
            detail = {"decision": kw["decision"]} if action == "review" else {}
            if step.state == al.APPROVED:
                detail["approvals"] = sorted(al.approvals(step.request))
            # a review short of enough keeps in_review: still a transition row (in_review -> in_review), audited
            self._transition(conn, row, step.state, user, at, reason=step.reason, source=source, detail=detail)

        self.audit._write(run)
        return self.get(request_id)

    def review(self, request_id: int, user: str, decision: str, reason: str = "", source=None) -> RequestView:
        return self._act(request_id, user, "review", source, decision=decision, reason=reason)

    def cancel(self, request_id: int, user: str, source=None) -> RequestView:
        return self._act(request_id, user, "cancel", source)

    def revoke(self, request_id: int, user: str, reason: str, source=None) -> RequestView:
        return self._act(request_id, user, "revoke", source, reason=reason)

    def release(self, request_id: int, *, target_volume: str, uid: int, actor: str = al.SYSTEM) -> RequestView:
        """Write the approved copy, once, into ``target_volume`` (the requester's ordinary home for an export,
        the project home for an import), owned by ``uid``; state ``released``."""
        if self.volumes is None:
            raise RuntimeError("AirlockStore.release needs a docker client to write the file into the volume")
        row = self.get_row(request_id)
        if row is None:
            raise al.AirlockRule.NOT_FOUND.refuse(direction="airlock", id=request_id)
        with self.engine.connect() as conn:
            al.release(self._decision_view(conn, row), actor)  # refuse before touching any volume
        qpath = self.quarantine / row.quarantine_file
        if hashlib.sha256(qpath.read_bytes()).hexdigest() != row.sha256:
            raise RuntimeError(f"airlock: quarantined copy of request {row.id} does not match its sha256; not released")
        folder = f"exports/{row.project}" if row.direction == al.EXPORT else "imports"
        at = utc(self.clock())

        def run(conn: Connection) -> str:
            current = self._row(conn, request_id)
            al.release(self._decision_view(conn, current), actor)  # again, under the lock: released once
            written = self.volumes.write(target_volume, folder, current.name, qpath, uid)
            to = f"{target_volume}:{written}"
            conn.execute(update(airlock_request).where(R.id == request_id).values(released_to=to))
            self._transition(conn, current, al.RELEASED, actor, at, detail={"to": to})
            return to

        self.audit._write(run)
        return self.get(request_id)

    def download(self, request_id: int, user: str, source: str | None = None) -> tuple[RequestView, bytes]:
        """The approved export's bytes for its requester, once (``airlock.export_release: download``): the
        ``released`` transition (to ``download``) is recorded in the transaction that reads them, so a second
        download is refused (``airlock-not-releasable``), and so is one after a revoke."""
        row = self.get_row(request_id)
        if row is None:
            raise al.AirlockRule.NOT_FOUND.refuse(direction="airlock", id=request_id)
        at = utc(self.clock())

        def run(conn: Connection) -> bytes:
            current = self._row(conn, request_id)
            view = self._decision_view(conn, current)
            al.release(view, user)  # visible, the requester, approved and not released: under the audit lock
            if current.direction != al.EXPORT:
                hint = "an import is released into the project home, not downloaded"
                raise al.AirlockRule.NOT_RELEASABLE.refuse(**al._facts(view, hint=hint))
            body = (self.quarantine / current.quarantine_file).read_bytes()
            if hashlib.sha256(body).hexdigest() != current.sha256:
                raise RuntimeError(f"airlock: quarantined copy of request {row.id} does not match its sha256")
            conn.execute(update(airlock_request).where(R.id == request_id).values(released_to=DOWNLOADED))
            self._transition(conn, current, al.RELEASED, user, at, source=source, detail={"to": DOWNLOADED})
            return body

        body = self.audit._write(run)
        return self.get(request_id), body

    def purge(self) -> list[int]:
        """Delete the quarantined copies of discarded requests older than ``airlock.retention_days``."""
        now = utc(self.clock())
        cutoff = now - timedelta(days=self.settings.retention_days)
        q = select(airlock_request).where(R.state.in_(al.DISCARDED), R.purged_at.is_(None), R.updated_at <= cutoff)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        done = []
        for row in rows:
            (self.quarantine / row.quarantine_file).unlink(missing_ok=True)

            def run(conn: Connection, row=row) -> None:
                conn.execute(update(airlock_request).where(R.id == row.id).values(purged_at=now))
                self.audit._append(
                    conn,
                    now,
                    f"{al.AUDIT_PREFIX}.{row.direction}.purged",
                    row.project,
                    al.SYSTEM,
                    None,
                    f"{row.direction} {row.id}: {row.path}",
                    {"id": row.id, "state": row.state, "sha256": row.sha256},
                )

            self.audit._write(run)
            done.append(row.id)
        return done

    # ------------------------------------------------------------------ reading

    def get_row(self, request_id: int):
        with self.engine.connect() as conn:
            return self._row(conn, request_id)

    def quarantined_path(self, request_id: int, user: str) -> Path:
        """The quarantined copy, for a steward's preview on the airlock page: stewards of the project only, never
        the requester (a preview outside the room would be an export without review), never after purge."""
        view = self.get(request_id, user)
        project = self.site.projects.get(view.project)
        if user == view.requester or project is None or user not in project.stewards or view.purged_at is not None:
            raise al.AirlockRule.NOT_FOUND.refuse(direction=view.direction, id=request_id)
        return self.quarantine / self.get_row(request_id).quarantine_file

    def get(self, request_id: int, user: str | None = None) -> RequestView:
        """The request with its checks, reviews and history; ``user`` given: only if they may see it."""
        with self.engine.connect() as conn:
            row = self._row(conn, request_id)
            if row is None:
                raise al.AirlockRule.NOT_FOUND.refuse(direction="airlock", id=request_id)
            view = self._view(conn, row)
        if user is not None:
            project = self.site.projects.get(view.project)
            stewards = frozenset(project.stewards) if project else frozenset()
            if user != view.requester and user not in stewards:
                raise al.AirlockRule.NOT_FOUND.refuse(direction=view.direction, id=request_id)
        return view

    def _view(self, conn: Connection, row) -> RequestView:
        return self._views(conn, [row])[0]

    def _views(self, conn: Connection, rows: list) -> list[RequestView]:
        """The rows with their checks, reviews and history: three queries for any number of requests (the
        stewards' page lists hundreds)."""
        ids = [row.id for row in rows]
        checks: dict[int, list] = {i: [] for i in ids}
        reviews: dict[int, list] = {i: [] for i in ids}
        history: dict[int, list] = {i: [] for i in ids}
        for i in range(0, len(ids), 500):  # bounded IN lists
            chunk = ids[i : i + 500]
            q = select(C.request_id, C.rule, C.passed, C.detail, C.location).where(C.request_id.in_(chunk))
            for c in conn.execute(q.order_by(C.id)):
                checks[c.request_id].append(
                    dict(rule=c.rule, passed=bool(c.passed), detail=c.detail, location=c.location)
                )
            q = select(V.request_id, V.reviewer, V.decision, V.reason, V.at).where(V.request_id.in_(chunk))
            for r in conn.execute(q.order_by(V.id)):
                reviews[r.request_id].append(dict(reviewer=r.reviewer, decision=r.decision, reason=r.reason, at=r.at))
            for t in conn.execute(select(airlock_transition).where(T.request_id.in_(chunk)).order_by(T.id)):
                history[t.request_id].append(
                    dict(state=t.to_state, previous=t.from_state, actor=t.actor, reason=t.reason, at=t.at,
                         audit_id=t.audit_id)
                )  # fmt: skip
        return [
            RequestView(
                id=row.id,
                project=row.project,
                direction=row.direction,
                requester=row.requester,
                state=row.state,
                path=row.path,
                name=row.name,
                why=row.why,
                sha256=row.sha256,
                size=row.size,
                client_sha256=row.client_sha256,
                needed=row.needed,
                submitted_at=row.submitted_at,
                updated_at=row.updated_at,
                released_to=row.released_to,
                purged_at=row.purged_at,
                checks=checks[row.id],
                reviews=reviews[row.id],
                history=history[row.id],
            )
            for row in rows
        ]

    def list(
        self, user: str, *, project: str | None = None, state: str | None = None, direction: str | None = None
    ) -> list[RequestView]:
        """The requests ``user`` may see (their own, and every request of a project they are a steward of)."""
        stewarded = [k for k, p in self.site.projects.items() if user in p.stewards]
        q = select(airlock_request).where((R.requester == user) | R.project.in_(stewarded)).order_by(R.id)
        if project is not None:
            q = q.where(R.project == project)
        if state is not None:
            q = q.where(R.state == state)
        if direction is not None:
            q = q.where(R.direction == direction)
        with self.engine.connect() as conn:
            return self._views(conn, list(conn.execute(q)))
