"""The airlock: export/import requests, their checks, reviews and transitions (quota.airlock_store).

Revision ID: 0400
Revises: 0300
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0400"
down_revision = "0300"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gpuhub_airlock_request",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("requester", sa.String(255), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("why", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("needed", sa.Integer, nullable=False),
        sa.Column("source_volume", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("client_sha256", sa.String(64), nullable=True),
        sa.Column("quarantine_file", sa.String(255), nullable=False),
        sa.Column("submitted_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("released_to", sa.Text, nullable=True),
        sa.Column("purged_at", TS, nullable=True),
    )
    op.create_index("gpuhub_airlock_request_project_state", "gpuhub_airlock_request", ["project", "state"])
    op.create_table(
        "gpuhub_airlock_check",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("location", sa.Text, nullable=True),
    )
    op.create_index("ix_gpuhub_airlock_check_request_id", "gpuhub_airlock_check", ["request_id"])
    op.create_table(
        "gpuhub_airlock_review",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Integer, nullable=False),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("gpuhub_airlock_review_once", "gpuhub_airlock_review", ["request_id", "reviewer"], unique=True)
    op.create_table(
        "gpuhub_airlock_transition",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Integer, nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("at", TS, nullable=False),
        sa.Column("audit_id", sa.Integer, nullable=False),
    )
    op.create_index("ix_gpuhub_airlock_transition_request_id", "gpuhub_airlock_transition", ["request_id"])


def downgrade() -> None:
    op.drop_table("gpuhub_airlock_transition")
    op.drop_table("gpuhub_airlock_review")
    op.drop_table("gpuhub_airlock_check")
    op.drop_table("gpuhub_airlock_request")
