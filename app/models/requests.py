from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_column, str_enum, updated_column, uuid_pk
from app.models.enums import AttemptOutcome, RequestChannel, RequestStatus


class ActorRequest(Base):
    """One unit of durable work: deliver these input envelopes to this actor for this node
    of this process. Claimed with `FOR UPDATE SKIP LOCKED`, so replicas share the work."""

    __tablename__ = "requests"
    __table_args__ = (
        # A lease reads an actor's pending requests oldest first and stops at its limit.
        sa.Index(
            "ix_requests_due",
            "actor_id",
            "available_at",
            "created_at",
            "id",
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # The webhook claim's own (its plan whatever the statistics say of the channel).
        sa.Index(
            "ix_requests_webhook_due",
            "actor_id",
            "available_at",
            "created_at",
            "id",
            postgresql_where=sa.text("status = 'pending' AND channel = 'webhook'"),
        ),
        sa.Index(
            "ix_requests_lease",
            "lease_expires_at",
            postgresql_where=sa.text("status IN ('leased', 'running')"),
        ),
        sa.Index("ix_requests_process_id_node_id", "process_id", "node_id"),
        # "which requests handed out this envelope" (envelope read access)
        sa.Index(
            "ix_requests_inputs",
            "inputs",
            postgresql_using="gin",
            postgresql_ops={"inputs": "jsonb_path_ops"},
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    process_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("processes.id", ondelete="CASCADE"))
    node_id: Mapped[str] = mapped_column(sa.String(128))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("actors.id", ondelete="SET NULL"), index=True
    )
    channel: Mapped[RequestChannel] = mapped_column(str_enum(RequestChannel, "request_channel"))
    status: Mapped[RequestStatus] = mapped_column(str_enum(RequestStatus, "request_status"))
    # [{"name": input port, "envelope_id": uuid}]
    inputs: Mapped[list[Any]]
    # Outputs a NATS worker wrote (Broker.Output) before it reported success:
    # {output port: envelope id}.
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    max_attempts: Mapped[int]
    available_at: Mapped[datetime] = now_column()
    lease_expires_at: Mapped[datetime | None]
    # When the last attempt was leased (migration 0009): the timeline's "taken at".
    leased_at: Mapped[datetime | None]
    leased_by: Mapped[str | None] = mapped_column(sa.String(255))
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = updated_column()
    ended_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    """One webhook (or other push) attempt of a request, for the operator's attempt log."""

    __tablename__ = "delivery_attempts"
    __table_args__ = (sa.Index("ix_delivery_attempts_actor_id_id", "actor_id", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    request_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("requests.id", ondelete="CASCADE"), index=True
    )
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    attempt: Mapped[int]
    started_at: Mapped[datetime] = now_column()
    duration_ms: Mapped[float | None]
    status_code: Mapped[int | None]
    outcome: Mapped[AttemptOutcome] = mapped_column(str_enum(AttemptOutcome, "attempt_outcome"))
    error: Mapped[str | None] = mapped_column(sa.Text)
    response_excerpt: Mapped[str | None] = mapped_column(sa.Text)
