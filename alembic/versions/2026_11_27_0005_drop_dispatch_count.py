"""drop actors.dispatch_count: role spreading is a round per replica, not a shared counter

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 19:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_column("actors", "dispatch_count")


def downgrade() -> None:
    op.add_column(
        "actors",
        sa.Column("dispatch_count", sa.BigInteger(), server_default="0", nullable=False),
    )
