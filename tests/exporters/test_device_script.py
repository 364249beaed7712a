"""scripts/device_nvml_check.py: fails gracefully without NVML; its checks run end to end on fake NVML."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import exporters.nvml
from exporters.testing import FakeGpu, FakeNvmlSource
from tests.exporters.helpers import ROOT

SCRIPT = ROOT / "scripts" / "device_nvml_check.py"


def test_without_nvml_it_says_so_and_exits_2():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "NVML unavailable" in res.stdout and "Traceback" not in res.stderr


def test_checks_and_scrape_on_fake_nvml(monkeypatch, capsys, promtool):
    gpu = FakeGpu("GPU-dev-0", utilization=3, memory_used=500 * 1024**2)

    class Source(FakeNvmlSource):
        def __init__(self, **_):
            super().__init__([gpu])
            real = self.library.nvmlDeviceGetTotalEnergyConsumption

            def energy(h):  # the board keeps drawing power
                h.energy_mj += 70_000
                return real(h)

            self.library.nvmlDeviceGetTotalEnergyConsumption = energy

    monkeypatch.setattr(exporters.nvml, "PynvmlSource", Source)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no torch, no cupy: idle only
    spec = importlib.util.spec_from_file_location("device_nvml_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rc = module.main(["--seconds", "5", "--promtool", promtool])
    out = capsys.readouterr().out
    assert "PASS  NVML answers" in out
    assert "SKIP  utilization > 0.5 under load" in out
    assert "PASS  memory used > 0" in out and "PASS  energy counter increasing" in out
    assert "PASS  promtool check metrics" in out
    assert 'gpuhub_gpu_utilization_ratio{uuid="GPU-dev-0"} 0.03' in out
    assert rc == 0, out
