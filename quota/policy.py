"""Admission: the one rule table and the one decision (pure: site + request + snapshot -> devices or a refusal).

Every spawn refusal in gpuhub is a :class:`Refusal` of one :class:`Rule` of the table below, and its
id is the same wherever it shows: the ``X-Gpuhub-Rule`` header of the REST answer (the JSON ``message``
is the sentence), the ``data-gpuhub-rule`` of an option the spawn form disables (:mod:`gpuhub.hub.form`
asks :func:`decide` why), the ledger's refusal counter (:mod:`quota.store`) and the ``reason`` label of
``gpuhub_spawn_refusals_total``. :mod:`gpuhub.hub.options` only parses ``user_options`` into an
:class:`AllocationRequest` (the "request's shape" rules); everything else is decided here.

Status codes: 400 = the request itself is wrong (malformed, names something the site does not have,
asks for GPUs on a CPU-only image or over the per-server maximum, leaves the organization open when
the user has several); 403 = not permitted whatever happens elsewhere (not a member, in no
organization, image not allowed, monthly budget spent); 409 = the server already holds an
allocation; 429 = capacity is busy right now and a retry later may succeed (per-user and per-org
concurrent caps, no free device). 429 is what JupyterHub itself answers for ``active_server_limit``
and ``concurrent_spawn_limit``, so clients already treat it as "try later".

Order: :func:`check` (needs only the site) resolves the organization (implied when the user has exactly
one) and the image (the organization's first when none is named), then refuses names the site does not
have, then permissions, then the per-server shape; :func:`decide` adds what needs the snapshot read
inside the allocation transaction: an open allocation, the budget, the caps, the devices — the most
permanent rule first, so a request over budget and over the cap hears about the budget.

Project servers (``"project": KEY``): :func:`quota.projects.check_project` decides the ``project-*`` rules
first (membership, window, data use agreement); :func:`check` then charges the project's organization.

Device choice: with a model named, the first free devices of that model in inventory order. With no
model, among models that have at least ``gpus`` free devices, the one with the MOST free devices
(keeps the scarce model available for whoever asks for it by name); ties go to the lower weight
(cheaper for the org), then the model name. Devices of one server are always one model.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from gpuhub.core.keys import server_key
from gpuhub.core.site import Device, Site

BAD_REQUEST, FORBIDDEN, CONFLICT, BUSY = 400, 403, 409, 429
MAX_STRING = 200  # characters in a string option


class Rule(Enum):
    """One admission rule: its id (stable: persisted in the ledger and a metric label), the HTTP status
    of its refusal, and the message template, which says what is wrong and what to do about it."""

    # -- the request's shape: gpuhub.hub.options.parse_options
    UNKNOWN_OPTION = ("unknown-option", BAD_REQUEST, "unknown spawn option {option!r}; allowed options: {allowed}")
    IMAGE_TYPE = ("image-type", BAD_REQUEST, "option 'image' must be a catalog key (a string), got {type}")
    IMAGE_LENGTH = ("image-length", BAD_REQUEST, "option 'image' is longer than {limit} characters; name a catalog key")
    ORG_TYPE = ("org-type", BAD_REQUEST, "option 'org' must be an organization key (a string), got {type}")
    ORG_LENGTH = ("org-length", BAD_REQUEST, "option 'org' is longer than {limit} characters; name an organization")
    GPU_MODEL_TYPE = ("gpu-model-type", BAD_REQUEST, "option 'gpu_model' must be a GPU model (a string), got {type}")
    GPU_MODEL_LENGTH = (
        "gpu-model-length",
        BAD_REQUEST,
        "option 'gpu_model' is longer than {limit} characters; name a GPU model",
    )
    GPUS_TYPE = (
        "gpus-type",
        BAD_REQUEST,
        "option 'gpus' must be a whole number >= 0, got {value}; choose 0 for a CPU-only server",
    )
    GPUS_NEGATIVE = (
        "gpus-negative",
        BAD_REQUEST,
        "option 'gpus' must be >= 0, got {value}; choose 0 for a CPU-only server",
    )
    # -- names the site does not have
    UNKNOWN_ORG = ("unknown-org", BAD_REQUEST, "organization {org!r} does not exist; your organizations: {yours}")
    UNKNOWN_IMAGE = ("unknown-image", BAD_REQUEST, "image {image!r} is not in the catalog; choose one of: {catalog}")
    UNKNOWN_MODEL = ("unknown-model", BAD_REQUEST, "GPU model {model!r} is not offered here; models: {models}")
    # -- who may charge what
    ORG_REQUIRED = (
        "org-required",
        BAD_REQUEST,
        "{user} belongs to several organizations ({orgs}); choose which one to charge with 'org'",
    )
    NOT_A_MEMBER = (
        "not-a-member",
        FORBIDDEN,
        "{user} is not a member of organization {org}; your organizations: {yours}; ask an operator to add you",
    )
    NO_ORGANIZATION = ("no-organization", FORBIDDEN, "{user} is in no organization{why}; {fix}")
    IMAGE_NOT_ALLOWED = (
        "image-not-allowed",
        FORBIDDEN,
        "organization {org} may not use image {image}; allowed: {allowed}",
    )
    # -- the server's shape
    IMAGE_CPU_ONLY = (
        "image-cpu-only",
        BAD_REQUEST,
        "image {image} is CPU-only but {gpus} GPU(s) were requested; choose 0 GPUs or a GPU image",
    )
    MAX_GPUS_PER_SERVER = (
        "max-gpus-per-server",
        BAD_REQUEST,
        "organization {org} allows at most {limit} GPU(s) per server, {gpus} requested; "
        "request fewer or ask an operator to raise max_gpus_per_server",
    )
    # -- the world now (the snapshot)
    SERVER_ALREADY_RUNNING = (
        "server-already-running",
        CONFLICT,
        "server {key!r} already has an open allocation; stop it before starting it again "
        "(a server lost in a crash is released by the reconciler within a few minutes)",
    )
    BUDGET_EXHAUSTED = (
        "budget-exhausted",
        FORBIDDEN,
        "organization {org} has used {used:.2f} of {budget:g} weighted GPU-hours this month "
        "({remaining:.2f} remaining; at least {need:g} needed to start a GPU server); wait for next "
        "month, start a CPU-only server, or ask an operator to raise gpu_hours_per_month",
    )
    USER_GPU_LIMIT = (
        "user-gpu-limit",
        BUSY,
        "user {user} holds {held} of {limit} GPUs allowed per user and "
        "requested {gpus} more; stop one of your servers or request fewer GPUs",
    )
    ORG_GPU_LIMIT = (
        "org-gpu-limit",
        BUSY,
        "organization {org} has {held} of {limit} GPUs in use and {gpus} more "
        "were requested; stop a server or ask an operator to raise gpu_limit",
    )
    NO_FREE_DEVICE = ("no-free-device", BUSY, "{shortage}; try again later or {alternative} (free now: {free})")
    RESERVED_FOR_COURSE = (
        "reserved-for-course",
        BUSY,
        "{shortage}: {reserved} {model} GPU(s) are reserved for course {course}'s class window until {until} "
        "(courses.{course}.reservations; they go to its members charged to {org}); wait in line, choose another "
        "model, or start after the window",
    )
    # -- secure project workspaces: quota.projects.check_project (a project server, "project": KEY)
    PROJECT_UNKNOWN = ("project-unknown", BAD_REQUEST, "project {project!r} does not exist; your projects: {yours}")
    PROJECT_SERVER_NAME = (
        "project-server-name",
        BAD_REQUEST,
        "a server of project {project} must be the named server {project!r}, not {server!r}; "
        "start it as /hub/api/users/{user}/servers/{project}",
    )
    PROJECT_ORG_MISMATCH = (
        "project-org-mismatch",
        BAD_REQUEST,
        "project {project} is charged to organization {project_org}, not {org}; leave 'org' out or name {project_org}",
    )
    PROJECT_DUA_MISMATCH = (
        "project-dua-mismatch",
        BAD_REQUEST,
        "'accept_dua' is not the hash of project {project}'s current data use agreement (the text changed); "
        "reload the spawn form, read the agreement and accept it again",
    )
    PROJECT_NOT_MEMBER = (
        "project-not-member",
        FORBIDDEN,
        "{user} is not a member of project {project}; ask a steward of project {project} ({stewards}) to add you",
    )
    PROJECT_IMAGE_NOT_ALLOWED = (
        "project-image-not-allowed",
        FORBIDDEN,
        "project {project} may not use image {image}; allowed: {allowed}",
    )
    PROJECT_NOT_STARTED = (
        "project-not-started",
        FORBIDDEN,
        "project {project} is not open yet: the project opens on {opens} ({tz}); try again then",
    )
    PROJECT_EXPIRED = (
        "project-expired",
        FORBIDDEN,
        "project {project} closed on {closed} ({tz}; its last open day was {last}); "
        "a steward can extend it with `gpuhub project extend {project} YYYY-MM-DD --by NAME`",
    )
    PROJECT_DUA_REQUIRED = (
        "project-dua-required",
        FORBIDDEN,
        "{user} has not accepted the current data use agreement of project {project}; "
        "accept the data use agreement in the spawn form (or send 'accept_dua': its sha256 {sha256})",
    )
    # -- the reconciler adopting a running container (quota.store.adopt), not a spawn
    ADOPT_CONFLICT = (
        "adopt-conflict",
        CONFLICT,
        "cannot adopt {container}: devices {held} or server {key} are already recorded; stop the container instead",
    )

    def __init__(self, rule_id: str, status: int, template: str):
        self.id, self.status, self.template = rule_id, status, template

    def refuse(self, *, charged_to: str | None = None, **facts) -> Refusal:
        """The refusal of this rule, its message filled in with ``facts``; ``charged_to`` is the site's
        organization the request was for, when that is known (the refusal counter's ``org``)."""
        return Refusal(self, self.template.format(**facts), charged_to)

    @classmethod
    def of(cls, rule_id: str) -> Rule:
        """The rule with this id, also for an id an older release persisted (see :data:`FORMER_IDS`)."""
        rule = _BY_ID.get(rule_id) or FORMER_IDS.get(rule_id)
        if rule is None:
            raise ValueError(f"{rule_id!r} is not an admission rule id; ids: {', '.join(_BY_ID)}")
        return rule


_BY_ID = {r.id: r for r in Rule}

# Ids that releases before the one rule table wrote into gpuhub_spawn_refusals; they are counted under
# the rule that took their place (quota.store.refusal_counts, the usage exporter).
FORMER_IDS = {
    "unknown-gpu-model": Rule.UNKNOWN_MODEL,
    "cpu-only-image": Rule.IMAGE_CPU_ONLY,
    "invalid-gpus": Rule.GPUS_TYPE,
    "gpu_model-type": Rule.GPU_MODEL_TYPE,
    "gpu_model-length": Rule.GPU_MODEL_LENGTH,
}


def current_id(stored: str) -> str:
    """The current id for a refusal reason read from the ledger (unknown strings are kept as they are)."""
    rule = _BY_ID.get(stored) or FORMER_IDS.get(stored)
    return rule.id if rule is not None else stored


class RuleRefusal(Exception):
    """A refusal by one rule of a rule table (:class:`Rule` here, ``quota.airlock.AirlockRule``): ``spec`` the
    rule, ``rule`` its id, ``status`` its HTTP status, ``message`` the filled-in sentence."""

    def __init__(self, rule, message: str):
        super().__init__(message)
        self.spec, self.message = rule, message

    @property
    def rule(self) -> str:
        return self.spec.id

    @property
    def status(self) -> int:
        return self.spec.status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.rule!r}, {self.status}, {self.message!r})"


