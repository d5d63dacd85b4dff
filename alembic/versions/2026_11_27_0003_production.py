"""production: remember which processes in error were reported to Sentry

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"

down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "processes", sa.Column("sentry_reported_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index(
        "ix_processes_sentry_unreported",
        "processes",
        ["ended_at"],
        postgresql_where=sa.text("status = 'error' AND sentry_reported_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_processes_sentry_unreported", table_name="processes")
    op.drop_column("processes", "sentry_reported_at")
