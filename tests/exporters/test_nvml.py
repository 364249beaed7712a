"""The NVML source: unit conversion, per-call error isolation, MIG, process utilization."""

from __future__ import annotations

from exporters.testing import FakeGpu, FakeNvmlError, FakeNvmlSource, FakeProcess
from gpuhub.host.nvml import PynvmlSource


def by_uuid(snapshot):
    return {d.uuid: d for d in snapshot.devices}


def test_snapshot_is_in_base_units():
    gpu = FakeGpu(
        "GPU-a",
        utilization=87,
        memory_utilization=25,
        memory_used=3 * 1024**3,
        memory_total=80 * 1024**3,
        power_mw=312_500,
        energy_mj=4_200_000,
        temperature=61,
        processes=[FakeProcess(4242, used_memory=2 * 1024**3, sm_percent=84, mem_percent=26)],
    )
    snap = FakeNvmlSource([gpu]).sample()
    assert snap.ok and snap.errors == ()
    d = by_uuid(snap)["GPU-a"]
    assert d.name == "NVIDIA H100 80GB HBM3"  # bytes from the binding decoded
    assert d.index == "0" and not d.is_mig and not d.mig_enabled
    assert d.utilization == 0.87 and d.memory_utilization == 0.25
    assert d.memory_used_bytes == 3 * 1024**3 and d.memory_total_bytes == 80 * 1024**3
    assert d.power_watts == 312.5 and d.energy_joules == 4200.0 and d.temperature_celsius == 61.0
    (p,) = d.processes
    assert (p.pid, p.memory_used_bytes, p.sm_utilization, p.memory_utilization) == (4242, 2 * 1024**3, 0.84, 0.26)


def test_memory_used_leaves_out_the_drivers_reservation_as_nvidia_smi_does():
    """Measured on an H100 (driver 580): v1 reported 480 MiB used on an idle board, nvidia-smi 0 MiB."""
    idle = FakeGpu("GPU-a", memory_used=0, memory_reserved=480 * 1024**2)
    source = FakeNvmlSource([idle])
    assert by_uuid(source.sample())["GPU-a"].memory_used_bytes == 0
    idle.memory_used = 1139 * 1024**2  # a matmul loop's tensors and context
    assert by_uuid(source.sample())["GPU-a"].memory_used_bytes == 1139 * 1024**2


def test_a_driver_without_the_v2_memory_call_falls_back_to_v1_once():
    gpu = FakeGpu("GPU-a", memory_used=1024**3, memory_reserved=480 * 1024**2)
    source = FakeNvmlSource([gpu])
    source.library.memory_v2 = False
    for _ in range(3):
        snap = source.sample()
        assert snap.errors == ()
        assert by_uuid(snap)["GPU-a"].memory_used_bytes == 1024**3 + 480 * 1024**2  # v1: all it can say
    assert source.library.calls["memory_v2"] == 1 and source.library.calls["memory"] == 4


def test_one_failing_call_is_recorded_and_isolated():
    gpus = [FakeGpu("GPU-a", fail={"power"}, utilization=10), FakeGpu("GPU-b", utilization=20)]
    snap = FakeNvmlSource(gpus).sample()
    assert snap.ok
    a, b = by_uuid(snap)["GPU-a"], by_uuid(snap)["GPU-b"]
    assert a.power_watts is None and a.utilization == 0.1 and a.temperature_celsius == 35.0
    assert b.power_watts == 70.0
    assert [(e.source, e.detail.split(":")[0]) for e in snap.errors] == [("nvml_power", "GPU-a")]


def test_a_device_whose_handle_fails_is_skipped_not_fatal():
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b", fail={"handle"}), FakeGpu("GPU-c")]
    snap = FakeNvmlSource(gpus).sample()
    assert snap.ok and set(by_uuid(snap)) == {"GPU-a", "GPU-c"}
    assert [e.source for e in snap.errors] == ["nvml_device"]


