"""Secure project workspaces: DUA acceptances, membership changes, extensions (quota.project_store).

Revision ID: 0200
Revises: 0100
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0200"
down_revision = "0100"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "gpuhub_project_dua_acceptance",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("accepted_at", TS, nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
    )
    op.create_index("gpuhub_project_dua_user", "gpuhub_project_dua_acceptance", ["project", "user"])
    op.create_table(
        "gpuhub_project_membership",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("user", sa.String(255), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("by", sa.String(255), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_gpuhub_project_membership_project", "gpuhub_project_membership", ["project"])
    op.create_table(
        "gpuhub_project_extension",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(64), nullable=False),
        sa.Column("expires", sa.Date, nullable=False),
        sa.Column("by", sa.String(255), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_gpuhub_project_extension_project", "gpuhub_project_extension", ["project"])


def downgrade() -> None:
    op.drop_table("gpuhub_project_extension")
    op.drop_table("gpuhub_project_membership")
    op.drop_table("gpuhub_project_dua_acceptance")
