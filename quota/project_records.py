"""A project's processing records (PIPA Art. 28-4/28-5, the PIPC's access-log rules), generated from what gpuhub
already keeps, never typed: ``gpuhub project records KEY``.

Why generated: a data controller must keep, for pseudonymised data processed for research, the purpose, the
items, the legal basis, the period, who processed it, what left or entered the room and when it was destroyed,
and keep those records for at least three years after the project ends (``audit.records_retention_days``,
default 1095). Every one of those facts is already recorded when it happens (the site config, the DUA
acceptances, the membership changes, the airlock's requests, the hash-chained audit log); a hand-written record
could only drift from them. The PIPC also asks that the access log of sensitive data be reviewed at least
monthly: :func:`monthly_review` is that month's summary for the stewards, with the audit chain's verdict and the
head to write down as the anchor (:meth:`quota.audit.AuditLog.verify`).

:func:`build` is pure (the facts in, one JSON-ready dict out, times as ISO text); :func:`project_records` reads
the facts from the hub database. Rendering (HTML, CSV, JSON) is :mod:`quota.records_render`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.engine import Engine

from gpuhub.core.periods import month_bounds, month_of, parse_period, period_key, utc
from gpuhub.core.projects import LEGAL_BASES, Project
from gpuhub.core.site import Site
from quota import projects as qp
from quota.airlock_store import AirlockStore, RequestView
from quota.audit import AuditLog, Verdict
from quota.models import airlock_request, audit_log
from quota.project_expiry import AUDIT_PROJECT_DESTROYED, destroy_at
from quota.project_store import Acceptance, MembershipEvent, ProjectStore

# The audit actions that are accesses to the room's data (servers, mounts, blocked downloads, closes).
ACCESS_ACTIONS = (
    qp.AUDIT_SERVER_STARTED,
    qp.AUDIT_DATASET_MOUNTED,
    qp.AUDIT_SERVER_STOPPED,
    qp.AUDIT_REQUEST_BLOCKED,
    qp.AUDIT_PROJECT_EXPIRY_WARNED,
    qp.AUDIT_PROJECT_EXPIRED,
)
A = audit_log.c


def _iso(value) -> str | None:
    return value.isoformat() if value is not None else None


def audit_event(row) -> dict:
    """One audit row as the records show it: the PIPC's fields (account, time, source, data touched, task)."""
    detail = row["detail"] if isinstance(row["detail"], dict) else {}
    return {
        "id": row["id"],
        "at": _iso(utc(row["at"])),
        "account": row["account"],
        "source": row["source"],
        "action": row["action"],
        "target": row["target"],
        "detail": detail,
    }


def _project_section(site: Site, project: Project, membership: qp.Membership, now: datetime) -> dict:
    closes = qp.effective_closes_at(project, membership, site.tz)
    keep_days = site.audit.records_retention_days
    state = "not started" if now < project.opens_at(site.tz) else "open" if now < closes else "closed"
    return {
        "key": project.key,
        "display_name": project.display_name,
        "org": project.org,
        "purpose": project.purpose,
        "legal_basis": project.legal_basis,
        "legal_basis_text": LEGAL_BASES.get(project.legal_basis, ""),
        "starts": project.starts.isoformat(),
        "expires": qp.effective_expires(project, membership).isoformat(),
        "expires_in_config": project.expires.isoformat(),
        "opens_at": _iso(project.opens_at(site.tz)),
        "closes_at": _iso(closes),
        "timezone": site.timezone,
        "state": state,
        "dua_sha256": project.dua_sha256,
        "export_approvals": project.export_approvals,
        "import_approvals": project.import_approvals,
        "retention_days_after_expiry": project.retention_days_after_expiry,
        "destroy_at": _iso(destroy_at(project, membership, site.tz)),
        "records_retention_days": keep_days,
        "records_kept_until": (closes + timedelta(days=keep_days)).date().isoformat(),
    }


def _people(project: Project, membership: qp.Membership, acceptances, events) -> dict:
    return {
        "stewards": list(project.stewards),
        "members": qp.member_rows(project, membership, acceptances, {}),
        "members_idp_groups": list(project.members_idp_groups),
        "dua_acceptances": [
            {
                "user": a.user,
                "sha256": a.sha256,
                "current_text": a.sha256 == project.dua_sha256,
                "at": _iso(utc(a.at)),
                "source": a.source,
            }
            for a in acceptances
        ],
        "membership_changes": [{"user": e.user, "action": e.action, "by": e.by, "at": _iso(utc(e.at))} for e in events],
    }


def _request(view: RequestView) -> dict:
    d = view.as_dict()
    d["checks_failed"] = sorted({c["rule"] for c in view.checks if not c["passed"]})
    d["approved_by"] = [r["reviewer"] for r in view.reviews if r["decision"] == "approve"]
    d["rejected_by"] = [r["reviewer"] for r in view.reviews if r["decision"] == "reject"]
    return d


def _destruction(event: dict) -> dict:
    d = event["detail"]
    return {
        "at": event["at"],
        "by": event["account"],
        "audit_id": event["id"],
        "volumes": d.get("volumes", []),
        "quarantine": d.get("quarantine", []),
        "containers": d.get("containers", []),
        "datasets_unmounted": d.get("datasets", []),
        "complete": bool(d.get("complete", False)),
        "errors": d.get("errors", []),
    }


