"""session tokens (ClientAPI.GetSessionToken)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 18:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_tokens",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("account_id", sa.Uuid(), nullable=False),
        sa.Column("lookup", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_session_tokens_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_tokens")),
        sa.UniqueConstraint("lookup", name=op.f("uq_session_tokens_lookup")),
    )
    op.create_index(
        op.f("ix_session_tokens_account_id"), "session_tokens", ["account_id"], unique=False
    )
    op.create_index(
        op.f("ix_session_tokens_expires_at"), "session_tokens", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_session_tokens_expires_at"), table_name="session_tokens")
    op.drop_index(op.f("ix_session_tokens_account_id"), table_name="session_tokens")
    op.drop_table("session_tokens")
