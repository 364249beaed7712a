"""Fixtures for the quota tests: a small site, a settable clock, and a store on real databases.

``db_url`` and ``engine`` (SQLite and PostgreSQL, a fresh schema per test) come from tests/conftest.py.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from quotakit import make_site

from quota.store import QuotaStore
from tests.clock import Clock


@pytest.fixture
def site():
    return make_site()


@pytest.fixture
def clock():
    return Clock(datetime(2026, 11, 10, 3, 0, tzinfo=UTC))


@pytest.fixture
def store(engine, site, clock):
    return QuotaStore(engine, site, clock)
