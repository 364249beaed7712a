"""Fixtures for the project-workspace foundations: real databases for the audit log.

``db_url`` runs each test on SQLite (a temp file) and on PostgreSQL (a fresh schema in the test cluster,
``postgres_url`` from tests/conftest.py); if PostgreSQL is not there, those tests FAIL.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from quota import db


class Clock:
    """A settable UTC clock: ``clock()`` is now, ``clock.advance(days=…)`` travels."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> datetime:
        self.now += timedelta(**kw)
        return self.now


@pytest.fixture
def clock():
    return Clock(datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.sqlite'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = db.make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
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
