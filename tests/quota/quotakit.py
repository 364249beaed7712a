"""Shared helpers for the quota tests (a small site; the settable clock is tests/clock.py)."""

from __future__ import annotations

from pathlib import Path

from gpuhub.core.site import parse_site

SITE = {
    "timezone": "Asia/Seoul",
    "images": {
        "python": {"image": "gpuhub/base-notebook:latest"},
        "torch": {"image": "gpuhub/pytorch:latest"},
        "cpu": {"image": "gpuhub/cpu:latest", "gpu": False},
    },
    "gpus": {
        "runtime": "none",
        "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.5}},
        "devices": [{"uuid": f"GPU-h100-{i}", "model": "H100"} for i in range(4)]
        + [{"uuid": f"GPU-a100-{i}", "model": "A100"} for i in range(4)],
        "max_gpus_per_user": 3,
    },
    "organizations": {
        "lab-a": {
            "members": ["alice", "bob"],
            "gpu_limit": 3,
            "gpu_hours_per_month": 100,
            "max_gpus_per_server": 2,
            "images": ["python", "cpu"],
        },
        "lab-b": {
            "members": ["carol", "bob"],
            "idp_groups": ["lab-b-staff"],
            "gpu_limit": 2,
            "gpu_hours_per_month": 10,
            "max_gpus_per_server": 1,
        },
        "lab-c": {"members": ["dave", "dave2"], "gpu_limit": 4, "gpu_hours_per_month": 1, "max_gpus_per_server": 4},
    },
    "quota": {"min_remaining_gpu_hours": 0.1, "enforce_interval_seconds": 30, "grace_seconds": 300},
    "rates": {"H100": 4000, "A100": 2500},
    "currency": "KRW",
}


def make_site(**overrides):
    data = {**SITE, **overrides}
    return parse_site(data, Path("/tmp/gpuhub-test-site.yaml"))
