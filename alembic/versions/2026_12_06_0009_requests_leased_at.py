"""requests.leased_at: when the request's last attempt was leased (HTTP polling, NATS, webhook
claims set it with the lease), so a process's timeline shows when each request was taken and
how long its actor took to answer. Nullable, no default: the column is added without
rewriting the table; requests leased before it have none.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("leased_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("requests", "leased_at")
