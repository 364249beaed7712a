"""The project audit log: append-only, hash-chained rows in ``gpuhub_audit_log`` (issue 13, item 5).

Rules (each enforced here, checked by tests/projects/test_audit.py):

- Rows are only ever appended, through :meth:`AuditLog.append`; nothing in gpuhub updates a row. The
  appender assigns ``id = last id + 1`` and ``prev_hash = the last row's hash`` inside one write
  transaction serialised per database, as the quota store serialises allocations: SQLite takes the write
  lock up front (``BEGIN IMMEDIATE``, see :func:`quota.db.make_engine`), PostgreSQL takes the transaction
  advisory lock :data:`PG_AUDIT_LOCK` (its own key, so audit appends never wait on GPU allocations). The
  primary key on ``id`` is the last line of defence: two appenders can never both commit one id.
- ``hash = sha256(prev_hash || "\\n" || canonical(row))`` where ``canonical`` is the compact, key-sorted
  UTF-8 JSON of ``[id, at, project, account, source, action, target, detail]`` with ``at`` written as
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ``. The first row links to :data:`GENESIS`.
- :meth:`AuditLog.verify` walks the chain in id order and names the FIRST row that breaks it, saying
  which evidence: its content no longer matches its hash (edited, or inserted by hand); its ``prev_hash``
  does not match the row before (the row before was replaced, or this one inserted); a gap in ids (rows
  deleted); or a first row that neither starts at genesis nor is covered by a prune checkpoint (rows
  deleted from the front). Limits, in plain words: someone who can write the database AND recomputes
  every hash after the row they edit leaves a self-consistent chain, and deleting the newest rows leaves a
  shorter valid chain. Both are caught by an anchor kept outside the database: record the ``head`` that
  ``verify`` prints (PIPC's monthly log review is the natural moment) and pass it back as ``anchor``.
- Retention: :meth:`AuditLog.prune` refuses to run on a chain that does not verify (it would delete the
  evidence), and deletes only a prefix of the chain whose rows are ALL older than
  ``retention_days`` (default 730, the PIPC minimum for sensitive data), never a younger row, and appends
  a checkpoint row (action :data:`PRUNE_ACTION`) recording the id and hash of the last pruned row; the
  checkpoint is itself chained, so the shortened chain still verifies end to end.

The clock and the engine are injected; times are aware UTC datetimes.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from gpuhub.core.periods import utc, utcnow
from quota.db import make_engine, run_write, upgrade
from quota.models import audit_log

GENESIS = "0" * 64
PG_AUDIT_LOCK = 0x67707561  # "gpua": one audit appender at a time per PostgreSQL database
PRUNE_ACTION = "audit.pruned"
DEFAULT_RETENTION_DAYS = 730
EXPORT_FIELDS = ("account", "time", "source_address", "data_touched", "action")  # PIPC access-log fields
A = audit_log.c


class AuditBroken(RuntimeError):
    """The chain does not verify; raised by :meth:`AuditLog.prune`, which then deletes nothing."""


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    project: str | None
    account: str | None
    source: str | None
    action: str
    target: str | None
    detail: dict = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""


@dataclass(frozen=True)
class Finding:
    """The first break in the chain: ``row_id`` is the row named; ``kind`` is the evidence: hash-mismatch
    (edited or hand-inserted), broken-link (the row before replaced, or this one inserted), gap (rows deleted),
    front-deleted (rows before the first deleted, no checkpoint), anchor (a recorded head is gone or differs)."""

    row_id: int
    kind: str
    message: str


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rows: int
    head_id: int | None
    head_hash: str | None
    finding: Finding | None = None


@dataclass(frozen=True)
class PruneResult:
    deleted: int
    through_id: int | None  # the last pruned row
    checkpoint_id: int | None  # the checkpoint row appended (None when nothing was old enough)


def _at_text(at: datetime) -> str:
    return utc(at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(row_id: int, at: datetime, project, account, source, action: str, target, detail: dict) -> bytes:
    """The bytes a row's hash covers (besides prev_hash); stable across backends and Python versions."""
    body = [row_id, _at_text(at), project, account, source, action, target, detail]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def row_hash(
    prev_hash: str, row_id: int, at: datetime, project, account, source, action: str, target, detail: dict
) -> str:
    h = hashlib.sha256(prev_hash.encode("ascii") + b"\n")
    h.update(canonical(row_id, at, project, account, source, action, target, detail))
    return h.hexdigest()


