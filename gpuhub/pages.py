"""Values for the hub's own pages (home page budget banner), from the quota store."""

from __future__ import annotations

from datetime import datetime, timezone

from . import runtime


class BudgetBanner:
    """``template_vars`` callable: the user's organizations with GPU use and budget warnings."""

    def __init__(self, site_path: str):
        self.site_path = site_path

    def __call__(self, user) -> dict:
        if user is None:
            return {}
        try:
            site = runtime.site(self.site_path)
            groups = frozenset(g.name for g in getattr(user, "groups", []) or [])
            orgs = site.orgs_of(user.name, groups)
            if not orgs:
                return {"orgs": []}
            status = runtime.quota_store(self.site_path).status(datetime.now(timezone.utc)).get("orgs", {})
        except Exception:  # a page must render even when the database is away
            return {}
        out = []
        for key in orgs:
            spec, st = site.organizations[key], status.get(key, {})
            used = float(st.get("used_gpu_hours", 0.0))
            frac = used / spec.gpu_hours_per_month if spec.gpu_hours_per_month else 0.0
            crossed = [f for f in site.quota.warn_fractions if frac >= f]
            level = "exhausted" if frac >= 1 else ("warning" if crossed else "ok")
            message = ""
            if level == "exhausted":
                message = ("The budget is spent: new GPU servers are refused and running ones are stopped after "
                           f"{site.quota.grace_seconds:g} s. Ask an operator to raise gpu_hours_per_month.")
            elif level == "warning":
                message = f"Warning: {100 * max(crossed):.0f} % of this month's GPU-hour budget is used."
            out.append({"key": key, "display_name": spec.display_name, "gpus_in_use": int(st.get("gpus_in_use", 0)),
                        "gpu_limit": spec.gpu_limit, "used_hours": used, "budget_hours": spec.gpu_hours_per_month,
                        "fraction": frac, "level": level, "message": message})
        return {"orgs": out}
