"""NVML sampling: one immutable snapshot of every GPU (and every MIG instance, as its own unit).

Every NVML call is isolated: a call that fails is recorded as ``(source, detail)`` in the
snapshot's ``errors`` and its value is ``None``; it never fails the snapshot. A call that answers
``NOT_SUPPORTED`` (utilization on a MIG unit, power on some boards) is remembered per device and
not retried or counted as an error. Values are converted to base units here (ratios 0-1, bytes,
watts, joules, degrees Celsius) so the exporter never does unit arithmetic.

:class:`PynvmlSource` takes the NVML binding as a parameter (default: ``pynvml`` from
nvidia-ml-py, imported lazily), so the test fake in :mod:`exporters.testing` drives this very code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

# NVML constants (same values as pynvml; kept here so this module imports without nvidia-ml-py).
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_TEMPERATURE_GPU = 0
NVML_DEVICE_MIG_ENABLE = 1

#: Bounded set of error sources (the ``source`` label of ``gpuhub_exporter_errors_total``).
ERROR_SOURCES = (
    "nvml_init",
    "nvml_device",
    "nvml_name",
    "nvml_mig",
    "nvml_utilization",
    "nvml_memory",
    "nvml_power",
    "nvml_energy",
    "nvml_temperature",
    "nvml_processes",
    "nvml_process_utilization",
)


@dataclass(frozen=True)
class ProcessSample:
    """A compute process on one device (host PID as NVML reports it)."""

    pid: int
    memory_used_bytes: int | None = None
    sm_utilization: float | None = None  # ratio 0-1; None when NVML cannot say
    memory_utilization: float | None = None


@dataclass(frozen=True)
class DeviceSample:
    """One GPU or one MIG instance; ``None`` means "not measured", never zero."""

    uuid: str
    name: str = ""
    index: str = ""  # "0" for a GPU, "0:1" for MIG slot 1 of GPU 0
    parent_uuid: str | None = None  # set on MIG instances
    mig_enabled: bool = False  # a physical GPU in MIG mode: its processes are listed per MIG unit
    utilization: float | None = None
    memory_utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_watts: float | None = None
    energy_joules: float | None = None
    temperature_celsius: float | None = None
    processes: tuple[ProcessSample, ...] = ()

    @property
    def is_mig(self) -> bool:
        return self.parent_uuid is not None


@dataclass(frozen=True)
class SourceError:
    source: str  # one of ERROR_SOURCES (or "docker", "proc", ... from other sources)
    detail: str


@dataclass(frozen=True)
class NvmlSnapshot:
    ok: bool  # NVML initialised and enumerated devices
    devices: tuple[DeviceSample, ...] = ()
    errors: tuple[SourceError, ...] = ()
    driver_version: str | None = None


class NvmlSource(Protocol):
    """What the GPU exporter needs from NVML (or a fake)."""

    def sample(self) -> NvmlSnapshot: ...

    def close(self) -> None: ...


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    try:
        text = str(exc)
    except Exception:  # an NVMLError's str() may call into a library that is not loaded
        text = ""
    suffix = f" (NVML code {code})" if isinstance(code, int) else ""
    return f"{type(exc).__name__}: {text}{suffix}"


@dataclass
class _Unit:
    """A GPU or MIG unit found at the last enumeration, with the slow readings carried between them."""

    handle: Any
    uuid: str
    index: str
    parent: str | None
    name: str = ""
    mig_enabled: bool = False
    energy_joules: float | None = None
    process_utilization: dict[int, tuple[float, float]] | None = None  # pid -> (sm, mem) at the last slow read
    pids_at_slow_read: frozenset[int] = frozenset()


class PynvmlSource:
    """NVML through nvidia-ml-py. Thread-safe; meant to be sampled by one background thread.

    ``nvml``: the binding module (default ``pynvml``). ``retry_init_seconds``: how long to wait
    before trying ``nvmlInit`` again after it failed (driver not loaded, library missing).

    ``slow_interval``: seconds between *slow* passes. Measured on an H100 with driver 580, one
    pass cost 6.7 ms of CPU, and three calls made up 6.8 of it: total energy (4.1 ms), per-process
    utilization (2.2 ms) and MIG mode (0.4 ms). That is 0.67 % of a core per GPU at one pass a
    second, 5 % on an 8-GPU host. Those three calls, plus device enumeration (count, handles,
    UUIDs, names, MIG units), therefore run only on slow passes; between them the last values are
    carried. Utilization, memory, power, temperature and the process list stay fresh on every pass,
    because active GPU-seconds are integrated from them. The default of 15 s matches Prometheus'
    usual scrape interval, so the energy counter is at most one scrape old.
    """

    def __init__(
        self,
        nvml: Any = None,
        *,
        retry_init_seconds: float = 30.0,
        slow_interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._nvml = nvml
        self._retry = retry_init_seconds
        self._slow_interval = slow_interval
        self._clock = clock
        self._initialized = False
        self._last_init_attempt: float | None = None
        self._driver_version: str | None = None
        self._last_seen_us: dict[str, int] = {}
        self._unsupported: set[tuple[str, str]] = set()
        self._units: list[_Unit] | None = None  # None: enumerate on the next pass
        self._last_slow: float | None = None
        self._lost = False  # a call said GPU_IS_LOST this pass
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def _ensure_init(self, errors: list[SourceError]) -> bool:
        if self._initialized:
            return True
        now = self._clock()
        if self._last_init_attempt is not None and now - self._last_init_attempt < self._retry:
            return False
        self._last_init_attempt = now
        try:
            if self._nvml is None:
                import pynvml  # nvidia-ml-py; optional extra gpuhub[nvml]

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except ImportError:
            errors.append(SourceError("nvml_init", "nvidia-ml-py is not installed: pip install 'gpuhub[nvml]'"))
            return False
        except Exception as e:
            errors.append(SourceError("nvml_init", _describe(e)))
            return False
        self._initialized = True
        self._unsupported.clear()
        self._units = None
        try:
            self._driver_version = _text(self._nvml.nvmlSystemGetDriverVersion())
        except Exception:
            self._driver_version = None
        log.info("NVML initialised (driver %s)", self._driver_version or "unknown")
        return True

    def close(self) -> None:
        with self._lock:
            if self._initialized:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as e:  # shutting down: nothing to do about it
                    log.debug("nvmlShutdown failed: %s", _describe(e))
                self._initialized = False
                self._units = None

    # ------------------------------------------------------------ sampling

    def sample(self) -> NvmlSnapshot:
        with self._lock:
            errors: list[SourceError] = []
            if not self._ensure_init(errors):
                return NvmlSnapshot(ok=False, errors=tuple(errors))
            now = self._clock()
            slow = self._units is None or self._last_slow is None or now - self._last_slow >= self._slow_interval
            if slow:
                units = self._enumerate(errors)
                if units is None:
                    return NvmlSnapshot(ok=False, errors=tuple(errors), driver_version=self._driver_version)
                self._units, self._last_slow = units, now
            self._lost = False
            devices = [self._read(u, slow, errors) for u in self._units]
            if self._lost:
                self._units = None
            return NvmlSnapshot(
                ok=True, devices=tuple(devices), errors=tuple(errors), driver_version=self._driver_version
            )

    def _enumerate(self, errors: list[SourceError]) -> list[_Unit] | None:
        """GPUs and MIG units with their names and MIG modes (a slow pass); None when NVML cannot count."""
        nvml = self._nvml
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except Exception as e:
            errors.append(SourceError("nvml_device", f"device count: {_describe(e)}"))
            if getattr(e, "value", None) in (NVML_ERROR_UNINITIALIZED, NVML_ERROR_GPU_IS_LOST):
                self._initialized = False  # re-init on a later pass
            return None
        previous = {u.uuid: u for u in self._units or ()}
        units: list[_Unit] = []
        for i in range(count):
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            except Exception as e:
                errors.append(SourceError("nvml_device", f"GPU {i}: {_describe(e)}"))
                continue
            unit = self._unit(handle, uuid, str(i), None, previous, errors)
            mode = self._call(uuid, "nvml_mig", errors, nvml.nvmlDeviceGetMigMode, handle)
            unit.mig_enabled = bool(mode) and mode[0] == NVML_DEVICE_MIG_ENABLE
            units.append(unit)
            if unit.mig_enabled:
                units.extend(self._mig_units(handle, uuid, str(i), previous, errors))
        return units

    def _unit(
        self,
        handle: Any,
        uuid: str,
        index: str,
        parent: str | None,
        previous: dict[str, _Unit],
        errors: list[SourceError],
    ) -> _Unit:
        name = self._call(uuid, "nvml_name", errors, self._nvml.nvmlDeviceGetName, handle)
        old = previous.get(uuid)
        return _Unit(
            handle,
            uuid,
            index,
            parent,
            name=_text(name) if name is not None else "",
            energy_joules=old.energy_joules if old else None,
            process_utilization=old.process_utilization if old else None,
            pids_at_slow_read=old.pids_at_slow_read if old else frozenset(),
        )

    def _mig_units(
        self, handle: Any, uuid: str, index: str, previous: dict[str, _Unit], errors: list[SourceError]
    ) -> list[_Unit]:
        nvml = self._nvml
        slots = self._call(uuid, "nvml_mig", errors, nvml.nvmlDeviceGetMaxMigDeviceCount, handle) or 0
        units: list[_Unit] = []
        for k in range(int(slots)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, k)
                mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
            except Exception as e:
                if getattr(e, "value", None) != NVML_ERROR_NOT_FOUND:  # NOT_FOUND: empty slot
                    errors.append(SourceError("nvml_mig", f"{uuid} MIG slot {k}: {_describe(e)}"))
                continue
            units.append(self._unit(mig, mig_uuid, f"{index}:{k}", uuid, previous, errors))
        return units

    def _call(self, uuid: str, source: str, errors: list[SourceError], fn: Callable, *args) -> Any:
        key = (uuid, source)
        if key in self._unsupported:
            return None
        try:
            return fn(*args)
        except Exception as e:
            code = getattr(e, "value", None)
            if code == NVML_ERROR_NOT_SUPPORTED:
                self._unsupported.add(key)
                return None
            if code == NVML_ERROR_GPU_IS_LOST:
                self._lost = True  # enumerate again on the next pass
            errors.append(SourceError(source, f"{uuid}: {_describe(e)}"))
            return None

    def _read(self, unit: _Unit, slow: bool, errors: list[SourceError]) -> DeviceSample:
        nvml, handle, uuid = self._nvml, unit.handle, unit.uuid

        def call(source: str, fn: Callable, *args) -> Any:
            return self._call(uuid, source, errors, fn, *args)

        util = call("nvml_utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        mem = self._memory(handle, uuid, errors)
        power_mw = call("nvml_power", nvml.nvmlDeviceGetPowerUsage, handle)
        temp = call("nvml_temperature", nvml.nvmlDeviceGetTemperature, handle, NVML_TEMPERATURE_GPU)
        if slow:
            energy_mj = call("nvml_energy", nvml.nvmlDeviceGetTotalEnergyConsumption, handle)
            unit.energy_joules = None if energy_mj is None else energy_mj / 1000.0
        processes: tuple[ProcessSample, ...] = ()
        if not unit.mig_enabled:  # a MIG parent lists every instance's processes: report them per unit
            listed = call("nvml_processes", nvml.nvmlDeviceGetComputeRunningProcesses, handle)
            if listed is not None:
                if slow:
                    unit.process_utilization = self._process_utilization(handle, uuid, errors)
                    unit.pids_at_slow_read = frozenset(int(p.pid) for p in listed)
                processes = tuple(self._process(p, unit) for p in listed)
        return DeviceSample(
            uuid=uuid,
            name=unit.name,
            index=unit.index,
            parent_uuid=unit.parent,
            mig_enabled=unit.mig_enabled,
            utilization=None if util is None else util.gpu / 100.0,
            memory_utilization=None if util is None else util.memory / 100.0,
            memory_used_bytes=None if mem is None else int(mem.used),
            memory_total_bytes=None if mem is None else int(mem.total),
            power_watts=None if power_mw is None else power_mw / 1000.0,
            energy_joules=unit.energy_joules,
            temperature_celsius=None if temp is None else float(temp),
            processes=processes,
        )

    def _memory(self, handle: Any, uuid: str, errors: list[SourceError]) -> Any:
        """Memory info, ``used`` without the driver's reserved memory (as nvidia-smi shows it).

        The v1 call counts the driver's reservation (480 MiB on an idle H100 with driver 580) as
        used, so an idle GPU would look busy. The v2 call separates it; drivers or bindings without
        v2 fall back to v1 for that device.
        """
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        key = (uuid, "nvml_memory_v2")
        if version is not None and key not in self._unsupported:
            try:
                return self._nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except TypeError:  # a binding whose call takes no version
                self._unsupported.add(key)
            except Exception as e:
                if getattr(e, "value", None) not in (
                    NVML_ERROR_NOT_SUPPORTED,
                    NVML_ERROR_FUNCTION_NOT_FOUND,
                    NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
                ):
                    errors.append(SourceError("nvml_memory", f"{uuid}: {_describe(e)}"))
                    return None
                self._unsupported.add(key)
        return self._call(uuid, "nvml_memory", errors, self._nvml.nvmlDeviceGetMemoryInfo, handle)

    def _process_utilization(
        self, handle: Any, uuid: str, errors: list[SourceError]
    ) -> dict[int, tuple[float, float]] | None:
        """Latest (sm, mem) ratio per PID since the previous read; {} = none busy; None = unknown."""
        key = (uuid, "nvml_process_utilization")
        if key in self._unsupported:
            return None
        try:
            samples = self._nvml.nvmlDeviceGetProcessUtilization(handle, self._last_seen_us.get(uuid, 0))
        except Exception as e:
            code = getattr(e, "value", None)
            if code in (NVML_ERROR_NOT_FOUND, NVML_SUCCESS):  # no process had a non-zero sample
                return {}
            if code == NVML_ERROR_NOT_SUPPORTED:
                self._unsupported.add(key)
                return None
            errors.append(SourceError("nvml_process_utilization", f"{uuid}: {_describe(e)}"))
            return None
        latest: dict[int, Any] = {}
        for s in samples:
            if s.pid not in latest or s.timeStamp >= latest[s.pid].timeStamp:
                latest[s.pid] = s
            if s.timeStamp > self._last_seen_us.get(uuid, 0):
                self._last_seen_us[uuid] = int(s.timeStamp)
        return {pid: (s.smUtil / 100.0, s.memUtil / 100.0) for pid, s in latest.items()}

    @staticmethod
    def _process(p: Any, unit: _Unit) -> ProcessSample:
        """A listed process; its SM use is unknown (None) until a slow read has seen it."""
        used = getattr(p, "usedGpuMemory", None)
        pid, per_pid = int(p.pid), unit.process_utilization
        if per_pid is None or pid not in unit.pids_at_slow_read:
            sm = mem = None
        else:
            sm, mem = per_pid.get(pid, (0.0, 0.0))
        return ProcessSample(
            pid=pid, memory_used_bytes=None if used is None else int(used), sm_utilization=sm, memory_utilization=mem
        )
