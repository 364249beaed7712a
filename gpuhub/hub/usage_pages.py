"""The hub's own pages beyond JupyterHub's: the language switch, "My usage" and the operators' view.

Registered by :func:`gpuhub.hub.hubconfig.apply_pages` under the hub prefix (``/hub/language``, ``/hub/usage``,
``/hub/operators``, ``/hub/operators/statement.csv``). The numbers come from the same functions as
``gpuhub quota status`` (:meth:`quota.store.QuotaStore.status`, through :func:`gpuhub.hub.runtime.quota_status`)
and ``gpuhub billing statement`` (:func:`quota.billing.statement`, :func:`quota.billing.daily`,
:func:`quota.billing.to_csv`); the charts are server-side SVG (:mod:`gpuhub.hub.charts`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from urllib.parse import urlsplit

from jupyterhub.handlers import BaseHandler
from tornado import web

from gpuhub.core.periods import parse_period, period_key, period_of
from gpuhub.hub import charts, i18n, runtime
from gpuhub.hub.pages import group_names, org_budget
from quota import billing, usage_records
from quota.policy import Rule

HISTORY_MONTHS = 6  # this month and the five before it


def _months_back(period: str, n: int) -> list[str]:
    year, month = parse_period(period)
    out = []
    for _ in range(n):
        out.append(period_key(year, month))
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out


class _Page(BaseHandler):
    def initialize(self, site_path: str):
        self.site_path = site_path

    @property
    def site(self):
        return runtime.site(self.site_path)

    def get_content_type(self) -> str:  # JupyterHub's pages say only text/html; these hold Korean text
        return "text/html; charset=UTF-8"

    def messages(self) -> i18n.Messages:
        return i18n.Messages(i18n.request_locale(self), self.site.tz)


class LanguageHandler(_Page):
    """POST ``lang`` (``ko`` or ``en``): remember the choice in the ``gpuhub-lang`` cookie and go back."""

    @web.authenticated
    def post(self):
        lang = self.get_body_argument("lang", "")
        if lang not in i18n.LANGUAGES:
            raise web.HTTPError(400, f"language {lang!r} is not offered; choose one of: {', '.join(i18n.LANGUAGES)}")
        self.set_cookie(i18n.COOKIE, lang, path=self.hub.base_url, expires_days=365, samesite="Lax", httponly=True)
        self.redirect(self._back(self.get_body_argument("next", "")))

    def _back(self, target: str) -> str:
        """``target`` when it is a path on this hub (never another host: no scheme, host or backslash)."""
        parts = urlsplit(target)
        if parts.scheme or parts.netloc or "\\" in target or not target.startswith(self.base_url) or "//" in target:
            return self.hub.base_url + "home"
        return target


def usage_context(site, store, user: str, groups: frozenset[str], now: datetime) -> dict:
    """What "My usage" shows ``user``: per organization of theirs, this month's budget and use (the org's and
    their own), the days of this month up to today, their running servers and the last months' totals."""
    status = runtime.quota_status(site.path)
    period = period_of(now, site.tz)
    today = now.astimezone(site.tz).date().isoformat()
    orgs = []
    for key in site.orgs_of(user, groups):
        org_days = [d for d in billing.daily(store, site, period, org=key, now=now)[key] if d["date"] <= today]
        own = billing.daily(store, site, period, org=key, now=now, user=user)[key]
        rows = [r for r in billing.statement(store, site, period, org=key, now=now) if r["user"] == user]
        o = org_budget(site, key, status.get("orgs", {}).get(key, {}))
        o |= {
            "days": org_days,
            "mine": [d["weighted_gpu_hours"] for d in own[: len(org_days)]],
            "pace": o["budget_hours"] / len(own) if own else 0.0,
            "month_days": len(own),
            "rows": rows,
            "my_gpu_seconds": sum(r["gpu_seconds"] for r in rows),
            "my_weighted_hours": sum(r["weighted_gpu_hours"] for r in rows),
        }
        orgs.append(o)
    running = [
        dict(s, org=key, display_name=site.organizations[key].display_name)
        for key, o in status.get("orgs", {}).items()
        for s in o.get("running_servers", [])
        if s["user"] == user
    ] + [dict(s, org="", display_name="") for s in status.get("servers_without_org", []) if s["user"] == user]
    history = []
    for month in _months_back(period, HISTORY_MONTHS)[1:]:
        rows = [r for r in billing.statement(store, site, month, now=now) if r["user"] == user]
        mine = {k: sum(r["weighted_gpu_hours"] for r in rows if r["org"] == k) for k in site.orgs_of(user, groups)}
        history.append({"period": month, "orgs": mine})
    return {"period": period, "orgs": orgs, "running": running, "history": history}


