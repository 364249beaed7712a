"""``/hub/projects``: the stewards' page of secure projects (issue 13, item 6).

A steward (``projects.KEY.stewards``; hub admins see every project) sees, per project: the period and its state,
the purpose and legal basis, the datasets, each member with where the membership comes from and their data use
agreement acceptance (:func:`quota.projects.member_rows`, the same rows as ``gpuhub project members``), the project
servers running now, and the last month of the project's audit log (PIPC: stewards review access logs at least
monthly; ``gpuhub audit export`` gives the whole of it). Everyone else gets 403: a member never sees who else is in
a room. Read-only: membership changes go through ``gpuhub project add-member|remove-member|extend``, each audited.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from jupyterhub import orm
from tornado import web

from gpuhub.hub.projects import project_store
from gpuhub.hub.usage_pages import _Page
from quota import projects as qp

RECENT_DAYS = 31  # the review period: PIPC asks stewards to review the access log at least monthly
RECENT_MAX = 200  # newest first; the rest with `gpuhub audit export`


def stewarded(site, user: str, admin: bool) -> list[str]:
    """The projects ``user`` may see here: those they steward, or every project for a hub admin."""
    return [key for key, p in site.projects.items() if admin or user in p.stewards]


def _state(site, project, membership, now: datetime) -> str:
    if now < project.opens_at(site.tz):
        return "not-started"
    return "open" if qp.is_open(project, membership, site.tz, now) else "closed"


def project_view(site, project, membership, acceptances, hub_groups, servers: dict[str, dict], events, now) -> dict:
    """Template values for one project (pure: the handler gathers the inputs)."""
    members = qp.member_rows(project, membership, acceptances, hub_groups)
    for row in members:
        row["server"] = servers.get(row["user"])
    return {
        "key": project.key,
        "display_name": project.display_name,
        "org": project.org,
        "purpose": project.purpose,
        "legal_basis": project.legal_basis,
        "starts": project.starts,
        "expires": qp.effective_expires(project, membership),
        "state": _state(site, project, membership, now),
        "stewards": list(project.stewards),
        "datasets": [(d.name, d.description) for d in project.datasets.values()],
        "members": members,
        "running": [{"user": u, **s} for u, s in sorted(servers.items())],
        "events": events,
        "dua_sha256": project.dua_sha256,
    }


def _servers(db, key: str) -> dict[str, dict]:
    """{user: {started, last_activity}} of the running project servers (the named servers ``key``)."""
    rows = db.query(orm.Spawner).filter(orm.Spawner.name == key, orm.Spawner.server_id.isnot(None)).all()
    return {s.user.name: {"started": s.started, "last_activity": s.last_activity} for s in rows}


def _hub_groups(db, names) -> dict[str, set[str]]:
    groups = db.query(orm.Group).filter(orm.Group.name.in_(list(names))).all() if names else []
    return {g.name: {u.name for u in g.users} for g in groups}


def _store_facts(site, keys: list[str], now: datetime) -> dict[str, tuple]:
    """Per project: (membership, acceptances, last month's audit events newest first), from the hub database."""
    store = project_store(site.hub.database_url)
    memberships = store.memberships(keys)
    out = {}
    for key in keys:
        rows = list(store.audit.export(key, now - timedelta(days=RECENT_DAYS), now + timedelta(seconds=1)))[1:]
        events = [dict(zip(("account", "time", "source", "target", "action"), r, strict=True)) for r in rows]
        out[key] = (memberships.get(key, qp.NO_CHANGES), store.acceptances(key), events[::-1][:RECENT_MAX])
    return out


class StewardHandler(_Page):
    """``/hub/projects``: the projects the signed-in steward looks after (hub admins: all)."""

    @web.authenticated
    async def get(self):
        user, site, t = self.current_user, self.site, self.messages()
        keys = stewarded(site, user.name, bool(user.admin))
        if not keys:
            raise web.HTTPError(
                403,
                t.gettext(
                    "Only a project's data stewards (and hub admins) see this page, and you steward no project. "
                    "An operator names stewards in the site config (projects.KEY.stewards)."
                ),
            )
        now = datetime.now(UTC)
        facts = await asyncio.to_thread(_store_facts, site, keys, now)
        views = []
        for key in keys:
            project = site.projects[key]
            membership, acceptances, events = facts[key]
            groups = _hub_groups(self.db, project.members_idp_groups)
            views.append(
                project_view(site, project, membership, acceptances, groups, _servers(self.db, key), events, now)
            )
        html = await self.render_template(
            "gpuhub_projects.html", t=t, _=t.gettext, projects=views, recent_days=RECENT_DAYS
        )
        self.finish(html)


def handlers(site_path: str) -> list[tuple]:
    return [(r"/projects", StewardHandler, {"site_path": site_path})]
