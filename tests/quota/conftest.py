"""Fixtures for the quota tests: a small site, a settable clock, and real databases.

``db_url`` is parametrised over SQLite (a temp file) and PostgreSQL (a fresh schema per test in the
private cluster that scripts/postgres.sh starts). If PostgreSQL cannot start, those tests FAIL.
"""

from __future__ import annotations

import subprocess
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from quota import db
from quota.store import QuotaStore
from quotakit import Clock, make_site

ROOT = Path(__file__).resolve().parents[2]

@pytest.fixture
def site():
    return make_site()


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 10, 3, 0, tzinfo=timezone.utc))


@pytest.fixture(scope="session")
def pg_base_url(tmp_path_factory):
    """The test cluster's URL; starting it must work, so a failure fails the tests loudly."""
    proc = subprocess.run([str(ROOT / "scripts" / "postgres.sh")], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"scripts/postgres.sh failed (rc={proc.returncode}); PostgreSQL tests cannot run:\n"
                    f"{proc.stdout}\n{proc.stderr}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


def _pg_schema_url(base: str):
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    return admin, schema, f"{base}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.sqlite'}"
        return
    base = request.getfixturevalue("pg_base_url")
    admin, schema, url = _pg_schema_url(base)
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url):
    db.upgrade(db_url)
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def store(engine, site, clock):
    return QuotaStore(engine, site, clock)
