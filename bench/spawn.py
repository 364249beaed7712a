"""Spawn/stop timings: gpuhub's spawner vs stock DockerSpawner, same image, same run.

    .venv/bin/python bench/spawn.py [--users 20] [--singles 5] [--stock-image IMAGE] [--image IMAGE]

Prints p50/p95/max per scenario and ours/stock ratios. Targets (issue 2): single start ratio
<= 1.05, 20 concurrent stops ratio <= 0.5. Numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._stats import percentile as pct  # noqa: E402
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


def timed_start(hub, user, options):
    t0 = time.perf_counter()
    r = hub.spawn(user, options)
    assert r.status_code in (201, 202), r.text
    hub.wait_ready(user, timeout=300)
    return time.perf_counter() - t0


def timed_stop(hub, user):
    t0 = time.perf_counter()
    hub.stop_server(user, timeout=300)
    return time.perf_counter() - t0


def scenario(hub, users: int, singles: int, options: dict) -> dict:
    out = {"single start": [], "single stop": []}
    for _i in range(singles):
        out["single start"].append(timed_start(hub, "alice", options))
        out["single stop"].append(timed_stop(hub, "alice"))
    names = [f"u{i:02d}" for i in range(users)]
    for n in names:
        hub.ensure_user(n)
    with ThreadPoolExecutor(users) as pool:
        out[f"{users} starts at once"] = list(pool.map(lambda n: timed_start(hub, n, options), names))
        out[f"{users} stops at once"] = list(pool.map(lambda n: timed_stop(hub, n), names))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--singles", type=int, default=5)
    ap.add_argument("--image", default="gpuhub/base-notebook:latest")
    ap.add_argument("--stock-image", default=None, help="baseline image (default: same as --image)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("stock", "gpuhub"):
            d = Path(tmp) / label
            d.mkdir()
            if label == "stock":
                hub = StockHub(d, instance=f"benchstock{os.getpid()}")
                hub.image = args.stock_image or args.image
            else:
                hub = HubProcess(d, instance=f"benchgpuhub{os.getpid()}")
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
        for label in ("stock", "gpuhub"):
            v = results[label][name]
            print(f"{name:24} {label:7} {pct(v, 0.5):7.2f} {pct(v, 0.95):7.2f} {max(v):7.2f}")
        s, g = results["stock"][name], results["gpuhub"][name]
        print(f"{'':24} ratio   {pct(g, 0.5) / pct(s, 0.5):7.2f} {pct(g, 0.95) / pct(s, 0.95):7.2f}")
    print(f"(stock image {args.stock_image or args.image}, ours {args.image}; {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
