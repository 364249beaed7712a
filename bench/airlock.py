"""Airlock bench: time from submit to checks done (issue 14 target: <= 5 s on this machine).

    .venv/bin/python bench/airlock.py              # 5 runs per file, SQLite in a temp folder
    .venv/bin/python bench/airlock.py --runs 3 --db postgresql+psycopg://...

Files, written into a real Docker volume (label gpuhub.managed=1, gpuhub.bench-airlock=1; removed at the end):

- ``table.csv``: 5,000 rows x 30 columns (a region label, 19 count columns, 10 magnitude columns), ~0.9 MB;
- ``log.txt``: 16 MB of text lines (words, numbers, dates; no identifiers), the largest file the size check passes.

Each run is :meth:`quota.airlock_store.AirlockStore.submit` end to end: the helper container is created, every
path component stat'ed, the file copied into quarantine with its sha256, the request row and its audit row
written, every disclosure check run (ACRO's table checks, RRN/phone/e-mail/identifier scans), the findings and the
``checks_done`` transition written. Printed per file: p50 and max over the runs (one warm-up run first, not
counted: it imports pandas/ACRO's lookup tables), and the checks' own share.
"""

from __future__ import annotations

import sys
from pathlib import Path

# run as a script, bench/ would come first on sys.path (a bench module named like a stdlib module would
# shadow it) and the repository root would be missing: put the root there instead
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import os
import random
import tempfile
import time
import uuid

import docker

from bench._stats import percentile
from gpuhub.core import labels as lb
from quota import disclosure
from quota.airlock_store import AirlockStore
from tests.airlock.conftest import make_site, put_files

LABEL = "gpuhub.bench-airlock"


def table_csv(rng: random.Random) -> bytes:
    header = ["region"] + [f"count_{i}" for i in range(19)] + [f"cost_sum_{i}" for i in range(10)]
    lines = [",".join(header)]
    for r in range(5000):
        counts = [str(rng.randint(0, 500)) for _ in range(19)]
        money = [f"{rng.uniform(1e3, 1e6):.2f}" for _ in range(10)]
        lines.append(",".join([f"region-{r}", *counts, *money]))
    return ("\n".join(lines) + "\n").encode()


def log_txt(rng: random.Random, size: int) -> bytes:
    words = ["cohort", "survival", "model", "epoch", "loss", "accuracy", "hazard", "ratio", "estimate"]
    out, n = [], 0
    while n < size:
        line = f"2026-12-{rng.randint(1, 28):02d} {' '.join(rng.choices(words, k=8))} {rng.random():.6f}\n"
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite in a temp folder)")
    args = ap.parse_args(argv)
    rng = random.Random(14)
    client = docker.from_env()
    files = {"table.csv": table_csv(rng), "log.txt": log_txt(rng, 16 * 1024 * 1024)}
    volume = f"gpuhub-bench-airlock-{uuid.uuid4().hex[:8]}"
    client.volumes.create(volume, labels={lb.MANAGED: "1", LABEL: "1"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            put_files(client, volume, files)
            site = make_site(tmp_path)
            store = AirlockStore.from_url(args.db or f"sqlite:///{tmp_path / 'hub.sqlite'}", site, docker_client=client)
            store.volumes.labels[LABEL] = "1"
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            print(
                f"airlock bench: submit -> checks_done, {args.runs} runs per file (+1 warm-up), docker volume; "
                f"{os.cpu_count()} CPUs, load average {load}"
            )
            for name, body in files.items():
                t0 = time.perf_counter()
                disclosure.check_file(name, body, site.airlock)
                checks_s = time.perf_counter() - t0
                times = []
                for i in range(args.runs + 1):
                    t0 = time.perf_counter()
                    v = store.submit("cohort", "alice", "export", name, "bench", source_volume=volume)
                    if i:
                        times.append(time.perf_counter() - t0)
                    assert v.state == "checks_done"
                failed = sorted({c["rule"] for c in v.checks if not c["passed"]})
                print(
                    f"  {name:10s} {len(body) / 1e6:6.2f} MB  p50 {percentile(times, 0.5):.2f} s  "
                    f"max {max(times):.2f} s  (checks alone {checks_s:.2f} s; failed: {', '.join(failed) or '-'})"
                    f"  target <= 5 s: {'ok' if max(times) <= 5 else 'MISSED'}"
                )
    finally:
        for c in client.containers.list(all=True, filters={"label": f"{lb.PREFIX}airlock=1"}):
            if c.labels.get(LABEL) == "1":
                c.remove(force=True)
        client.volumes.get(volume).remove(force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
