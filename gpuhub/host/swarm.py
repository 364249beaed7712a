"""The GPU inventory of a Docker Swarm: which nodes there are, whether they offer anything, and their GPUs.

How a node declares its GPUs (the design, issue 19): **node labels**, one per GPU,
``gpuhub.gpu.<uuid>=<device name>`` (the NVML name, e.g. ``NVIDIA H100 80GB HBM3``, or the model key for
simulated GPUs), plus ``gpuhub.gpu-source=nvml|simulated``. ``gpuhub node register`` (:mod:`gpuhub.node_cli`)
reads the GPUs on the node from NVML (or simulates N of a model) and writes them through a manager's engine with
:func:`register`, replacing the node's earlier ``gpuhub.gpu.*`` labels in one spec update. Why labels and not
the daemon's ``node-generic-resources``:

- a label carries the device's model (generic resources carry only ``GPU=<uuid>``), so the hub maps it to a
  site model key the same way the NVML inventory does (:func:`quota.inventory.model_of`);
- node labels can only be written through a manager (engine labels and generic resources are claimed by the
  node itself), so a compromised worker cannot advertise GPUs to attract users' workloads;
- they change without restarting the node's dockerd (generic resources are read once at its start);
- Swarm's generic-resource accounting reserves by count and picks the UUID itself, so it could never agree with
  our ledger's exact UUIDs: with labels there is one accountant only, the quota store.

What a node offers: only a node whose ``Status.State`` is ``ready`` and whose ``Spec.Availability`` is
``active`` offers its GPUs; a drained, paused, down, disconnected or unknown node offers nothing
(:attr:`SwarmNode.offers`). Reading the node list needs a manager's engine (``client.nodes`` answers only on a
manager).

Intended use next (the SwarmSpawner wiring): the hub, on a manager, calls :func:`read_nodes` for each inventory
refresh (a TTL cache like :func:`quota.inventory.nvml_inventory`), :func:`quota.placement.offers_from_swarm`
turns the nodes into placement offers with the site's model keys, and :func:`quota.placement.place` picks
(node, UUIDs) inside the allocation transaction; the service is then constrained with
:func:`node_constraint` and gets the UUIDs in its env and labels. The Docker client is always injected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: node label prefix of a declared GPU: ``gpuhub.gpu.<uuid>`` = the device's name (NVML) or model key
GPU_LABEL_PREFIX = "gpuhub.gpu."
#: node label: where the declared GPUs came from (``nvml`` or ``simulated``)
GPU_SOURCE_LABEL = "gpuhub.gpu-source"
GPU_SOURCES = ("nvml", "simulated")
#: node label: the URL at which an operator's machine reaches the node's own Docker engine (``unix://``, ``tcp://``
#: or ``ssh://``), written by ``gpuhub node register --engine-url``; ``gpuhub images push-to-nodes`` copies images
#: there (:mod:`gpuhub.host.node_images`). Only a manager writes node labels, so a worker cannot redirect it.
ENGINE_LABEL = "gpuhub.engine"


class SwarmError(RuntimeError):
    """The swarm cannot be read or written as asked; the message names the node and the fix."""


@dataclass(frozen=True)
class SwarmGpu:
    """One declared GPU: on which node, its UUID and its declared name (NVML name or model key)."""

    node_id: str
    hostname: str
    uuid: str
    name: str


@dataclass(frozen=True)
class SwarmNode:
    id: str
    hostname: str
    role: str  # manager | worker
    state: str  # Status.State: ready, down, disconnected, unknown
    availability: str  # Spec.Availability: active, pause, drain
    addr: str
    gpus: tuple[SwarmGpu, ...]
    gpu_source: str | None = None
    engine_url: str | None = None  # the gpuhub.engine label

    @property
    def offers(self) -> bool:
        """True when new servers may be placed here: ready and active (drained, paused or down nodes offer nothing)."""
        return self.state == "ready" and self.availability == "active"


def gpus_from_labels(node_id: str, hostname: str, labels: Mapping[str, str]) -> tuple[SwarmGpu, ...]:
    """The GPUs a node's labels declare, sorted by UUID (a stable order for placement's first-free pick)."""
    return tuple(
        SwarmGpu(node_id, hostname, key[len(GPU_LABEL_PREFIX) :], value)
        for key, value in sorted(labels.items())
        if key.startswith(GPU_LABEL_PREFIX) and len(key) > len(GPU_LABEL_PREFIX)
    )


def node_from_attrs(attrs: Mapping) -> SwarmNode:
    """A :class:`SwarmNode` from the Engine API's node object (``GET /nodes``)."""
    spec = attrs.get("Spec") or {}
    status = attrs.get("Status") or {}
    hostname = (attrs.get("Description") or {}).get("Hostname") or ""
    labels = spec.get("Labels") or {}
    return SwarmNode(
        id=attrs["ID"],
        hostname=hostname,
        role=spec.get("Role") or "",
        state=status.get("State") or "unknown",
        availability=spec.get("Availability") or "unknown",
        addr=status.get("Addr") or "",
        gpus=gpus_from_labels(attrs["ID"], hostname, labels),
        gpu_source=labels.get(GPU_SOURCE_LABEL),
        engine_url=labels.get(ENGINE_LABEL) or None,
    )


