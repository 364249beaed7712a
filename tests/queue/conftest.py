"""Fixtures for the queue tests: the queue site and a clock (``db_url``/``engine`` come from tests/conftest.py:
each store test runs on SQLite and on PostgreSQL; if PostgreSQL is not there, those tests FAIL)."""

from __future__ import annotations

import pytest

from tests.clock import Clock
from tests.queue.kit import MONDAY, make_site


@pytest.fixture
def clock():
    return Clock(MONDAY)


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)
