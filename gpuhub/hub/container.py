"""What a user container gets, and which DockerSpawner config an operator may add to it.

A container's create arguments and host config are built in three layers (:meth:`GpuhubSpawner.create_object`):
DockerSpawner's own (image, environment, volumes, ports, binds), then the operator's
``extra_create_kwargs`` / ``extra_host_config`` from the JupyterHub config, then ours — identity,
limits, hardening and devices — last. The operator's layer is checked first by :func:`operator_problems`:
it may add keys (``shm_size``, ``ulimits``, ``dns``, ``extra_hosts``, labels outside ``gpuhub.``, more
volumes …), but a key that is ours, or one that would undo the hardening, is refused with a message
naming the key and where to set it instead, so nothing an operator writes is silently overwritten and
nothing can weaken the hardening: every capability dropped, no new privileges, a read-only root, a pids
limit, the user's own UID, only the GPUs the quota granted.

``mem_limit``, ``cpu_limit`` and ``cpu_shares`` are spawner settings whose defaults come from the
site config (``containers.*``); an operator's value for them in the JupyterHub config is honoured.
"""

from __future__ import annotations

import inspect

from gpuhub.core import labels as lb
from gpuhub.core.site import Site

HOME_VOLUME = "{prefix}-home-{username}"  # DockerSpawner's template and escaping (see gpuhub.core.naming)
TMP_MOUNT = {"/tmp": "rw,nosuid,nodev,size=1g"}

HARDENING = (
    "gpuhub sets it to keep user containers hardened (every capability dropped, no new privileges, "
    "a read-only root, a pids limit, the user's own UID, only the GPUs granted)"
)

# extra_host_config keys that are ours -> where to set the value instead (None: gpuhub decides it)
OWNED_HOST_KEYS: dict[str, str | None] = {
    "mem_limit": "c.GpuhubSpawner.mem_limit (default: the site config's containers.mem_limit)",
    "memswap_limit": "c.GpuhubSpawner.mem_limit (default: the site config's containers.mem_limit)",
    "cpu_quota": "c.GpuhubSpawner.cpu_limit (default: the site config's containers.cpu_limit)",
    "nano_cpus": "c.GpuhubSpawner.cpu_limit (default: the site config's containers.cpu_limit)",
    "cpu_shares": "c.GpuhubSpawner.cpu_shares (default: the site config's containers.cpu_shares)",
    "pids_limit": "the site config's containers.pids_limit",
    "read_only": "the site config's containers.read_only_root",
    "network_mode": "the site config's hub.network",
    "device_requests": "the site config's gpus (GPUs are handed over as the quota grants them)",
    "runtime": "the site config's gpus.runtime",
    "group_add": "the site config's courses (instructors get their course groups)",
    "cap_drop": None,
    "cap_add": None,
    "privileged": None,
    "security_opt": None,
    "devices": None,
    "device_cgroup_rules": None,
    "auto_remove": None,
    "tmpfs": None,
    "pid_mode": None,
    "ipc_mode": None,
    "userns_mode": None,
    "uts_mode": None,
    "cgroupns": None,
    "volumes_from": None,
    "oom_kill_disable": None,
}
# extra_create_kwargs keys that are ours -> where to set the value instead
OWNED_CREATE_KEYS: dict[str, str | None] = {
    "user": None,
    "image": "the site config's images (the catalog)",
    "environment": "c.GpuhubSpawner.environment (the GPU variables stay gpuhub's)",
    "name": None,
    "command": "c.GpuhubSpawner.cmd",
    "volumes": "c.GpuhubSpawner.volumes",
    "host_config": "c.GpuhubSpawner.extra_host_config",
}


def _refused(trait: str, key: str, instead: str | None) -> str:
    where = f"c.GpuhubSpawner.{trait}[{key!r}]"
    if instead is None:
        return f"{where} is refused: {HARDENING}; remove it from the JupyterHub config"
    return f"{where} is refused: gpuhub sets it; set {instead} instead"


def operator_problems(create: dict, host: dict, binds: dict, home: tuple[str, str]) -> list[str]:
    """Why the operator's evaluated ``extra_create_kwargs`` (``create``), ``extra_host_config`` (``host``)
    and volume ``binds`` cannot be merged with ours; ``home`` is (our home volume, the folder it is
    mounted at). Empty when they can."""
    problems = [_refused("extra_host_config", k, OWNED_HOST_KEYS[k]) for k in sorted(host) if k in OWNED_HOST_KEYS]
    problems += [
        _refused("extra_create_kwargs", k, OWNED_CREATE_KEYS[k]) for k in sorted(create) if k in OWNED_CREATE_KEYS
    ]
    labels = create.get("labels") or {}
    if not isinstance(labels, dict):
        problems.append("c.GpuhubSpawner.extra_create_kwargs['labels'] must be a mapping of label: value")
    else:
        problems += [
            f"c.GpuhubSpawner.extra_create_kwargs['labels'][{k!r}] is refused: labels starting with "
            f"{lb.PREFIX!r} are gpuhub's (the reconciler and the exporters read them); choose another name"
            for k in sorted(labels)
            if str(k).startswith(lb.PREFIX)
        ]
    volume, folder = home
    problems += [
        f"c.GpuhubSpawner.volumes mounts {source!r} at {folder}, where gpuhub mounts each user's home "
        f"volume {volume!r}; mount it somewhere else"
        for source, spec in sorted(binds.items())
        if spec.get("bind") == folder and source != volume
    ]
    return problems


