"""requests due by actor: the partial index of pending requests leads with the actor and
keeps the lease order (available_at, created_at, id: ids are time-ordered), so a lease
reads an actor's oldest due requests in order and stops at its limit, whatever the backlog
of other actors or channels

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_requests_due", table_name="requests")
    op.create_index(
        "ix_requests_due",
        "requests",
        ["actor_id", "available_at", "created_at", "id"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_requests_due", table_name="requests")
    op.create_index(
        "ix_requests_due",
        "requests",
        ["channel", "actor_id", "available_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
