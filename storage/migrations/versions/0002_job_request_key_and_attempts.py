"""jobs: request key (one job per platform request) and attempts; status "delivering"

The new status needs no DDL (jobs.status is free text); it is named here because it arrives
with this revision: queued -> running -> delivering -> done | failed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 20:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request_key", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("attempts", sa.Integer(), nullable=False, server_default=sa.text("0"))
        )
        batch.create_unique_constraint(batch.f("uq_jobs_request_key"), ["request_key"])
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("attempts", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("uq_jobs_request_key"), type_="unique")
        batch.drop_column("attempts")
        batch.drop_column("request_key")