class Refusal(RuleRefusal):
    """A spawn request that one :class:`Rule` refuses: :func:`check` and :func:`decide` return it, the
    store and the spawner raise it. ``rule`` is the id, ``status`` the HTTP status, ``message`` the sentence,
    ``org`` the site's organization the request was for (None when it named none, or one the site lacks)."""

    def __init__(self, rule: Rule, message: str, org: str | None = None):
        super().__init__(rule, message)
        self.org = org


@dataclass(frozen=True)
class AllocationRequest:
    """A spawn request: from ``user_options`` (:func:`gpuhub.hub.options.parse_options`) or built directly.

    ``org`` and ``image`` may be None: :func:`check` fills them in (the user's only organization, the
    organization's first image, or its first GPU image when GPUs are requested). ``groups`` are the
    user's hub groups, through which membership may come.
    """

    user: str
    server_name: str
    org: str | None
    image: str | None
    gpus: int = 0
    gpu_model: str | None = None
    groups: frozenset[str] = frozenset()
    # A project server's project key: its organization is charged and counts as the user's for this request.
    # quota.projects.check_project decides project membership; run it before (the spawner does).
    project: str | None = None

    @property
    def server_key(self) -> str:
        return server_key(self.user, self.server_name)


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
    offers: tuple | None = None  # hub.engine swarm: quota.placement.NodeOffer per node (then inventory is unused)
    # class windows open now whose course the request is not charged to: {device uuid: (course, its org, "until")}
    # (quota.reservations.blocked_for); those devices are not free for this request
    reserved: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    devices: tuple[str, ...]
    model: str | None
    weight: float
    request: AllocationRequest | None = field(default=None, compare=False)  # as checked: org and image set
    node_id: str | None = None  # hub.engine swarm: the node that holds ``devices``
    node: str | None = None  # and its hostname


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


