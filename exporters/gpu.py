"""The GPU exporter: a background sampler (~1 s) and a collector that renders its latest state.

The sampler owns all I/O (NVML, ``/proc``, Docker) and swaps in an immutable :class:`GpuState`
after each pass; ``collect()`` only formats that state into fresh metric families, so a scrape
never waits on NVML or Docker and never sees half an update.

Series (device series carry only ``uuid``; descriptive labels live on ``gpuhub_gpu_info``):

- ``gpuhub_gpu_info{uuid,model,name,index,parent_uuid}`` 1 per GPU / MIG unit (site inventory ∪ NVML)
- ``gpuhub_gpu_utilization_ratio``, ``gpuhub_gpu_memory_utilization_ratio`` (not on MIG units)
- ``gpuhub_gpu_memory_used_bytes``, ``gpuhub_gpu_memory_total_bytes``, ``gpuhub_gpu_power_watts``,
  ``gpuhub_gpu_temperature_celsius``, ``gpuhub_gpu_energy_joules_total`` (NVML's counter since driver load)
- ``gpuhub_gpu_process_sm_utilization_ratio``, ``gpuhub_gpu_process_memory_utilization_ratio``,
  ``gpuhub_gpu_process_memory_used_bytes`` ``{uuid,pid,user,org,server}`` (attributed via cgroup → container)
- ``gpuhub_gpu_allocated{uuid,model,org,user,server}`` 1 for the current holder (Docker labels);
  ``gpuhub_gpu_unallocated{uuid,model}`` 1 for each inventory unit nobody holds
- ``gpuhub_gpu_allocated_seconds_total{org,model}``, ``gpuhub_gpu_active_seconds_total{org,model}``
  (allocated × utilization), ``gpuhub_gpu_idle_allocated_seconds_total{org,model}`` (allocated while
  utilization <= ``idle.gpu_threshold``, the threshold of :mod:`quota.idle`): accumulated by this
  process, so they restart at 0 with it; the ledger-derived counters in :mod:`exporters.usage` are the
  ones to bill from.
- ``gpuhub_gpu_idle_seconds{org,user,server,uuid}`` per held device: its idle seconds by
  :mod:`quota.idle` (consecutive windows of ``idle.window_seconds`` at or under the threshold), at
  most the time this exporter has seen the holder. The GPU idle culler (:mod:`gpuhub.hub.idle_service`)
  reads this series from ``/metrics``; kernel state is the culler's to add.
- ``gpuhub_exporter_up``, ``gpuhub_exporter_last_success_timestamp_seconds``,
  ``gpuhub_exporter_collection_duration_seconds``, ``gpuhub_exporter_errors_total{source}``
  (all with ``exporter="gpu"``).

Without NVML (``gpus.runtime: none``) the inventory and allocation series are still served and no
utilization, power or active-seconds series exist: nothing is invented.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from gpuhub.core import labels as lb
from gpuhub.core.site import Device
from gpuhub.host.nvml import ERROR_SOURCES, DeviceSample, NvmlSource, ProcessSample, SourceError
from quota.idle import WindowLog

from .attribution import Attributor, Workload, docker_api
from .periodic import PeriodicSampler

log = logging.getLogger(__name__)

EXPORTER = "gpu"


@dataclass(frozen=True)
class DeviceInfo:
    uuid: str
    model: str
    name: str = ""
    index: str = ""
    parent_uuid: str = ""


@dataclass(frozen=True)
class Allocation:
    uuid: str
    model: str
    org: str
    user: str
    server: str
    container_id: str


@dataclass(frozen=True)
class AttributedProcess:
    uuid: str
    process: ProcessSample
    workload: Workload | None


@dataclass(frozen=True)
class GpuState:
    """Everything one scrape renders. Replaced as a whole after each sampling pass."""

    nvml_configured: bool = False
    taken_at: float | None = None
    inventory: tuple[DeviceInfo, ...] = ()
    devices: tuple[DeviceSample, ...] = ()
    processes: tuple[AttributedProcess, ...] = ()
    allocations: tuple[Allocation, ...] = ()
    allocated_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    active_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    idle_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)
    device_idle: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (uuid, container) -> seconds
    errors_total: Mapping[str, int] = field(default_factory=dict)
    up: bool = False
    last_success: float | None = None
    duration_seconds: float | None = None


class GpuSampler(PeriodicSampler):
    """Samples NVML, Docker and ``/proc`` on a background thread and keeps a :class:`GpuState`.

    ``source``: an :class:`~gpuhub.host.nvml.NvmlSource`, or None when the site has no NVML
    (runtime none). ``docker_client``: a ``docker.DockerClient`` (or None); ``docker_factory``:
    a callable returning one, retried until it succeeds (the daemon may start after us).
    ``clock`` gives wall time for timestamps, ``monotonic`` measures the intervals that feed the
    GPU-seconds counters; both are injectable for tests. ``devices``: the GPUs this exporter answers
    for besides NVML's (default the site's ``gpus.devices``; on a Swarm node, :func:`node_devices`).
    """

    thread_name = "gpuhub-gpu-sampler"

    def __init__(
        self,
        site: Any,
        source: NvmlSource | None = None,
        docker_client: Any = None,
        *,
        docker_factory: Callable[[], Any] | None = None,
        attributor: Attributor | None = None,
        proc_root: str = "/proc",
        interval: float = 1.0,
        containers_interval: float = 5.0,
        idle_threshold: float | None = None,
        max_step_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        devices: Iterable[Device] | None = None,
    ):
        self.site = site
        self.devices = tuple(site.gpus.devices if devices is None else devices)
        self.source = source
        self.docker = docker_client
        self.docker_factory = docker_factory
        self.attributor = attributor or Attributor(docker_client, proc_root=proc_root, clock=monotonic)
        self.interval = interval
        self.containers_interval = containers_interval
        idle = getattr(site, "idle", None)
        self.idle_threshold = idle_threshold if idle_threshold is not None else (idle.gpu_threshold if idle else 0.05)
        self.window_seconds = idle.window_seconds if idle else 30.0
        self._windows: dict[str, WindowLog] = {}
        self._holder_seen: dict[tuple[str, str], float] = {}  # (uuid, container id) -> first seen (wall)
        self.max_step_seconds = max_step_seconds
        self.clock = clock
        self.monotonic = monotonic
        self._site_models = {d.uuid: d.model for d in self.devices}
        self._lock = threading.Lock()
        self._errors: Counter[str] = Counter()
        for src in self._expected_error_sources():
            self._errors[src] += 0
        self._allocated: dict[tuple[str, str], float] = defaultdict(float)
        self._active: dict[tuple[str, str], float] = defaultdict(float)
        self._idle: dict[tuple[str, str], float] = defaultdict(float)
        for org in site.organizations:  # pre-create so rate() and dashboards see 0, not "no data"
            for model in site.gpus.models:
                self._allocated[(org, model)] += 0.0
                if source is not None:
                    self._active[(org, model)] += 0.0
                    self._idle[(org, model)] += 0.0
        self._allocations: tuple[Allocation, ...] = ()
        self._docker_ok: bool | None = None
        self._last_listing: float | None = None
        self._last_step: float | None = None
        self._last_success: float | None = None
        self._state = GpuState(
            nvml_configured=source is not None,
            inventory=tuple(DeviceInfo(d.uuid, d.model) for d in self.devices),
            errors_total=MappingProxyType(dict(self._errors)),
        )
        self._logged_sources: set[str] = set()

    def _expected_error_sources(self) -> Iterable[str]:
        yield "sampler"
        if self.source is not None:
            yield from ERROR_SOURCES
            yield "proc"
        if self.docker is not None or self.docker_factory is not None:
            yield "docker"

    # ------------------------------------------------------------ loop (exporters.periodic)

    @property
    def state(self) -> GpuState:
        return self._state

    def _pass(self) -> GpuState:
        return self.sample_once()

    def _has_run(self) -> bool:
        return self._state.taken_at is not None  # run_gpu_exporter samples once before serving

    def _close(self) -> None:
        if self.source is not None:
            self.source.close()

    # ------------------------------------------------------------ one pass

    def sample_once(self) -> GpuState:
        started = self.monotonic()
        errors: list[SourceError] = []
        snapshot = self.source.sample() if self.source is not None else None
        if snapshot is not None:
            errors.extend(snapshot.errors)
        devices = snapshot.devices if snapshot is not None else ()

        if self._docker_configured() and (
            self._last_listing is None or started - self._last_listing >= self.containers_interval
        ):
            self._last_listing = started
            self._refresh_allocations(errors)

        processes: list[AttributedProcess] = []
        referenced = {a.container_id for a in self._allocations}
        for dev in devices:
            for proc in dev.processes:
                workload = self.attributor.workload_of_pid(proc.pid, errors)
                if workload is not None:
                    referenced.add(workload.container_id)
                processes.append(AttributedProcess(dev.uuid, proc, workload))
        self.attributor.prune(referenced)

        inventory: dict[str, DeviceInfo] = {d.uuid: DeviceInfo(d.uuid, d.model) for d in self.devices}
        for dev in devices:
            inventory[dev.uuid] = DeviceInfo(
                dev.uuid, self._site_models.get(dev.uuid) or dev.name, dev.name, dev.index, dev.parent_uuid or ""
            )

        now = self.monotonic()
        step = 0.0 if self._last_step is None else min(max(now - self._last_step, 0.0), self.max_step_seconds)
        self._last_step = now
        by_uuid = {d.uuid: d for d in devices}
        nvml_ok = snapshot is None or snapshot.ok
        up = nvml_ok and self._docker_ok is not False
        wall = self.clock()
        with self._lock:
            for a in self._allocations:
                key = (a.org, a.model)
                share = self._share(by_uuid, a.uuid)
                self._allocated[key] += step * share
                dev = by_uuid.get(a.uuid)
                if dev is not None and dev.utilization is not None:
                    self._active[key] += step * share * dev.utilization
                    if dev.utilization <= self.idle_threshold:
                        self._idle[key] += step * share
            for err in errors:
                self._errors[err.source] += 1
            if up:
                self._last_success = wall
            device_idle = self._device_idle(devices, wall)
            state = GpuState(
                nvml_configured=self.source is not None,
                taken_at=wall,
                inventory=tuple(inventory.values()),
                devices=tuple(devices),
                processes=tuple(processes),
                allocations=self._allocations,
                allocated_seconds=MappingProxyType(dict(self._allocated)),
                active_seconds=MappingProxyType(dict(self._active)),
                idle_seconds=MappingProxyType(dict(self._idle)),
                device_idle=MappingProxyType(device_idle),
                errors_total=MappingProxyType(dict(self._errors)),
                up=up,
                last_success=self._last_success,
                duration_seconds=self.monotonic() - started,
            )
            self._state = state
        for err in errors:  # the first error of each source is logged loudly, the rest are in the counter
            first = err.source not in self._logged_sources
            self._logged_sources.add(err.source)
            (log.warning if first else log.debug)("sampling error [%s] %s", err.source, err.detail)
        return state

    def _device_idle(self, devices: Iterable[DeviceSample], wall: float) -> dict[tuple[str, str], float]:
        """Feed the idle windows; per held device, its idle seconds bounded by how long we saw the holder."""
        for dev in devices:
            if dev.utilization is not None:
                self._windows.setdefault(dev.uuid, WindowLog(self.window_seconds, self.idle_threshold)).observe(
                    wall, dev.utilization
                )
        held = {(a.uuid, a.container_id) for a in self._allocations}
        for gone in set(self._holder_seen) - held:
            del self._holder_seen[gone]
        out = {}
        for uuid, cid in held:
            seen = self._holder_seen.setdefault((uuid, cid), wall)
            log_ = self._windows.get(uuid)
            idle = log_.idle_seconds(wall) if log_ is not None else None
            if idle is not None:
                out[(uuid, cid)] = min(idle, max(0.0, wall - seen))
        return out

    @staticmethod
    def _share(by_uuid: dict[str, DeviceSample], uuid: str) -> float:
        """A MIG unit counts as its share of the parent's memory; a whole GPU as 1."""
        dev = by_uuid.get(uuid)
        if dev is None or dev.parent_uuid is None:
            return 1.0
        parent = by_uuid.get(dev.parent_uuid)
        if parent and parent.memory_total_bytes and dev.memory_total_bytes:
            return min(dev.memory_total_bytes / parent.memory_total_bytes, 1.0)
        return 1.0

    def _docker_configured(self) -> bool:
        return self.docker is not None or self.docker_factory is not None

    def _refresh_allocations(self, errors: list[SourceError]) -> None:
        if self.docker is None:
            try:
                self.docker = self.docker_factory()
                self.attributor.docker = self.docker
            except Exception as e:
                errors.append(SourceError("docker", f"connect: {e}"))
                self._docker_ok = False
                return
        try:
            listed = docker_api(self.docker).containers(filters={"label": [f"{lb.MANAGED}=1"]})
        except Exception as e:
            # Keep the previous holders: containers keep running while the daemon is away.
            errors.append(SourceError("docker", f"list containers: {e}"))
            self._docker_ok = False
            return
        self._docker_ok = True
        allocations = []
        for c in listed:
            labels = c.get("Labels") or {}
            cid = c.get("Id", "")
            name = (c.get("Names") or [""])[0]
            self.attributor.remember(cid, labels, name)
            w = Workload.from_labels(cid, labels, name)
            for uuid in lb.split_devices(labels.get(lb.GPUS)):
                model = self._site_models.get(uuid) or labels.get(lb.GPU_MODEL, "")
                allocations.append(Allocation(uuid, model, w.org, w.user, w.server, cid))
        self._allocations = tuple(allocations)


