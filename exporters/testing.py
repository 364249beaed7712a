"""Test doubles for the exporters (tests and bench only; production code never imports this).

:class:`FakeNvmlLibrary` imitates the slice of the pynvml API that :class:`~gpuhub.host.nvml.PynvmlSource`
calls, so :class:`FakeNvmlSource` exercises the real sampling code, error isolation included.
:class:`FakeDocker` imitates the two Docker API calls the GPU exporter makes.
"""

from __future__ import annotations

import builtins
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from gpuhub.core import labels as lb
from gpuhub.host.nvml import (
    NVML_DEVICE_MIG_ENABLE,
    NVML_ERROR_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    PynvmlSource,
)

NVML_ERROR_UNKNOWN = 999
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13


#: CPU seconds per NVML call on an H100 (driver 580.159.04, nvidia-ml-py 13.610.43), measured on the
#: device machine by scripts/device_nvml_check.py (mean of 13 calls under a matmul load). The bench
#: spends them in :class:`FakeNvmlLibrary` so its sampling cost resembles real hardware's.
H100_CALL_CPU_SECONDS = {
    "energy": 4.113e-3,
    "process_utilization": 2.221e-3,
    "mig": 0.433e-3,
    "handle": 0.134e-3,
    "processes": 0.132e-3,
    "utilization": 0.109e-3,
    "power": 0.099e-3,
    "count": 0.032e-3,
    "memory": 0.027e-3,
    "uuid": 0.023e-3,
    "temperature": 0.012e-3,
    "name": 0.010e-3,
}


class FakeNvmlError(Exception):
    def __init__(self, value: int):
        super().__init__(f"fake NVML error {value}")
        self.value = value


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None = 1 << 30
    sm_percent: int = 0
    mem_percent: int = 0


@dataclass
class FakeGpu:
    """One fake device. Mutate the fields between samples; percentages and NVML units (mW, mJ)."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    utilization: int = 0
    memory_utilization: int = 0
    memory_used: int = 0  # what processes and contexts hold (the v2 call's ``used``)
    memory_reserved: int = 0  # the driver's reservation: v1 counts it as used, v2 apart
    memory_total: int = 80 * 1024**3
    power_mw: int = 70_000
    energy_mj: int = 1_000_000
    temperature: int = 35
    processes: list[FakeProcess] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)  # call names that raise, e.g. {"power"}; "handle" = whole device
    unsupported: set[str] = field(default_factory=set)
    migs: list[FakeGpu] = field(default_factory=list)  # non-empty: MIG mode on, these are the units
    is_mig: bool = False


class FakeNvmlLibrary:
    """``memory_v2``: False imitates a driver without ``nvmlDeviceGetMemoryInfo_v2``.
    ``call_cpu_seconds``: CPU each call burns (e.g. :data:`H100_CALL_CPU_SECONDS`); default none.
    """

    nvmlMemory_v2 = 0x02000028

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        fail_init: int | None = None,
        memory_v2: bool = True,
        call_cpu_seconds: dict[str, float] | None = None,
    ):
        self.gpus = gpus
        self.fail_init = fail_init
        self.memory_v2 = memory_v2
        self.call_cpu_seconds = call_cpu_seconds or {}
        self.calls: Counter[str] = Counter()
        self._ts = itertools.count(1_000_000)
        for g in gpus:
            for m in g.migs:
                m.is_mig = True

    def _spin(self, call: str) -> None:
        cost = self.call_cpu_seconds.get(call)
        if cost:
            end = time.thread_time() + cost
            while time.thread_time() < end:
                pass

    def _check(self, gpu: FakeGpu, call: str) -> None:
        self.calls[call] += 1
        self._spin(call)
        if call in gpu.fail:
            raise FakeNvmlError(NVML_ERROR_UNKNOWN)
        if call in gpu.unsupported:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self):
        self.calls["init"] += 1
        if self.fail_init is not None:
            raise FakeNvmlError(self.fail_init)

    def nvmlShutdown(self):
        self.calls["shutdown"] += 1

    def nvmlSystemGetDriverVersion(self):
        return "580.00-fake"

    def nvmlDeviceGetCount(self):
        self._spin("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        gpu = self.gpus[i]
        self._check(gpu, "handle")
        return gpu

    def nvmlDeviceGetUUID(self, h):
        self._check(h, "uuid")
        return h.uuid

    def nvmlDeviceGetName(self, h):
        self._check(h, "name")
        return h.name.encode()  # old bindings return bytes; the source must cope

    def nvmlDeviceGetMigMode(self, h):
        self._check(h, "mig")
        if h.is_mig:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return [NVML_DEVICE_MIG_ENABLE if h.migs else 0, NVML_DEVICE_MIG_ENABLE if h.migs else 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return len(h.migs) + 1  # one empty slot, as on real boards

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, k):
        if k >= len(h.migs):
            raise FakeNvmlError(NVML_ERROR_NOT_FOUND)
        return h.migs[k]

    def nvmlDeviceGetUtilizationRates(self, h):
        self._check(h, "utilization")
        if h.is_mig or h.migs:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(gpu=h.utilization, memory=h.memory_utilization)

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        self._check(h, "memory")
        free = h.memory_total - h.memory_used - h.memory_reserved
        if version is None:
            return SimpleNamespace(used=h.memory_used + h.memory_reserved, total=h.memory_total, free=free)
        self.calls["memory_v2"] += 1
        if not self.memory_v2:
            raise FakeNvmlError(NVML_ERROR_FUNCTION_NOT_FOUND)
        return SimpleNamespace(
            version=version, used=h.memory_used, reserved=h.memory_reserved, total=h.memory_total, free=free
        )

    def nvmlDeviceGetPowerUsage(self, h):
        self._check(h, "power")
        if h.is_mig:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return h.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        self._check(h, "energy")
        if h.is_mig:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return h.energy_mj

    def nvmlDeviceGetTemperature(self, h, sensor):
        self._check(h, "temperature")
        if h.is_mig:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        return h.temperature

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        self._check(h, "processes")
        return [
            SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory, gpuInstanceId=0, computeInstanceId=0)
            for p in h.processes
        ]

    def nvmlDeviceGetProcessUtilization(self, h, last_seen):
        self._check(h, "process_utilization")
        if h.is_mig:
            raise FakeNvmlError(NVML_ERROR_NOT_SUPPORTED)
        ts = next(self._ts)
        busy = [
            SimpleNamespace(pid=p.pid, timeStamp=ts, smUtil=p.sm_percent, memUtil=p.mem_percent, encUtil=0, decUtil=0)
            for p in h.processes
            if p.sm_percent or p.mem_percent
        ]
        busy = [s for s in busy if s.timeStamp > last_seen]
        if not busy:
            raise FakeNvmlError(NVML_ERROR_NOT_FOUND)
        return busy


class FakeNvmlSource(PynvmlSource):
    """The real :class:`PynvmlSource` over :class:`FakeNvmlLibrary` (tests and bench only)."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        fail_init: int | None = None,
        retry_init_seconds: float = 0.0,
        call_cpu_seconds: dict[str, float] | None = None,
        **source_args,
    ):
        self.library = FakeNvmlLibrary(gpus, fail_init=fail_init, call_cpu_seconds=call_cpu_seconds)
        self.gpus = gpus
        super().__init__(nvml=self.library, retry_init_seconds=retry_init_seconds, **source_args)


