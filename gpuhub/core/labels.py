"""The Docker labels gpuhub puts on what it creates: the contract between the spawner (writes
them), the reconciler and the GPU exporter (read them). Pure constants; imported by all three."""

from __future__ import annotations

PREFIX = "gpuhub."
MANAGED = PREFIX + "managed"  # "1" on user containers and the user network
HUB = PREFIX + "hub"  # the hub instance (site hub.instance): each reconciler touches only its own
USER = PREFIX + "user"
SERVER = PREFIX + "server"  # "" for the default server
ORG = PREFIX + "org"
IMAGE = PREFIX + "image"  # catalog key
GPUS = PREFIX + "gpus"  # comma-separated device UUIDs ("" for a CPU server)
GPU_MODEL = PREFIX + "gpu-model"
UID = PREFIX + "uid"  # on a home volume: the UID it is chowned to
INIT = PREFIX + "init"  # "1" on the one-shot root containers that prepare volumes
KIND = PREFIX + "kind"  # on course volumes: exchange | course | nbgrader-config
COURSE = PREFIX + "course"


def split_devices(value: str | None) -> tuple[str, ...]:
    """The device UUIDs of a ``gpuhub.gpus`` label (or the ledger's ``device_uuids``), sorted."""
    return tuple(sorted(d.strip() for d in (value or "").split(",") if d.strip()))