class GpuCollector(Collector):
    """Renders the sampler's latest :class:`GpuState` into fresh metric families per scrape."""

    def __init__(self, sampler: GpuSampler):
        self.sampler = sampler

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        s = self.sampler.state
        info = GaugeMetricFamily(
            "gpuhub_gpu_info",
            "GPU or MIG unit known to gpuhub (value 1); model is the site's model name",
            labels=["uuid", "model", "name", "index", "parent_uuid"],
        )
        for d in s.inventory:
            info.add_metric([d.uuid, d.model, d.name, d.index, d.parent_uuid], 1)
        yield info

        def gauge(name: str, doc: str, attr: str) -> GaugeMetricFamily:
            fam = GaugeMetricFamily(name, doc, labels=["uuid"])
            for d in s.devices:
                value = getattr(d, attr)
                if value is not None:
                    fam.add_metric([d.uuid], value)
            return fam

        if s.nvml_configured:
            yield gauge(
                "gpuhub_gpu_utilization_ratio",
                "Fraction of the last sample period a kernel ran on the GPU (NVML; not on MIG units)",
                "utilization",
            )
            yield gauge(
                "gpuhub_gpu_memory_utilization_ratio",
                "Fraction of the last sample period device memory was read or written (NVML)",
                "memory_utilization",
            )
            yield gauge(
                "gpuhub_gpu_memory_used_bytes",
                "Device memory held by processes and contexts "
                "(without the driver's reservation, as nvidia-smi shows it)",
                "memory_used_bytes",
            )
            yield gauge("gpuhub_gpu_memory_total_bytes", "Device memory installed", "memory_total_bytes")
            yield gauge("gpuhub_gpu_power_watts", "Board power draw", "power_watts")
            yield gauge("gpuhub_gpu_temperature_celsius", "GPU core temperature", "temperature_celsius")
            energy = CounterMetricFamily(
                "gpuhub_gpu_energy_joules",
                "Energy consumed since the driver loaded (NVML; read on slow passes)",
                labels=["uuid"],
            )
            for d in s.devices:
                if d.energy_joules is not None:
                    energy.add_metric([d.uuid], d.energy_joules)
            yield energy

            plabels = ["uuid", "pid", "user", "org", "server"]
            sm = GaugeMetricFamily(
                "gpuhub_gpu_process_sm_utilization_ratio",
                "Fraction of the GPU's SMs a process kept busy, as of the last slow pass",
                labels=plabels,
            )
            pmem = GaugeMetricFamily(
                "gpuhub_gpu_process_memory_utilization_ratio",
                "Fraction of the GPU's memory bandwidth a process used, as of the last slow pass",
                labels=plabels,
            )
            pused = GaugeMetricFamily(
                "gpuhub_gpu_process_memory_used_bytes", "Device memory held by a process", labels=plabels
            )
            seen: set[tuple[str, int]] = set()
            for p in s.processes:
                if (p.uuid, p.process.pid) in seen:
                    continue
                seen.add((p.uuid, p.process.pid))
                w = p.workload
                values = [p.uuid, str(p.process.pid), w.user if w else "", w.org if w else "", w.server if w else ""]
                if p.process.sm_utilization is not None:
                    sm.add_metric(values, p.process.sm_utilization)
                if p.process.memory_utilization is not None:
                    pmem.add_metric(values, p.process.memory_utilization)
                if p.process.memory_used_bytes is not None:
                    pused.add_metric(values, p.process.memory_used_bytes)
            yield sm
            yield pmem
            yield pused

        allocated = GaugeMetricFamily(
            "gpuhub_gpu_allocated",
            "1 for the server currently holding this GPU (from container labels)",
            labels=["uuid", "model", "org", "user", "server"],
        )
        held = set()
        parents = {d.parent_uuid for d in s.inventory if d.parent_uuid}
        for a in s.allocations:
            allocated.add_metric([a.uuid, a.model, a.org, a.user, a.server], 1)
            held.add(a.uuid)
        yield allocated
        free = GaugeMetricFamily(
            "gpuhub_gpu_unallocated", "1 for each GPU or MIG unit no server holds", labels=["uuid", "model"]
        )
        for d in s.inventory:
            if d.uuid not in held and d.uuid not in parents:
                free.add_metric([d.uuid, d.model], 1)
        yield free

        idle = GaugeMetricFamily(
            "gpuhub_gpu_idle_seconds",
            "How long the held GPU has been idle: consecutive windows of idle.window_seconds "
            "with utilization <= idle.gpu_threshold (quota.idle), since its holder appeared",
            labels=["org", "user", "server", "uuid"],
        )
        for a in s.allocations:
            seconds = s.device_idle.get((a.uuid, a.container_id))
            if seconds is not None:
                idle.add_metric([a.org, a.user, a.server, a.uuid], seconds)
        yield idle

        def org_counter(name: str, doc: str, values: Mapping[tuple[str, str], float]) -> CounterMetricFamily:
            fam = CounterMetricFamily(name, doc, labels=["org", "model"])
            for (org, model), v in sorted(values.items()):
                fam.add_metric([org, model], v)
            return fam

        yield org_counter(
            "gpuhub_gpu_allocated_seconds",
            "GPU-seconds allocated to an organization's servers, as sampled by this exporter "
            "(restarts at 0; bill from gpuhub_org_allocated_gpu_seconds_total)",
            s.allocated_seconds,
        )
        if s.nvml_configured:
            yield org_counter(
                "gpuhub_gpu_active_seconds",
                "Allocated GPU-seconds weighted by GPU utilization, as sampled by this exporter",
                s.active_seconds,
            )
            yield org_counter(
                "gpuhub_gpu_idle_allocated_seconds",
                "Allocated GPU-seconds during which utilization was at or under "
                f"{self.sampler.idle_threshold:g} (idle.gpu_threshold)",
                s.idle_seconds,
            )
        yield from self_metrics(EXPORTER, s.up, s.last_success, s.duration_seconds, s.errors_total)


