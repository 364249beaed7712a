"""Engines and migrations for the quota tables (a thin adapter; no policy here).

``make_engine(url)`` tunes each backend for many concurrent short write transactions:
SQLite gets WAL (readers never block the writer), a busy timeout instead of instant
"database is locked", and ``BEGIN IMMEDIATE`` for write transactions (so a read-then-write
transaction never fails half way on lock upgrade). PostgreSQL gets a short connect timeout and
no pre-ping (a dropped connection is retried by the store instead of pinging every checkout), so an
unreachable database is reported within seconds instead of hanging a spawn.
``upgrade(url)`` runs the Alembic migrations in-process (no alembic.ini, works installed or editable).
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

T = TypeVar("T")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "gpuhub_alembic_version"
SQLITE_BUSY_TIMEOUT_S = 30.0
PG_CONNECT_TIMEOUT_S = 5
_PG_MIGRATION_LOCK = 0x67707568  # "gpuh": one migrator at a time across hub processes
TRANSIENT_PG = {"40001", "40P01", "55P03"}  # serialization failure, deadlock, lock not available


def transient(e: DBAPIError) -> bool:
    """Whether a write transaction that raised ``e`` may simply be run again (the writers' retry loops)."""
    if e.connection_invalidated:
        return True  # a pooled connection died (database restart): the retry opens a fresh one
    if isinstance(e, IntegrityError):
        return True  # someone committed the same key first: re-read and decide again
    if getattr(e.orig, "sqlstate", None) in TRANSIENT_PG:
        return True
    msg = str(e.orig).lower()
    return "database is locked" in msg or "database is busy" in msg


def retry_pause(attempt: int) -> None:
    """Sleep before retry ``attempt``: jittered, doubling from 2 ms, at most 200 ms."""
    time.sleep(min(0.2, 0.002 * 2**attempt) * random.random())


_write_gates: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_write_gates_lock = threading.Lock()


def write_gate(engine: Engine):
    """The lock this process's writers of ``engine`` queue on before they open a write transaction (SQLite only).

    SQLite's busy handler polls with sleeps of up to 100 ms; queueing on a lock first keeps the tail latency low
    (other processes still wait through the busy timeout). One per engine, not per store: the hub's quota store,
    the queue's stores and the audit log write through the same engine. Re-entrant, so a writer that writes
    again inside its transaction does not wait on itself. PostgreSQL: no lock (its row locks serialise)."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _write_gates_lock:
        gate = _write_gates.get(engine)
        if gate is None:
            gate = _write_gates[engine] = threading.RLock()
        return gate


def run_write(
    engine: Engine,
    fn: Callable[[Connection], T],
    *,
    first: Callable[[Connection], object] | None = None,
    retry_seconds: float = 30.0,
    retry_conflicts: bool = True,
) -> T:
    """``fn(conn)`` in one write transaction (SQLite: ``BEGIN IMMEDIATE``, see :func:`make_engine`), after
    ``first(conn)`` (e.g. a PostgreSQL lock); :func:`transient` failures are run again for ``retry_seconds``,
    integrity conflicts too unless ``retry_conflicts`` is False. The audit log's and the queue's writers."""
    give_up = time.monotonic() + retry_seconds
    attempt = 0
    while True:
        try:
            with write_gate(engine), engine.connect() as conn:
                conn.execution_options(quota_write=True)
                with conn.begin():
                    if first is not None:
                        first(conn)
                    return fn(conn)
        except DBAPIError as e:
            attempt += 1
            conflict = isinstance(e, IntegrityError) and not retry_conflicts
            if conflict or not transient(e) or time.monotonic() > give_up:
                raise
            retry_pause(attempt)


def make_engine(url: str, **kw) -> Engine:
    """An Engine for ``url`` with our per-backend settings; ``kw`` goes to ``create_engine``."""
    u = make_url(url)
    connect_args = dict(kw.pop("connect_args", {}))
    if u.get_backend_name() == "sqlite":
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
        engine = create_engine(u, connect_args=connect_args, **kw)
        _sqlite_events(engine, memory=u.database in (None, "", ":memory:"))
        return engine
    if u.get_backend_name() == "postgresql":
        connect_args.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
        kw.setdefault("pool_size", 10)
        kw.setdefault("max_overflow", 10)
        kw.setdefault("pool_timeout", 30)
    return create_engine(u, connect_args=connect_args, **kw)


def _wal(cur) -> None:
    """Switch the file to WAL. Changing the journal mode needs the file to itself, and SQLite answers "database
    is locked" at once, without waiting out busy_timeout, while another connection is in a write transaction
    (several processes migrating a new database at start): so wait for it here, up to the busy timeout."""
    give_up = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
    attempt = 0
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            attempt += 1
            if "locked" not in str(e).lower() or time.monotonic() > give_up:
                raise
            retry_pause(attempt)


def _sqlite_events(engine: Engine, memory: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        if not memory:
            _wal(cur)
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        immediate = conn.get_execution_options().get("quota_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the quota tables to ``revision``; safe to run on every hub start and concurrently."""
    engine = url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
    try:
        with engine.connect() as conn:
            conn.execution_options(quota_write=True)
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
    finally:
        if engine is not url_or_engine:
            engine.dispose()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()
