"""The GPU queue's order: fair share between organizations, first-come within one, no head-of-line blocking (pure).

Everything here is a function of its inputs: the queued requests, the devices free now, the devices held now,
each org's usage history and ``now`` (Unix seconds). :mod:`quota.queue_store` reads those from the hub
database inside its transaction and calls :func:`choose`; ``bench/fairshare_month.py`` calls the same functions on a
simulated month.

Priority of a queued request r of organization o at time t::

    P(r) = F(o) + (t - arrival(r)) / A

    F(o) = 2^(-U(o) / S(o))                         Slurm's classic fair-share factor (FairShareDampeningFactor 1)
    U(o) = u(o) / sum over orgs of u                the org's normalised, decayed usage (0 when nobody used any)
    u(o) = sum over o's usage intervals [s, e] of gpus x weight x integral_s^e 2^(-(t - x) / H) dx
         = gpus x weight x H / ln 2 x (2^(-(t - e) / H) - 2^(-(t - s) / H))      (a running server: e = t)
    S(o) = organizations.o.share / sum of shares    (an org without a share weighs its gpu_limit)
    H    = quota.fairshare_half_life_hours (default 168 h = Slurm's PriorityDecayHalfLife)
    A    = the age scale: half of quota.max_queue_wait_minutes (default 60 min)

So the fair-share weight is 1 and the age weight is 1 per A of waiting. F is in (0, 1]: an org that used
nothing has F = 1, one that used exactly its share has F = 1/2, one that used twice its share 1/4. Within one
org F is the same for every request, so the age term alone orders them: first come, first served. The age
term is unbounded (Slurm caps its age factor at PriorityMaxAge; we do not), which is what makes starvation
impossible: r's priority is at least age(r)/A and a request that arrived more than A after r has a priority
below (t - arrival(r) - A)/A + 1 = age(r)/A, so r can only ever be overtaken by requests that arrived before
arrival(r) + A; under bounded load those are finitely many. Ties go to the earlier arrival, then the lower id.

Choosing (:func:`choose`): walk the requests in priority order and grant the FIRST one that can be served with
the devices actually free now; a request that cannot (its model has too few usable free devices, its org is at
``gpu_limit``, its user at ``gpus.max_gpus_per_user``) is passed over, so a later A100 request goes first
while the head waits for an H100 (no head-of-line blocking). Usable devices: free, of the request's model
(no model: the model with the most usable free devices, ties by name, as :mod:`quota.policy` picks), and not
reserved at ``now`` for a class window of a course the request is not charged to (:mod:`quota.reservations`).
One guard keeps passing-over from starving big requests: a request that has waited at least A and is blocked
only by too few free devices of its (named) model holds those free devices back; requests ranked after it
cannot take them, so they accumulate until it fits. Requests for other models are not affected.
The devices granted are the first ``gpus`` usable ones in the caller's preference order (``prefer``), which
:mod:`quota.reservations` makes "devices that no class window needs soon first".
With hub.engine swarm every device carries its node, and a grant's devices are all on one node (a container
runs on one machine): the fullest node that still fits, as :mod:`quota.placement` packs; on one host every
device's node is "" and this is the model alone.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

LN2 = math.log(2.0)

# Why a request is passed over (the queue listing and the expiry message show these).
NO_DEVICE, ORG_LIMIT, USER_LIMIT, HELD_BACK = "no-device", "org-limit", "user-limit", "held-back"


@dataclass(frozen=True)
class Request:
    """A queued GPU request; ``courses`` are the courses (charged to ``org``) its user is a member of."""

    id: int
    org: str
    user: str
    gpus: int
    model: str | None
    arrived_at: float  # Unix seconds
    courses: tuple[str, ...] = ()
    server_key: str = ""


@dataclass(frozen=True)
class Device:
    """A device as the queue sees it; ``node``: the Swarm node that holds it ("" on one host)."""

    uuid: str
    model: str
    node: str = ""


@dataclass(frozen=True)
class Held:
    """A device held now (an allocation) or promised to a granted request that has not started yet."""

    device_uuid: str
    org: str | None
    user: str
    model: str = ""


@dataclass(frozen=True)
class Span:
    """One usage interval of the ledger, for fair share: ``end`` None while the server runs."""

    org: str
    gpus: int
    weight: float
    start: float
    end: float | None = None


@dataclass(frozen=True)
class Limits:
    """The caps a grant must respect: ``org_limit`` per org (gpu_limit), ``user_limit`` (max_gpus_per_user)."""

    org_limit: Mapping[str, int]
    user_limit: int


@dataclass(frozen=True)
class Choice:
    request: Request
    devices: tuple[str, ...]
    model: str
    passed_over: tuple[tuple[int, str], ...] = ()  # (request id, reason) of those ranked above it


# ------------------------------------------------------------------------------------------ fair share


def decayed_usage(spans: Iterable[Span], now: float, half_life: float) -> dict[str, float]:
    """u(o) in decayed weighted GPU-seconds (see the module docstring); spans in the future count 0."""
    k = LN2 / half_life
    out: dict[str, float] = defaultdict(float)
    for s in spans:
        end = now if s.end is None else min(s.end, now)
        if end <= s.start or s.gpus <= 0:
            continue
        out[s.org] += s.gpus * s.weight * (math.exp(-k * (now - end)) - math.exp(-k * (now - s.start))) / k
    return dict(out)


def fairshare_factors(usage: Mapping[str, float], shares: Mapping[str, float]) -> dict[str, float]:
    """F(o) = 2^(-U/S) for every org in ``shares`` (and any in ``usage``; an org without a share has S = 0)."""
    total_share = sum(shares.values())
    total_use = sum(max(u, 0.0) for u in usage.values())
    out = {}
    for org in set(shares) | set(usage):
        u = max(usage.get(org, 0.0), 0.0) / total_use if total_use > 0 else 0.0
        s = shares.get(org, 0.0) / total_share if total_share > 0 else 0.0
        out[org] = 1.0 if u == 0 else (2.0 ** (-u / s) if s > 0 else 0.0)
    return out


def priority(req: Request, factors: Mapping[str, float], now: float, age_scale: float) -> float:
    return factors.get(req.org, 1.0) + max(now - req.arrived_at, 0.0) / age_scale


def ranked(requests: Iterable[Request], factors: Mapping[str, float], now: float, age_scale: float) -> list[Request]:
    """The line: highest priority first, ties to the earlier arrival, then the lower id."""
    return sorted(requests, key=lambda r: (-priority(r, factors, now, age_scale), r.arrived_at, r.id))


# ------------------------------------------------------------------------------------------ choosing


def _usable(
    req: Request, free: Sequence[Device], reserved: Mapping[str, str], taken: set[str]
) -> dict[tuple[str, str], list[Device]]:
    """Per (node, model), the free devices ``req`` may use (reserved ones only for its own course's windows)."""
    out: dict[tuple[str, str], list[Device]] = defaultdict(list)
    for d in free:
        if d.uuid in taken:
            continue
        course = reserved.get(d.uuid)
        if course is not None and course not in req.courses:
            continue
        out[(d.node, d.model)].append(d)
    return out


def _pick_group(req: Request, usable: Mapping[tuple[str, str], list[Device]]) -> tuple[str, str] | None:
    """The (node, model) to serve ``req`` from: a server's GPUs are of one model and on one node.

    Model: the named one, else the one with the most usable free devices on nodes where it fits (ties by name),
    as :mod:`quota.policy` picks. Node: the fullest one that still fits (pack, as :mod:`quota.placement`), ties by
    node name. When no node fits, the node with the most devices of the named model (what a long wait holds back);
    None without a named model. On one host every device has node "", so this is the model alone."""
    fits = {k: ds for k, ds in usable.items() if len(ds) >= req.gpus and req.model in (None, k[1])}
    if not fits:
        mine = [(-len(ds), k) for k, ds in usable.items() if k[1] == req.model]
        return min(mine)[1] if mine else (("", req.model) if req.model is not None else None)
    per_model: Counter[str] = Counter()
    for (_node, model), ds in fits.items():
        per_model[model] += len(ds)
    model = req.model if req.model is not None else min((-n, m) for m, n in per_model.items())[1]
    return min((len(ds), k) for k, ds in fits.items() if k[1] == model)[1]


def blocker(
    req: Request,
    free: Sequence[Device],
    held: Sequence[Held],
    limits: Limits,
    reserved: Mapping[str, str] | None = None,
    held_back: set[str] | frozenset[str] = frozenset(),
) -> str | None:
    """Why ``req`` cannot be served now (one of the reason constants), or None when it can."""
    by_org = Counter(h.org for h in held)
    by_user = Counter(h.user for h in held)
    if by_org[req.org] + req.gpus > limits.org_limit.get(req.org, 0):
        return ORG_LIMIT
    if by_user[req.user] + req.gpus > limits.user_limit:
        return USER_LIMIT
    usable = _usable(req, free, reserved or {}, set())
    group = _pick_group(req, usable)
    if group is None or len(usable.get(group, ())) < req.gpus:
        return NO_DEVICE
    if len([d for d in usable[group] if d.uuid not in held_back]) < req.gpus:
        return HELD_BACK
    return None


def choose(
    requests: Iterable[Request],
    free: Sequence[Device],
    held: Sequence[Held],
    factors: Mapping[str, float],
    limits: Limits,
    now: float,
    age_scale: float,
    reserved: Mapping[str, str] | None = None,
    prefer: Callable[[Request, Sequence[Device]], Sequence[Device]] | None = None,
) -> Choice | None:
    """The request to serve next with the devices ``free`` now, and which devices; None when none can be served.

    ``reserved`` maps a device uuid to the course whose window holds it at ``now``; ``prefer(request, devices)``
    orders the usable devices (default: as given, i.e. inventory order)."""
    reserved = reserved or {}
    by_org = Counter(h.org for h in held)
    by_user = Counter(h.user for h in held)
    held_back: set[str] = set()
    passed: list[tuple[int, str]] = []
    for req in ranked(requests, factors, now, age_scale):
        if req.gpus <= 0:
            continue
        if by_org[req.org] + req.gpus > limits.org_limit.get(req.org, 0):
            passed.append((req.id, ORG_LIMIT))
            continue
        if by_user[req.user] + req.gpus > limits.user_limit:
            passed.append((req.id, USER_LIMIT))
            continue
        usable = _usable(req, free, reserved, held_back)
        group = _pick_group(req, usable)
        candidates = usable.get(group, []) if group else []
        if len(candidates) < req.gpus:
            unheld = _usable(req, free, reserved, set()) if held_back else usable
            unheld_group = _pick_group(req, unheld)
            enough = unheld_group is not None and len(unheld.get(unheld_group, ())) >= req.gpus
            passed.append((req.id, HELD_BACK if enough else NO_DEVICE))
            if req.model is not None and now - req.arrived_at >= age_scale:
                held_back.update(d.uuid for d in candidates)  # it has waited long enough: let them pile up
            continue
        ordered = list(prefer(req, candidates)) if prefer else candidates
        return Choice(req, tuple(d.uuid for d in ordered[: req.gpus]), group[1], tuple(passed))
    return None


def line(requests: Iterable[Request], factors: Mapping[str, float], now: float, age_scale: float) -> list[dict]:
    """Each request's place in line: position (1 = next), how many are ahead from its own org and from others."""
    out = []
    ahead: Counter[str] = Counter()
    for pos, r in enumerate(ranked(requests, factors, now, age_scale), 1):
        own = ahead[r.org]
        out.append(
            {
                "id": r.id,
                "position": pos,
                "ahead_same_org": own,
                "ahead_other_orgs": pos - 1 - own,
                "priority": priority(r, factors, now, age_scale),
            }
        )
        ahead[r.org] += 1
    return out


def estimate_wait(gpus_ahead: int, gpus: int, devices: int, mean_session_seconds: float, held: int) -> float:
    """A rough wait in seconds: devices of the model free up at ``devices / mean session`` per second on
    average (all held, sessions memoryless), and ``gpus_ahead + gpus - free`` of them must free up first."""
    if devices <= 0:
        return math.inf
    need = gpus_ahead + gpus - max(devices - held, 0)
    if need <= 0:
        return 0.0
    return need * mean_session_seconds / devices
