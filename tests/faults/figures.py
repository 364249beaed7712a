"""Measured figures of the fault, fuzz and load runs, kept in one JSON file for docs/reliability.md.

Each run calls :func:`record` with the promise's id (``F2`` …) and its numbers; the file
``tests/artifacts/reliability.json`` keeps the last value per id (with when it was measured), and
``scripts/reliability_figures.py`` renders it into the table of ``docs/reliability.md``.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARTIFACT = Path(os.environ.get("GPUHUB_RELIABILITY_JSON", ROOT / "tests" / "artifacts" / "reliability.json"))


def record(key: str, summary: str, **values) -> None:
    """Store ``values`` (JSON-able) and a one-line ``summary`` under ``key``, replacing the last run's."""
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACT.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers or two modules may write at once
        try:
            data = json.loads(ARTIFACT.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = {
            "summary": summary,
            "values": values,
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = ARTIFACT.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(ARTIFACT)
    print(f"[{key}] {summary}")
