"""What a user server's Swarm service is (``hub.engine: swarm``): the service spec built from the same layers as a
container (:func:`gpuhub.hub.container.our_layer`), pure and unit-testable.

The hardening of a container, and how each piece reaches a service (Engine API 1.41, Docker 20.10 nodes):

===========================  ==================================================================================
container (host config)      service
===========================  ==================================================================================
``user`` UID:GID             ``ContainerSpec.User`` (the same per-user UID from the quota store)
``cap_drop: ALL``            ``ContainerSpec.CapabilityDrop: [ALL]``
``pids_limit``               ``Resources.Limits.Pids``
``read_only``, ``/tmp``      ``ContainerSpec.ReadOnly`` and a ``tmpfs`` mount
``mem_limit``, CPU quota     ``Resources.Limits.MemoryBytes`` / ``NanoCPUs``
labels                       on the service AND the container (``ContainerSpec.Labels``); plus ``gpuhub.node``
GPUs by UUID                 no device requests in services (moby#40133): the node constraint
                             ``node.id==<node>`` puts the task where its UUIDs are, and the UUIDs go in
                             ``NVIDIA_VISIBLE_DEVICES`` / ``GPUHUB_GPUS`` (``runtime: nvidia`` needs
                             ``default-runtime: nvidia`` on the node, the NVIDIA runtime's env mode)
restart never                ``RestartPolicy.Condition: none`` (a server whose node died is closed, not moved)
the image's ``HEALTHCHECK``  ``ContainerSpec.HealthCheck: {Test: [NONE]}``: a task with a health check stays
                             ``starting`` (no PID, no published port in its status) until the first probe passes,
                             a minute for the catalog images; the hub's own readiness probe stands in
===========================  ==================================================================================

What services cannot carry, and what stands in:

- ``no-new-privileges``: not in the service API of Docker 20.10 (Debian 12's docker.io); the node's dockerd runs
  with ``--no-new-privileges`` (scripts/swarm.sh), which sets it on every container of the node. With every
  capability dropped a setuid binary gains no capability in any case.
- ``cpu_shares``: Swarm has no relative CPU weight; the CPU quota (``cpu_limit``) bounds a server instead.
- ``auto_remove: false`` (keep a dead container to read its finish time): the task record keeps its status time,
  which the reconciler reads (:mod:`quota.swarm_cluster`).

Reaching the server: the task's port 8888 is published in ``host`` mode on its node (no routing mesh: IPVS is
not available everywhere, and the mesh would answer on every node), and the endpoint mode is ``dnsrr`` (no
virtual IP). The hub and proxy reach ``<node address>:<published port>``; a hub that runs inside the overlay
(as a service) reaches the task's overlay address instead (``GpuhubSwarmSpawner.server_address``).
"""

from __future__ import annotations

from collections.abc import Mapping

NODE_LABEL = "gpuhub.node"


def mounts(binds: Mapping[str, Mapping], tmpfs: Mapping[str, str]) -> list[dict]:
    """Engine-API mounts from DockerSpawner's binds (a name is a volume, a path is a bind) and tmpfs mounts."""
    out = []
    for source, spec in binds.items():
        kind = "bind" if source.startswith("/") else "volume"
        out.append({"Type": kind, "Source": source, "Target": spec["bind"], "ReadOnly": spec.get("mode") == "ro"})
    for target, opts in tmpfs.items():
        size = next((o.split("=", 1)[1] for o in opts.split(",") if o.startswith("size=")), None)
        tmp = {"Type": "tmpfs", "Target": target, "TmpfsOptions": {"Mode": 0o1777}}
        if size:
            tmp["TmpfsOptions"]["SizeBytes"] = _bytes(size)
        out.append(tmp)
    return out


def _bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    size = size.strip().lower()
    return int(float(size[:-1]) * units[size[-1]]) if size and size[-1] in units else int(size)


def service_spec(
    *,
    name: str,
    image: str,
    env: Mapping[str, str],
    args: list[str],
    create: Mapping,
    host: Mapping,
    node_id: str,
    node: str,
    network: str | None,
    port: int,
    stop_grace_seconds: float,
) -> dict:
    """The ``create_service`` keyword arguments for one server: ``create``/``host`` are the container's create
    arguments and host config (our layer merged over the operator's), ``node_id`` the node placement chose."""
    labels = {**dict(create.get("labels") or {}), NODE_LABEL: node}
    container = {
        "Image": image,
        "Args": list(args),
        "Env": [f"{k}={v}" for k, v in env.items()],
        "Labels": labels,
        "User": create.get("user"),
        "Mounts": mounts(host.get("binds") or {}, host.get("tmpfs") or {}),
        "ReadOnly": bool(host.get("read_only")),
        "CapabilityDrop": list(host.get("cap_drop") or []),
        "CapabilityAdd": list(host.get("cap_add") or []),
        "Groups": [str(g) for g in host.get("group_add") or []],
        "StopGracePeriod": int(stop_grace_seconds * 1e9),
        # The image's HEALTHCHECK off: a Swarm task with one stays "starting", with no PID and no published port
        # reported, until its first probe passes (60 s for the catalog images); the hub probes readiness itself.
        "HealthCheck": {"Test": ["NONE"]},
    }
    limits: dict = {}
    if host.get("pids_limit"):
        limits["Pids"] = int(host["pids_limit"])
    if host.get("mem_limit"):
        limits["MemoryBytes"] = _bytes(str(host["mem_limit"]))
    if host.get("cpu_quota") and host.get("cpu_period"):
        limits["NanoCPUs"] = int(host["cpu_quota"] / host["cpu_period"] * 1e9)
    task = {
        "ContainerSpec": {k: v for k, v in container.items() if v not in (None, [])},
        "Resources": {"Limits": limits},
        "RestartPolicy": {"Condition": "none"},
        "Placement": {"Constraints": [f"node.id=={node_id}"]},
        "Networks": [{"Target": network}] if network else [],
    }
    endpoint = {"Mode": "dnsrr", "Ports": [{"Protocol": "tcp", "TargetPort": port, "PublishMode": "host"}]}
    return {"name": name, "labels": labels, "task_template": task, "endpoint_spec": endpoint}
