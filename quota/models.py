"""The quota tables (docs/CONTRACTS.md), in the hub's own database.

All names start with ``gpuhub_`` so they never collide with JupyterHub's tables, and Alembic keeps
its own version table (``gpuhub_alembic_version``). Times are UTC: ``timestamptz`` on PostgreSQL,
naive-UTC text in a fixed format on SQLite (fixed width, so text order is time order and SQL can
turn it into exact epoch microseconds). Convert at the edge with :class:`UtcDateTime`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.types import TypeDecorator

SQLITE_STORAGE_FORMAT = (
    "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
)


def _sqlite_datetime():
    return sqlite.DATETIME(storage_format=SQLITE_STORAGE_FORMAT)


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, whatever the backend stores."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_sqlite_datetime())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} bound to a UTC column; pass an aware datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


def to_db_text(value: datetime) -> str:
    """A UTC instant in the SQLite storage format (for raw SQL comparisons on SQLite)."""
    v = value.astimezone(timezone.utc)
    return (f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}."
            f"{v.microsecond:06d}")


metadata = MetaData()

allocations = Table(
    "gpuhub_allocations",
    metadata,
    Column("device_uuid", String(128), primary_key=True),  # the no-double-allocation guarantee
    Column("server_key", String(512), nullable=False, index=True),
    Column("user", String(255), nullable=False),
    Column("org", String(64), nullable=True),
    Column("model", String(64), nullable=False),
    Column("interval_id", Integer, nullable=False),
    Column("allocated_at", UtcDateTime, nullable=False),
)

usage_intervals = Table(
    "gpuhub_usage_intervals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("server_key", String(512), nullable=False),
    Column("user", String(255), nullable=False),
    Column("server_name", String(255), nullable=False),
    Column("org", String(64), nullable=True),
    Column("image", String(64), nullable=False),
    Column("device_uuids", Text, nullable=False, server_default=""),
    Column("gpus", Integer, nullable=False),
    Column("model", String(64), nullable=True),
    Column("weight", Float, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("ended_at", UtcDateTime, nullable=True),
    Column("end_reason", String(64), nullable=True),
    Column("heartbeat_at", UtcDateTime, nullable=True),
)
# One open interval per server; closed rows are history and may repeat the key.
Index(
    "gpuhub_usage_open_server",
    usage_intervals.c.server_key,
    unique=True,
    sqlite_where=usage_intervals.c.ended_at.is_(None),
    postgresql_where=usage_intervals.c.ended_at.is_(None),
)
Index("gpuhub_usage_org_started", usage_intervals.c.org, usage_intervals.c.started_at)
Index("gpuhub_usage_started", usage_intervals.c.started_at)
Index("gpuhub_usage_ended", usage_intervals.c.ended_at)

spawn_refusals = Table(
    "gpuhub_spawn_refusals",
    metadata,
    Column("org", String(64), primary_key=True),  # "" when the request named no org
    Column("reason", String(64), primary_key=True),
    Column("count", Integer, nullable=False, server_default=text("0")),
)

user_ids = Table(
    "gpuhub_user_ids",
    metadata,
    Column("user", String(255), primary_key=True),
    Column("uid", Integer, nullable=False, unique=True),
    Column("created_at", UtcDateTime, nullable=False),
)

# A single row (id=1) that PostgreSQL allocations lock FOR UPDATE, so decisions are serialised.
alloc_lock = Table(
    "gpuhub_alloc_lock",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("bumped_at", UtcDateTime, nullable=True),
)

# Which budget thresholds were already announced, per org per month (announced once, never twice).
budget_warnings = Table(
    "gpuhub_budget_warnings",
    metadata,
    Column("org", String(64), primary_key=True),
    Column("period", String(7), primary_key=True),  # YYYY-MM in the site time zone
    Column("fraction", Float, primary_key=True),  # 0.8, 0.95, 1.0
    Column("used_gpu_hours", Float, nullable=False),
    Column("budget_gpu_hours", Float, nullable=False),
    Column("announced_at", UtcDateTime, nullable=False),
    Column("message", Text, nullable=True),
)
