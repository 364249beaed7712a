"""Allocation bench: decisions per second under contention, with a duplicate-device check (target >= 500/s).

    .venv/bin/python bench/allocate.py                       # SQLite and PostgreSQL, 16 threads, 5 s each
    .venv/bin/python bench/allocate.py --backend sqlite --threads 32 --seconds 10

Each thread loops: allocate 1-2 GPUs for a random member of a random org, and release its server once it
holds it for a random 0-3 decisions, so devices, org caps and user caps are always contended (grants and
refusals both count as decisions). A shadow map of who holds which device is checked on every grant;
after the run the database's holdings are checked too.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._pg import pg_schema_url  # noqa: E402
from bench._stats import percentile  # noqa: E402
from gpuhub.core.site import parse_site  # noqa: E402
from quota import db  # noqa: E402
from quota.policy import AllocationRequest  # noqa: E402
from quota.store import QuotaRefused, QuotaStore  # noqa: E402


def bench_site(orgs: int = 6, users: int = 10, devices: int = 16):
    return parse_site(
        {
            "timezone": "Asia/Seoul",
            "images": {"python": {"image": "x"}},
            "gpus": {
                "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}},
                "devices": [
                    {"uuid": f"GPU-{m}-{i}", "model": m} for m in ("H100", "A100") for i in range(devices // 2)
                ],
                "max_gpus_per_user": 2,
            },
            "organizations": {
                f"org-{o}": {
                    "members": [f"o{o}-u{u}" for u in range(users)],
                    "gpu_limit": 4,
                    "gpu_hours_per_month": 1e9,
                    "max_gpus_per_server": 2,
                }
                for o in range(orgs)
            },
        },
        Path("/tmp/bench-alloc-site.yaml"),
    )


def run(backend: str, url: str, args) -> bool:
    site = bench_site()
    db.upgrade(url)
    engine = db.make_engine(
        url, **({"pool_size": args.threads, "max_overflow": 0} if backend != "sqlite" else {"pool_size": args.threads})
    )
    store = QuotaStore(engine, site)
    holder: dict[str, str] = {}
    lock = threading.Lock()
    stats = {"grants": 0, "refusals": 0, "releases": 0, "duplicates": 0}
    rules: dict[str, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + args.seconds
    orgs = list(site.organizations)

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        mine: list[tuple[str, list[str], int]] = []  # (server_key, devices, decisions left)
        lat = []
        while time.perf_counter() < deadline:
            org = rnd.choice(orgs)
            user = rnd.choice(site.organizations[org].members)
            req = AllocationRequest(user, f"t{seed}-{rnd.randrange(10**9)}", org, "python", rnd.choice((1, 1, 2)))
            t = time.perf_counter()
            try:
                g = store.allocate(req)
                lat.append(time.perf_counter() - t)
                with lock:
                    stats["grants"] += 1
                    for d in g.devices:
                        if d in holder:
                            stats["duplicates"] += 1
                        holder[d] = g.server_key
                mine.append((g.server_key, g.devices, rnd.randint(0, 3)))
            except QuotaRefused as e:
                lat.append(time.perf_counter() - t)
                with lock:
                    stats["refusals"] += 1
                    rules[e.rule] = rules.get(e.rule, 0) + 1
            keep = []
            for key, devs, left in mine:
                if left <= 0:
                    with lock:  # forget first: the DB still holds them until release commits
                        for d in devs:
                            holder.pop(d, None)
                        stats["releases"] += 1
                    store.release(key, reason="bench")
                else:
                    keep.append((key, devs, left - 1))
            mine[:] = keep
        for key, devs, _ in mine:
            with lock:
                for d in devs:
                    holder.pop(d, None)
            store.release(key, reason="bench")
        with lock:
            latencies.extend(lat)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    decisions = stats["grants"] + stats["refusals"]
    held = store.holdings()
    ok = stats["duplicates"] == 0 and not held and not store.open_intervals()
    lat = sorted(latencies)
    p = lambda q: percentile(lat, q) * 1000  # noqa: E731
    print(
        f"{backend:10s} threads={args.threads} {elapsed:.1f}s decisions={decisions} ({decisions / elapsed:.0f}/s, "
        f"target >= 500/s) grants={stats['grants']} refusals={stats['refusals']} releases={stats['releases']} "
        f"(+{(stats['releases']) / elapsed:.0f} releases/s)"
    )
    print(
        f"{backend:10s} latency ms p50={p(0.5):.1f} p95={p(0.95):.1f} p99={p(0.99):.1f} "
        f"mean={statistics.fmean(lat) * 1000 if lat else 0:.1f} | refusal rules {dict(sorted(rules.items()))}"
    )
    print(
        f"{backend:10s} duplicate device grants={stats['duplicates']} leftover allocations={len(held)} -> "
        f"{'OK' if ok else 'FAIL'}"
    )
    engine.dispose()
    return ok and decisions / elapsed >= 500


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    ok = True
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            ok &= run("sqlite", f"sqlite:///{d}/bench.sqlite", args)
    if args.backend in ("postgresql", "both"):
        ok &= run("postgresql", pg_schema_url("bench_alloc"), args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
