"""Values for the hub's own pages (home page budget banner, the request's language), from the quota store."""

from __future__ import annotations

from gpuhub.hub import i18n, project_pages, reservation_watch, runtime


def group_names(user) -> frozenset[str]:
    """The names of a hub user's groups (IdP-derived and course groups included)."""
    return frozenset(g.name for g in getattr(user, "groups", None) or ())


def org_budget(site, key: str, org_status: dict) -> dict:
    """One organization's GPU use and budget as people see it (home banner and spawn form).

    ``level`` is ``ok``, ``warning`` (a ``quota.warn_fractions`` threshold crossed) or ``exhausted``.
    """
    spec = site.organizations[key]
    used = float(org_status.get("used_gpu_hours", 0.0))
    budget = spec.gpu_hours_per_month
    frac = used / budget if budget else 0.0
    crossed = [f for f in site.quota.warn_fractions if frac >= f]
    level = "exhausted" if budget and frac >= 1 else ("warning" if crossed else "ok")
    message = ""
    if level == "exhausted":
        message = (
            "The budget is spent: new GPU servers are refused and running ones are stopped after "
            f"{site.quota.grace_seconds:g} s. Ask an operator to raise gpu_hours_per_month."
        )
    elif level == "warning":
        message = f"Warning: {100 * max(crossed):.0f} % of this month's GPU-hour budget is used."
    in_use = int(org_status.get("gpus_in_use", 0))
    return {
        "key": key,
        "display_name": spec.display_name,
        "gpus_in_use": in_use,
        "gpu_limit": spec.gpu_limit,
        "used_hours": used,
        "budget_hours": budget,
        "remaining_hours": max(0.0, budget - used),
        "fraction": frac,
        "level": level,
        "crossed": max(crossed, default=0.0),
        "message": message,
    }


class BudgetBanner:
    """``template_vars`` callable: the user's organizations with GPU use and budget warnings."""

    def __init__(self, site_path: str):
        self.site_path = site_path

    def __call__(self, user) -> dict:
        if user is None:
            return {}
        try:
            site = runtime.site(self.site_path)
            notices = project_pages.home_notices(site, user, group_names(user))  # a project closing or closed
            stewards = bool(site.projects) and (
                user.admin or any(user.name in p.stewards for p in site.projects.values())
            )
            orgs = site.orgs_of(user.name, group_names(user))
            if not orgs:
                return {"orgs": [], "projects": notices, "stewards": stewards}
            status = runtime.quota_status(self.site_path).get("orgs", {})
        except Exception:  # a page must render even when the database is away
            return {}
        return {
            "orgs": [org_budget(site, key, status.get(key, {})) for key in orgs],
            "grace_seconds": site.quota.grace_seconds,
            "projects": notices,
            "stewards": stewards,  # the link to /hub/projects (gpuhub.hub.steward_pages)
            # servers on GPUs a class window needs soon (gpuhub.hub.reservation_watch)
            "reservations": reservation_watch.home_notices(site, runtime.quota_store(self.site_path), user.name),
        }


class PageLanguage:
    """``template_vars`` callable: ``gpuhub_i18n.of(static_url)`` is the request's :class:`~gpuhub.hub.i18n.Messages`.

    JupyterHub calls template-var callables with the user only; the page's ``static_url`` is a method of the
    request's handler, so a template hands it over to reach the request (its cookie and ``Accept-Language``).
    """

    def __init__(self, site_path: str):
        self.site_path = site_path

    def __call__(self, user) -> PageLanguage:
        return self

    def of(self, static_url) -> i18n.Messages:
        handler = getattr(static_url, "__self__", None)
        try:
            tz = runtime.site(self.site_path).tz
        except Exception:  # a page must render even when the site file is broken
            tz = None
        return i18n.Messages(i18n.request_locale(handler), tz)

    @property
    def languages(self) -> tuple[tuple[str, str], ...]:
        return tuple((lang, i18n.NAMES[lang]) for lang in i18n.LANGUAGES)
