"""Billing bench: 1,000,000 usage intervals over 100 orgs, then time a monthly statement (target <= 2 s).

    .venv/bin/python bench/billing.py                 # SQLite and PostgreSQL (started by scripts/postgres.sh)
    .venv/bin/python bench/billing.py --backend sqlite --intervals 200000 --months 1

--months spreads the intervals over that many months ending at the statement month (default 12; 1 puts
every interval in the statement month, the worst case). The ledger is bulk-loaded (executemany on SQLite,
COPY on PostgreSQL) and checked against a Python sum of the same rows for one org.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench._pg import pg_schema_url  # noqa: E402
from gpuhub.core import periods  # noqa: E402
from gpuhub.core.site import parse_site  # noqa: E402
from quota import billing, db  # noqa: E402
from quota.models import to_db_text  # noqa: E402

COLUMNS = (
    "server_key",
    "user",
    "server_name",
    "org",
    "image",
    "device_uuids",
    "gpus",
    "model",
    "weight",
    "started_at",
    "ended_at",
    "end_reason",
    "heartbeat_at",
)


def bench_site(orgs: int):
    return parse_site(
        {
            "timezone": "Asia/Seoul",
            "images": {"python": {"image": "x"}},
            "gpus": {"models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}}},
            "organizations": {f"org-{i:03d}": {"gpu_limit": 8, "gpu_hours_per_month": 1000} for i in range(orgs)},
            "rates": {"H100": 4000, "A100": 2500},
        },
        Path("/tmp/bench-site.yaml"),
    )


def generate(n: int, orgs: int, period: str, months: int, tz, seed: int = 1):
    """Rows sorted by start; durations ~ exponential (mean 3 h), 1 in 20 longer than a day; 100 still open."""
    rnd = random.Random(seed)
    y, m = periods.parse_period(period)
    lo = periods.month_start(y, m, tz)
    for _ in range(months - 1):
        y, m = (y - 1, 12) if m == 1 else (y, m - 1)
    first = periods.month_start(y, m, tz)
    _, hi = periods.period_bounds(period, tz)
    span = (hi - first).total_seconds()
    starts = sorted(rnd.uniform(0, span) for _ in range(n))
    rows = []
    for i, s in enumerate(starts):
        start = first + timedelta(seconds=s)
        dur = rnd.expovariate(1 / 10800) * (10 if rnd.random() < 0.05 else 1)
        end = None if i >= n - 100 else start + timedelta(seconds=dur)
        org = f"org-{rnd.randrange(orgs):03d}"
        model, w = ("H100", 1.0) if rnd.random() < 0.5 else ("A100", 0.6)
        user = f"{org}-user-{rnd.randrange(10)}"  # 10 users per org, 1,000 in all
        rows.append(
            (
                f"{user}/b{i}",
                user,
                f"b{i}",
                org,
                "python",
                "",
                rnd.randint(1, 4),
                model,
                w,
                start,
                end,
                None if end is None else "stopped",
                start,
            )
        )
    return rows, lo


def load(engine, rows) -> float:
    t = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":

            def conv(r):
                return r[:9] + (to_db_text(r[9]), to_db_text(r[10]) if r[10] else None, r[11], to_db_text(r[12]))

            cur.execute("BEGIN IMMEDIATE")
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            cur.executemany(
                f"INSERT INTO gpuhub_usage_intervals ({cols}) VALUES ({', '.join('?' * len(COLUMNS))})",
                (conv(r) for r in rows),
            )
            cur.execute("COMMIT")
        else:
            cols = ", ".join(f'"{c}"' for c in COLUMNS)
            with cur.copy(f"COPY gpuhub_usage_intervals ({cols}) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row(r)
            raw.commit()
            cur.execute("ANALYZE gpuhub_usage_intervals")
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t


def python_reference(rows, org, lo, hi, now) -> float:
    return (
        sum(
            periods.interval_charge(g, w, s, e, now, lo, hi)
            for (_, _, _, o, _, _, g, _, w, s, e, _, _) in rows
            if o == org
        )
        / 3600
    )


def run(backend: str, url: str, args) -> None:
    site = bench_site(args.orgs)
    db.upgrade(url)
    engine = db.make_engine(url)
    t = time.perf_counter()
    rows, lo = generate(args.intervals, args.orgs, args.period, args.months, site.tz)
    gen_s = time.perf_counter() - t
    load_s = load(engine, rows)
    _, hi = periods.period_bounds(args.period, site.tz)
    now = hi + timedelta(days=3)  # open intervals run past the month end
    in_month = sum(1 for r in rows if r[9] < hi and (r[10] is None or r[10] > lo))
    timings = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        statement = billing.statement(engine, site, args.period, now=now)
        timings.append(time.perf_counter() - t)
    t = time.perf_counter()
    daily = billing.daily(engine, site, args.period, now=now)
    daily_s = time.perf_counter() - t
    t = time.perf_counter()
    one = billing.statement(engine, site, args.period, org="org-007", now=now)
    org_s = time.perf_counter() - t
    want = python_reference(rows, "org-007", lo, hi, now)
    got = sum(r["weighted_gpu_hours"] for r in one)
    day_sum = sum(d["weighted_gpu_hours"] for d in daily["org-007"])
    ok = abs(got - want) <= 1e-9 * max(1.0, want) and abs(day_sum - want) <= 1e-6 * max(1.0, want)
    print(
        f"{backend:10s} intervals={len(rows):,} orgs={args.orgs} months={args.months} in-period={in_month:,} "
        f"generate={gen_s:.1f}s load={load_s:.1f}s"
    )
    print(
        f"{backend:10s} statement {args.period}: {len(statement)} rows, best {min(timings):.3f}s "
        f"worst {max(timings):.3f}s (target <= 2 s) | daily chart {daily_s:.3f}s | one org {org_s:.3f}s"
    )
    print(
        f"{backend:10s} check org-007: SQL {got:.6f} vs Python {want:.6f} weighted GPU-h, daily sum {day_sum:.6f}"
        f" -> {'OK' if ok else 'MISMATCH'}"
    )
    engine.dispose()
    if not ok or min(timings) > 2.0:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--intervals", type=int, default=1_000_000)
    ap.add_argument("--orgs", type=int, default=100)
    ap.add_argument("--months", type=int, default=12)
    ap.add_argument("--period", default="2026-11")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as d:
            run("sqlite", f"sqlite:///{d}/bench.sqlite", args)
    if args.backend in ("postgresql", "both"):
        run("postgresql", pg_schema_url("bench_billing"), args)


if __name__ == "__main__":
    main()
