"""Quota tables: allocations, usage intervals, refusal counters, user ids, allocation lock, budget warnings.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def epoch_us(dialect: str, col: str) -> str:
    """Immutable SQL for a UTC timestamp column as integer epoch microseconds (frozen copy of quota.sqlexpr)."""
    if dialect == "sqlite":  # fixed-width 'YYYY-MM-DD HH:MM:SS.ffffff' text
        return (
            f"(CAST(round((julianday(substr({col}, 1, 19)) - 2440587.5) * 86400) AS INTEGER) * 1000000"
            f" + CAST(substr({col}, 21, 6) AS INTEGER))"
        )
    return f"CAST(extract(epoch FROM ({col} - timestamptz '1970-01-01 00:00:00+00')) * 1000000 AS bigint)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "gpuhub_allocations",
        sa.Column("device_uuid", sa.String(128), primary_key=True),
        sa.Column("server_key", sa.String(512), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("interval_id", sa.Integer, nullable=False),
        sa.Column("allocated_at", TS, nullable=False),
    )
    op.create_index("ix_gpuhub_allocations_server_key", "gpuhub_allocations", ["server_key"])

    op.create_table(
        "gpuhub_usage_intervals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("server_key", sa.String(512), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("image", sa.String(64), nullable=False),
        sa.Column("device_uuids", sa.Text, nullable=False, server_default=""),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("heartbeat_at", TS, nullable=True),
        sa.Column("started_us", sa.BigInteger, sa.Computed(epoch_us(dialect, "started_at"), persisted=True)),
        sa.Column("ended_us", sa.BigInteger, sa.Computed(epoch_us(dialect, "ended_at"), persisted=True)),
    )
    open_only = sa.text("ended_at IS NULL")
    op.create_index(
        "gpuhub_usage_open_server",
        "gpuhub_usage_intervals",
        ["server_key"],
        unique=True,
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_index(
        "gpuhub_usage_billing",
        "gpuhub_usage_intervals",
        ["org", "user", "model", "weight", "gpus", "started_us", "ended_us"],
    )
    op.create_index("gpuhub_usage_ended", "gpuhub_usage_intervals", ["ended_at"])

    op.create_table(
        "gpuhub_spawn_refusals",
        sa.Column("org", sa.String(64), primary_key=True),
        sa.Column("reason", sa.String(64), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "gpuhub_user_ids",
        sa.Column("user", sa.String(255), primary_key=True),
        sa.Column("uid", sa.Integer, nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    lock = op.create_table(
        "gpuhub_alloc_lock",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bumped_at", TS, nullable=True),
    )
    op.bulk_insert(lock, [{"id": 1}])
    op.create_table(
        "gpuhub_budget_warnings",
        sa.Column("org", sa.String(64), primary_key=True),
        sa.Column("period", sa.String(7), primary_key=True),
        sa.Column("fraction", sa.Float, primary_key=True),
        sa.Column("used_gpu_hours", sa.Float, nullable=False),
        sa.Column("budget_gpu_hours", sa.Float, nullable=False),
        sa.Column("announced_at", TS, nullable=False),
        sa.Column("message", sa.Text, nullable=True),
    )


def downgrade() -> None:
    for table in (
        "gpuhub_budget_warnings",
        "gpuhub_alloc_lock",
        "gpuhub_user_ids",
        "gpuhub_spawn_refusals",
        "gpuhub_usage_intervals",
        "gpuhub_allocations",
    ):
        op.drop_table(table)