def check_gpus(value) -> Refusal | None:
    """The shape rules of a GPU count that is already a number (``options`` parses text first)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return Rule.GPUS_TYPE.refuse(value=repr(value)[:40])
    if value < 0:
        return Rule.GPUS_NEGATIVE.refuse(value=value)
    return None


def check(site: Site, req: AllocationRequest) -> AllocationRequest | Refusal:
    """``req`` with its organization and image resolved, or the first rule it breaks that needs only the site."""
    bad = check_gpus(req.gpus)
    if bad is not None:
        return bad
    gpus = req.gpus
    memberships = site.orgs_of(req.user, req.groups)
    project = site.projects.get(req.project) if req.project is not None else None
    if project is not None and project.org not in memberships:
        memberships = [*memberships, project.org]
    if req.org is not None and req.org not in site.organizations:
        return Rule.UNKNOWN_ORG.refuse(org=req.org[:40], yours=_names(memberships))
    if req.image is not None and req.image not in site.images:
        return Rule.UNKNOWN_IMAGE.refuse(image=req.image[:40], catalog=_names(site.images))
    if req.gpu_model is not None and req.gpu_model not in site.gpus.models:
        return Rule.UNKNOWN_MODEL.refuse(model=req.gpu_model[:40], models=_names(site.gpus.models))

    org_key = req.org if req.org is not None or project is None else project.org
    if org_key is not None and org_key not in memberships:
        return Rule.NOT_A_MEMBER.refuse(user=req.user, org=org_key, yours=_names(memberships), charged_to=org_key)
    if org_key is None and len(memberships) > 1:
        return Rule.ORG_REQUIRED.refuse(user=req.user, orgs=", ".join(memberships))
    if org_key is None and memberships:
        org_key = memberships[0]
    if org_key is None and gpus > 0:
        return Rule.NO_ORGANIZATION.refuse(
            user=req.user,
            why=", so GPU servers cannot be charged",
            fix="start with 0 GPUs, or ask an operator to add you to an organization",
        )
    if org_key is None and not site.hub.allow_cpu_without_org:
        return Rule.NO_ORGANIZATION.refuse(
            user=req.user,
            why=" and this site allows no servers without one (hub.allow_cpu_without_org is false)",
            fix="ask an operator to add you to an organization",
        )

    org = site.organizations[org_key] if org_key is not None else None
    allowed = org.images if org is not None else tuple(site.images)
    if project is not None and org_key == project.org:  # a project server: the project's images (a subset)
        allowed = project.images
    image = req.image
    if image is None:  # the organization's first image; for GPUs its first GPU image, when it has one
        fitting = [k for k in allowed if site.images[k].gpu] if gpus > 0 else []
        image = (fitting or list(allowed))[0]
    if image not in allowed:
        return Rule.IMAGE_NOT_ALLOWED.refuse(org=org_key, image=image, allowed=_names(allowed), charged_to=org_key)
    if gpus > 0 and not site.images[image].gpu:
        return Rule.IMAGE_CPU_ONLY.refuse(image=image, gpus=gpus, charged_to=org_key)
    if org is not None and gpus > org.max_gpus_per_server:
        return Rule.MAX_GPUS_PER_SERVER.refuse(
            org=org.key, limit=org.max_gpus_per_server, gpus=gpus, charged_to=org_key
        )
    if (org_key, image) == (req.org, req.image):
        return req
    return dataclasses.replace(req, org=org_key, image=image)


def decide(site: Site, req: AllocationRequest, snap: Snapshot) -> Decision | Refusal:
    """Devices to take for ``req``, or the first rule it breaks (checked most-permanent first)."""
    checked = check(site, req)
    if isinstance(checked, Refusal):
        return checked
    req = checked
    if req.server_key in snap.open_servers:
        return Rule.SERVER_ALREADY_RUNNING.refuse(key=req.server_key, charged_to=req.org)
    gpus = req.gpus
    if gpus == 0:
        return Decision((), None, 0.0, req)
    org = site.organizations[req.org]

    budget_h = org.gpu_hours_per_month
    used_h = snap.org_used_gpu_seconds / 3600.0
    remaining_h = budget_h - used_h
    need_h = site.quota.min_remaining_gpu_hours
    if remaining_h <= 0 or remaining_h + 1e-9 < need_h:  # exactly the minimum is enough
        return Rule.BUDGET_EXHAUSTED.refuse(
            org=org.key, used=used_h, budget=budget_h, remaining=max(remaining_h, 0.0), need=need_h, charged_to=org.key
        )

    user_held = sum(1 for h in snap.holdings if h.user == req.user)
    cap = site.gpus.max_gpus_per_user
    if user_held + gpus > cap:
        return Rule.USER_GPU_LIMIT.refuse(user=req.user, held=user_held, limit=cap, gpus=gpus, charged_to=org.key)
    org_held = sum(1 for h in snap.holdings if h.org == org.key)
    if org_held + gpus > org.gpu_limit:
        return Rule.ORG_GPU_LIMIT.refuse(org=org.key, held=org_held, limit=org.gpu_limit, gpus=gpus, charged_to=org.key)

    if snap.offers is not None:  # several nodes: one node's devices (quota.placement)
        return _place(site, req, snap.offers, {h.device_uuid for h in snap.holdings})
    inventory = snap.inventory if snap.inventory is not None else site.gpus.devices
    held = {h.device_uuid for h in snap.holdings}
    out = _choose(site, req, inventory, held | set(snap.reserved))
    if isinstance(out, Refusal) and snap.reserved and not isinstance(_choose(site, req, inventory, held), Refusal):
        return _reserved_refusal(req, inventory, held, snap.reserved, out)
    return out


def _reserved_refusal(req, inventory, held: set[str], reserved: Mapping, refusal: Refusal) -> Refusal:
    """The request would fit but for devices a class window holds now: say which course, until when."""
    free_reserved = [d for d in inventory if d.uuid in reserved and d.uuid not in held]
    model = req.gpu_model or (free_reserved[0].model if free_reserved else "")
    mine = [d for d in free_reserved if d.model == model] or free_reserved
    course, org, until = reserved[mine[0].uuid]
    shortage = refusal.message.split(";", 1)[0]
    return Rule.RESERVED_FOR_COURSE.refuse(
        shortage=shortage, reserved=len(mine), model=model, course=course, until=until, org=org, charged_to=req.org
    )


def _choose(site: Site, req: AllocationRequest, inventory: tuple[Device, ...], held: set[str]) -> Decision | Refusal:
    free = [d for d in inventory if d.uuid not in held and d.model in site.gpus.models]
    counts = Counter(d.model for d in free)
    if req.gpu_model is not None:
        model = req.gpu_model
        if counts[model] < req.gpus:
            total = sum(1 for d in inventory if d.model == model)
            return Rule.NO_FREE_DEVICE.refuse(
                shortage=f"{counts[model]} of {total} {model} GPUs are free and {req.gpus} were requested",
                alternative="choose another model",
                free=_free_text(counts),
                charged_to=req.org,
            )
    else:
        fits = [m for m, n in counts.items() if n >= req.gpus]
        if not fits:
            return Rule.NO_FREE_DEVICE.refuse(
                shortage=f"no GPU model has {req.gpus} free devices ({len(held)} of {len(inventory)} GPUs in use)",
                alternative="request fewer GPUs",
                free=_free_text(counts),
                charged_to=req.org,
            )
        model = min(fits, key=lambda m: (-counts[m], site.weight_of(m), m))
    devices = tuple(d.uuid for d in free if d.model == model)[: req.gpus]
    return Decision(devices, model, site.weight_of(model), req)


def _place(site: Site, req: AllocationRequest, offers: tuple, held: set[str]) -> Decision | Refusal:
    from quota.placement import NoPlacement, place  # placement imports the inventory, which policy must not load

    weights = {m: site.weight_of(m) for m in site.gpus.models}
    out = place(offers, req.gpus, req.gpu_model, held, weights)
    if isinstance(out, NoPlacement):
        return Rule.NO_FREE_DEVICE.refuse(
            shortage=out.shortage, alternative=out.alternative, free=_free_text(Counter(out.free)), charged_to=req.org
        )
    return Decision(out.devices, out.model, site.weight_of(out.model), req, node_id=out.node_id, node=out.hostname)


def _free_text(counts: Counter) -> str:
    shown = [f"{n} {m}" for m, n in sorted(counts.items()) if n]
    return ", ".join(shown) if shown else "none"