def test_not_supported_is_neither_an_error_nor_retried():
    source = FakeNvmlSource([FakeGpu("GPU-a", unsupported={"power", "energy"})])
    for _ in range(3):
        snap = source.sample()
        assert snap.errors == ()
        assert by_uuid(snap)["GPU-a"].power_watts is None
    assert source.library.calls["power"] == 1 and source.library.calls["energy"] == 1


def test_idle_processes_read_zero_when_nvml_reports_not_found():
    gpu = FakeGpu("GPU-a", processes=[FakeProcess(1, sm_percent=0), FakeProcess(2, sm_percent=0)])
    snap = FakeNvmlSource([gpu]).sample()
    assert snap.errors == ()
    assert [(p.pid, p.sm_utilization) for p in by_uuid(snap)["GPU-a"].processes] == [(1, 0.0), (2, 0.0)]


def test_process_utilization_failure_means_unknown_not_zero():
    gpu = FakeGpu("GPU-a", processes=[FakeProcess(1, sm_percent=50)], fail={"process_utilization"})
    snap = FakeNvmlSource([gpu]).sample()
    (p,) = by_uuid(snap)["GPU-a"].processes
    assert p.sm_utilization is None and p.memory_used_bytes == 1 << 30
    assert [e.source for e in snap.errors] == ["nvml_process_utilization"]


def test_process_utilization_asks_only_for_new_samples():
    gpu = FakeGpu("GPU-a", processes=[FakeProcess(7, sm_percent=30)])
    source = FakeNvmlSource([gpu], slow_interval=0)  # every pass reads it
    seen = []
    real = source.library.nvmlDeviceGetProcessUtilization

    def spy(handle, last_seen):
        seen.append(last_seen)
        return real(handle, last_seen)

    source.library.nvmlDeviceGetProcessUtilization = spy
    source.sample()
    source.sample()
    assert seen[0] == 0 and seen[1] > 0  # the second call passes the newest timestamp seen


