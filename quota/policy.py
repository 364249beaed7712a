"""Admission policy for one spawn (pure: site + request + snapshot -> devices or a refusal).

Status codes: 400 = the request itself is wrong (bad count, unknown model, over the per-server
maximum, GPUs on a CPU-only image); 403 = not permitted whatever happens elsewhere (not a member,
image not allowed, monthly budget spent); 429 = capacity is busy right now and a retry later may
succeed (org/user concurrent caps, no free device). 429 is what JupyterHub itself answers for
``active_server_limit`` and ``concurrent_spawn_limit``, so clients already treat it as "try later".

Device choice: with a model named, the first free devices of that model in inventory order. With no
model, among models that have at least ``gpus`` free devices, the one with the MOST free devices
(keeps the scarce model available for whoever asks for it by name); ties go to the lower weight
(cheaper for the org), then the model name. Devices of one server are always one model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from gpuhub.core.site import Device, Site

BAD_REQUEST, FORBIDDEN, BUSY = 400, 403, 429


@dataclass(frozen=True)
class AllocationRequest:
    user: str
    server_name: str
    org: str | None
    image: str
    gpus: int = 0
    gpu_model: str | None = None
    groups: frozenset[str] = frozenset()

    @property
    def server_key(self) -> str:
        return f"{self.user}/{self.server_name}"


@dataclass(frozen=True)
class Holding:
    """One device currently held by a server."""

    device_uuid: str
    server_key: str
    user: str
    org: str | None
    model: str


@dataclass(frozen=True)
class Snapshot:
    """What the decision needs to know about the world, read inside the allocation transaction."""

    holdings: tuple[Holding, ...] = ()
    org_used_gpu_seconds: float = 0.0  # weighted, this month, open intervals charged to now
    open_servers: frozenset[str] = frozenset()
    inventory: tuple[Device, ...] | None = None  # None: site.gpus.devices


@dataclass(frozen=True)
class Decision:
    devices: tuple[str, ...]
    model: str | None
    weight: float


@dataclass(frozen=True)
class Refusal:
    status: int
    rule: str
    message: str


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def decide(site: Site, req: AllocationRequest, snap: Snapshot) -> Decision | Refusal:
    """Devices to take for ``req``, or the first rule it breaks (checked most-permanent first)."""
    inventory = snap.inventory if snap.inventory is not None else site.gpus.devices
    gpus = req.gpus
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        return Refusal(BAD_REQUEST, "invalid-gpus",
                       f"GPU count must be a whole number >= 0, got {gpus!r}; choose 0 for a CPU-only server")
    if req.server_key in snap.open_servers:
        return Refusal(409, "server-already-running",
                       f"server {req.server_key!r} already has an open allocation; stop it before starting it "
                       "again (a server lost in a crash is released by the reconciler within a few minutes)")

    memberships = site.orgs_of(req.user, req.groups)
    org = site.organizations.get(req.org) if req.org else None
    if req.org and org is None:
        return Refusal(FORBIDDEN, "not-a-member",
                       f"organization {req.org!r} does not exist; your organizations: {_names(memberships)}")
    if org is not None and org.key not in memberships:
        return Refusal(FORBIDDEN, "not-a-member",
                       f"user {req.user} is not a member of organization {org.key}; your organizations: "
                       f"{_names(memberships)}; ask an operator to add you")
    if org is None and (gpus > 0 or not site.hub.allow_cpu_without_org):
        what = f"{gpus} GPU(s)" if gpus > 0 else "servers on this hub"
        return Refusal(FORBIDDEN, "not-a-member",
                       f"{what} are charged to an organization and none was chosen; your organizations: "
                       f"{_names(memberships)}; choose one, or ask an operator to add you to one")

    image = site.images.get(req.image)
    allowed = org.images if org is not None else tuple(site.images)
    if image is None or req.image not in allowed:
        whose = f"organization {org.key}" if org is not None else "this hub"
        return Refusal(FORBIDDEN, "image-not-allowed",
                       f"image {req.image!r} is not allowed for {whose}; allowed: {_names(allowed)}")
    if gpus > 0 and not image.gpu:
        return Refusal(BAD_REQUEST, "image-cpu-only",
                       f"image {req.image} is CPU-only but {gpus} GPU(s) were requested; choose 0 GPUs or a GPU image")
    if gpus == 0:
        return Decision((), None, 0.0)
    assert org is not None

    if req.gpu_model is not None and req.gpu_model not in site.gpus.models:
        return Refusal(BAD_REQUEST, "unknown-model",
                       f"GPU model {req.gpu_model!r} is not offered; models: {_names(site.gpus.models)}")
    if gpus > org.max_gpus_per_server:
        return Refusal(BAD_REQUEST, "max-gpus-per-server",
                       f"organization {org.key} allows at most {org.max_gpus_per_server} GPU(s) per server, "
                       f"{gpus} requested; request fewer or ask an operator to raise max_gpus_per_server")

    budget_h = org.gpu_hours_per_month
    used_h = snap.org_used_gpu_seconds / 3600.0
    remaining_h = budget_h - used_h
    need_h = site.quota.min_remaining_gpu_hours
    if remaining_h <= 0 or remaining_h + 1e-9 < need_h:  # exactly the minimum is enough
        return Refusal(FORBIDDEN, "budget-exhausted",
                       f"organization {org.key} has used {used_h:.2f} of {budget_h:g} weighted GPU-hours this month "
                       f"({max(remaining_h, 0.0):.2f} remaining; at least {need_h:g} needed to start a GPU server); "
                       "wait for next month, start a CPU-only server, or ask an operator to raise gpu_hours_per_month")

    user_held = sum(1 for h in snap.holdings if h.user == req.user)
    cap = site.gpus.max_gpus_per_user
    if user_held + gpus > cap:
        return Refusal(BUSY, "user-gpu-limit",
                       f"user {req.user} holds {user_held} of {cap} GPUs allowed per user and requested {gpus} more; "
                       "stop one of your servers or request fewer GPUs")
    org_held = sum(1 for h in snap.holdings if h.org == org.key)
    if org_held + gpus > org.gpu_limit:
        return Refusal(BUSY, "org-gpu-limit",
                       f"organization {org.key} has {org_held} of {org.gpu_limit} GPUs in use and {gpus} more were "
                       "requested; stop a server or ask an operator to raise gpu_limit")

    return _choose(site, req, inventory, {h.device_uuid for h in snap.holdings})


def _choose(site: Site, req: AllocationRequest, inventory: tuple[Device, ...], held: set[str]) -> Decision | Refusal:
    free = [d for d in inventory if d.uuid not in held and d.model in site.gpus.models]
    counts = Counter(d.model for d in free)
    if req.gpu_model is not None:
        model = req.gpu_model
        if counts[model] < req.gpus:
            total = sum(1 for d in inventory if d.model == model)
            return Refusal(BUSY, "no-free-device",
                           f"{counts[model]} of {total} {model} GPUs are free and {req.gpus} were requested; "
                           f"try again later or choose another model (free now: {_free_text(counts)})")
    else:
        fits = [m for m, n in counts.items() if n >= req.gpus]
        if not fits:
            return Refusal(BUSY, "no-free-device",
                           f"no GPU model has {req.gpus} free devices (free now: {_free_text(counts)}; "
                           f"{len(held)} of {len(inventory)} GPUs in use); try again later or request fewer GPUs")
        model = min(fits, key=lambda m: (-counts[m], site.weight_of(m), m))
    devices = tuple(d.uuid for d in free if d.model == model)[: req.gpus]
    return Decision(devices, model, site.weight_of(model))


def _free_text(counts: Counter) -> str:
    shown = [f"{n} {m}" for m, n in sorted(counts.items()) if n]
    return ", ".join(shown) if shown else "none"
