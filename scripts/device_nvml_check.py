#!/usr/bin/env python3
"""Device check for gpuhub's GPU exporter on a lent NVIDIA machine (no Docker needed).

    python scripts/device_nvml_check.py [--promtool PATH] [--seconds 20]

Starts a bf16 matmul loop on GPU 0 in a subprocess (PyTorch if installed, else CuPy in fp16, else no
load: idle sampling only), samples NVML through exporters.nvml.PynvmlSource and the GPU collector
about once a second, and prints PASS/FAIL/SKIP per check, the full scrape text, and promtool's
verdict on it when promtool is available. Needs nvidia-ml-py and prometheus-client only.

Exit status: 0 every check passed (SKIPs allowed), 1 a check failed, 2 NVML is unavailable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TORCH_WORKER = r"""
import sys, time, torch
if not torch.cuda.is_available():
    sys.exit("torch is installed but sees no CUDA device")
a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
c = a @ b
torch.cuda.synchronize()
print("READY torch", torch.__version__, torch.cuda.get_device_name(0), flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
"""

CUPY_WORKER = r"""
import sys, time, cupy
a = cupy.random.rand(8192, 8192).astype(cupy.float16)
b = cupy.random.rand(8192, 8192).astype(cupy.float16)
c = a @ b
cupy.cuda.Device(0).synchronize()
print("READY cupy", cupy.__version__, flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    for _ in range(20):
        c = a @ b
    cupy.cuda.Device(0).synchronize()
"""

RESULTS: list[tuple[str, str, str]] = []


def check(name: str, status: str | bool, detail: str = "") -> None:
    if isinstance(status, bool):
        status = "PASS" if status else "FAIL"
    RESULTS.append((status, name, detail))
    print(f"{status:4}  {name}" + (f"  ({detail})" if detail else ""), flush=True)


def start_worker(seconds: float) -> tuple[subprocess.Popen | None, str]:
    for module, code in (("torch", TORCH_WORKER), ("cupy", CUPY_WORKER)):
        if importlib.util.find_spec(module) is None:
            print(f"note: {module} is not installed", flush=True)
            continue
        proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()  # blocks until READY or exit (CUDA init + first matmul)
        if line.startswith("READY"):
            print(f"worker pid {proc.pid}: {line.strip()}", flush=True)
            return proc, module
        proc.wait(10)
        print(f"note: the {module} worker did not start: {proc.stderr.read().strip()[-2000:]}", flush=True)
    return None, "none"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--promtool", default=shutil.which("promtool"), help="path to promtool (default: from PATH)")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long the matmul loop runs")
    args = ap.parse_args(argv)

    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from exporters.attribution import Attributor
        from exporters.gpu import GpuCollector, GpuSampler
        from exporters.nvml import PynvmlSource
    except ImportError as e:
        print(f"FAIL  imports: {e} (needs prometheus-client and the repository's exporters/)")
        return 2

    source = PynvmlSource(retry_init_seconds=0)
    first = source.sample()
    if not first.ok:
        detail = "; ".join(f"{e.source}: {e.detail}" for e in first.errors) or "no devices"
        print(f"FAIL  NVML unavailable: {detail}")
        print("SUMMARY: NVML unavailable; nothing else was checked")
        return 2
    check("NVML answers", True, f"driver {first.driver_version}, "
          + ", ".join(f"{d.index}={d.name} {d.uuid}" for d in first.devices))
    for d in first.devices:
        print(f"      idle {d.uuid}: util={d.utilization} mem={d.memory_used_bytes}/{d.memory_total_bytes} "
              f"power={d.power_watts} W energy={d.energy_joules} J temp={d.temperature_celsius} C "
              f"mig={d.mig_enabled}", flush=True)

    worker, kind = start_worker(args.seconds)
    site = SimpleNamespace(gpus=SimpleNamespace(devices=(), models={}, runtime="nvidia", inventory="nvml"),
                           organizations={})
    sampler = GpuSampler(site, source, None, interval=1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler))

    samples = []
    passes = max(3, int(min(args.seconds - 4, 12)))
    time.sleep(2.0)  # let utilization windows fill with the load
    for _ in range(passes):
        t = time.perf_counter()
        state = sampler.sample_once()
        samples.append((state, time.perf_counter() - t))
        time.sleep(1.0)
    text = generate_latest(registry).decode()
    if worker is not None:
        worker.wait(args.seconds + 30)

    # pick the device the worker ran on (its PID), else index 0
    wpid = worker.pid if worker is not None else None
    uuid = next((p.uuid for s, _ in samples for p in s.processes if p.process.pid == wpid), None)
    uuid = uuid or next((d.uuid for d in first.devices if d.index == "0"), first.devices[0].uuid)
    series = [next((d for d in s.devices if d.uuid == uuid), None) for s, _ in samples]
    series = [d for d in series if d is not None]
    utils = [d.utilization for d in series if d.utilization is not None]
    energies = [d.energy_joules for d in series if d.energy_joules is not None]
    mem = [d.memory_used_bytes for d in series if d.memory_used_bytes is not None]
    print(f"device {uuid}: utilization {utils}", flush=True)
    durations = sorted(d for _, d in samples)
    print(f"sampling pass: median {durations[len(durations) // 2] * 1e3:.2f} ms, max {durations[-1] * 1e3:.2f} ms",
          flush=True)

    loaded = worker is not None
    if loaded:
        check("utilization > 0.5 under load", bool(utils) and max(utils) > 0.5, f"max {max(utils, default=None)}")
    else:
        check("utilization > 0.5 under load", "SKIP", f"no CUDA workload ({kind}); idle values {utils}")
    check("memory used > 0", bool(mem) and max(mem) > 0, f"max {max(mem, default=0)} bytes")
    if len(energies) >= 2:
        check("energy counter increasing", energies[-1] > energies[0],
              f"{energies[0]:.1f} J -> {energies[-1]:.1f} J over {len(energies)} samples")
    else:
        check("energy counter increasing", False, "energy not reported")
    if loaded:
        seen = [(p.process.sm_utilization, p.process.memory_used_bytes) for s, _ in samples for p in s.processes
                if p.process.pid == wpid]
        sm = [x for x, _ in seen if x is not None]
        others = sorted({p.process.pid for s, _ in samples for p in s.processes} - {wpid})
        check("worker PID listed by NVML", bool(seen), f"pid {wpid}; other pids {others}")
        check("worker PID has SM utilization > 0", bool(sm) and max(sm) > 0, f"max {max(sm, default=None)}")
        errors = []
        w = Attributor(None).workload_of_pid(wpid, errors)
        cg = Path(f"/proc/{wpid}/cgroup")
        print(f"      attribution of the worker: {w} (no Docker here); errors {errors}; "
              f"cgroup {cg.read_text().strip() if cg.exists() else '(gone)'}", flush=True)
    else:
        check("worker PID has SM utilization > 0", "SKIP", "no CUDA workload")
    last = samples[-1][0]
    check("exporter up, no NVML errors", last.up and not any(v for k, v in last.errors_total.items()),
          ", ".join(f"{k}={v}" for k, v in last.errors_total.items() if v) or "0 errors")
    check("scrape has device series", f'gpuhub_gpu_utilization_ratio{{uuid="{uuid}"}}' in text
          and "gpuhub_gpu_energy_joules_total" in text)

    print("----- scrape -----")
    print(text, end="")
    print("----- end of scrape -----")
    if args.promtool and Path(args.promtool).exists():
        res = subprocess.run([args.promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        check("promtool check metrics", res.returncode == 0 and not (res.stdout + res.stderr).strip(),
              (res.stdout + res.stderr).strip() or "clean")
    else:
        check("promtool check metrics", "SKIP", "promtool not found; pass --promtool PATH")
    source.close()
    failed = [n for s, n, _ in RESULTS if s == "FAIL"]
    print("SUMMARY:", "all checks passed" if not failed else "FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
