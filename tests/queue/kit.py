"""A site with three orgs, H100 and A100 devices and a course, for the queue tests (clock: tests/clock.py)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

from gpuhub.core.site import parse_site

DATA = {
    "timezone": "Asia/Seoul",
    "hub": {"state_dir": "state"},
    "gpus": {
        "runtime": "none",
        "devices": [
            {"uuid": "GPU-h0", "model": "H100"},
            {"uuid": "GPU-h1", "model": "H100"},
            {"uuid": "GPU-h2", "model": "H100"},
            {"uuid": "GPU-h3", "model": "H100"},
            {"uuid": "GPU-a0", "model": "A100"},
            {"uuid": "GPU-a1", "model": "A100"},
        ],
        "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}},
        "max_gpus_per_user": 4,
    },
    "images": {"python": {"image": "gpuhub/base-notebook:latest"}},
    "organizations": {
        "gist-ai": {"members": ["alice", "bob"], "gpu_limit": 6, "share": 2},
        "cnuh": {"members": ["carol"], "gpu_limit": 6, "share": 1},
        "academy": {"members": ["dana"], "gpu_limit": 6, "share": 1},
    },
    "courses": {
        "ml101": {
            "org": "academy",
            "instructors": ["dana"],
            "students": ["erin"],
            "reservations": [{"gpus": 2, "model": "H100", "weekly": "Tue 13:00-15:00"}],
        }
    },
    "quota": {"max_queue_wait_minutes": 120},
}


def site_data(**overrides) -> dict:
    data = copy.deepcopy(DATA)
    data.update(overrides)
    return data


def make_site(tmp_path: Path | None = None, **overrides):
    return parse_site(site_data(**overrides), (tmp_path or Path("/tmp")) / "site.yaml")


MONDAY = datetime(2026, 12, 7, 1, 0, tzinfo=UTC)  # Monday 10:00 in Seoul; no class window today
