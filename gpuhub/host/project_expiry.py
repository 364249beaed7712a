"""The Docker side of a project's destruction (:mod:`quota.project_expiry` decides when): find what still holds
the project's data on this engine and remove it.

Found by this hub instance's labels, so a second hub on the engine and everything not of projects stay untouched:
project servers are containers labelled ``gpuhub.managed=1``, ``gpuhub.hub=INSTANCE`` and ``gpuhub.project=KEY``;
project homes are volumes labelled ``gpuhub.project=KEY`` and ``gpuhub.hub=INSTANCE`` (written by
:func:`gpuhub.hub.volumes.ensure_home`), or, made before the labels, named exactly
``INSTANCE-project-KEY-user-UID`` (:func:`gpuhub.hub.projects.home_volume`). A Docker volume's id is its name;
the records keep it with its creation time and labels, which tell one incarnation of a name from another.

Containers go first (a volume in use cannot be removed), then the volumes, then the project's network.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import docker

from gpuhub.core import labels as lb
from gpuhub.host.project_network import PROJECT, project_network_name


def home_name_pattern(instance: str, key: str) -> re.Pattern:
    return re.compile(rf"{re.escape(instance)}-project-{re.escape(key)}-user-\d+")


class ProjectRoom:
    """``ProjectRoom(client, instance)``: ``client`` a high-level ``docker.DockerClient``."""

    def __init__(self, client: docker.DockerClient, instance: str):
        self.client, self.instance = client, instance

    def _volumes(self, key: str) -> list:
        labelled = self.client.volumes.list(filters={"label": [f"{PROJECT}={key}", f"{lb.HUB}={self.instance}"]})
        pattern = home_name_pattern(self.instance, key)
        named = [
            v
            for v in self.client.volumes.list(filters={"name": f"{self.instance}-project-{key}-user-"})
            if pattern.fullmatch(v.name)
        ]
        return sorted({v.name: v for v in labelled + named}.values(), key=lambda v: v.name)

    def leftovers(self, key: str):
        """What of project ``key`` is still on this engine, as :class:`quota.project_expiry.Leftovers` fields."""
        filters = {"label": [f"{lb.MANAGED}=1", f"{lb.HUB}={self.instance}", f"{PROJECT}={key}"]}
        containers = tuple(
            {
                "id": c.id,
                "name": c.name,
                "user": c.labels.get(lb.USER, ""),
                "server": c.labels.get(lb.SERVER, ""),
                "running": c.status in ("running", "restarting", "paused"),
            }
            for c in self.client.containers.list(all=True, filters=filters)
        )
        volumes = tuple(
            {"id": v.id, "name": v.name, "created_at": v.attrs.get("CreatedAt"), "labels": v.attrs.get("Labels") or {}}
            for v in self._volumes(key)
        )
        try:
            net = self.client.networks.get(project_network_name(key))
            network = net.name if (net.attrs.get("Labels") or {}).get(PROJECT) == key else None
        except docker.errors.NotFound:
            network = None
        return SimpleNamespace(volumes=volumes, containers=containers, network=network)

    def destroy(self, left) -> tuple[dict, list[str]]:
        """Remove ``left``'s containers, volumes and network; returns (what was removed, errors)."""
        done: dict = {"containers": [], "volumes": [], "network": None}
        errors: list[str] = []
        for c in left.containers:
            try:
                self.client.containers.get(c["id"]).remove(force=True)
                done["containers"].append(c)
            except docker.errors.NotFound:
                done["containers"].append(c)
            except docker.errors.APIError as e:
                errors.append(f"container {c['name']}: {e.explanation or e}")
        for v in left.volumes:
            try:
                self.client.volumes.get(v["name"]).remove(force=True)
                done["volumes"].append(v)
            except docker.errors.NotFound:
                done["volumes"].append({**v, "note": "already gone"})
            except docker.errors.APIError as e:
                errors.append(f"volume {v['name']}: {e.explanation or e} (still in use? stop what mounts it)")
        if left.network:
            try:
                self.client.networks.get(left.network).remove()
                done["network"] = left.network
            except docker.errors.NotFound:
                done["network"] = left.network
            except docker.errors.APIError as e:
                errors.append(f"network {left.network}: {e.explanation or e}")
        return done, errors
