"""The GPU exporter's collector: fake NVML + fake Docker + fixture /proc, read with get_sample_value."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import GpuCollector, GpuSampler, build_gpu_exporter
from exporters.testing import FakeDocker, FakeGpu, FakeNvmlSource, FakeProcess, gpuhub_labels, make_proc_tree
from tests.exporters.helpers import make_site

ALICE_CID = "a" * 64
BOB_CID = "b" * 64


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def world(tmp_path, site):
    """Two GPUs held by alice and bob (containers with gpuhub labels), one free; real sampling code."""
    gpus = [
        FakeGpu(
            "GPU-fake-0",
            utilization=50,
            memory_used=8 * 1024**3,
            processes=[FakeProcess(100, used_memory=6 * 1024**3, sm_percent=45, mem_percent=12)],
        ),
        FakeGpu("GPU-fake-1", utilization=0, processes=[FakeProcess(200, used_memory=1024**3)]),
        FakeGpu("GPU-fake-2", name="NVIDIA A100-SXM4-80GB"),
    ]
    docker = FakeDocker()
    docker.add(ALICE_CID, gpuhub_labels("alice", "gist-ai", ["GPU-fake-0"]), name="/jupyter-alice")
    docker.add(BOB_CID, gpuhub_labels("bob", "gist-ai", ["GPU-fake-1"], server="big"), name="/jupyter-bob-big")
    proc = make_proc_tree(tmp_path / "proc", {100: f"0::/docker/{ALICE_CID}\n", 200: f"0::/docker/{BOB_CID}\n"})
    mono = Clock()
    registry, sampler = build_gpu_exporter(
        site,
        docker,
        FakeNvmlSource(gpus),
        registry=CollectorRegistry(),
        proc_root=str(proc),
        monotonic=mono,
        clock=Clock(1.8e9),
    )
    return registry, sampler, gpus, docker, mono


def value(registry, metric, **labels):
    return registry.get_sample_value(metric, labels)


def test_device_series(world):
    registry, sampler, *_ = world
    sampler.sample_once()
    assert value(registry, "gpuhub_gpu_utilization_ratio", uuid="GPU-fake-0") == 0.5
    assert value(registry, "gpuhub_gpu_utilization_ratio", uuid="GPU-fake-1") == 0.0
    assert value(registry, "gpuhub_gpu_memory_used_bytes", uuid="GPU-fake-0") == 8 * 1024**3
    assert value(registry, "gpuhub_gpu_memory_total_bytes", uuid="GPU-fake-0") == 80 * 1024**3
    assert value(registry, "gpuhub_gpu_power_watts", uuid="GPU-fake-0") == 70.0
    assert value(registry, "gpuhub_gpu_energy_joules_total", uuid="GPU-fake-0") == 1000.0
    assert value(registry, "gpuhub_gpu_temperature_celsius", uuid="GPU-fake-0") == 35.0
    # model comes from the site inventory for known UUIDs
    assert (
        value(
            registry,
            "gpuhub_gpu_info",
            uuid="GPU-fake-2",
            model="A100",
            name="NVIDIA A100-SXM4-80GB",
            index="2",
            parent_uuid="",
        )
        == 1
    )


def test_process_series_carry_the_container_labels(world):
    registry, sampler, *_ = world
    sampler.sample_once()
    alice = dict(uuid="GPU-fake-0", pid="100", user="alice", org="gist-ai", server="")
    bob = dict(uuid="GPU-fake-1", pid="200", user="bob", org="gist-ai", server="big")
    assert value(registry, "gpuhub_gpu_process_sm_utilization_ratio", **alice) == 0.45
    assert value(registry, "gpuhub_gpu_process_memory_utilization_ratio", **alice) == 0.12
    assert value(registry, "gpuhub_gpu_process_memory_used_bytes", **alice) == 6 * 1024**3
    assert value(registry, "gpuhub_gpu_process_sm_utilization_ratio", **bob) == 0.0


def test_holders_and_free_devices(world):
    registry, sampler, *_ = world
    sampler.sample_once()
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="GPU-fake-0", model="H100", org="gist-ai", user="alice", server="")
        == 1
    )
    assert (
        value(
            registry, "gpuhub_gpu_allocated", uuid="GPU-fake-1", model="H100", org="gist-ai", user="bob", server="big"
        )
        == 1
    )
    assert value(registry, "gpuhub_gpu_unallocated", uuid="GPU-fake-2", model="A100") == 1
    assert value(registry, "gpuhub_gpu_unallocated", uuid="GPU-fake-0", model="H100") is None


def test_gpu_seconds_accumulate_with_the_injected_clock(world):
    registry, sampler, gpus, docker, mono = world
    sampler.sample_once()  # first pass: no elapsed time yet
    for _ in range(10):
        mono.t += 1.0
        sampler.sample_once()
    key = dict(org="gist-ai", model="H100")
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", **key) == pytest.approx(20.0)  # 2 GPUs x 10 s
    assert value(registry, "gpuhub_gpu_active_seconds_total", **key) == pytest.approx(5.0)  # 50 % + 0 %
    assert value(registry, "gpuhub_gpu_idle_allocated_seconds_total", **key) == pytest.approx(10.0)  # bob's idle GPU
    # pre-created so rate() sees zeros for every org and model
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", org="cnuh-radiology", model="A100") == 0
    # bob stops; the listing due at this pass drops his allocation (each step is charged to the
    # holders seen at its end, with a resolution of containers_interval)
    docker.remove(BOB_CID)
    mono.t += 5.0
    sampler.sample_once()
    mono.t += 5.0
    sampler.sample_once()
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", **key) == pytest.approx(20.0 + 5.0 + 5.0)
    assert value(registry, "gpuhub_gpu_unallocated", uuid="GPU-fake-1", model="H100") == 1


def test_a_long_stall_is_capped(world):
    registry, sampler, gpus, docker, mono = world
    sampler.sample_once()
    mono.t += 3600
    sampler.sample_once()
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", org="gist-ai", model="H100") == 2 * 60.0


def test_one_failing_device_does_not_fail_the_scrape(world):
    registry, sampler, gpus, *_ = world
    gpus[1].fail = {"handle"}
    gpus[2].fail = {"power", "temperature"}
    sampler.sample_once()
    text = generate_latest(registry).decode()  # the whole scrape renders
    assert "gpuhub_gpu_utilization_ratio" in text
    assert value(registry, "gpuhub_gpu_utilization_ratio", uuid="GPU-fake-0") == 0.5
    assert value(registry, "gpuhub_gpu_utilization_ratio", uuid="GPU-fake-1") is None
    assert value(registry, "gpuhub_gpu_power_watts", uuid="GPU-fake-2") is None
    assert value(registry, "gpuhub_gpu_memory_used_bytes", uuid="GPU-fake-2") == 0
    errors = lambda src: value(registry, "gpuhub_exporter_errors_total", exporter="gpu", source=src)  # noqa: E731
    assert (errors("nvml_device"), errors("nvml_power"), errors("nvml_temperature")) == (1, 1, 1)
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 1  # NVML answered; one device did not


def test_nvml_down_still_serves_inventory_and_holders(site):
    docker = FakeDocker()
    docker.add(ALICE_CID, gpuhub_labels("alice", "gist-ai", ["GPU-fake-0"]))
    registry, sampler = build_gpu_exporter(
        site, docker, FakeNvmlSource([FakeGpu("GPU-fake-0")], fail_init=9), registry=CollectorRegistry()
    )
    sampler.sample_once()
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 0
    assert value(registry, "gpuhub_exporter_errors_total", exporter="gpu", source="nvml_init") == 1
    assert value(registry, "gpuhub_gpu_info", uuid="GPU-fake-1", model="H100", name="", index="", parent_uuid="") == 1
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="GPU-fake-0", model="H100", org="gist-ai", user="alice", server="")
        == 1
    )
    assert value(registry, "gpuhub_gpu_utilization_ratio", uuid="GPU-fake-0") is None


def test_runtime_none_serves_inventory_and_allocations_without_invented_utilization(site):
    assert site.gpus.runtime == "none"
    docker = FakeDocker()
    docker.add(ALICE_CID, gpuhub_labels("alice", "gist-ai", ["GPU-fake-2"], model="A100"))
    registry, sampler = build_gpu_exporter(site, docker, registry=CollectorRegistry())
    assert sampler.source is None  # runtime none: NVML is not even loaded
    sampler.sample_once()
    text = generate_latest(registry).decode()
    for absent in ("utilization", "power", "temperature", "energy", "process", "active_seconds", "idle_allocated"):
        assert f"gpuhub_gpu_{absent}" not in text, absent
    assert value(registry, "gpuhub_gpu_info", uuid="GPU-fake-0", model="H100", name="", index="", parent_uuid="") == 1
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="GPU-fake-2", model="A100", org="gist-ai", user="alice", server="")
        == 1
    )
    assert value(registry, "gpuhub_gpu_unallocated", uuid="GPU-fake-0", model="H100") == 1
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 1


def test_docker_outage_keeps_the_last_holders_and_reports_down(world):
    registry, sampler, gpus, docker, mono = world
    sampler.sample_once()
    docker.fail = True
    mono.t += 10
    sampler.sample_once()
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 0
    assert value(registry, "gpuhub_exporter_errors_total", exporter="gpu", source="docker") == 1
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="GPU-fake-0", model="H100", org="gist-ai", user="alice", server="")
        == 1
    )
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", org="gist-ai", model="H100") == 20.0


def test_docker_factory_is_retried_until_the_daemon_answers(site):
    attempts = []
    docker = FakeDocker()
    docker.add(ALICE_CID, gpuhub_labels("alice", "gist-ai", ["GPU-fake-0"]))

    def factory():
        attempts.append(1)
        if len(attempts) < 2:
            raise ConnectionError("no daemon yet")
        return docker

    mono = Clock()
    registry, sampler = build_gpu_exporter(site, docker_factory=factory, registry=CollectorRegistry(), monotonic=mono)
    sampler.sample_once()
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 0
    mono.t += 5
    sampler.sample_once()
    assert value(registry, "gpuhub_exporter_up", exporter="gpu") == 1
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="GPU-fake-0", model="H100", org="gist-ai", user="alice", server="")
        == 1
    )


def test_mig_unit_allocation_counts_as_its_memory_share(tmp_path):
    site = make_site(tmp_path, gpus={"runtime": "nvidia", "inventory": "nvml", "models": {"H100": {"weight": 1.0}}})
    units = [FakeGpu(f"MIG-{i}", memory_total=20 * 1024**3) for i in range(4)]
    docker = FakeDocker()
    docker.add(ALICE_CID, gpuhub_labels("alice", "gist-ai", ["MIG-1"]))
    mono = Clock()
    registry, sampler = build_gpu_exporter(
        site, docker, FakeNvmlSource([FakeGpu("GPU-p", migs=units)]), registry=CollectorRegistry(), monotonic=mono
    )
    sampler.sample_once()
    mono.t += 10
    sampler.sample_once()
    model = "NVIDIA H100 80GB HBM3"  # not in the site inventory: the NVML name
    assert (
        value(registry, "gpuhub_gpu_allocated", uuid="MIG-1", model="H100", org="gist-ai", user="alice", server="") == 1
    )
    assert value(registry, "gpuhub_gpu_allocated_seconds_total", org="gist-ai", model="H100") == pytest.approx(2.5)
    assert value(registry, "gpuhub_gpu_active_seconds_total", org="gist-ai", model="H100") == 0  # unknown on MIG
    assert value(registry, "gpuhub_gpu_unallocated", uuid="MIG-0", model=model) == 1
    assert value(registry, "gpuhub_gpu_unallocated", uuid="GPU-p", model=model) is None  # the parent is not allocatable


def test_background_thread_samples_and_stops(site):
    source = FakeNvmlSource([FakeGpu("GPU-fake-0", utilization=30)])
    sampler = GpuSampler(site, source, interval=0.02)
    sampler.start()
    deadline = time.monotonic() + 5
    while sampler.state.taken_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    sampler.stop()
    assert sampler.state.devices[0].utilization == 0.3
    assert source.library.calls["shutdown"] == 1


def test_each_collect_yields_fresh_families(world):
    registry, sampler, *_ = world
    sampler.sample_once()
    c = GpuCollector(sampler)
    first, second = list(c.collect()), list(c.collect())
    assert [m.name for m in first] == [m.name for m in second]
    assert all(a is not b for a, b in zip(first, second, strict=False))
