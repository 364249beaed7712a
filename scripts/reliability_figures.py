#!/usr/bin/env python3
"""Render the measured figures of the fault, fuzz and load runs into docs/reliability.md.

The runs write ``tests/artifacts/reliability.json`` (tests/faults/figures.py: one entry per promise id with a
one-line summary, its numbers and when it was measured); this script replaces the table between the
``<!-- figures:begin -->`` and ``<!-- figures:end -->`` markers of docs/reliability.md with one row per promise:
what is promised, the test that checks it, and the last measured figure (or "not measured yet").

    .venv/bin/python scripts/reliability_figures.py [--json FILE] [--doc FILE] [--check]

``--check`` exits 1 when the document's table differs from what the JSON renders (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- figures:begin -->", "<!-- figures:end -->"

#: (id, promise, test that checks it)
PROMISES = [
    (
        "F2",
        "kill -9 of the hub during 20 concurrent spawns: after the restart and a reconcile pass 0 unknown "
        "running containers, every device held by a server the hub knows or free, 0 open intervals without a "
        "container",
        "tests/faults/test_kill_during_spawns.py",
    ),
    (
        "F3-postgres",
        "PostgreSQL down ~60 s: running servers keep serving kernels, spawns fail closed (503 naming "
        "hub.db_url), after recovery 0 lost / 0 duplicated intervals against Docker's own times",
        "tests/faults/test_database_down.py (pg_outage)",
    ),
    (
        "F3-sqlite-full",
        "SQLite state disk full: a clear error, no corruption (PRAGMA integrity_check), spawns work once there is room",
        "tests/faults/test_database_down.py (disk_full)",
    ),
    ("F4", "proxy killed: routes back within 10 s", "tests/faults/test_proxy_restart.py"),
    (
        "F5",
        "dockerd restarted with live-restore: containers survive, the hub re-polls them, intervals continue",
        "tests/faults/test_dockerd_restart.py",
    ),
    (
        "I1-status",
        "status API fuzzed (schemathesis, with and without tokens): 0 5xx, 403 without the right, no other user's data",
        "tests/fuzz/test_status_api_schemathesis.py",
    ),
    (
        "I1-exporters",
        "exporter endpoint fuzzed (schemathesis): 0 5xx, 401 without the bearer token",
        "tests/fuzz/test_status_api_schemathesis.py",
    ),
    (
        "I1-queue",
        "GPU queue listing fuzzed (schemathesis, with and without tokens): 0 5xx, 403 without a token, "
        "a user's token lists only its own requests",
        "tests/fuzz/test_queue_airlock_schemathesis.py",
    ),
    (
        "I1-airlock",
        "airlock API fuzzed (schemathesis, every operation, member/steward/other project/outsider tokens): 0 5xx, "
        "403 without a user's token, nothing outside the caller's roles (outsider: empty list, 404 by id)",
        "tests/fuzz/test_queue_airlock_schemathesis.py",
    ),
    (
        "I2",
        "spawn options fuzzed through the hub REST API (hypothesis, up to 1 MB): 4xx with a message, no container",
        "tests/fuzz/test_spawn_options_fuzz.py",
    ),
    (
        "U1",
        "upgrade: a database made by the first schema (0001), with data, is migrated to head by the hub's normal "
        "start; statements identical before and after",
        "tests/quota/test_upgrade.py",
    ),
    (
        "L1-20",
        "class start, reduced for the suite: 20 users in 15 s, 0 hub restarts, 0 5xx, every user running or refused",
        "tests/faults/test_class_start.py",
    ),
    (
        "L1-50",
        "class start, 50 users: 0 hub restarts, 0 5xx, everyone running or refused with a message",
        "bench/load.py --users 50",
    ),
    ("L1-100", "class start, 100 users in 60 s (80 CPU-only, 20 GPU): same", "bench/load.py --users 100"),
]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(figures: dict) -> str:
    lines = ["| id | promise | checked by | last measured | when (UTC) |", "|---|---|---|---|---|"]
    for key, promise, test in PROMISES:
        fig = figures.get(key)
        measured = _cell(fig["summary"]) if fig else "not measured yet"
        when = fig["measured_at"].replace("+00:00", "") if fig else ""
        lines.append(f"| {key} | {_cell(promise)} | `{test}` | {measured} | {when} |")
    return "\n".join(lines)


def replace_table(doc: str, table: str) -> str:
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"error: the document has no {BEGIN} ... {END} markers; add them where the table goes")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=ROOT / "tests" / "artifacts" / "reliability.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "reliability.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the document is not current; write nothing")
    args = p.parse_args(argv)
    try:
        figures = json.loads(args.json.read_text())
    except FileNotFoundError:
        figures = {}
    doc = args.doc.read_text()
    new = replace_table(doc, render(figures))
    if args.check:
        return 0 if new == doc else 1
    args.doc.write_text(new)
    print(f"{args.doc}: {sum(1 for k, *_ in PROMISES if k in figures)} of {len(PROMISES)} figures from {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
