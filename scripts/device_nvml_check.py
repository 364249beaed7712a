#!/usr/bin/env python3
"""Device check for gpuhub's GPU exporter on a lent NVIDIA machine (no Docker needed).

    python scripts/device_nvml_check.py [--promtool PATH] [--seconds 30]

Starts a bf16 matmul loop on GPU 0 in a subprocess (PyTorch if installed, else CuPy in fp16, else no
load: idle sampling only), samples NVML through gpuhub.host.nvml.PynvmlSource and the GPU collector
about once a second, and prints PASS/FAIL/SKIP per check, the full scrape text, and promtool's
verdict on it when promtool is available. Needs nvidia-ml-py and prometheus-client only.

Exit status: 0 every check passed (SKIPs allowed), 1 a check failed, 2 NVML is unavailable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
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

# The real exporter process reads a site config like any GPU host's: NVML inventory, runtime nvidia.
DEVICE_SITE = """\
timezone: UTC
hub: {state_dir: %s}
gpus: {runtime: nvidia, inventory: nvml}
images:
  python: {image: "gpuhub/base-notebook:latest"}
organizations: {}
"""


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
        proc = subprocess.Popen(
            [sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line = proc.stdout.readline()  # blocks until READY or exit (CUDA init + first matmul)
        if line.startswith("READY"):
            print(f"worker pid {proc.pid}: {line.strip()}", flush=True)
            return proc, module
        proc.wait(10)
        print(f"note: the {module} worker did not start: {proc.stderr.read().strip()[-2000:]}", flush=True)
    return None, "none"


class TimedNvml:
    """The pynvml module with each ``nvml*`` call timed (wall and this thread's CPU), to see what a pass costs."""

    def __init__(self, module):
        self._module = module
        self.stats: dict[str, list[float]] = {}

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not (name.startswith("nvml") and callable(attr)):
            return attr

        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return attr(*args, **kwargs)
            finally:
                st = self.stats.setdefault(name, [0, 0.0, 0.0])
                st[0] += 1
                st[1] += time.perf_counter() - wall
                st[2] += time.thread_time() - cpu

        return timed

    def report(self) -> None:
        print("      NVML calls (all passes): calls, mean wall ms, mean CPU ms", flush=True)
        for name, (n, wall, cpu) in sorted(self.stats.items(), key=lambda kv: -kv[1][1]):
            print(f"        {name:42} {n:4d} {wall / n * 1e3:8.3f} {cpu / n * 1e3:8.3f}", flush=True)


def energy_read_count(timed) -> int:
    return int(timed.stats.get("nvmlDeviceGetTotalEnergyConsumption", [0])[0]) if isinstance(timed, TimedNvml) else 0


def report_sampling_cost(samples: list, units: int) -> None:
    """CPU per pass, fast and slow apart, and the share of a core at the exporter's defaults (1 s, 15 s)."""

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else None

    fast = [c for *_, c, slow in samples if not slow]
    slow = [c for *_, c, slow in samples if slow]
    walls = sorted(w for _, w, _, _ in samples)
    print(
        f"sampling pass ({len(samples)}, {units} GPU/MIG units): wall median {median(walls) * 1e3:.2f} ms, "
        f"max {walls[-1] * 1e3:.2f} ms",
        flush=True,
    )
    if fast and slow:
        f, sl = median(fast), median(slow)
        share = (f + (sl - f) / 15.0) * 100
        print(
            f"      CPU per pass: fast {f * 1e3:.2f} ms ({len(fast)}), slow {sl * 1e3:.2f} ms ({len(slow)}); "
            f"at one pass a second and a slow pass every 15 s: {share:.3f} % of a core "
            f"({share / max(units, 1):.3f} % per unit)",
            flush=True,
        )
    else:
        print(f"      CPU per pass: median {median(fast or slow) * 1e3:.2f} ms", flush=True)


def smi_memory_used(index: str) -> int | None:
    """nvidia-smi's memory.used in bytes (MiB resolution), or None without nvidia-smi."""
    if not shutil.which("nvidia-smi"):
        return None
    res = subprocess.run(
        ["nvidia-smi", "-i", index, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    try:
        return int(res.stdout.strip()) * 1024**2
    except ValueError:
        return None


def promtool_verdict(promtool: str | None, text: str) -> tuple[str | bool, str]:
    if not (promtool and Path(promtool).exists()):
        return "SKIP", "promtool not found; pass --promtool PATH"
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    out = (res.stdout + res.stderr).strip()
    return res.returncode == 0 and not out, out or "clean"


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def metric_value(text: str, prefix: str) -> float | None:
    line = next((ln for ln in text.splitlines() if ln.startswith(prefix)), None)
    return None if line is None else float(line.rsplit(" ", 1)[1])


def check_exporter_process(uuid: str, promtool: str | None) -> None:
    """Run ``python -m exporters gpu`` (background sampler, HTTP server) and scrape it twice."""
    state = Path(tempfile.mkdtemp(prefix="gpuhub-device-"))
    site = state / "site.yaml"
    site.write_text(DEVICE_SITE % state)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporters",
            "gpu",
            "--site",
            str(site),
            "--slow-interval",
            "2",
            "--listen",
            f"127.0.0.1:{port}",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    texts: list[str] = []
    try:
        deadline = time.monotonic() + 20
        while not texts and time.monotonic() < deadline and proc.poll() is None:
            try:
                texts.append(scrape(url))
            except OSError:
                time.sleep(0.2)
        if texts:
            time.sleep(3.0)  # three background sampling passes, one or two of them slow (energy read)
            texts.append(scrape(url))
    finally:
        proc.terminate()
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "killed after 15 s"
        log_tail = proc.stdout.read().strip()[-3000:]
    check(
        "exporter process served /metrics over HTTP",
        len(texts) == 2,
        f"{url}, {len(texts)} scrapes, exit {rc} on SIGTERM" + (f"; log: {log_tail}" if log_tail else ""),
    )
    if len(texts) < 2:
        return
    a, b = texts
    util = metric_value(b, f'gpuhub_gpu_utilization_ratio{{uuid="{uuid}"}}')
    e1 = metric_value(a, f'gpuhub_gpu_energy_joules_total{{uuid="{uuid}"}}')
    e2 = metric_value(b, f'gpuhub_gpu_energy_joules_total{{uuid="{uuid}"}}')
    check("HTTP scrape: utilization > 0.5 under load", util is not None and util > 0.5, f"{util}")
    check(
        "HTTP scrape: energy counter increases between scrapes", None not in (e1, e2) and e2 > e1, f"{e1} J -> {e2} J"
    )
    status, detail = promtool_verdict(promtool, b)
    check("HTTP scrape: promtool check metrics", status, detail)
    print("      self metrics over HTTP (where no Docker engine runs, attribution reports its docker error):")
    for ln in b.splitlines():
        if ln.startswith("gpuhub_exporter_") and (not ln.endswith(" 0.0") or "_up" in ln):
            print("        " + ln, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--promtool", default=shutil.which("promtool"), help="path to promtool (default: from PATH)")
    ap.add_argument(
        "--seconds",
        type=float,
        default=30.0,
        help="how long the matmul loop runs (sampling and the exporter process need ~22 s)",
    )
    ap.add_argument(
        "--slow-interval",
        type=float,
        default=3.0,
        help="seconds between NVML's costly reads (the exporter's default is 15; shorter here so "
        "the short check sees several energy and per-process readings)",
    )
    args = ap.parse_args(argv)

    try:
        from prometheus_client import CollectorRegistry, generate_latest

        from exporters.attribution import Attributor
        from exporters.gpu import GpuCollector, GpuSampler
        from gpuhub.host.nvml import PynvmlSource
    except ImportError as e:
        print(f"FAIL  imports: {e} (needs prometheus-client and the repository's exporters/)")
        return 2

    try:
        import pynvml

        timed = TimedNvml(pynvml)
    except ImportError:
        timed = None  # the source says "nvidia-ml-py is not installed"
    source = PynvmlSource(nvml=timed, retry_init_seconds=0, slow_interval=args.slow_interval)
    first = source.sample()
    if not first.ok:
        detail = "; ".join(f"{e.source}: {e.detail}" for e in first.errors) or "no devices"
        print(f"FAIL  NVML unavailable: {detail}")
        print("SUMMARY: NVML unavailable; nothing else was checked")
        return 2
    check(
        "NVML answers",
        True,
        f"driver {first.driver_version}, " + ", ".join(f"{d.index}={d.name} {d.uuid}" for d in first.devices),
    )
    for d in first.devices:
        print(
            f"      idle {d.uuid}: util={d.utilization} mem={d.memory_used_bytes}/{d.memory_total_bytes} "
            f"power={d.power_watts} W energy={d.energy_joules} J temp={d.temperature_celsius} C "
            f"mig={d.mig_enabled}",
            flush=True,
        )

    worker, kind = start_worker(args.seconds)
    site = SimpleNamespace(
        gpus=SimpleNamespace(devices=(), models={}, runtime="nvidia", inventory="nvml"), organizations={}
    )
    sampler = GpuSampler(site, source, None, interval=1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler))

    samples = []
    smi = None  # (state, nvidia-smi's memory.used) read right after one pass, under load
    passes = max(3, int(min(args.seconds - 4, 12)))
    time.sleep(2.0)  # let utilization windows fill with the load
    cg = Path(f"/proc/{worker.pid}/cgroup") if worker is not None else None
    worker_cgroup = cg.read_text().strip().replace("\n", "; ") if cg is not None and cg.exists() else "(no worker)"
    for _ in range(passes):
        energy_reads = energy_read_count(timed)
        t, c = time.perf_counter(), time.thread_time()
        state = sampler.sample_once()
        samples.append(
            (state, time.perf_counter() - t, time.thread_time() - c, energy_read_count(timed) > energy_reads)
        )
        if smi is None and worker is not None:
            smi = (state, smi_memory_used(next((d.index for d in state.devices if d.index.isdigit()), "0")))
        time.sleep(1.0)
    text = generate_latest(registry).decode()

    # pick the device the worker ran on (its PID), else index 0
    wpid = worker.pid if worker is not None else None
    uuid = next((p.uuid for s, *_ in samples for p in s.processes if p.process.pid == wpid), None)
    uuid = uuid or next((d.uuid for d in first.devices if d.index == "0"), first.devices[0].uuid)
    if worker is not None and worker.poll() is None:
        check_exporter_process(uuid, args.promtool)  # while the load still runs
    else:
        check("exporter process served /metrics over HTTP", "SKIP", "the load ended before this check")
    if worker is not None:
        worker.wait(args.seconds + 30)
    series = [next((d for d in s.devices if d.uuid == uuid), None) for s, *_ in samples]
    series = [d for d in series if d is not None]
    utils = [d.utilization for d in series if d.utilization is not None]
    energies = [d.energy_joules for d in series if d.energy_joules is not None]
    mem = [d.memory_used_bytes for d in series if d.memory_used_bytes is not None]
    print(f"device {uuid}: utilization {utils}", flush=True)
    report_sampling_cost(samples, len(first.devices))
    if isinstance(timed, TimedNvml):
        timed.report()

    loaded = worker is not None
    if loaded:
        check("utilization > 0.5 under load", bool(utils) and max(utils) > 0.5, f"max {max(utils, default=None)}")
    else:
        check("utilization > 0.5 under load", "SKIP", f"no CUDA workload ({kind}); idle values {utils}")
    check("memory used > 0", bool(mem) and max(mem) > 0, f"max {max(mem, default=0)} bytes")
    if smi is not None and smi[1] is not None:
        ours = next((d.memory_used_bytes for d in smi[0].devices if d.uuid == uuid), None)
        check(
            "memory used agrees with nvidia-smi (within 64 MiB)",
            ours is not None and abs(ours - smi[1]) <= 64 * 1024**2,
            f"ours {ours} B, nvidia-smi {smi[1]} B",
        )
    else:
        check("memory used agrees with nvidia-smi (within 64 MiB)", "SKIP", "no nvidia-smi or no load")
    if len(energies) >= 2:
        check(
            "energy counter increasing",
            energies[-1] > energies[0],
            f"{energies[0]:.1f} J -> {energies[-1]:.1f} J over {len(energies)} samples",
        )
    else:
        check("energy counter increasing", False, "energy not reported")
    if loaded:
        seen = [
            (p.process.sm_utilization, p.process.memory_used_bytes)
            for s, *_ in samples
            for p in s.processes
            if p.process.pid == wpid
        ]
        sm = [x for x, _ in seen if x is not None]
        others = sorted({p.process.pid for s, *_ in samples for p in s.processes} - {wpid})
        check("worker PID listed by NVML", bool(seen), f"pid {wpid}; other pids {others}")
        check("worker PID has SM utilization > 0", bool(sm) and max(sm) > 0, f"max {max(sm, default=None)}")
        errors = []
        w = Attributor(None).workload_of_pid(wpid, errors)
        print(
            f"      attribution of the worker: {w} (no Docker here); errors {errors}; cgroup {worker_cgroup}",
            flush=True,
        )
    else:
        check("worker PID has SM utilization > 0", "SKIP", "no CUDA workload")
    last = samples[-1][0]
    check(
        "exporter up, no NVML errors",
        last.up and not any(v for k, v in last.errors_total.items()),
        ", ".join(f"{k}={v}" for k, v in last.errors_total.items() if v) or "0 errors",
    )
    check(
        "scrape has device series",
        f'gpuhub_gpu_utilization_ratio{{uuid="{uuid}"}}' in text and "gpuhub_gpu_energy_joules_total" in text,
    )

    print("----- scrape -----")
    print(text, end="")
    print("----- end of scrape -----")
    status, detail = promtool_verdict(args.promtool, text)
    check("promtool check metrics", status, detail)
    source.close()
    failed = [n for s, n, _ in RESULTS if s == "FAIL"]
    print("SUMMARY:", "all checks passed" if not failed else "FAILED: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