def fake_gpus(n: int, *, prefix: str = "GPU-fake-", procs_per_gpu: int = 0, first_pid: int = 10_000) -> list[FakeGpu]:
    pids = itertools.count(first_pid)
    return [
        FakeGpu(
            uuid=f"{prefix}{i}",
            utilization=50,
            memory_utilization=20,
            memory_used=10 * 1024**3,
            processes=[FakeProcess(next(pids), sm_percent=40, mem_percent=10) for _ in range(procs_per_gpu)],
        )
        for i in range(n)
    ]


# ---------------------------------------------------------------- Docker


class FakeDockerNotFound(Exception):
    status_code = 404


class _FakeApi:
    def __init__(self, owner: FakeDocker):
        self.owner = owner

    def containers(self, all=False, filters=None):
        self.owner.calls["containers"] += 1
        if self.owner.fail:
            raise ConnectionError("fake Docker is down")
        want = dict(f.split("=", 1) for f in (filters or {}).get("label", []) if "=" in f)
        out = []
        for c in self.owner.containers.values():
            if builtins.all(c["Labels"].get(k) == v for k, v in want.items()):
                out.append({"Id": c["Id"], "Names": [c["Name"]], "Labels": dict(c["Labels"]), "State": "running"})
        return out

    def inspect_container(self, cid):
        self.owner.calls["inspect"] += 1
        if self.owner.fail:
            raise ConnectionError("fake Docker is down")
        for c in self.owner.containers.values():
            if c["Id"] == cid or c["Id"].startswith(cid):
                return {
                    "Id": c["Id"],
                    "Name": c["Name"],
                    "Config": {"Labels": dict(c["Labels"])},
                    "State": {"Pid": c.get("Pid", 0)},
                }
        raise FakeDockerNotFound(cid)


class FakeDocker:
    """Enough of ``docker.DockerClient`` for the exporters: ``.api.containers`` and ``.api.inspect_container``."""

    def __init__(self):
        self.containers: dict[str, dict] = {}
        self.calls: Counter[str] = Counter()
        self.fail = False
        self.api = _FakeApi(self)

    def add(self, cid: str, labels: dict[str, str], name: str = "/jupyter-x", pid: int = 0) -> None:
        self.containers[cid] = {"Id": cid, "Name": name, "Labels": labels, "Pid": pid}

    def remove(self, cid: str) -> None:
        self.containers.pop(cid, None)


def gpuhub_labels(user: str, org: str, gpus: list[str] = (), server: str = "", model: str = "H100") -> dict[str, str]:
    return {
        lb.USER: user,
        lb.ORG: org,
        lb.SERVER: server,
        lb.IMAGE: "python",
        lb.GPUS: ",".join(gpus),
        lb.GPU_MODEL: model,
        lb.MANAGED: "1",
        lb.HUB: "test",
    }


def make_proc_tree(root: Path, pids: dict[int, str]) -> Path:
    """A fake ``/proc``: ``{pid: cgroup file text}``."""
    for pid, text in pids.items():
        d = root / str(pid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup").write_text(text)
    return root
