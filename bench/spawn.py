"""Spawn/stop timings: gpuhub's spawner vs stock DockerSpawner, same image, same run.

    .venv/bin/python bench/spawn.py [--users 20] [--singles 5] [--stock-image IMAGE] [--image IMAGE]
    .venv/bin/python bench/spawn.py --users 0 --singles 3   # start cost only
    .venv/bin/python bench/spawn.py --start-concurrency 0 --start-concurrency 40   # ours with two start gates

Prints p50/p95/max per scenario and ours/stock ratios. Targets (issue 2): single start ratio
<= 1.05, 20 concurrent stops ratio <= 0.5. Numbers are only comparable within one run.

Start cost (issue 17): the CPU-seconds a server's container uses (its cgroup, cpuacct) from start to
ready when it starts alone, p50 of the single starts. A class starting at once is CPU-bound here, so
its floor is servers x start cost / cores; printed with p95 / floor for the N-at-once starts
(target: start cost <= 1.0 CPU-s, p95 <= 1.2 x floor, 0 failures).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _cpu  # noqa: E402
from bench._stats import percentile as pct  # noqa: E402
from bench.image_start import cpu_seconds  # noqa: E402
from tests.harness import HubProcess, free_port  # noqa: E402


class StockHub(HubProcess):
    """Plain DockerSpawner configured like jupyterhub-deploy-docker."""

    config_file = ROOT / "bench" / "stock_jupyterhub_config.py"

    def env(self) -> dict:
        """HubProcess's start, with the stock config's settings (the stock hub reads no site config)."""
        from gpuhub.host.dockerenv import ensure_user_network

        net = ensure_user_network(self.docker, f"{self.instance}-users")
        env = super().env()
        env.update(
            BENCH_BIND_URL=self.url,
            BENCH_HUB_BIND_URL=f"http://{net.gateway}:{free_port()}",
            BENCH_PROXY_API_URL=f"http://127.0.0.1:{free_port()}",
            BENCH_DB_URL=f"sqlite:///{self.state}/hub.sqlite",
            BENCH_STATE=str(self.state),
            BENCH_IMAGE=self.image,
            BENCH_NETWORK=net.name,
            BENCH_PREFIX=self.instance,
            BENCH_TOKEN=self.admin_token,
        )
        return env

    def containers(self, all=False, **labels):
        return self.docker.containers.list(all=all, filters={"name": f"{self.instance}-"})


class GatedHub(HubProcess):
    """Ours with its start gate from BENCH_START_CONCURRENCY (--start-concurrency)."""

    config_file = ROOT / "bench" / "gate_jupyterhub_config.py"


def timed_start(hub, user, options):
    t0 = time.perf_counter()
    r = hub.spawn(user, options)
    assert r.status_code in (201, 202), r.text
    wait_ready_by_progress(hub, user, timeout=300)
    return time.perf_counter() - t0


def wait_ready_by_progress(hub, user: str, timeout: float) -> None:
    """Wait as the spawn page's browser does: one event stream (``/server/progress``) per start,
    not REST polls, which at 20 users x 5 Hz cost the hub more CPU than the starts themselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with hub.api("GET", f"/users/{user}/server/progress", stream=True, timeout=timeout) as r:
            if r.status_code == 200:
                for line in r.iter_lines(decode_unicode=True):
                    if line.startswith("data:") and json.loads(line[5:]).get("ready"):
                        return
                    if line.startswith("data:") and json.loads(line[5:]).get("failed"):
                        raise AssertionError(f"{user}'s start failed: {line}")
        if hub.api("GET", f"/users/{user}").json().get("servers", {}).get("", {}).get("ready"):
            return  # the stream ended (ready before it opened)
        time.sleep(0.5)
    raise AssertionError(f"{user}'s server not ready in {timeout} s")


def timed_stop(hub, user):
    t0 = time.perf_counter()
    hub.stop_server(user, timeout=300)
    return time.perf_counter() - t0


def start_cost(hub) -> float:
    """CPU-seconds the one running container has used so far (called at ready: its start cost)."""
    (container,) = hub.containers()
    return cpu_seconds(container.id)


