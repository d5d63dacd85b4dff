from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_column, str_enum, uuid_pk
from app.models.enums import EnvelopeStatus


class Envelope(Base):
    """An envelope, stored as it arrives: fragment by fragment, one row per item, so size
    never needs to fit in memory."""

    __tablename__ = "envelopes"
    __table_args__ = (
        sa.Index(
            "ix_envelopes_receiving_last_fragment_at",
            "last_fragment_at",
            postgresql_where=sa.text("status = 'receiving'"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    # References that must never block deleting the actor or process they name.
    emitter_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("actors.id", ondelete="SET NULL"), index=True
    )
    process_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    node_id: Mapped[str | None] = mapped_column(sa.String(128))
    output: Mapped[str | None] = mapped_column(sa.String(64))
    status: Mapped[EnvelopeStatus] = mapped_column(str_enum(EnvelopeStatus, "envelope_status"))
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    declared_event_ids: Mapped[list[Any] | None]
    event_count: Mapped[int] = mapped_column(default=0, server_default="0")
    item_count: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = now_column()
    last_fragment_at: Mapped[datetime] = now_column()
    completed_at: Mapped[datetime | None] = mapped_column(index=True)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("envelope_id", "position", name="uq_events_envelope_id_position"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    envelope_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("envelopes.id", ondelete="CASCADE")
    )
    position: Mapped[int]
    type: Mapped[str] = mapped_column(sa.String(255))
    encoding: Mapped[str] = mapped_column(sa.String(16), default="text", server_default="text")
    # Reception progress (fragments): next expected fragment index, items so far, the
    # running CRC-32C, and the announced item count once the event is closed.
    next_index: Mapped[int] = mapped_column(sa.BigInteger, default=1, server_default="1")
    items_received: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    crc: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")
    item_count: Mapped[int | None] = mapped_column(sa.BigInteger)
    # The sender may announce the checksum before the last item arrives (python-xbus does).
    checksum: Mapped[int | None] = mapped_column(sa.BigInteger)
    complete: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger, default=0, server_default="0")


class Item(Base):
    __tablename__ = "items"

    event_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("events.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    data: Mapped[bytes] = mapped_column(sa.LargeBinary)


class IdempotencyKey(Base):
    """`Idempotency-Key` of an emission: the same key and body answer the same, once."""

    __tablename__ = "idempotency_keys"

    emitter_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("actors.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    body_hash: Mapped[str] = mapped_column(sa.String(64))
    status_code: Mapped[int]
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), index=True
    )
