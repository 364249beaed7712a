"""Who may start a project server, and when (pure: site + request + membership overlay -> a refusal or None).

The site config lists a project's members (:class:`gpuhub.core.projects.Project`); stewards change that list
at run time with ``gpuhub project add-member|remove-member`` and move the last day with ``extend``. Those
changes live in the database (:mod:`quota.project_store`) and reach this module as a :class:`Membership`:

- effective members = (listed by name, or in one of ``members_idp_groups``, or added) and not removed; an
  add or remove is the latest event for that user, so a later add undoes a remove and vice versa;
- the effective last day = the later of the config's ``expires`` and the latest extension (an extension never
  shortens a project; to close one early, edit ``expires`` in the site config and remove any extension).

:func:`check_project` runs before :func:`quota.policy.check` (which then charges the project's organization):
the request errors first (400: unknown project, wrong server name, wrong org, a stale DUA hash), then the
permanent refusals (403: not a member, image not allowed), then the time window, then the DUA acceptance.

The audit actions every layer writes for projects are the ``AUDIT_*`` constants here (one place).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo

from gpuhub.core.periods import utc
from gpuhub.core.projects import Project
from gpuhub.core.site import Site
from quota.policy import Refusal, Rule

AUDIT_DUA_ACCEPTED = "dua.accepted"
AUDIT_SERVER_STARTED = "server.started"
AUDIT_SERVER_STOPPED = "server.stopped"
AUDIT_DATASET_MOUNTED = "dataset.mounted"
AUDIT_REQUEST_BLOCKED = "request.blocked"
AUDIT_MEMBERSHIP_ADDED = "membership.added"
AUDIT_MEMBERSHIP_REMOVED = "membership.removed"
AUDIT_PROJECT_EXTENDED = "project.extended"
AUDIT_PROJECT_EXPIRED = "project.expired"
AUDIT_PROJECT_EXPIRY_WARNED = "project.expiry-warned"
AUDIT_ACTIONS = (
    AUDIT_DUA_ACCEPTED,
    AUDIT_SERVER_STARTED,
    AUDIT_SERVER_STOPPED,
    AUDIT_DATASET_MOUNTED,
    AUDIT_REQUEST_BLOCKED,
    AUDIT_MEMBERSHIP_ADDED,
    AUDIT_MEMBERSHIP_REMOVED,
    AUDIT_PROJECT_EXTENDED,
    AUDIT_PROJECT_EXPIRED,
    AUDIT_PROJECT_EXPIRY_WARNED,
)


@dataclass(frozen=True)
class Membership:
    """The stewards' changes to one project, read from the database: the users whose latest event is an add
    (``added``) or a remove (``removed``; disjoint from ``added``), and the latest extension's new last day."""

    added: frozenset[str] = frozenset()
    removed: frozenset[str] = frozenset()
    expires_override: date | None = None


NO_CHANGES = Membership()


def effective_members(project: Project, membership: Membership = NO_CHANGES) -> frozenset[str]:
    """The members named by user name: listed or added, and not removed (IdP-group members are not
    enumerable here; :func:`is_member` also counts them)."""
    return (frozenset(project.members) | membership.added) - membership.removed


def is_member(project: Project, membership: Membership, user: str, groups: frozenset[str] = frozenset()) -> bool:
    """A member now: listed by name or IdP group, or added, and not removed since."""
    if user in membership.removed:
        return False
    return user in membership.added or project.is_listed_member(user, groups)


def effective_expires(project: Project, membership: Membership = NO_CHANGES) -> date:
    """The last open day: the config's ``expires`` or a later extension."""
    override = membership.expires_override
    return max(project.expires, override) if override is not None else project.expires


def effective_closes_at(project: Project, membership: Membership, tz: tzinfo | str) -> datetime:
    """The first closed instant: the day after the effective last day, 00:00 in ``tz`` (the site time zone)."""
    return dataclasses.replace(project, expires=effective_expires(project, membership)).closes_at(tz)


def is_open(project: Project, membership: Membership, tz: tzinfo | str, now: datetime) -> bool:
    return project.opens_at(tz) <= now < effective_closes_at(project, membership, tz)