def read_nodes(client) -> list[SwarmNode]:
    """Every node of the swarm the client's engine manages, sorted by hostname then id."""
    import docker.errors  # docker-py costs ~0.14 s to import: kept off every `gpuhub` command's start (node_cli)

    try:
        raw = client.api.nodes()
    except docker.errors.APIError as e:
        raise SwarmError(
            f"cannot list the swarm's nodes ({e.explanation or e}); the hub's Docker engine must be a swarm "
            "manager: run the hub on a manager node, or point DOCKER_HOST at one"
        ) from None
    return sorted((node_from_attrs(a) for a in raw), key=lambda n: (n.hostname, n.id))


def offered_gpus(nodes: Iterable[SwarmNode]) -> tuple[SwarmGpu, ...]:
    """The GPUs of the nodes that offer (ready and active), in node order."""
    return tuple(g for n in nodes if n.offers for g in n.gpus)


def find_node(nodes: Iterable[SwarmNode], ref: str) -> SwarmNode:
    """The node whose id, id prefix (12+ characters) or hostname is ``ref``."""
    nodes = list(nodes)
    hits = [n for n in nodes if ref in (n.id, n.hostname) or (len(ref) >= 12 and n.id.startswith(ref))]
    if len(hits) != 1:
        known = ", ".join(f"{n.hostname} ({n.id[:12]})" for n in nodes) or "(none)"
        what = "no" if not hits else "more than one"
        raise SwarmError(f"{what} swarm node is {ref!r}; name a node by hostname or id: {known}")
    return hits[0]


def gpu_labels(gpus: Iterable[tuple[str, str]], source: str) -> dict[str, str]:
    """The labels that declare ``gpus`` ((uuid, name) pairs) from ``source``."""
    if source not in GPU_SOURCES:
        raise ValueError(f"GPU source {source!r} is not one of {', '.join(GPU_SOURCES)}")
    out = {GPU_SOURCE_LABEL: source}
    for uuid, name in gpus:
        if not uuid or any(c.isspace() or c == "=" for c in uuid):
            raise SwarmError(f"GPU UUID {uuid!r} cannot be a label key (no spaces or '='); check the GPU source")
        out[GPU_LABEL_PREFIX + uuid] = name
    return out


def register(
    client, node_ref: str, gpus: Iterable[tuple[str, str]] | None, source: str | None, engine_url: str | None = None
) -> SwarmNode:
    """Declare ``gpuhub`` labels on the node ``node_ref`` (hostname or id) through the client's manager engine, in
    one spec update (retried when the node's spec changed meanwhile), other labels kept. ``gpus`` ((uuid, name)
    pairs) from ``source``: the node's ``gpuhub.gpu.*`` labels become exactly these (None: left as they are).
    ``engine_url``: the node's :data:`ENGINE_LABEL` (None: left as it is). Returns the node as re-read. Idempotent."""
    import docker.errors  # off the CLI's start path (see read_nodes)

    new = gpu_labels(gpus, source) if gpus is not None else {}
    if engine_url is not None:
        new[ENGINE_LABEL] = check_engine_url(engine_url)
    for _attempt in range(5):
        node = find_node(read_nodes(client), node_ref)
        attrs = client.api.inspect_node(node.id)
        spec = dict(attrs["Spec"])
        old = spec.get("Labels") or {}
        kept = {k: v for k, v in old.items() if not (gpus is not None and _ours(k))}
        if old == {**kept, **new}:
            return node
        spec["Labels"] = {**kept, **new}
        try:
            client.api.update_node(node.id, attrs["Version"]["Index"], spec)
        except docker.errors.APIError as e:
            if "update out of sequence" in str(e):
                continue  # someone else updated the node between our read and write
            raise SwarmError(f"cannot update node {node.hostname} ({node.id[:12]}): {e.explanation or e}") from None
        return find_node(read_nodes(client), node.id)
    raise SwarmError(f"node {node_ref} kept changing while its labels were written; run the command again")


ENGINE_SCHEMES = ("unix://", "tcp://", "ssh://")


def check_engine_url(url: str) -> str:
    """``url`` when it is a Docker engine URL docker-py can open (``unix://``, ``tcp://``, ``ssh://``)."""
    if (
        not url.startswith(ENGINE_SCHEMES)
        or len(url) <= len(url.split("//", 1)[0]) + 2
        or any(c.isspace() for c in url)
    ):
        raise SwarmError(
            f"engine URL {url!r} is not a Docker engine URL (rule: unix:///path, tcp://host:port or ssh://user@host); "
            "give the URL at which the operator's machine reaches that node's engine"
        )
    return url


def _ours(key: str) -> bool:
    return key.startswith(GPU_LABEL_PREFIX) or key == GPU_SOURCE_LABEL


def node_constraint(node: SwarmNode | str) -> str:
    """The placement constraint that pins a service to one node (by id: hostnames may repeat)."""
    return f"node.id=={node.id if isinstance(node, SwarmNode) else node}"


def local_node_id(client) -> str | None:
    """The swarm node id of the client's own engine (None when that engine is in no swarm)."""
    info = client.info().get("Swarm") or {}
    return (info.get("NodeID") or None) if info.get("LocalNodeState") == "active" else None


def swarm_client(base_url: str | None = None, timeout: int = 30):
    """A Docker client for ``base_url`` (``unix://…`` or ``tcp://…``; None: DOCKER_HOST or the local socket)."""
    import docker  # off the CLI's start path (see read_nodes)

    try:
        client = (
            docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        )
        client.ping()
    except Exception as e:  # docker raises several unrelated types here
        where = base_url or "DOCKER_HOST or the local socket"
        raise SwarmError(
            f"the Docker engine at {where} does not answer ({e}); start it or pass --docker-host"
        ) from None
    return client
