"""The project pages' values (issue 13): the spawn form's project picker and the home page's expiry notices.

:func:`project_context` and :func:`project_notices` are pure (site + the stewards' overlay + a clock -> template
values) so they are table-tested; :func:`add_project_context` (the spawn form, gpuhub.hub.form) and
:func:`home_notices` (the home page banner, gpuhub.hub.pages) are their thin hooks. The spawner side of a project
server is :mod:`gpuhub.hub.projects`.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

from gpuhub.core.periods import utcnow
from gpuhub.core.site import Site
from gpuhub.hub.projects import project_store
from quota import projects as qp

# ---------------------------------------------------------------- the spawn form's project picker


def project_context(
    site: Site,
    user: str,
    groups: frozenset[str],
    server_name: str,
    memberships: dict[str, qp.Membership],
    accepted: dict[str, str | None],
    now: datetime,
) -> dict:
    """Template values for the project picker (pure): the user's projects (the stewards' changes applied), each
    with its DUA text and hash and whether the current text is accepted; ``project`` is the one this server is
    (the named server KEY), or None on any other server, whose form links to each project's own spawn page."""
    tz = site.tz
    rows = []
    for key in qp.projects_of(site, user, groups, memberships):
        p, m = site.projects[key], memberships.get(key, qp.NO_CHANGES)
        closes = qp.effective_closes_at(p, m, tz)
        rows.append(
            {
                "key": key,
                "display_name": p.display_name,
                "org": p.org,
                "purpose": p.purpose,
                "datasets": [{"name": n, "description": d.description} for n, d in sorted(p.datasets.items())],
                "images": list(p.images),
                "dua_text": p.dua_text,
                "dua_sha256": p.dua_sha256,
                "accepted": accepted.get(key) == p.dua_sha256,
                "is_open": qp.is_open(p, m, tz, now),
                "opens": p.starts.isoformat(),
                "last_day": qp.effective_expires(p, m).isoformat(),
                "closes_at": closes.isoformat(timespec="minutes"),
                "checked": key == server_name,
            }
        )
    current = next((r for r in rows if r["checked"]), None)
    return {"projects": rows, "project": current}


def restrict_form(ctx: dict, site: Site) -> dict:
    """A project server's form: only the project's organization and images are offered (the rest would be
    refused with project-org-mismatch / project-image-not-allowed)."""
    current = ctx.get("project")
    if not current:
        return ctx
    orgs = [o for o in ctx.get("orgs", []) if o["key"] == current["org"]]
    for o in orgs:
        o["checked"] = not o["disabled"]
    images = [dict(i, checked=False) for i in ctx.get("images", []) if i["key"] in current["images"]]
    for i in [i for i in images if not i["disabled"]][:1]:
        i["checked"] = True
    return {**ctx, "orgs": orgs, "images": images}


async def add_project_context(spawner, ctx: dict) -> dict:
    """``ctx`` (gpuhub.hub.form.form_context) with the project picker's values; unchanged on a site without
    projects. The store's reads run off the event loop; if the database is away the picker shows the config's
    projects (the spawn itself decides, with the store)."""
    site = spawner.site
    if not site.projects:
        return {**ctx, "projects": [], "project": None}
    user, groups = spawner.user.name, spawner._groups()
    store = project_store(site.hub.database_url)

    def read():
        memberships = store.memberships(list(site.projects))
        return memberships, {k: store.accepted_sha256(k, user) for k in site.projects}

    try:
        memberships, accepted = await asyncio.to_thread(read)
    except Exception as e:  # noqa: BLE001 - the form still renders
        spawner.log.warning("project store unavailable for the spawn form: %s", e)
        memberships, accepted = {}, {}
    extra = project_context(site, user, groups, spawner.name, memberships, accepted, utcnow())
    extra["spawn_base"] = f"{spawner.hub.base_url}spawn/{spawner.user.escaped_name}/"
    return restrict_form({**ctx, **extra}, site)


# ---------------------------------------------------------------- the home page's expiry notices

NOTICE_DAYS_AFTER_CLOSE = 30  # how long the home page still says why a closed project's servers are gone


def project_notices(
    site: Site, user: str, groups: frozenset[str], memberships: dict[str, qp.Membership], now: datetime
) -> list[dict]:
    """Home-page notices (pure) for the user's projects that close within their ``expiry_notice_minutes``
    (level ``closing``) or closed in the last :data:`NOTICE_DAYS_AFTER_CLOSE` days (level ``closed``: its
    servers were stopped at the close and new ones are refused)."""
    out = []
    tz = site.tz
    for key in qp.projects_of(site, user, groups, memberships):
        p, m = site.projects[key], memberships.get(key, qp.NO_CHANGES)
        closes = qp.effective_closes_at(p, m, tz)
        left = (closes - now).total_seconds()
        at = closes.astimezone(tz).strftime("%Y-%m-%d %H:%M")
        minutes = max(1, round(left / 60))
        # the facts of the English message, so the home page says it in the reader's language (templates/home.html)
        facts = {"name": p.display_name, "at": at, "tz": site.timezone, "stewards": ", ".join(p.stewards)}
        facts["minutes"] = minutes
        if left <= 0 and -left <= NOTICE_DAYS_AFTER_CLOSE * 86400:
            message = (
                f"Project {p.display_name} ({key}) closed at {at} ({site.timezone}): its servers were stopped then "
                f"and new ones are refused (rule project-expired). A steward ({', '.join(p.stewards)}) can extend "
                f"it with `gpuhub project extend {key} YYYY-MM-DD --by NAME`."
            )
            out.append({"key": key, "level": "closed", "closes_at": closes.isoformat(), "message": message, **facts})
        elif 0 < left <= p.expiry_notice_minutes * 60:
            message = (
                f"Project {p.display_name} ({key}) closes at {at} ({site.timezone}), in {minutes} "
                "min: its servers will be stopped then. Save your work now."
            )
            out.append({"key": key, "level": "closing", "closes_at": closes.isoformat(), "message": message, **facts})
    return out


_memberships_cache: dict[str, tuple[float, dict]] = {}


def cached_memberships(site: Site, max_age: float = 5.0) -> dict[str, qp.Membership]:
    """Every project's membership overlay, shared by the pages for ``max_age`` seconds (never by admission)."""
    url = site.hub.database_url
    hit = _memberships_cache.get(url)
    if hit and time.monotonic() - hit[0] < max_age:
        return hit[1]
    value = project_store(url).memberships(list(site.projects))
    _memberships_cache[url] = (time.monotonic(), value)
    return value


def home_notices(site: Site, user, groups: frozenset[str]) -> list[dict]:
    """:func:`project_notices` for the home page; [] on a site without projects or when the database is away."""
    if not site.projects:
        return []
    try:
        memberships = cached_memberships(site)
    except Exception:  # noqa: BLE001 - a page must render even when the database is away
        memberships = {}
    return project_notices(site, user.name, groups, memberships, utcnow())
