"""The GPU queue: queued requests and the durable wait histogram (quota.queue_store).

Revision ID: 0300
Revises: 0200
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0300"
down_revision = "0200"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ACTIVE = sa.text("state IN ('queued', 'granted')")


def upgrade() -> None:
    op.create_table(
        "gpuhub_queue",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("server_key", sa.String(512), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("org", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=True),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("courses", sa.Text, nullable=False, server_default=""),
        sa.Column("user_options", sa.Text, nullable=False),
        sa.Column("arrived_at", TS, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("devices", sa.Text, nullable=True),
        sa.Column("granted_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
    )
    op.create_index(
        "gpuhub_queue_active_server",
        "gpuhub_queue",
        ["server_key"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index("gpuhub_queue_state", "gpuhub_queue", ["state", "arrived_at"])
    op.create_table(
        "gpuhub_queue_wait_buckets",
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("le", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
    )
    op.create_table(
        "gpuhub_queue_wait_totals",
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("sum_seconds", sa.Float, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    op.drop_table("gpuhub_queue_wait_totals")
    op.drop_table("gpuhub_queue_wait_buckets")
    op.drop_table("gpuhub_queue")
