"""The spawn form: what the user may choose right now, and why not the rest.

:func:`form_context` is pure (site + quota status → template values) so it is table-tested;
:func:`render_options_form` is the thin hook DockerSpawner calls with the spawner.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import jinja2

from gpuhub.hub import runtime
from gpuhub.hub.pages import group_names, org_budget
from gpuhub.core.site import Site

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=True
)


def form_context(site: Site, status: dict, user: str, groups: frozenset[str] = frozenset()) -> dict:
    """Template values for ``user`` given ``status`` (the quota store's ``status(now)``)."""
    org_status = status.get("orgs", {})
    my_orgs = site.orgs_of(user, groups)
    orgs = []
    for key in my_orgs:
        o = org_budget(site, key, org_status.get(key, {}))
        exhausted = o["level"] == "exhausted"
        o.update(
            free_for_org=max(0, o["gpu_limit"] - o["gpus_in_use"]), disabled=False, checked=False,
            reason="the monthly GPU-hour budget is spent; CPU-only servers still work" if exhausted else "",
            warning=f"{100 * o['fraction']:.0f} % of this month's budget used" if o["level"] == "warning" else "",
        )
        orgs.append(o)
    if orgs:
        orgs[0]["checked"] = True

    allowed_images = set().union(*(site.organizations[o].images for o in my_orgs)) if my_orgs else set(site.images)
    images = []
    for key, spec in site.images.items():
        ok = key in allowed_images and (my_orgs or site.hub.allow_cpu_without_org)
        images.append({"key": key, "display_name": spec.display_name, "image": spec.image, "disabled": not ok,
                       "reason": "" if ok else "not allowed for your organizations", "checked": False})
    for i in images:
        if not i["disabled"]:
            i["checked"] = True
            break

    held = {d["uuid"] for d in status.get("devices", []) if d.get("holder")}
    models = []
    for name, model in site.gpus.models.items():
        total = [d for d in site.gpus.devices if d.model == name]
        free = sum(1 for d in total if d.uuid not in held)
        models.append({"name": name, "weight": model.weight, "free": free, "total": len(total),
                       "disabled": free == 0 or not my_orgs,
                       "reason": "none free right now" if free == 0 else ("you are in no organization" if not my_orgs else "")})

    most_free = max((m["free"] for m in models), default=0)
    per_server = max((site.organizations[o].max_gpus_per_server for o in my_orgs), default=0)
    org_room = max((o["free_for_org"] for o in orgs if not o["reason"]), default=0)
    counts = [{"value": 0, "disabled": False, "reason": ""}]
    for n in range(1, max(per_server, 1) + 1):
        reason = ""
        if not my_orgs:
            reason = "you are in no organization"
        elif n > per_server:
            reason = f"over max_gpus_per_server ({per_server})"
        elif n > org_room:
            reason = f"your organizations have {org_room} GPU(s) of their limit left"
        elif n > most_free:
            reason = f"only {most_free} free of one model"
        elif n > site.gpus.max_gpus_per_user:
            reason = f"over the per-user limit ({site.gpus.max_gpus_per_user})"
        counts.append({"value": n, "disabled": bool(reason), "reason": reason})
    return {"orgs": orgs, "images": images, "models": models, "gpu_counts": counts}


async def render_options_form(spawner) -> str:
    """DockerSpawner's ``options_form`` hook (JupyterHub awaits it): the form for this spawner's user."""
    try:  # off the event loop; a status at most a couple of seconds old is enough for a form
        status = await asyncio.to_thread(runtime.quota_status, spawner.site_config)
    except Exception as e:  # the form still renders; the spawn itself fails closed
        spawner.log.warning("quota status unavailable for the spawn form: %s", e)
        status = {}
    ctx = form_context(spawner.site, status, spawner.user.name, group_names(spawner.user))
    return _env.get_template("gpuhub_form.html").render(**ctx)
