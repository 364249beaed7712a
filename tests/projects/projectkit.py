"""A small site with one secure project, ``cohort``, for the project config, policy, store and CLI tests (H1's).

:func:`site_data` is the YAML as a dict; ``project`` overrides keys of ``projects.cohort`` (a value None drops the
key) and ``top`` replaces top-level sections. :func:`make_site` parses it as if the file were
``/tmp/gpuhub-test-site.yaml`` (so ``dua: {file: x}`` is ``/tmp/x``).
"""

from __future__ import annotations

import copy
from datetime import date
from pathlib import Path

from gpuhub.core.site import Site, parse_site

DUA = "연구 목적 외 사용 금지. Use the cohort data for the stated purpose only; never try to re-identify anyone.\n"

PROJECT = {
    "display_name": "Cancer cohort",
    "org": "hospital",
    "stewards": ["steve"],
    "members": ["alice", "bob"],
    "members_idp_groups": ["cohort-team"],
    "datasets": {
        "registry": {
            "source": "/srv/projects/cohort",
            "description": "registry extract",
            "identifier_columns": ["pid"],
        },
        "imaging": {"source": "cohort-imaging"},
    },
    "purpose": "survival analysis of the 2015-2020 cohort",
    "legal_basis": "pipa-28-2-research",
    "starts": date(2026, 12, 1),
    "expires": date(2026, 12, 31),
    "images": ["python"],
    "dua": DUA,
}

SITE = {
    "timezone": "Asia/Seoul",
    "images": {
        "python": {"image": "gpuhub/base-notebook:latest", "gpu": False},
        "torch": {"image": "gpuhub/pytorch:latest"},
        "other": {"image": "gpuhub/stock-notebook:latest"},
    },
    "organizations": {
        "hospital": {"members": ["alice"], "images": ["python", "torch"], "gpu_limit": 2, "gpu_hours_per_month": 10},
        "lab": {"members": ["carol"]},
    },
    "hub": {"admin_users": ["root"]},
}


def site_data(project: dict | None = None, **top) -> dict:
    """The site as YAML-shaped data; ``project`` overrides keys of projects.cohort (a value None drops the key)."""
    data = copy.deepcopy(SITE)
    spec = copy.deepcopy(PROJECT)
    for k, v in (project or {}).items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    data["projects"] = {"cohort": spec}
    data.update(top)
    return data


def make_site(project: dict | None = None, path: Path = Path("/tmp/gpuhub-test-site.yaml"), **top) -> Site:
    return parse_site(site_data(project, **top), path)
