"""Fixtures for the airlock: a site with project ``cohort`` (three stewards, one of them also a member), a settable
clock, labelled Docker volumes made and removed by the test, and the store on SQLite and PostgreSQL.

``db_url``/``engine`` (each test once on SQLite, once on PostgreSQL) and ``docker_client`` come from
tests/conftest.py; a missing PostgreSQL or Docker engine FAILS the tests that need them.
"""

from __future__ import annotations

import copy
import io
import tarfile
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from gpuhub.core import labels as lb
from gpuhub.core.site import parse_site
from quota.airlock_store import AirlockStore
from tests.clock import Clock

TEST_LABEL = "gpuhub.test-airlock"
STEWARDS = ["steve", "sara", "sam"]
PROJECT = {
    "display_name": "Cancer cohort",
    "org": "hospital",
    "stewards": STEWARDS,
    "members": ["alice", "bob", "sam"],  # sam is a member and a steward
    "datasets": {"registry": {"source": "REGISTRY", "identifier_columns": ["pid"]}},
    "purpose": "survival analysis",
    "legal_basis": "pipa-28-2-research",
    "starts": date(2026, 12, 1),
    "expires": date(2026, 12, 31),
    "images": ["python"],
    "dua": "use the data for the stated purpose only\n",
}
SITE = {
    "timezone": "Asia/Seoul",
    "images": {"python": {"image": "gpuhub/base-notebook:latest", "gpu": False}},
    "organizations": {"hospital": {"members": ["alice"], "images": ["python"]}, "lab": {"members": ["carol"]}},
    "hub": {"admin_users": ["root"]},
}
REGISTRY_CSV = "pid,age,sex\nP-000101,54,F\nP-000102,61,M\nP-000103,47,F\n"


@pytest.fixture
def clock():
    return Clock(datetime(2026, 12, 2, 1, 0, 0, tzinfo=UTC))


def make_site(tmp_path: Path, project: dict | None = None, airlock: dict | None = None):
    registry = tmp_path / "registry"
    registry.mkdir(exist_ok=True)
    (registry / "cohort.csv").write_text(REGISTRY_CSV, encoding="utf-8")
    data = copy.deepcopy(SITE)
    spec = copy.deepcopy(PROJECT)
    spec["datasets"]["registry"]["source"] = str(registry)
    spec.update(project or {})
    data["projects"] = {"cohort": spec, "other": {**copy.deepcopy(spec), "stewards": ["olga"], "members": ["oscar"]}}
    data["airlock"] = {"quarantine_dir": str(tmp_path / "quarantine"), **(airlock or {})}
    data["hub"] = {**data["hub"], "state_dir": str(tmp_path / "state")}
    return parse_site(data, tmp_path / "site.yaml")


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


def put_files(client, volume: str, files: dict[str, bytes | tuple], uid: int = 1000) -> None:
    """Write ``files`` (path -> bytes, or ("link", target)) into ``volume`` through a created container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
            tf.addfile(info)
        for path, body in files.items():
            info = tarfile.TarInfo(path)
            info.uid = info.gid = uid
            if isinstance(body, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, body[1]
                tf.addfile(info)
            else:
                info.size, info.mode = len(body), 0o644
                tf.addfile(info, io.BytesIO(body))
    c = client.containers.create(
        "gpuhub/base-notebook:latest",
        command=["true"],
        network_mode="none",
        labels={lb.MANAGED: "1", TEST_LABEL: "1"},
        volumes={volume: {"bind": "/v", "mode": "rw"}},
    )
    try:
        c.put_archive("/v", buf.getvalue())
    finally:
        c.remove(force=True)


def read_file(client, volume: str, path: str) -> tuple[bytes, int]:
    """(contents, uid) of ``path`` in ``volume``."""
    c = client.containers.create(
        "gpuhub/base-notebook:latest",
        command=["true"],
        network_mode="none",
        labels={lb.MANAGED: "1", TEST_LABEL: "1"},
        volumes={volume: {"bind": "/v", "mode": "ro"}},
    )
    try:
        chunks, _ = c.get_archive(f"/v/{path}")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
            m = tf.next()
            return tf.extractfile(m).read(), m.uid
    finally:
        c.remove(force=True)


@pytest.fixture
def make_volume(docker_client):
    made = []

    def make(files: dict | None = None) -> str:
        name = f"gpuhub-test-airlock-{uuid.uuid4().hex[:10]}"
        docker_client.volumes.create(name, labels={lb.MANAGED: "1", TEST_LABEL: "1"})
        made.append(name)
        if files:
            put_files(docker_client, name, files)
        return name

    yield make
    for c in docker_client.containers.list(all=True, filters={"label": f"{TEST_LABEL}=1"}):
        c.remove(force=True)
    for name in made:
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def store(engine, site, clock, docker_client):
    return AirlockStore(engine, site, clock, docker_client, labels={TEST_LABEL: "1"})
