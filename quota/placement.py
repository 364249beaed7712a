"""Multi-node placement: which node, and which of its GPUs, a server gets (pure: offers + holdings -> a choice).

A server's GPUs are always on ONE node (a container runs on one machine) and of ONE model. Inputs are the
cluster's offers (:class:`NodeOffer`: a node, whether it takes new servers, its GPUs with the site's model keys)
and the UUIDs held now (the ``allocations`` rows, read in the allocation transaction). A held device, a device of a
model the site does not declare, and every device of a node that does not offer (drained, paused, down) are never
chosen.

The decision, in order:

1. **Model.** With a model named, that model. With none: among the models that fit on some node (a node with at
   least ``gpus`` free of it), the one with the most free devices in the cluster — the single-host rule of
   :func:`quota.policy.decide` (keeps the scarce model for whoever asks for it by name); ties to the lower
   weight, then the name.
2. **Node: pack (best fit).** Among the nodes with at least ``gpus`` free devices of that model, the one with the
   FEWEST free devices of it (the busiest that still fits); ties to the fewest free devices of any model, then
   hostname, then node id. Why pack and not spread: GPU requests vary from 1 to a whole node (8), and a server
   can only use GPUs of one node. Spreading 1-GPU servers leaves every node partly used, so after 30 1-GPU
   servers on 30 8-GPU nodes no node can take an 8-GPU server although 210 GPUs are free; packing keeps whole
   nodes free for the large requests (Kubernetes' ``MostAllocated`` scoring, Slurm's best-fit select, for the same
   reason). What spread would buy — fewer servers lost when one node fails, less heat per chassis — matters
   less here: a failed node's servers are closed and their users restart elsewhere (issue 19 item 5), and a GPU
   server's heat is set by its GPUs, not by its neighbours. The bench (bench/swarm.py) shows the difference as
   the number of whole nodes left free.
3. **Devices.** The node's first free devices of that model in its declared order (sorted UUIDs).

A request that cannot be placed gets a :class:`NoPlacement` whose sentence says why ("6 H100 GPUs are free, but at
most 2 on one node, and a server's GPUs are all on one node"), for the ``no-free-device`` refusal.

Intended use next (the SwarmSpawner wiring): :class:`quota.store.QuotaStore` with ``hub.engine: swarm`` gets its
offers from a TTL-cached ``offers_from_swarm(gpuhub.host.swarm.read_nodes(client), site.gpus.models)`` and, inside
the transaction where :func:`quota.policy.decide` now calls ``_choose``, calls :func:`place` with the held UUIDs;
a :class:`Placement` becomes the grant (device rows + interval, the node id recorded with it), a
:class:`NoPlacement` becomes ``Rule.NO_FREE_DEVICE`` with its sentence. The spawner then constrains the service
with ``gpuhub.host.swarm.node_constraint(placement.node_id)``. ``gpus == 0`` (CPU servers) needs no placement:
Swarm's own scheduler may put them anywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from gpuhub.core.site import Device
from quota.inventory import MIG_PROFILE, model_of


@dataclass(frozen=True)
class NodeOffer:
    """One node as placement sees it: ``available`` is False for a drained, paused or down node."""

    node_id: str
    hostname: str
    devices: tuple[Device, ...]
    available: bool = True


@dataclass(frozen=True)
class Placement:
    node_id: str
    hostname: str
    devices: tuple[str, ...]
    model: str


@dataclass(frozen=True)
class NoPlacement:
    """Why a request cannot be placed now: ``shortage`` is a sentence; ``free`` counts free devices per model on
    the nodes that offer; ``alternative`` is what the user could do instead."""

    shortage: str
    alternative: str
    free: Mapping[str, int]


def node_of_devices(offers: Iterable[NodeOffer]) -> dict[str, str]:
    """Device UUID -> node id, for the nodes that take new servers now (the queue groups free devices by node)."""
    return {d.uuid: o.node_id for o in offers if o.available for d in o.devices}


def model_key(name: str, models: Collection[str]) -> str | None:
    """The site's model key for a declared device name: the name itself when it is a key, else the longest key it
    contains (``H100`` in ``NVIDIA H100 80GB HBM3``), with ``-MIG-<profile>`` for a MIG instance
    (``... MIG 1g.10gb``)."""
    if name in models:
        return name
    base = model_of(name, models)
    match = MIG_PROFILE.search(name)
    key = f"{base}-MIG-{match.group(1)}" if base and match else base
    return key if key in models else None


def offers_from_swarm(nodes: Iterable, models: Collection[str]) -> tuple[list[NodeOffer], list[str]]:
    """Offers from :class:`gpuhub.host.swarm.SwarmNode` objects (anything with ``id``, ``hostname``, ``offers``
    and ``gpus`` of ``uuid``/``name``), plus the devices left out because the site declares no model for them,
    each named with the key to add (the operator's fix)."""
    offers, skipped = [], []
    for n in nodes:
        devices = []
        for g in n.gpus:
            key = model_key(g.name, models)
            if key is None:
                skipped.append(f"{g.uuid} on {n.hostname} ({g.name!r}: declare it under gpus.models to allocate it)")
            else:
                devices.append(Device(uuid=g.uuid, model=key))
        offers.append(NodeOffer(n.id, n.hostname, tuple(devices), bool(n.offers)))
    return offers, skipped


def _free_by_node(
    offers: Iterable[NodeOffer], held: Collection[str], weights: Mapping[str, float]
) -> list[tuple[NodeOffer, list[Device]]]:
    return [(o, [d for d in o.devices if d.uuid not in held and d.model in weights]) for o in offers if o.available]


def place(
    offers: Iterable[NodeOffer],
    gpus: int,
    model: str | None,
    held: Collection[str],
    weights: Mapping[str, float],
) -> Placement | NoPlacement:
    """(node, UUIDs) for a server of ``gpus`` GPUs (>= 1) of ``model`` (None: any), or why not.

    ``held``: the UUIDs allocated now (a set, for speed); ``weights``: the site's model keys and weights (a device
    of a model not in it is never chosen)."""
    if gpus < 1:
        raise ValueError("place() is for GPU servers (gpus >= 1); a CPU server needs no placement")
    free = _free_by_node(offers, held, weights)
    per_model: Counter = Counter()
    best_on_one: Counter = Counter()  # per model: the most free devices on one node
    per_node: list[tuple[NodeOffer, Counter, int]] = []
    for o, devs in free:
        c = Counter(d.model for d in devs)
        per_model.update(c)
        for m, n in c.items():
            best_on_one[m] = max(best_on_one[m], n)
        per_node.append((o, c, len(devs)))
    if model is None:
        fits = [m for m, n in best_on_one.items() if n >= gpus]
        if not fits:
            return _nothing_fits(gpus, per_model, best_on_one)
        model = min(fits, key=lambda m: (-per_model[m], weights[m], m))
    elif best_on_one[model] < gpus:
        return _model_short(gpus, model, per_model, best_on_one)
    candidates = [(c[model], total, o.hostname, o.node_id, o) for o, c, total in per_node if c[model] >= gpus]
    *_, node = min(candidates, key=lambda t: t[:4])
    devs = next(devs for o, devs in free if o is node)
    chosen = tuple(d.uuid for d in devs if d.model == model)[:gpus]
    return Placement(node.node_id, node.hostname, chosen, model)


def _nothing_fits(gpus: int, per_model: Counter, best_on_one: Counter) -> NoPlacement:
    total = sum(per_model.values())
    if any(n >= gpus for n in per_model.values()):
        most = max(best_on_one.values())
        shortage = (
            f"{total} GPUs are free, but at most {most} of one model on one node, and a server's GPUs are all on "
            f"one node ({gpus} were requested)"
        )
    else:
        shortage = f"no GPU model has {gpus} free devices on one node ({total} GPUs free in all)"
    return NoPlacement(shortage, "request fewer GPUs", dict(per_model))


def _model_short(gpus: int, model: str, per_model: Counter, best_on_one: Counter) -> NoPlacement:
    if per_model[model] >= gpus:
        shortage = (
            f"{per_model[model]} {model} GPUs are free, but at most {best_on_one[model]} on one node, and a server's "
            f"GPUs are all on one node ({gpus} were requested)"
        )
    else:
        shortage = f"{per_model[model]} {model} GPUs are free on the nodes that take servers and {gpus} were requested"
    return NoPlacement(shortage, "request fewer GPUs or choose another model", dict(per_model))