def _detail_text(detail: dict | None) -> str:
    if detail is not None and not isinstance(detail, dict):
        raise TypeError(f"audit detail must be a JSON object (dict), got {type(detail).__name__}")
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _row(r) -> AuditRow:
    try:
        detail = json.loads(r.detail)
    except (TypeError, ValueError):
        detail = {"__unparseable__": r.detail}  # keeps verify going: the hash check then names the row
    return AuditRow(
        id=r.id,
        at=r.at,
        project=r.project,
        account=r.account,
        source=r.source,
        action=r.action,
        target=r.target,
        detail=detail,
        prev_hash=r.prev_hash,
        hash=r.hash,
    )


class AuditLog:
    """The audit log in ``engine``'s database (the hub database); ``clock()`` returns an aware datetime."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utcnow, retry_seconds: float = 30.0):
        self.engine, self.clock, self.retry_seconds = engine, clock, retry_seconds

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], datetime] = utcnow, migrate: bool = True) -> AuditLog:
        engine = make_engine(url)
        if migrate:
            upgrade(engine)
        return cls(engine, clock)

    # ------------------------------------------------------------------ writing

    def _write(self, fn: Callable[[Connection], object]):
        """``fn(conn)`` in one serialised write transaction; lock waits and id clashes are retried."""

        def lock(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_AUDIT_LOCK})

        return run_write(self.engine, fn, first=lock, retry_seconds=self.retry_seconds)

    @staticmethod
    def _append(
        conn: Connection, at: datetime, action: str, project, account, source, target, detail: dict | None
    ) -> AuditRow:
        last = conn.execute(select(A.id, A.hash).order_by(A.id.desc()).limit(1)).first()
        row_id, prev = (last.id + 1, last.hash) if last else (1, GENESIS)
        detail_text = _detail_text(detail)
        parsed = json.loads(detail_text)
        h = row_hash(prev, row_id, at, project, account, source, action, target, parsed)
        conn.execute(
            insert(audit_log).values(
                id=row_id,
                at=at,
                project=project,
                account=account,
                source=source,
                action=action,
                target=target,
                detail=detail_text,
                prev_hash=prev,
                hash=h,
            )
        )
        return AuditRow(row_id, at, project, account, source, action, target, parsed, prev, h)

    def append(
        self,
        action: str,
        *,
        project: str | None = None,
        account: str | None = None,
        source: str | None = None,
        target: str | None = None,
        detail: dict | None = None,
        at: datetime | None = None,
    ) -> AuditRow:
        """Append one event; returns the row as stored (with its id and hash)."""
        if not action:
            raise ValueError("audit action must be a non-empty string, e.g. 'dua.accepted'")
        when = utc(at or self.clock())
        return self._write(lambda conn: self._append(conn, when, action, project, account, source, target, detail))

    # ------------------------------------------------------------------ reading

    def rows(self, batch: int = 1000) -> Iterator[AuditRow]:
        """Every row in id order from ONE statement (one snapshot: a prune or append running meanwhile cannot
        show up as a gap), streamed in batches so a long log never sits in memory at once."""
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(select(audit_log).order_by(A.id))
            for r in result:
                yield _row(r)

    def verify(self, anchor: tuple[int, str] | None = None) -> Verdict:
        """Walk the chain; ``anchor`` = (id, hash) recorded earlier must still be in it."""
        prev: AuditRow | None = None
        count, anchor_seen = 0, False
        checkpoints: dict[int, str] = {}  # through_id -> through_hash, from the prune checkpoint rows
        first: AuditRow | None = None
        for row in self.rows():
            count += 1
            problem = self._check(prev, row)
            if problem:
                return Verdict(False, count, prev.id if prev else None, prev.hash if prev else None, problem)
            if first is None:
                first = row
            if row.action == PRUNE_ACTION and isinstance(row.detail.get("through_id"), int):
                checkpoints[row.detail["through_id"]] = str(row.detail.get("through_hash"))
            if anchor and row.id == anchor[0]:
                anchor_seen = True
                if row.hash != anchor[1]:
                    msg = (
                        f"row {row.id}: hash {row.hash[:12]}… differs from the recorded anchor "
                        f"{anchor[1][:12]}… (the chain was rewritten at row {row.id} or before)"
                    )
                    return Verdict(False, count, row.id, row.hash, Finding(row.id, "anchor", msg))
            prev = row
        if first is not None and first.prev_hash != GENESIS:
            covered = checkpoints.get(first.id - 1)
            if covered != first.prev_hash:
                msg = (
                    f"row {first.id} is the first row but does not start the chain and no prune checkpoint "
                    f"covers the rows before it: rows up to {first.id - 1} were deleted"
                )
                return Verdict(False, count, prev.id, prev.hash, Finding(first.id, "front-deleted", msg))
        if anchor and not anchor_seen:
            head = prev.id if prev else 0
            msg = (
                f"row {anchor[0]} (the recorded anchor) is missing; the log ends at row {head}: rows were "
                "deleted from the end, or pruned past the anchor"
            )
            return Verdict(
                False, count, prev.id if prev else None, prev.hash if prev else None, Finding(anchor[0], "anchor", msg)
            )
        return Verdict(True, count, prev.id if prev else None, prev.hash if prev else None)

    @staticmethod
    def _check(prev: AuditRow | None, row: AuditRow) -> Finding | None:
        expected = row_hash(
            row.prev_hash, row.id, row.at, row.project, row.account, row.source, row.action, row.target, row.detail
        )
        if prev is not None and row.id != prev.id + 1:
            gap = f"row {prev.id + 1}" if row.id == prev.id + 2 else f"rows {prev.id + 1}..{row.id - 1}"
            msg = f"{gap} deleted: a gap in ids between rows {prev.id} and {row.id}"
            return Finding(prev.id + 1, "gap", msg)
        if expected != row.hash:
            msg = f"row {row.id}: its content does not match its hash (edited, or inserted outside gpuhub)"
            return Finding(row.id, "hash-mismatch", msg)
        if prev is not None and row.prev_hash != prev.hash:
            msg = (
                f"row {row.id}: its prev_hash does not match row {prev.id}'s hash (a broken chain: "
                f"row {prev.id} was replaced, or row {row.id} inserted)"
            )
            return Finding(row.id, "broken-link", msg)
        return None

    def export(self, project: str, start: datetime, end: datetime) -> Iterator[list[str]]:
        """PIPC access-log rows for ``project`` with ``start <= at < end``: a header, then one row per event."""
        yield list(EXPORT_FIELDS)
        q = (
            select(A.account, A.at, A.source, A.target, A.action)
            .where(A.project == project, A.at >= utc(start), A.at < utc(end))
            .order_by(A.at, A.id)
        )
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                yield [r.account or "", _at_text(r.at), r.source or "", r.target or "", r.action]

    # ------------------------------------------------------------------ retention

    def prune(self, retention_days: int = DEFAULT_RETENTION_DAYS) -> PruneResult:
        """Delete the oldest rows, all older than ``retention_days``, behind a chained checkpoint row."""
        if not isinstance(retention_days, int) or retention_days < 1:
            raise ValueError(
                f"audit.retention_days: {retention_days!r} must be a whole number of days >= 1 "
                f"(default {DEFAULT_RETENTION_DAYS}, the minimum for sensitive data)"
            )
        verdict = self.verify()
        if not verdict.ok:  # pruning would destroy the evidence
            f = verdict.finding
            raise AuditBroken(
                f"audit log broken at row {f.row_id} ({f.kind}): {f.message}; "
                "nothing was pruned; keep a copy of the database for the investigation and run `gpuhub audit verify`"
            )
        now = utc(self.clock())
        cutoff = now - timedelta(days=retention_days)

        def run(conn: Connection) -> PruneResult:
            young = conn.execute(select(func.min(A.id)).where(A.at >= cutoff)).scalar()
            old = select(A.id, A.hash).where(A.id < young) if young is not None else select(A.id, A.hash)
            last = conn.execute(old.order_by(A.id.desc()).limit(1)).first()
            if last is None:
                return PruneResult(0, None, None)
            gone = conn.execute(delete(audit_log).where(A.id <= last.id)).rowcount
            cp = self._append(
                conn,
                now,
                PRUNE_ACTION,
                None,
                None,
                None,
                None,
                {
                    "through_id": last.id,
                    "through_hash": last.hash,
                    "rows": gone,
                    "cutoff": _at_text(cutoff),
                    "retention_days": retention_days,
                },
            )
            return PruneResult(gone, last.id, cp.id)

        return self._write(run)


def write_csv(rows: Iterable[list[str]], out) -> int:
    """Write ``rows`` (from :meth:`AuditLog.export`) to the text stream ``out``; returns the data rows."""
    w = csv.writer(out, lineterminator="\n")
    written = 0
    for r in rows:
        w.writerow(r)
        written += 1
    return max(written - 1, 0)  # less the header