class UsageHandler(_Page):
    """``/hub/usage``: the signed-in person's own numbers."""

    @web.authenticated
    async def get(self):
        user = self.current_user
        site, store = self.site, runtime.quota_store(self.site_path)
        ctx = await asyncio.to_thread(usage_context, site, store, user.name, group_names(user), datetime.now(UTC))
        t = self.messages()
        html = await self.render_template("gpuhub_usage.html", t=t, _=t.gettext, charts=charts, **ctx)
        self.finish(html)


def operators_context(site, store, now: datetime) -> dict:
    """Every organization's GPUs, budget and idle-allocated GPU-hours this month, every device's holder and for
    how long, this month's refusals by rule (:func:`quota.usage_records.month_report`, as ``gpuhub quota status``)."""
    status = runtime.quota_status(site.path)
    period = period_of(now, site.tz)
    month = usage_records.month_report(store, now)
    orgs = [
        org_budget(site, key, status.get("orgs", {}).get(key, {}))
        | {"idle_hours": month["idle_gpu_hours"].get(key, 0.0), "refused": sum(month["refusals"].get(key, {}).values())}
        for key in site.organizations
    ]
    running = {s["server_key"]: s for o in status.get("orgs", {}).values() for s in o.get("running_servers", [])}
    running |= {s["server_key"]: s for s in status.get("servers_without_org", [])}
    devices = []
    for d in status.get("devices", []):
        holder = d.get("holder")
        server = running.get(holder["server_key"]) if holder else None
        devices.append(dict(d, held_seconds=server["running_seconds"] if server else None))
    rows = billing.statement(store, site, period, now=now)
    return {
        "period": period,
        "orgs": orgs,
        "devices": devices,
        "refusals": month["refusals_by_rule"],
        "refusals_by_org": month["refusals"],
        "rules": {r.id for r in Rule},
        "rows": rows,
    }


class OperatorsHandler(_Page):
    """``/hub/operators``: hub admins only (403 for everyone else)."""

    def _admin(self):
        user = self.current_user
        if not user.admin:
            why = i18n.N_("the operators' page is for hub admins; ask an operator to add you to hub.admin_users")
            raise web.HTTPError(403, self.messages().gettext(why))
        return user

    @web.authenticated
    async def get(self):
        self._admin()
        site, store = self.site, runtime.quota_store(self.site_path)
        ctx = await asyncio.to_thread(operators_context, site, store, datetime.now(UTC))
        t = self.messages()
        html = await self.render_template("gpuhub_operators.html", t=t, _=t.gettext, charts=charts, **ctx)
        self.finish(html)


class StatementCSVHandler(OperatorsHandler):
    """``/hub/operators/statement.csv``: this month's statement, as ``gpuhub billing statement --format csv``."""

    @web.authenticated
    async def get(self):
        self._admin()
        site, store = self.site, runtime.quota_store(self.site_path)
        now = datetime.now(UTC)
        period = period_of(now, site.tz)
        rows = await asyncio.to_thread(billing.statement, store, site, period, None, now)
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="gpuhub-statement-{period}.csv"')
        self.finish(billing.to_csv(rows))


def handlers(site_path: str) -> list[tuple]:
    """``c.JupyterHub.extra_handlers`` (the hub puts its prefix, ``/hub``, in front)."""
    args = {"site_path": site_path}
    return [
        (r"/language", LanguageHandler, args),
        (r"/usage", UsageHandler, args),
        (r"/operators", OperatorsHandler, args),
        (r"/operators/statement\.csv", StatementCSVHandler, args),
    ]
