"""scripts/device_nvml_check.py: fails gracefully without NVML; its checks run end to end on fake NVML."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import gpuhub.host.nvml
from exporters.testing import FakeGpu, FakeNvmlSource
from tests.exporters.helpers import ROOT

SCRIPT = ROOT / "scripts" / "device_nvml_check.py"


def test_without_nvml_it_says_so_and_exits_2():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "NVML unavailable" in res.stdout and "Traceback" not in res.stderr


def drawing_source(gpu, mj_per_read: int):
    """FakeNvmlSource over ``gpu`` whose energy counter rises by ``mj_per_read`` at each read (the
    board keeps drawing power); it takes the place of the script's real, timed binding."""

    class Source(FakeNvmlSource):
        def __init__(self, nvml=None, **kw):
            super().__init__([gpu], **kw)
            real = self.library.nvmlDeviceGetTotalEnergyConsumption

            def energy(h):
                h.energy_mj += mj_per_read
                return real(h)

            self.library.nvmlDeviceGetTotalEnergyConsumption = energy

    return Source


def load_script():
    spec = importlib.util.spec_from_file_location("device_nvml_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checks_and_scrape_on_fake_nvml(monkeypatch, capsys, promtool):
    gpu = FakeGpu("GPU-dev-0", utilization=3, memory_used=500 * 1024**2)

    monkeypatch.setattr(gpuhub.host.nvml, "PynvmlSource", drawing_source(gpu, 70_000))
    module = load_script()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)  # no torch, no cupy: idle only
    rc = module.main(["--seconds", "5", "--promtool", promtool])
    out = capsys.readouterr().out
    assert "PASS  NVML answers" in out
    assert "SKIP  utilization > 0.5 under load" in out
    assert "PASS  memory used > 0" in out and "PASS  energy counter increasing" in out
    assert "PASS  promtool check metrics" in out
    assert 'gpuhub_gpu_utilization_ratio{uuid="GPU-dev-0"} 0.03' in out
    assert rc == 0, out


FAKE_PYNVML = '''
"""A pynvml stand-in for the exporter process the device script starts: a busy board."""
import time
from exporters.testing import FakeGpu, FakeNvmlLibrary

_lib = FakeNvmlLibrary([FakeGpu("GPU-dev-0", utilization=97, memory_used=3 << 30)])
for _name in dir(_lib):
    if _name.startswith("nvml"):
        globals()[_name] = getattr(_lib, _name)


def nvmlDeviceGetTotalEnergyConsumption(handle):  # 300 W, in mJ
    return int(time.monotonic() * 300_000)
'''


def test_under_load_the_exporter_process_is_scraped_over_http(monkeypatch, capsys, promtool, tmp_path):
    """The loaded path: the worker's PID and SM use, then `python -m exporters gpu` scraped twice."""
    from exporters.testing import FakeProcess

    gpu = FakeGpu("GPU-dev-0", utilization=97, memory_used=3 << 30)

    (tmp_path / "pynvml.py").write_text(FAKE_PYNVML)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(gpuhub.host.nvml, "PynvmlSource", drawing_source(gpu, 300_000))
    module = load_script()

    def worker(seconds):  # stands in for the matmul loop: a process that NVML lists as busy
        proc = subprocess.Popen(["sleep", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        gpu.processes = [FakeProcess(proc.pid, sm_percent=88)]
        return proc, "fake"

    monkeypatch.setattr(module, "start_worker", worker)
    rc = module.main(["--seconds", "8", "--promtool", promtool])
    out = capsys.readouterr().out
    for name in (
        "utilization > 0.5 under load",
        "worker PID listed by NVML",
        "worker PID has SM utilization > 0",
        "exporter process served /metrics over HTTP",
        "HTTP scrape: utilization > 0.5 under load",
        "HTTP scrape: energy counter increases between scrapes",
        "HTTP scrape: promtool check metrics",
    ):
        assert f"PASS  {name}" in out, out
    assert rc == 0, out
