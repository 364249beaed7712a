"""Site configs for the login tests (plain dicts, parsed by gpuhub.core.site)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from gpuhub.core.site import Site, parse_site

BASE = {
    "timezone": "Asia/Seoul",
    "hub": {
        "bind_url": "http://127.0.0.1:8000",
        "auth": {"type": "shared-password"},
        "admin_users": ["operator"],
    },
    "gpus": {
        "runtime": "none",
        "models": {"H100": {"weight": 1.0}},
        "devices": [{"uuid": "GPU-sim-0", "model": "H100"}, {"uuid": "GPU-sim-1", "model": "H100"}],
    },
    "images": {"python": {"image": "gpuhub/base-notebook:latest", "display_name": "Python (simulated GPUs)"}},
    "organizations": {
        "gist-ai": {
            "display_name": "GIST AI Lab",
            "members": ["alice"],
            "idp_groups": ["gist-ai-lab"],
            "gpu_limit": 2,
            "gpu_hours_per_month": 100,
        },
        "cnuh-radiology": {
            "display_name": "CNUH Radiology",
            "idp_groups": ["cnuh-rad", "cnuh-rad-staff"],
            "gpu_limit": 1,
            "gpu_hours_per_month": 40,
        },
    },
}

OIDC = {
    "type": "oidc",
    "issuer": "http://127.0.0.1:9999",
    "client_id": "gpuhub",
    "client_secret_env": "GPUHUB_TEST_OIDC_SECRET",
    "groups_claim": "groups",
    "admin_groups": ["hub-admins"],
    "username_claim": "preferred_username",
    "trusted_email_domains": {"GIST.ac.kr": "gist-ai"},
}


def site_dict(*, auth: dict | None = None, bind_url: str | None = None, **hub) -> dict:
    data = copy.deepcopy(BASE)
    if auth is not None:
        data["hub"]["auth"] = auth
    if bind_url:
        data["hub"]["bind_url"] = bind_url
    data["hub"].update(hub)
    return data


def make_site(data: dict, path: Path = Path("/tmp/gpuhub-test-site.yaml")) -> Site:
    return parse_site(data, path)


def write_site(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path
