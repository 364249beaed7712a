"""The spawn form: what the user may choose right now, and why not the rest.

The form holds no rules of its own: for every organization, image, GPU count and model it offers, it asks
:func:`quota.policy.decide` — the same decision the spawn itself gets, on a snapshot made from the quota
store's status — whether a request for it would be granted. An option is disabled when the policy refuses
it for each of the user's organizations; its reason is that refusal's sentence and ``rule`` its rule id
(``data-gpuhub-rule`` in the page), the id the REST answer, the ledger and the metric carry.

An option refused only because GPUs are busy now (a 429 rule: no free device, the organization or the user at
its cap) is not disabled: with "Wait in line if the GPUs are busy" checked (``"queue"``, the default) such a
request waits in line (:mod:`gpuhub.hub.queue_wait`), so the option stays selectable, marked ``busy`` with the
same rule id and sentence; unchecked, the spawn is refused at once with that sentence, as before.

:func:`form_context` is pure (site + quota status → template values) so it is table-tested;
:func:`render_options_form` is the thin hook DockerSpawner calls with the spawner.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import jinja2
from markupsafe import Markup

from gpuhub.core.site import Device, Site
from gpuhub.hub import i18n, project_pages, runtime
from gpuhub.hub.i18n import Messages
from gpuhub.hub.pages import group_names, org_budget
from quota.policy import BUSY, AllocationRequest, Holding, Refusal, Rule, Snapshot, decide

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")), autoescape=True)


def snapshot_of(status: dict, org: str | None) -> Snapshot:
    """The policy's view of the world from the quota store's ``status()`` (holders, inventory, ``org``'s usage)."""
    devices = status.get("devices", [])
    holdings = tuple(
        Holding(d["uuid"], h["server_key"], h["user"], h["org"], d["model"]) for d in devices if (h := d.get("holder"))
    )
    inventory = tuple(Device(d["uuid"], d["model"]) for d in devices if not d.get("not_in_inventory"))
    used_h = float(status.get("orgs", {}).get(org, {}).get("used_gpu_hours", 0.0)) if org else 0.0
    return Snapshot(holdings, used_h * 3600.0, frozenset(), inventory if devices else None)


class _Asker:
    """Asks the policy about one option for each of the user's organizations."""

    def __init__(self, site: Site, status: dict, user: str, groups: frozenset[str], server_name: str):
        self.site, self.user, self.groups, self.server_name = site, user, groups, server_name
        self.orgs = site.orgs_of(user, groups)
        self.snapshots = {org: snapshot_of(status, org) for org in self.orgs or [None]}

    def refusal(
        self, org: str | None, *, gpus: int = 0, image: str | None = None, model: str | None = None
    ) -> Refusal | None:
        req = AllocationRequest(self.user, self.server_name, org, image, gpus, model, self.groups)
        out = decide(self.site, req, self.snapshots[org])
        return out if isinstance(out, Refusal) else None

    def any_org(self, **want) -> Refusal | None:
        """None when some organization of the user may have ``want``; else the first organization's refusal that
        waiting in line can fix (429), else the first organization's refusal."""
        first = None
        for org in self.snapshots:
            out = self.refusal(org, **want)
            if out is None:
                return None
            if first is None or (out.status == BUSY and first.status != BUSY):
                first = out
        return first


def _option(refusal: Refusal | None, **values) -> dict:
    """An option's template values: a 429 refusal marks it ``busy`` (selectable: it waits in line), any other
    refusal disables it; both keep the refusal's sentence and rule id."""
    busy = refusal is not None and refusal.status == BUSY
    return {
        **values,
        "disabled": refusal is not None and not busy,
        "busy": busy,
        "checked": False,
        "reason": refusal.message if refusal else "",
        "rule": refusal.rule if refusal else "",
    }


def form_context(
    site: Site, status: dict, user: str, groups: frozenset[str] = frozenset(), server_name: str = ""
) -> dict:
    """Template values for ``user``'s server ``server_name`` given ``status`` (the quota store's ``status(now)``)."""
    ask = _Asker(site, status, user, groups, server_name)
    orgs = []
    for key in ask.orgs:
        o = org_budget(site, key, status.get("orgs", {}).get(key, {}))
        cpu, gpu = ask.refusal(key), ask.refusal(key, gpus=1)
        note = cpu or (gpu if gpu is not None and gpu.spec is Rule.BUDGET_EXHAUSTED else None)  # CPU still works
        o.update(
            _option(note),
            disabled=cpu is not None,
            warning=f"{100 * o['fraction']:.0f} % of this month's budget used" if o["level"] == "warning" else "",
        )
        orgs.append(o)
    for o in orgs[:1]:
        o["checked"] = True

    images = [
        _option(ask.any_org(image=key), key=key, display_name=spec.display_name, image=spec.image)
        for key, spec in site.images.items()
    ]
    for i in [i for i in images if not i["disabled"]][:1]:
        i["checked"] = True

    inventory = snapshot_of(status, None).inventory or site.gpus.devices
    held = {h.device_uuid for h in snapshot_of(status, None).holdings}
    models = []
    for name, model in site.gpus.models.items():
        total = [d for d in inventory if d.model == name]
        models.append(
            _option(
                ask.any_org(gpus=1, model=name),
                name=name,
                weight=model.weight,
                free=sum(1 for d in total if d.uuid not in held),
                total=len(total),
            )
        )

    per_server = max((site.organizations[o].max_gpus_per_server for o in ask.orgs), default=0)
    most = max(1, min(len(inventory), max(per_server, site.gpus.max_gpus_per_user)))
    counts = [_option(None, value=0)] + [_option(ask.any_org(gpus=n), value=n) for n in range(1, most + 1)]
    return {"orgs": orgs, "images": images, "models": models, "gpu_counts": counts, "queue": True}


class LocalizedForm(str):
    """The rendered form (English, as a plain ``str`` for whoever reads it so) that can render itself again in
    another language: the spawn page (``templates/spawn.html``) calls :meth:`render` with the request's
    :class:`~gpuhub.hub.i18n.Messages`; JupyterHub asks for the form before it knows the request's language."""

    context: dict

    def __new__(cls, context: dict, msgs: Messages):
        self = super().__new__(cls, render(context, msgs))
        self.context = context
        return self

    def render(self, msgs: Messages) -> Markup:
        return Markup(render(self.context, msgs))


def render(context: dict, msgs: Messages) -> str:
    """The form's HTML for ``context`` (:func:`form_context`) in ``msgs``' language."""
    return _env.get_template("gpuhub_form.html").render(**context, t=msgs, _=msgs.gettext)


async def render_options_form(spawner) -> str:
    """DockerSpawner's ``options_form`` hook (JupyterHub awaits it): the form for this spawner's user, in the
    language of the request that asks for it when there is one (a spawn), else English (see LocalizedForm)."""
    try:  # off the event loop; a status at most a couple of seconds old is enough for a form
        status = await asyncio.to_thread(runtime.quota_status, spawner.site_config)
    except Exception as e:  # the form still renders; the spawn itself fails closed
        spawner.log.warning("quota status unavailable for the spawn form: %s", e)
        status = {}
    ctx = form_context(spawner.site, status, spawner.user.name, group_names(spawner.user), spawner.name)
    ctx = await project_pages.add_project_context(spawner, ctx)  # the project picker (gpuhub.hub.project_pages)
    return LocalizedForm(ctx, Messages(i18n.request_locale(spawner.handler), spawner.site.tz))