def test_mig_units_are_their_own_devices_and_processes_are_not_double_counted():
    unit_a = FakeGpu(
        "MIG-a", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", memory_total=40 * 1024**3, processes=[FakeProcess(11)]
    )
    unit_b = FakeGpu("MIG-b", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", memory_total=40 * 1024**3)
    parent = FakeGpu("GPU-p", migs=[unit_a, unit_b], processes=[FakeProcess(11)])
    snap = FakeNvmlSource([parent]).sample()
    assert snap.errors == ()
    devs = by_uuid(snap)
    assert devs["GPU-p"].mig_enabled and devs["GPU-p"].processes == ()
    assert devs["GPU-p"].power_watts == 70.0
    a = devs["MIG-a"]
    assert a.parent_uuid == "GPU-p" and a.index == "0:0" and a.is_mig
    assert a.utilization is None and a.power_watts is None  # not measurable per MIG unit: absent, not 0
    assert [p.pid for p in a.processes] == [11] and a.processes[0].sm_utilization is None
    assert devs["MIG-b"].index == "0:1"


def test_costly_calls_run_only_on_slow_passes_and_their_values_are_carried():
    """Energy, per-process utilization, MIG mode and enumeration cost ~6.8 ms CPU per H100: every 15 s only."""
    clock = [0.0]
    gpu = FakeGpu("GPU-a", utilization=10, processes=[FakeProcess(7, sm_percent=40)])
    source = FakeNvmlSource([gpu], clock=lambda: clock[0])
    first = by_uuid(source.sample())["GPU-a"]
    assert first.energy_joules == 1000.0 and first.processes[0].sm_utilization == 0.4
    gpu.utilization, gpu.energy_mj, gpu.processes[0].sm_percent = 90, 2_000_000, 80
    for t in (1.0, 5.0, 14.9):
        clock[0] = t
        d = by_uuid(source.sample())["GPU-a"]
        assert d.utilization == 0.9  # fresh every pass: active GPU-seconds integrate it
        assert d.energy_joules == 1000.0 and d.processes[0].sm_utilization == 0.4  # carried
    calls = source.library.calls
    assert (calls["energy"], calls["process_utilization"], calls["mig"]) == (1, 1, 1)
    assert calls["utilization"] == 4 and calls["handle"] == 1
    clock[0] = 15.0
    d = by_uuid(source.sample())["GPU-a"]
    assert d.energy_joules == 2000.0 and d.processes[0].sm_utilization == 0.8
    assert (calls["energy"], calls["handle"]) == (2, 2)


def test_a_process_that_starts_between_slow_reads_has_unknown_sm_use_until_the_next():
    clock = [0.0]
    gpu = FakeGpu("GPU-a", processes=[FakeProcess(7, sm_percent=40)])
    source = FakeNvmlSource([gpu], clock=lambda: clock[0])
    source.sample()
    gpu.processes.append(FakeProcess(8, sm_percent=60))
    clock[0] = 2.0
    procs = {p.pid: p for p in by_uuid(source.sample())["GPU-a"].processes}
    assert procs[7].sm_utilization == 0.4 and procs[8].sm_utilization is None  # not 0: nobody measured it yet
    assert procs[8].memory_used_bytes == 1 << 30  # the process list itself is fresh
    clock[0] = 15.0
    procs = {p.pid: p for p in by_uuid(source.sample())["GPU-a"].processes}
    assert procs[8].sm_utilization == 0.6


def test_a_lost_gpu_makes_the_next_pass_enumerate_again():
    clock = [0.0]
    gpu = FakeGpu("GPU-a")
    source = FakeNvmlSource([gpu], clock=lambda: clock[0])
    source.sample()
    real = source.library.nvmlDeviceGetUtilizationRates

    def lost(h):
        raise FakeNvmlError(15)

    source.library.nvmlDeviceGetUtilizationRates = lost
    clock[0] = 1.0
    snap = source.sample()
    assert [e.source for e in snap.errors] == ["nvml_utilization"]
    source.library.nvmlDeviceGetUtilizationRates = real
    clock[0] = 2.0
    assert by_uuid(source.sample())["GPU-a"].utilization == 0.0
    assert source.library.calls["handle"] == 2  # enumerated again before the slow interval ran out


def test_init_failure_is_reported_and_retried_later():
    clock = [0.0]
    source = FakeNvmlSource([FakeGpu("GPU-a")], fail_init=12)
    source._clock = lambda: clock[0]
    source._retry = 30.0
    snap = source.sample()
    assert not snap.ok and [e.source for e in snap.errors] == ["nvml_init"]
    assert not source.sample().ok and source.library.calls["init"] == 1  # no retry within 30 s
    source.library.fail_init = None
    clock[0] = 31.0
    assert source.sample().ok and source.library.calls["init"] == 2


def test_device_count_failure_fails_only_this_pass():
    source = FakeNvmlSource([FakeGpu("GPU-a")])

    def broken():
        raise FakeNvmlError(15)  # GPU is lost

    source.library.nvmlDeviceGetCount = broken
    snap = source.sample()
    assert not snap.ok and snap.errors[0].source == "nvml_device"


def test_real_binding_without_a_driver_fails_gracefully():
    """This machine has nvidia-ml-py but no NVIDIA driver: no exception, an nvml_init error."""
    source = PynvmlSource()
    snap = source.sample()
    assert not snap.ok and snap.devices == ()
    assert snap.errors[0].source == "nvml_init"
    source.close()


def test_constants_match_pynvml():
    import pynvml

    from gpuhub.host import nvml

    for name in (
        "NVML_SUCCESS",
        "NVML_ERROR_UNINITIALIZED",
        "NVML_ERROR_NOT_SUPPORTED",
        "NVML_ERROR_NOT_FOUND",
        "NVML_ERROR_GPU_IS_LOST",
        "NVML_TEMPERATURE_GPU",
        "NVML_DEVICE_MIG_ENABLE",
    ):
        assert getattr(nvml, name) == getattr(pynvml, name), name
