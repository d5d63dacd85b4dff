from __future__ import annotations

import enum
import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from app.models.enums import AttemptOutcome, RequestChannel, RequestStatus


class DeliveryRead(BaseModel):
    """One webhook attempt."""

    id: int
    request_id: uuid.UUID
    process_id: uuid.UUID | None
    node_id: str | None
    actor_id: uuid.UUID | None
    attempt: int = Field(description="1 for the first attempt of the request")
    started_at: datetime
    duration_ms: float | None
    status_code: int | None = Field(description="the answer's status; null: no answer")
    outcome: AttemptOutcome = Field(
        description="success, running (the actor posts its state later), retry (sent again "
        "later) or failure"
    )
    error: str | None = Field(description="why the attempt did not succeed")
    response_excerpt: str | None = Field(description="the first bytes of the answer")


class DeliveryPage(BaseModel):
    items: list[DeliveryRead]
    next_cursor: str | None


class WebhookState(enum.StrEnum):
    ACTIVE = "active"  # delivering
    SUSPENDED = "suspended"  # by failures: probed, comes back by itself
    DISABLED = "disabled"  # by an operator: until enabled


class WebhookRead(BaseModel):
    """The webhook of an actor: its state and its queue."""

    actor_id: uuid.UUID
    actor_name: str
    state: WebhookState
    suspended_at: datetime | None
    reason: str | None = Field(description="why the webhook is suspended or disabled")
    next_probe_at: datetime | None = Field(description="when a suspended webhook is tried again")
    pending: int = Field(description="webhook requests waiting to be sent")
    in_flight: int = Field(
        description="webhook requests being sent, or answered and their outcome not yet recorded"
    )
    running: int = Field(description="requests the actor said it is working on")


class RetryRead(BaseModel):
    request_id: uuid.UUID
    channel: RequestChannel
    status: RequestStatus
    available_at: datetime = Field(description="when the request is due")
    attempts: int
    max_attempts: int
