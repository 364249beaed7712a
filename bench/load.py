"""Class-start load (L1): N users log in and start servers within a window, against a real hub and Docker.

    .venv/bin/python bench/load.py [--users 50,100] [--window 60] [--gpu-share 0.2] [--gpus 4] [--timeout 600]

Per run (a fresh hub each): users arrive evenly over ``--window`` seconds; each logs in through the login form
(shared password), asks for a server through the REST API with its own cookie (80 % CPU-only, 20 % one GPU of
``--gpus`` simulated devices, so most GPU requests must be refused), then waits until its server is ready or
refused; ``/hub/home`` is fetched right after the request and again once ready. Printed per run: p50/p95 of
login, spawn-to-ready and /hub/home latency, 5xx count, end states (running / refused with a message / failed),
hub restarts (the hub process changed or died), the hub's CPU-seconds and peak RSS (VmHWM) over the run.
The figures also go to tests/artifacts/reliability.json (L1-<users>) for docs/reliability.md.
Targets (issue 17): 0 hub restarts, 0 5xx, every user running or refused/queued with a message.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stats import percentile as pct  # noqa: E402
from tests.faults.figures import record  # noqa: E402
from tests.harness import HubProcess, default_site  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def load_site(users: list[str], gpu_users: list[str], gpus: int):
    def site_fn(instance, port, state):
        site = default_site(instance, port, state)
        site["gpus"]["devices"] = [{"uuid": f"GPU-sim-h100-{i}", "model": "H100"} for i in range(gpus)]
        site["gpus"]["models"] = {"H100": {"weight": 1.0}}
        site["organizations"] = {
            "class": {"members": gpu_users, "gpu_limit": gpus, "gpu_hours_per_month": 1000, "max_gpus_per_server": 1}
        }
        site["containers"] = {"mem_limit": "512M", "cpu_limit": 1.0, "pids_limit": 256}
        return site

    return site_fn


class HubSampler:
    """CPU-seconds (utime + stime) and peak RSS of the hub process, and whether it was replaced."""

    def __init__(self, pid: int):
        self.pid = pid
        self.cpu0 = self.cpu()

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0


def one_user(hub: HubProcess, user: str, options: dict, delay: float, out: dict, timeout: float) -> None:
    time.sleep(delay)
    res = out[user] = {"state": "failed", "codes": []}
    s = requests.Session()
    t0 = time.perf_counter()
    s.get(f"{hub.url}/hub/login", timeout=60)
    r = s.post(
        f"{hub.url}/hub/login",
        data={
            "username": user,
            "password": hub.password,
            "_xsrf": s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf"),
        },
        timeout=120,
    )
    res["codes"].append(r.status_code)
    res["login_s"] = time.perf_counter() - t0
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf")
    t_spawn = time.perf_counter()
    r = s.post(f"{hub.url}/hub/api/users/{user}/server", json=options, headers={"X-XSRFToken": xsrf}, timeout=120)
    res["codes"].append(r.status_code)
    res["home_s"] = [_home(s, hub, res)]
    if r.status_code >= 400:
        message = (r.json() if r.headers.get("content-type", "").startswith("application/json") else {}).get("message")
        res.update(state="refused" if message else "failed", message=message or r.text[:200])
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = s.get(f"{hub.url}/hub/api/users/{user}", headers={"X-XSRFToken": xsrf}, timeout=60)
        res["codes"].append(m.status_code)
        srv = m.json().get("servers", {}).get("") if m.ok else None
        if srv and srv.get("ready"):
            res.update(state="running", ready_s=time.perf_counter() - t_spawn)
            res["home_s"].append(_home(s, hub, res))
            return
        if m.ok and not srv and not m.json().get("pending"):
            res.update(state="failed", message="server vanished while starting (see the hub log)")
            return
        time.sleep(0.5)
    res["message"] = f"not ready within {timeout} s"


def _home(s: requests.Session, hub: HubProcess, res: dict) -> float:
    t0 = time.perf_counter()
    r = s.get(f"{hub.url}/hub/home", timeout=120)
    res["codes"].append(r.status_code)
    return time.perf_counter() - t0


def run(n: int, window: float, gpu_share: float, gpus: int, timeout: float) -> dict:
    users = [f"l{i:03d}" for i in range(n)]
    gpu_users = users[: round(n * gpu_share)]
    with tempfile.TemporaryDirectory(prefix="gpuhub-load-") as tmp:
        hub = HubProcess(Path(tmp))
        hub.site = load_site(users, gpu_users, gpus)(hub.instance, hub.port, hub.state)
        import yaml

        hub.site_path.write_text(yaml.safe_dump(hub.site))
        try:
            hub.start()
            for u in users:
                hub.ensure_user(u)
            pid = hub.proc.pid
            sampler = HubSampler(pid)
            out: dict = {}
            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                for i, u in enumerate(users):
                    # "queue": false: a GPU ask that cannot be granted is refused at once, not put in line
                    opts = {"image": "python", "gpus": 1 if u in gpu_users else 0, "queue": False}
                    pool.submit(one_user, hub, u, opts, i * window / n, out, timeout)
            wall = time.perf_counter() - t0
            restarts = int(hub.proc.poll() is not None or hub.proc.pid != pid)
            cpu_s = sampler.cpu() - sampler.cpu0 if not restarts else float("nan")
            peak = sampler.peak_rss_mb() if not restarts else float("nan")
        finally:
            hub.cleanup()
    codes = [c for r in out.values() for c in r["codes"]]
    states = {k: sum(1 for r in out.values() if r["state"] == k) for k in ("running", "refused", "failed")}
    fig = {
        "users": n,
        "window_s": window,
        "gpu_users": len(gpu_users),
        "gpus": gpus,
        "wall_s": round(wall, 1),
        "login_p50_s": pct([r["login_s"] for r in out.values() if "login_s" in r], 0.5),
        "login_p95_s": pct([r["login_s"] for r in out.values() if "login_s" in r], 0.95),
        "ready_p50_s": pct([r["ready_s"] for r in out.values() if "ready_s" in r], 0.5),
        "ready_p95_s": pct([r["ready_s"] for r in out.values() if "ready_s" in r], 0.95),
        "home_p50_s": pct([h for r in out.values() for h in r.get("home_s", [])], 0.5),
        "home_p95_s": pct([h for r in out.values() for h in r.get("home_s", [])], 0.95),
        "http_5xx": sum(1 for c in codes if c >= 500),
        "hub_restarts": restarts,
        "hub_cpu_s": round(cpu_s, 1),
        "hub_peak_rss_mb": round(peak, 1),
        **states,
        "failed_messages": sorted({r.get("message", "") for r in out.values() if r["state"] == "failed"})[:5],
    }
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in fig.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", default="50,100", help="comma-separated user counts, one fresh hub per count")
    ap.add_argument("--window", type=float, default=60.0, help="seconds over which the users arrive")
    ap.add_argument("--gpu-share", type=float, default=0.2)
    ap.add_argument("--gpus", type=int, default=4, help="simulated devices (fewer than the GPU requests)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per-user wait for ready")
    args = ap.parse_args()
    ok = True
    for n in [int(x) for x in args.users.split(",")]:
        fig = run(n, args.window, args.gpu_share, args.gpus, args.timeout)
        print(
            f"{n} users over {args.window:.0f} s ({fig['gpu_users']} GPU on {fig['gpus']} devices): "
            f"login p50/p95 {fig['login_p50_s']:.2f}/{fig['login_p95_s']:.2f} s, spawn-to-ready p50/p95 "
            f"{fig['ready_p50_s']:.1f}/{fig['ready_p95_s']:.1f} s, /hub/home p50/p95 {fig['home_p50_s']:.3f}/"
            f"{fig['home_p95_s']:.3f} s; running {fig['running']}, refused {fig['refused']}, failed "
            f"{fig['failed']}; 5xx {fig['http_5xx']}, hub restarts {fig['hub_restarts']}, hub CPU "
            f"{fig['hub_cpu_s']} s, hub peak RSS {fig['hub_peak_rss_mb']} MB"
        )
        for m in fig["failed_messages"]:
            print(f"  failed: {m}")
        record(
            f"L1-{n}",
            f"{n} users/{args.window:.0f} s: ready p95 {fig['ready_p95_s']:.1f} s, /hub/home p95 "
            f"{fig['home_p95_s']:.3f} s, {fig['running']} running, {fig['refused']} refused, {fig['failed']} "
            f"failed, {fig['http_5xx']} 5xx, {fig['hub_restarts']} hub restarts, hub {fig['hub_cpu_s']} CPU-s, "
            f"peak RSS {fig['hub_peak_rss_mb']} MB",
            **fig,
        )
        ok &= fig["http_5xx"] == 0 and fig["hub_restarts"] == 0 and fig["failed"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