def review_month(month: str | None, now: datetime, tz) -> str:
    """The month under review: ``month`` (YYYY-MM, checked) or the last full calendar month before ``now``."""
    if month is not None:
        return period_key(*parse_period(month))
    year, mon = month_of(now, tz)
    return period_key(year - 1, 12) if mon == 1 else period_key(year, mon - 1)


def monthly_review(events: list[dict], requests: list[dict], month: str, tz, verdict: Verdict | None) -> dict:
    """The stewards' monthly access-log review (PIPC: at least monthly, the reason of every download checked):
    the month's events per account, every blocked download, every request decided or submitted in the month with
    its reason, and the audit chain's verdict with the head to record as the next review's anchor."""
    start, end = month_bounds(*parse_period(month), tz)

    def within(at: str) -> bool:
        return start <= datetime.fromisoformat(at) < end

    inside = [e for e in events if within(e["at"])]
    per_account: dict[str, Counter] = {}
    sources: dict[str, set] = {}
    for e in inside:
        who = e["account"] or "-"
        per_account.setdefault(who, Counter())[e["action"]] += 1
        if e["source"]:
            sources.setdefault(who, set()).add(e["source"])
    moved = [
        {k: r[k] for k in ("id", "direction", "requester", "state", "name", "why", "approved_by", "rejected_by")}
        for r in requests
        if any(within(h["at"]) for h in r["history"])
    ]
    return {
        "month": month,
        "start": _iso(start),
        "end": _iso(end),
        "events": len(inside),
        "by_account": [
            {
                "account": who,
                "events": sum(c.values()),
                "actions": dict(sorted(c.items())),
                "sources": sorted(sources.get(who, ())),
            }
            for who, c in sorted(per_account.items())
        ],
        "blocked": [e for e in inside if e["action"] == qp.AUDIT_REQUEST_BLOCKED],
        "requests": moved,
        "chain": _chain(verdict),
    }


def _chain(verdict: Verdict | None) -> dict | None:
    if verdict is None:
        return None
    f = verdict.finding
    return {
        "ok": verdict.ok,
        "rows": verdict.rows,
        "head_id": verdict.head_id,
        "head_hash": verdict.head_hash,
        "finding": {"row_id": f.row_id, "kind": f.kind, "message": f.message} if f else None,
    }


def build(
    site: Site,
    project: Project,
    *,
    now: datetime,
    membership: qp.Membership,
    acceptances: Iterable[Acceptance],
    membership_events: Iterable[MembershipEvent],
    requests: Iterable[RequestView],
    audit_rows: Iterable[dict],
    verdict: Verdict | None = None,
    month: str | None = None,
) -> dict:
    """The records of ``project`` (pure). ``audit_rows``: the project's audit rows as dicts of the table's columns
    (detail parsed), oldest first; ``verdict``: the whole chain's (the records say whether their source holds)."""
    events = [audit_event(r) for r in audit_rows]
    reqs = [_request(v) for v in requests]
    reviewed = review_month(month, now, site.tz)
    return {
        "generated_at": _iso(utc(now)),
        "project": _project_section(site, project, membership, now),
        "items": [
            {
                "name": d.name,
                "description": d.description,
                "source": d.source,
                "kind": d.kind,
                "identifier_columns": list(d.identifier_columns),
            }
            for d in project.datasets.values()
        ],
        "people": _people(project, membership, list(acceptances), list(membership_events)),
        "accesses": [e for e in events if e["action"] in ACCESS_ACTIONS],
        "exports": [r for r in reqs if r["direction"] == "export"],
        "imports": [r for r in reqs if r["direction"] == "import"],
        "destruction": [_destruction(e) for e in events if e["action"] == AUDIT_PROJECT_DESTROYED],
        "review": monthly_review(events, reqs, reviewed, site.tz, verdict),
        "audit_chain": _chain(verdict),
    }


def _audit_rows(engine: Engine, key: str) -> list[dict]:
    q = select(A.id, A.at, A.project, A.account, A.source, A.action, A.target, A.detail)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(q.where(A.project == key).order_by(A.id))]
    for r in rows:
        try:
            r["detail"] = json.loads(r["detail"] or "{}")
        except ValueError:
            r["detail"] = {"__unparseable__": r["detail"]}
    return rows


def project_records(engine: Engine, site: Site, key: str, now: datetime, month: str | None = None) -> dict:
    """Read everything the records hold about project ``key`` from the hub database at ``engine`` and
    :func:`build` them; the chain is verified whole (one pass over the audit log)."""
    project = site.projects[key]
    store = ProjectStore(engine)
    airlock = AirlockStore(engine, site)
    with engine.connect() as conn:
        ids = list(
            conn.execute(
                select(airlock_request.c.id).where(airlock_request.c.project == key).order_by(airlock_request.c.id)
            ).scalars()
        )
    return build(
        site,
        project,
        now=now,
        membership=store.membership(key),
        acceptances=store.acceptances(key),
        membership_events=store.membership_events(key),
        requests=[airlock.get(i) for i in ids],
        audit_rows=_audit_rows(engine, key),
        verdict=AuditLog(engine).verify(),
        month=month,
    )
