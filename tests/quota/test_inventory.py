"""inventory: nvml — GPUs and MIG instances from NVML become allocatable units (fake NVML here)."""

from pathlib import Path

import yaml

from exporters.testing import FakeGpu, FakeNvmlSource
from gpuhub.core.site import parse_site
from quota.inventory import devices_from_snapshot, nvml_inventory

ROOT = Path(__file__).resolve().parents[2]


def site(tmp_path, models):
    data = yaml.safe_load((ROOT / "examples/site.yaml").read_text())
    data["gpus"] = {"runtime": "nvidia", "inventory": "nvml", "models": models}
    data.pop("rates", None)
    return parse_site(data, tmp_path / "site.yaml")


def gpus():
    mig = FakeGpu(
        uuid="GPU-b",
        name="NVIDIA H100 80GB HBM3",
        migs=[
            FakeGpu(uuid="MIG-b1", name="NVIDIA H100 80GB HBM3 MIG 1g.10gb", is_mig=True, memory_total=10 * 1024**3),
            FakeGpu(uuid="MIG-b2", name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", is_mig=True, memory_total=40 * 1024**3),
        ],
    )
    return [
        FakeGpu(uuid="GPU-a", name="NVIDIA H100 80GB HBM3"),
        mig,
        FakeGpu(uuid="GPU-c", name="NVIDIA A100-SXM4-40GB"),
    ]


def test_gpus_and_declared_mig_profiles_are_units_with_their_model(tmp_path):
    s = site(tmp_path, {"H100": {"weight": 1.0}, "H100-MIG-1g.10gb": {"weight": 0.14}, "A100": {"weight": 0.6}})
    snap = FakeNvmlSource(gpus()).sample()
    units = {d.uuid: d.model for d in devices_from_snapshot(snap, s)}
    # GPU-b is in MIG mode: only its instances are units; 3g.40gb is not declared, so not allocatable
    assert units == {"GPU-a": "H100", "MIG-b1": "H100-MIG-1g.10gb", "GPU-c": "A100"}
    assert s.weight_of(units["MIG-b1"]) == 0.14


def test_inventory_is_cached_and_survives_an_nvml_outage(tmp_path):
    s = site(tmp_path, {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}})
    source = FakeNvmlSource(gpus()[:1], slow_interval=0)  # as nvml_inventory builds its source
    now = [0.0]
    inv = nvml_inventory(s, source, ttl_seconds=60, clock=lambda: now[0])
    assert [d.uuid for d in inv()] == ["GPU-a"]
    source.gpus.append(FakeGpu(uuid="GPU-c", name="NVIDIA A100-SXM4-40GB"))
    assert [d.uuid for d in inv()] == ["GPU-a"]  # cached
    now[0] = 61
    assert [d.uuid for d in inv()] == ["GPU-a", "GPU-c"]
