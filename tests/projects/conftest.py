"""Fixtures for the project-workspace foundations: a settable clock for the audit log.

``db_url`` and ``engine`` (each test on SQLite and on PostgreSQL, a fresh schema in the test cluster) come from
tests/conftest.py; if PostgreSQL is not there, those tests FAIL.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.clock import Clock


@pytest.fixture
def clock():
    return Clock(datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC))
