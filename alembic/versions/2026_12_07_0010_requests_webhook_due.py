"""ix_requests_webhook_due: the due requests of webhook actors, by actor, oldest first (the
webhook claim's own end of the due requests). With `channel = 'webhook'` in the index's
predicate, the claim's plan no longer depends on what the statistics say of that channel:
taken while no webhook request existed, they made the planner expect none of an actor's
due requests to be one, and read them all, then sort them, at each claim round (a bitmap
scan of `ix_requests_due`) instead of the first few in order.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_requests_webhook_due",
        "requests",
        ["actor_id", "available_at", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending' AND channel = 'webhook'"),
    )


def downgrade() -> None:
    op.drop_index("ix_requests_webhook_due", table_name="requests")