class OperatorConfigError(ValueError):
    """The operator's DockerSpawner config cannot be merged with ours; the message names each key."""


async def operator_layer(spawner) -> dict:
    """The operator's layer for one start of ``spawner`` (a GpuhubSpawner): its ``extra_create_kwargs``
    (``create``) and ``extra_host_config`` (``host``) evaluated as DockerSpawner would (callables called,
    templates rendered), or :class:`OperatorConfigError` with every problem :func:`operator_problems` finds."""
    layer = {}
    for key, value in (("create", spawner.extra_create_kwargs), ("host", spawner.extra_host_config)):
        value = spawner._eval_if_callable(value)
        if inspect.isawaitable(value):
            value = await value
        layer[key] = spawner._render_templates(dict(value or {}))
    home = (spawner.format_volume_name(HOME_VOLUME, spawner), spawner.notebook_dir)
    problems = operator_problems(layer["create"], layer["host"], spawner._volumes_to_binds(spawner.volumes, {}), home)
    if problems:
        raise OperatorConfigError("; ".join(problems))
    return layer


def configured_in(configurable, name: str) -> str | None:
    """``c.<Section>.<name>`` when the JupyterHub config sets ``name`` for ``configurable``'s class or a parent."""
    for cls in type(configurable).mro():
        if cls.__name__ in configurable.config and name in configurable.config[cls.__name__]:
            return f"c.{cls.__name__}.{name}"
    return None


def deep_merge(dest: dict, src: dict) -> dict:
    """Merge ``src`` into ``dest``, recursing into mappings; ``src`` wins elsewhere. Returns ``dest``."""
    for key, value in src.items():
        if isinstance(dest.get(key), dict) and isinstance(value, dict):
            deep_merge(dest[key], value)
        else:
            dest[key] = value
    return dest


def our_layer(
    site: Site,
    request,
    grant,
    *,
    hub_instance: str,
    user: str,
    server_name: str,
    uid: int,
    network: str,
    mem_limit,
    cpu_limit,
    cpu_shares: int,
    cpu_period: int,
    plan=None,
    project=None,
) -> tuple[dict, dict]:
    """Our create arguments and host config for one start of ``user``'s server ``server_name``:
    the labels the reconciler and the exporters read, the user's UID, the limits, the hardening,
    the devices ``grant`` holds (``gpus.runtime: nvidia``) and the course mounts of ``plan``; for a project
    server (``project``, a :class:`gpuhub.hub.projects.ProjectPlan`) its label, binds and pinned resolver
    instead of any course mount (``network`` is then the project's)."""
    box = site.containers
    labels = {
        lb.MANAGED: "1",
        lb.HUB: hub_instance,
        lb.USER: user,
        lb.SERVER: server_name,
        lb.ORG: request.org or "",
        lb.IMAGE: request.image,
        lb.GPUS: ",".join(grant.devices),
        lb.GPU_MODEL: grant.model or "",
    }
    create = {"labels": labels, "user": f"{uid}:{uid}"}
    host = {
        # Keep a dead container until we have read its FinishedAt (stop() still removes it):
        # the ledger closes the interval at Docker's own finish time, even after a hub outage.
        "auto_remove": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": box.pids_limit,
        "privileged": False,
        "read_only": box.read_only_root,
        "tmpfs": dict(TMP_MOUNT),
        "network_mode": network,
        "cpu_shares": cpu_shares,
    }
    if mem_limit is not None:
        host["mem_limit"] = mem_limit
    if cpu_limit is not None:
        host["cpu_period"] = cpu_period
        host["cpu_quota"] = int(cpu_limit * cpu_period)
    if site.gpus.runtime == "nvidia" and grant.devices:
        # docker-py turns each mapping into a docker.types.DeviceRequest
        host["device_requests"] = [{"driver": "nvidia", "device_ids": list(grant.devices), "capabilities": [["gpu"]]}]
    if project is not None:
        labels.update(project.labels)
        host.update(project.host)  # dns: the project gateway only (CVE-2024-29018)
        host["binds"] = dict(project.binds)
    elif plan is not None:
        host["binds"] = dict(plan.binds)  # merged with the home bind
        if plan.group_add:
            host["group_add"] = list(plan.group_add)
    return create, host