def self_metrics(
    exporter: str, up: bool, last_success: float | None, duration: float | None, errors: Mapping[str, int]
) -> Iterable[Metric]:
    """The exporter's own health series, shared by both exporters."""
    yield _single(
        "gpuhub_exporter_up", "1 when the exporter's last pass read all of its sources", exporter, 1.0 if up else 0.0
    )
    if last_success is not None:
        yield _single(
            "gpuhub_exporter_last_success_timestamp_seconds",
            "Unix time of the exporter's last pass that read all of its sources",
            exporter,
            last_success,
        )
    if duration is not None:
        yield _single(
            "gpuhub_exporter_collection_duration_seconds",
            "How long the exporter's last pass over its sources took",
            exporter,
            duration,
        )
    fam = CounterMetricFamily(
        "gpuhub_exporter_errors", "Errors reading a source, by source", labels=["exporter", "source"]
    )
    for source, n in sorted(errors.items()):
        fam.add_metric([exporter, source], n)
    yield fam


def _single(name: str, doc: str, exporter: str, value: float) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=["exporter"])
    fam.add_metric([exporter], value)
    return fam


def build_gpu_exporter(
    site: Any,
    docker_client: Any = None,
    nvml: NvmlSource | None = None,
    *,
    registry: CollectorRegistry | None = None,
    use_nvml: bool | None = None,
    docker_factory: Callable[[], Any] | None = None,
    nvml_slow_interval: float = 15.0,
    **sampler_args: Any,
) -> tuple[CollectorRegistry, GpuSampler]:
    """A registry with the GPU collector and its (not yet started) sampler.

    ``nvml``: an NVML source; when None, a :class:`~gpuhub.host.nvml.PynvmlSource` is created if the
    site uses NVML (``gpus.runtime: nvidia`` or ``gpus.inventory: nvml``) or ``use_nvml`` is true,
    reading energy and per-process utilization every ``nvml_slow_interval`` seconds.
    """
    if nvml is None and (
        use_nvml if use_nvml is not None else site.gpus.runtime == "nvidia" or site.gpus.inventory == "nvml"
    ):
        from gpuhub.host.nvml import PynvmlSource

        nvml = PynvmlSource(slow_interval=nvml_slow_interval)
    sampler = GpuSampler(site, nvml, docker_client, docker_factory=docker_factory, **sampler_args)
    registry = registry or CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler))
    return registry, sampler