def projects_of(site: Site, user: str, groups: frozenset[str], memberships: dict[str, Membership]) -> list[str]:
    """The projects ``user`` is a member of, the stewards' changes applied (``memberships`` by project key;
    a project missing there has none)."""
    return [k for k, p in site.projects.items() if is_member(p, memberships.get(k, NO_CHANGES), user, groups)]


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def check_project(
    site: Site,
    key: str,
    *,
    user: str,
    groups: frozenset[str] = frozenset(),
    server_name: str,
    image: str | None,
    org: str | None,
    now: datetime,
    accepted_sha256: str | None,
    offered_sha256: str | None,
    membership: Membership = NO_CHANGES,
) -> Refusal | None:
    """The first project rule a project-server request breaks, or None when it may start.

    ``accepted_sha256`` is the DUA hash the user accepted earlier (the store), ``offered_sha256`` the
    ``accept_dua`` of this request; either equal to the current text's hash satisfies the DUA rule (the
    caller records an offered acceptance). ``now`` is an aware datetime.
    """
    project = site.projects.get(key) if isinstance(key, str) else None
    if project is None:
        yours = site.projects_of(user, groups)
        return Rule.PROJECT_UNKNOWN.refuse(project=str(key)[:40], yours=_names(yours))
    charged = project.org
    if server_name != key:
        return Rule.PROJECT_SERVER_NAME.refuse(project=key, server=server_name, user=user, charged_to=charged)
    if org is not None and org != project.org:
        return Rule.PROJECT_ORG_MISMATCH.refuse(project=key, project_org=project.org, org=org[:40], charged_to=charged)
    current = project.dua_sha256
    if offered_sha256 is not None and offered_sha256 != current:
        return Rule.PROJECT_DUA_MISMATCH.refuse(project=key, charged_to=charged)
    if not is_member(project, membership, user, groups):
        return Rule.PROJECT_NOT_MEMBER.refuse(
            user=user, project=key, stewards=_names(project.stewards), charged_to=charged
        )
    if image is not None and image not in project.images:
        return Rule.PROJECT_IMAGE_NOT_ALLOWED.refuse(
            project=key, image=image[:40], allowed=_names(project.images), charged_to=charged
        )
    tz = site.tz
    at = utc(now)
    if at < project.opens_at(tz):
        return Rule.PROJECT_NOT_STARTED.refuse(
            project=key, opens=project.starts.isoformat(), tz=site.timezone, charged_to=charged
        )
    if at >= effective_closes_at(project, membership, tz):
        last = effective_expires(project, membership)
        closed = (last + timedelta(days=1)).isoformat()
        return Rule.PROJECT_EXPIRED.refuse(
            project=key, closed=closed, last=last.isoformat(), tz=site.timezone, charged_to=charged
        )
    if current not in (accepted_sha256, offered_sha256):
        return Rule.PROJECT_DUA_REQUIRED.refuse(user=user, project=key, sha256=current, charged_to=charged)
    return None


def member_rows(project: Project, membership: Membership, acceptances, hub_groups: dict[str, set[str]]) -> list[dict]:
    """One row per member (and per removed user): source config | idp | added | removed, and their DUA state.

    ``acceptances``: the store's DUA acceptances, oldest first; ``hub_groups``: {IdP group: its users}. Shared by
    ``gpuhub project members`` and the stewards' page, so both say the same."""
    latest = {}
    for a in acceptances:  # oldest first: the last one per user counts
        latest[a.user] = a
    sources: dict[str, str] = {}
    for user in project.members:
        sources[user] = "config"
    for group in project.members_idp_groups:
        for user in sorted(hub_groups.get(group, ())):
            sources.setdefault(user, "idp")
    for user in sorted(membership.added):
        sources.setdefault(user, "added")
    for user in sorted(membership.removed):
        sources[user] = "removed"
    rows = []
    for user, source in sorted(sources.items(), key=lambda kv: (kv[1] == "removed", kv[0])):
        a = latest.get(user)
        if a is None:
            dua, at = "not accepted", None
        else:
            dua = "accepted" if a.sha256 == project.dua_sha256 else "accepted an older text"
            at = a.at.isoformat()
        rows.append({"user": user, "source": source, "dua": dua, "dua_accepted_at": at, "dua_source": a and a.source})
    return rows
