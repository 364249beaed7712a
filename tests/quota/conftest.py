"""Fixtures for the quota tests: a small site, a settable clock, and real databases.

``db_url`` is parametrised over SQLite (a temp file) and PostgreSQL (a fresh schema per test in the
private cluster that scripts/postgres.sh starts). If PostgreSQL cannot start, those tests FAIL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from quotakit import Clock, make_site
from sqlalchemy import text

from quota import db
from quota.store import QuotaStore


@pytest.fixture
def site():
    return make_site()


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 10, 3, 0, tzinfo=UTC))


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
    base = request.getfixturevalue("postgres_url")  # tests/conftest.py: the test cluster
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
