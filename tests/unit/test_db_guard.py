"""gpuhub.hub.db_guard without a hub: which database errors become the 503, and what its message says.

The answers through a real hub (PostgreSQL stopped, SQLite disk full) are checked in
tests/faults/test_database_down.py; these pin the classification and the wording that a user sees."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import exc as sa_exc

from gpuhub.hub import db_guard

SQL = "UPDATE api_tokens SET last_activity=? WHERE prefix = 'abcd'"


def wrapped(cls, orig: Exception, **kw):
    return cls(SQL, {"prefix": "abcd"}, orig, **kw)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database or disk is full")), True),
        (wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database is locked")), True),
        (wrapped(sa_exc.InterfaceError, Exception("connection already closed")), True),
        (wrapped(sa_exc.DBAPIError, Exception("server closed the connection"), connection_invalidated=True), True),
        (sa_exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"), True),
        (sa_exc.PendingRollbackError("This Session's transaction has been rolled back"), True),
        (wrapped(sa_exc.IntegrityError, sqlite3.IntegrityError("UNIQUE constraint failed")), False),
        (wrapped(sa_exc.ProgrammingError, Exception("syntax error")), False),
        (ValueError("not a database error"), False),
        (None, False),
    ],
)
def test_only_errors_that_mean_the_database_cannot_be_used_now_become_the_503(error, outage):
    assert db_guard.is_database_outage(error) is outage


def test_the_message_names_hub_db_url_the_drivers_cause_and_the_fix_never_the_sql():
    e = wrapped(sa_exc.OperationalError, sqlite3.OperationalError("database or disk is full"))
    err = db_guard.outage_error(e)
    message = err.get_message()
    assert err.status_code == 503 and err.headers == {"Retry-After": str(db_guard.RETRY_AFTER_S)}
    assert "hub.db_url" in message and "database or disk is full" in message and "Fix (operators)" in message
    assert "api_tokens" not in message and "abcd" not in message  # SQLAlchemy's str() would carry both
    assert not hasattr(err, "jupyterhub_message")  # the REST answer: English


def test_a_page_gets_the_message_in_the_persons_language():
    e = wrapped(sa_exc.OperationalError, Exception('connection to server at "127.0.0.1", port 5432 failed'))
    page = db_guard.outage_error(e, "ko").jupyterhub_message
    assert page.startswith("허브 데이터베이스(hub.db_url)를 사용할 수 없습니다: connection to server")
    assert db_guard.outage_error(e, "en").jupyterhub_message == db_guard.outage_error(e).get_message()


def test_install_wraps_jupyterhubs_base_handler_once():
    from jupyterhub.handlers.base import BaseHandler

    db_guard.install()
    before = (BaseHandler.prepare, BaseHandler.get_current_user, BaseHandler.send_error)
    assert db_guard.install() is False
    assert (BaseHandler.prepare, BaseHandler.get_current_user, BaseHandler.send_error) == before