def scenario(hub, users: int, singles: int, options: dict) -> dict:
    out = {"single start": [], "start cost CPU-s": [], "single stop": []}
    for _i in range(singles):
        out["single start"].append(timed_start(hub, "alice", options))
        out["start cost CPU-s"].append(start_cost(hub))
        out["single stop"].append(timed_stop(hub, "alice"))
    names = [f"u{i:02d}" for i in range(users)]  # --users 0: the single starts (and start cost) only
    if not names:
        return out
    for n in names:
        hub.ensure_user(n)
    # first starts (new users: their homes are made, as at a class's first session), then the same users again
    for label in ("starts at once", "restarts at once"):
        before = _cpu.snapshot(hub.proc.pid)
        with ThreadPoolExecutor(users) as pool:
            out[f"{users} {label}"] = list(pool.map(lambda n: timed_start(hub, n, options), names))
        out[f"cpu {label}"] = _cpu.split(before, hub.proc.pid, [c.id for c in hub.containers()])
        with ThreadPoolExecutor(users) as pool:
            stops = list(pool.map(lambda n: timed_stop(hub, n), names))
        out.setdefault(f"{users} stops at once", stops)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--singles", type=int, default=5)
    ap.add_argument("--image", default="gpuhub/base-notebook:latest")
    ap.add_argument("--stock-image", default=None, help="baseline image (default: same as --image)")
    ap.add_argument(
        "--start-concurrency", type=int, action="append", default=None,
        help="run ours once per value of its start gate (GpuhubSpawner.start_concurrency; 0 = its default)",
    )  # fmt: skip
    args = ap.parse_args()
    results = {}
    gates = args.start_concurrency or [None]
    labels = ["stock"] + ["gpuhub" if g is None else f"gate={g}" for g in gates]
    with tempfile.TemporaryDirectory() as tmp:
        for label, gate in zip(labels, [None, *gates], strict=True):
            d = Path(tmp) / label
            d.mkdir()
            if label == "stock":
                hub = StockHub(d, instance=f"benchstock{os.getpid()}")
                hub.image = args.stock_image or args.image
            else:
                hub = GatedHub(d, instance=f"benchgpuhub{os.getpid()}{gate or ''}") if gate is not None else None
                hub = hub or HubProcess(d, instance=f"benchgpuhub{os.getpid()}")
                os.environ["BENCH_START_CONCURRENCY"] = str(gate or 0)
                hub.site["images"]["python"]["image"] = args.image
                # production defaults, not the test harness's fast enforcer/reconciler and small limits
                hub.site.pop("quota", None)
                hub.site.pop("containers", None)
                hub.site_path.write_text(__import__("yaml").safe_dump(hub.site))
            try:
                hub.start()
                print(f"[{label}] running...", file=sys.stderr, flush=True)
                results[label] = scenario(
                    hub, args.users, args.singles, {"image": "python"} if label == "gpuhub" else {}
                )
            except Exception:
                print(hub.dump_logs(), file=sys.stderr)
                raise
            finally:
                hub.cleanup()
    print(f"{'scenario':24} {'impl':7} {'p50':>7} {'p95':>7} {'max':>7}")
    for name in results["stock"]:
        if name.startswith("cpu "):
            continue
        for label in labels:
            v = results[label][name]
            print(f"{name:24} {label:7} {pct(v, 0.5):7.2f} {pct(v, 0.95):7.2f} {max(v):7.2f}")
        s = results["stock"][name]
        for label in labels[1:]:
            g = results[label][name]
            print(f"{'':24} {'ratio' if len(labels) == 2 else label:7} {pct(g, 0.5) / pct(s, 0.5):7.2f} "
                  f"{pct(g, 0.95) / pct(s, 0.95):7.2f}")  # fmt: skip
    print(f"(stock image {args.stock_image or args.image}, ours {args.image}; {os.cpu_count()} cores)")
    if args.users:
        print_floor(results, args.users, labels)
    return 0


def print_floor(results: dict, users: int, labels: list[str]) -> None:
    """Start cost, the CPU floor of ``users`` starting at once, how close each p95 came to it, and where the
    CPU of the at-once phase went: the issue's floor counts only the containers' own CPU; the engine's and
    the hub's work for each start is on the same cores, so the floor a start can reach counts them too."""
    cores = os.cpu_count() or 1
    for label in labels:
        cost = pct(results[label]["start cost CPU-s"], 0.5)
        floor = users * cost / cores
        for phase in ("starts at once", "restarts at once"):
            p95 = pct(results[label][f"{users} {phase}"], 0.95)
            cpu = results[label][f"cpu {phase}"]
            reachable = (cpu["containers"] + cpu["engine"] + cpu["hub"]) / cores
            print(
                f"[{label}] {users} {phase}: start cost {cost:.2f} CPU-s, floor {floor:.1f} s, p95 {p95:.1f} s ="
                f" {p95 / floor:.2f} x floor; CPU-s: machine {cpu['total']:.1f} = containers {cpu['containers']:.1f}"
                f" + engine {cpu['engine']:.1f} + hub {cpu['hub']:.1f} + other {cpu['other']:.1f}; floor with the"
                f" engine and hub {reachable:.1f} s, p95 = {p95 / reachable:.2f} x that"
            )


if __name__ == "__main__":
    sys.exit(main())
