from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, now_column, str_enum, updated_column, uuid_pk
from app.models.enums import AccountStatus, AccountType, ActorKind, ActorStatus


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    type: Mapped[AccountType] = mapped_column(str_enum(AccountType, "account_type"))
    status: Mapped[AccountStatus] = mapped_column(str_enum(AccountStatus, "account_status"))
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    is_admin: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # API key: a lookup prefix of its SHA-256 (indexed) and the whole digest, compared in
    # constant time. The key itself is never stored.
    api_key_lookup: Mapped[str | None] = mapped_column(sa.String(16), unique=True)
    api_key_hash: Mapped[str | None] = mapped_column(sa.String(64))
    api_key_expires_at: Mapped[datetime | None]
    # Certificates (NATS actors): the CSR as received, the signed certificate.
    csr: Mapped[str | None] = mapped_column(sa.Text)
    csr_origin: Mapped[str | None] = mapped_column(sa.String(16))
    certificate: Mapped[str | None] = mapped_column(sa.Text)
    cert_fingerprint: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    cert_not_after: Mapped[datetime | None]
    cert_reset: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = updated_column()

    actors: Mapped[list[Actor]] = relationship(
        back_populates="account", cascade="all, delete-orphan", passive_deletes=True
    )


class Actor(Base):
    __tablename__ = "actors"
    __table_args__ = (
        sa.Index("ix_actors_roles", "roles", postgresql_using="gin"),
        sa.Index("ix_actors_account_id_name", "account_id", "name"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    account_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("accounts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(sa.String(255), unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    kind: Mapped[ActorKind] = mapped_column(str_enum(ActorKind, "actor_kind"))
    status: Mapped[ActorStatus] = mapped_column(str_enum(ActorStatus, "actor_status"))
    roles: Mapped[list[str]] = mapped_column(
        pg.ARRAY(sa.String(255)), default=list, server_default="{}"
    )
    config: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    online: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    unresponsive: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    last_seen: Mapped[datetime | None]
    # Webhook delivery state: set when failures (or a 410) suspend the webhook; a probe
    # schedule brings it back.
    webhook_suspended_at: Mapped[datetime | None]
    webhook_suspended_reason: Mapped[str | None] = mapped_column(sa.Text)
    # When the next probe of a webhook suspended by failures is due; NULL while the webhook
    # is active or was disabled by an operator (no probes then).
    webhook_probe_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = updated_column()

    account: Mapped[Account] = relationship(back_populates="actors")


class SessionToken(Base):
    """Short-lived API keys an account asks for over NATS (ClientAPI.GetSessionToken): they
    act for the account over HTTP until they expire or are invalidated."""

    __tablename__ = "session_tokens"

    id: Mapped[uuid.UUID] = uuid_pk()
    account_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    lookup: Mapped[str] = mapped_column(sa.String(16), unique=True)
    hash: Mapped[str] = mapped_column(sa.String(64))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = now_column()
