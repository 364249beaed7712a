"""Who runs a GPU process: host PID → ``/proc/<pid>/cgroup`` → Docker container → gpuhub labels.

NVML reports host PIDs. Their cgroup path names the container under every layout Docker uses:

- cgroup v1, cgroupfs driver: ``4:memory:/docker/<64 hex>``
- systemd driver (v1 or v2): ``…/system.slice/docker-<64 hex>.scope`` (possibly with a sub-path)
- cgroup v2, cgroupfs driver: ``0::/docker/<64 hex>``; read from inside another container's cgroup
  namespace (the exporter in a container on cgroup v2): ``0::/../<64 hex>``

Container labels are read from the Docker API once per container id and cached (labels cannot
change on a running container); lookups that fail are retried after ``retry_seconds``. The
exporter seeds the cache from its periodic container listing, so a steady state costs no Docker
calls per sample. When the exporter itself runs in a container, mount the host's ``/proc`` and
pass its path as ``proc_root`` (and use ``pid: host`` so NVML PIDs resolve).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuhub.core import labels as lb
from gpuhub.host.nvml import SourceError

log = logging.getLogger(__name__)

# A path component that is a 64-hex id, bare (``/docker/<id>``, or ``/../<id>`` as seen from inside
# another container's cgroup namespace) or as a systemd scope (``docker-<id>.scope``).
_CONTAINER_ID = re.compile(r"(?:^|/)(?:docker-)?([0-9a-f]{64})(?:\.scope)?(?=/|$)")


def container_id_from_cgroup(text: str) -> str | None:
    """The Docker container id in a ``/proc/<pid>/cgroup`` file, or None for a host process."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        found = _CONTAINER_ID.findall(parts[2])
        if found:
            return found[-1]  # innermost, for nested layouts
    return None


@dataclass(frozen=True)
class Workload:
    """The container a process runs in, with gpuhub's labels ("" when a label is absent)."""

    container_id: str
    container_name: str = ""
    user: str = ""
    org: str = ""
    server: str = ""
    managed: bool = False

    @classmethod
    def from_labels(cls, container_id: str, labels: dict[str, str] | None, name: str = "") -> Workload:
        labels = labels or {}
        return cls(
            container_id=container_id,
            container_name=name.lstrip("/"),
            user=labels.get(lb.USER, ""),
            org=labels.get(lb.ORG, ""),
            server=labels.get(lb.SERVER, ""),
            managed=labels.get(lb.MANAGED) == "1",
        )


def docker_api(client: Any) -> Any:
    """Accept a ``docker.DockerClient`` (uses ``.api``) or a low-level ``docker.APIClient``."""
    return getattr(client, "api", client)


def _is_not_found(exc: BaseException) -> bool:
    return getattr(exc, "status_code", None) == 404 or type(exc).__name__ == "NotFound"


class Attributor:
    """Maps host PIDs to :class:`Workload`s. Used from the sampler thread only (not thread-safe)."""

    def __init__(
        self,
        docker_client: Any = None,
        *,
        proc_root: str | Path = "/proc",
        retry_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.docker = docker_client
        self.proc_root = Path(proc_root)
        self.retry_seconds = retry_seconds
        self.clock = clock
        self._workloads: dict[str, Workload] = {}
        self._failed: dict[str, float] = {}  # container id -> when a lookup failed

    def container_id_of(self, pid: int, errors: list[SourceError]) -> str | None:
        try:
            text = (self.proc_root / str(pid) / "cgroup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None  # the process ended, or lives in another PID namespace
        except OSError as e:
            errors.append(SourceError("proc", f"pid {pid}: {e.strerror or e}"))
            return None
        return container_id_from_cgroup(text)

    def remember(self, container_id: str, labels: dict[str, str] | None, name: str = "") -> None:
        """Seed the cache from a container listing (saves an inspect call)."""
        self._workloads[container_id] = Workload.from_labels(container_id, labels, name)
        self._failed.pop(container_id, None)

    def workload_of_container(self, container_id: str, errors: list[SourceError]) -> Workload:
        cached = self._workloads.get(container_id)
        if cached is not None:
            return cached
        unlabelled = Workload(container_id=container_id)
        if self.docker is None:
            return unlabelled
        failed_at = self._failed.get(container_id)
        if failed_at is not None and self.clock() - failed_at < self.retry_seconds:
            return unlabelled
        try:
            info = docker_api(self.docker).inspect_container(container_id)
        except Exception as e:
            self._failed[container_id] = self.clock()
            if not _is_not_found(e):  # a container that just ended is not an error
                errors.append(SourceError("docker", f"inspect {container_id[:12]}: {e}"))
            return unlabelled
        workload = Workload.from_labels(container_id, (info.get("Config") or {}).get("Labels"), info.get("Name", ""))
        self._workloads[container_id] = workload
        return workload

    def workload_of_pid(self, pid: int, errors: list[SourceError]) -> Workload | None:
        """The process's container (labels may be empty), or None for a host process."""
        cid = self.container_id_of(pid, errors)
        if cid is None:
            return None
        return self.workload_of_container(cid, errors)

    def prune(self, keep: set[str]) -> None:
        """Forget containers not seen lately (call with the ids still referenced)."""
        for cid in [c for c in self._workloads if c not in keep]:
            del self._workloads[cid]
        now = self.clock()
        for cid in [c for c, t in self._failed.items() if now - t >= self.retry_seconds]:
            del self._failed[cid]
