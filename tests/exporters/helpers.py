"""Helpers shared by the exporter tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import insert

from gpuhub.core.site import parse_site
from quota import models as ledger

ROOT = Path(__file__).resolve().parents[2]
TEST_LABEL = "gpuhub.test"
TEST_LABEL_VALUE = "exporters"
TINY_IMAGE = "gpuhub-test/exporters-sleep:1"


def site_data(**overrides) -> dict:
    data = {
        "timezone": "Asia/Seoul",
        "hub": {"state_dir": "state"},
        "gpus": {
            "runtime": "none",
            "devices": [
                {"uuid": "GPU-fake-0", "model": "H100"},
                {"uuid": "GPU-fake-1", "model": "H100"},
                {"uuid": "GPU-fake-2", "model": "A100"},
            ],
            "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}},
        },
        "images": {"python": {"image": "gpuhub/base-notebook:latest"}},
        "organizations": {
            "gist-ai": {"members": ["alice", "bob"], "gpu_limit": 2, "gpu_hours_per_month": 100},
            "cnuh-radiology": {"members": ["carol"], "gpu_limit": 1, "gpu_hours_per_month": 40},
            "free-tier": {"members": ["dave"], "gpu_limit": 0, "gpu_hours_per_month": 0},
        },
    }
    data.update(overrides)
    return data


def make_site(tmp_path: Path | None = None, **overrides):
    base = tmp_path or ROOT
    return parse_site(site_data(**overrides), base / "site.yaml")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_interval(
    engine,
    *,
    user="alice",
    org="gist-ai",
    gpus=1,
    model="H100",
    weight=1.0,
    started_at,
    ended_at=None,
    server_name="",
    devices=None,
) -> int:
    key = f"{user}/{server_name}"
    with engine.begin() as conn:
        res = conn.execute(
            insert(ledger.usage_intervals).values(
                server_key=key,
                user=user,
                server_name=server_name,
                org=org,
                image="python",
                device_uuids=devices if devices is not None else ",".join(f"GPU-{user}-{i}" for i in range(gpus)),
                gpus=gpus,
                model=model,
                weight=weight,
                started_at=started_at,
                ended_at=ended_at,
                end_reason=None if ended_at is None else "stopped",
                heartbeat_at=started_at,
            )
        )
        return res.inserted_primary_key[0]


def need_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if not path:
        pytest.fail(
            f"{name} is not installed (apt-get install prometheus); this test needs the real binary", pytrace=False
        )
    return path


def tiny_image_tar() -> bytes:
    """A ~2 MB root filesystem holding /usr/bin/sleep and the libraries it links."""
    sleep = Path("/usr/bin/sleep")
    files = {sleep}
    for line in subprocess.run(["ldd", str(sleep)], capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            files.add(Path(m.group(1)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(files):
            tar.add(str(f.resolve()), arcname=str(f).lstrip("/"))
    return buf.getvalue()
