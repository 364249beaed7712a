"""Month-scoped operator numbers: one row per admission refusal and per idle span of an allocated device.

``gpuhub_spawn_refusals`` counts refusals since the ledger began and has no time; the operators' page and
``gpuhub quota status`` show this month's, so each refusal is also kept as an event (at, org, user, rule).
The idle service records how long allocated devices sat idle (quota.usage_records), which Prometheus only had.

Revision ID: 0500
Revises: 0400
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0500"
down_revision = "0400"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gpuhub_refusal_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
    )
    op.create_index("ix_gpuhub_refusal_events_at", "gpuhub_refusal_events", ["at"])
    op.create_table(
        "gpuhub_idle_spans",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("interval_id", sa.Integer, nullable=False),
        sa.Column("device_uuid", sa.String(128), nullable=False),
        sa.Column("server_key", sa.String(512), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("org", sa.String(64), nullable=True),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=False),
        sa.Column("is_open", sa.Boolean, nullable=False),
    )
    op.create_index("ix_gpuhub_idle_spans_ended_at", "gpuhub_idle_spans", ["ended_at"])
    op.create_index(
        "gpuhub_idle_spans_open",
        "gpuhub_idle_spans",
        ["interval_id", "device_uuid"],
        unique=True,
        sqlite_where=sa.text("is_open"),
        postgresql_where=sa.text("is_open"),
    )


def downgrade() -> None:
    op.drop_table("gpuhub_idle_spans")
    op.drop_table("gpuhub_refusal_events")
