from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.models.enums import EnvelopeStatus, ProcessStatus


class EmissionRead(BaseModel):
    envelope_id: uuid.UUID
    process_id: uuid.UUID
    status: ProcessStatus


class EventDeclaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = None
    type: str = Field(min_length=1, max_length=255)
    encoding: str = Field("text", pattern="^(text|base64|json)$")


class UploadCreate(BaseModel):
    """Open an envelope to upload in fragments: declare its events, then append items."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID | None = None
    events: list[EventDeclaration] = Field(min_length=1, max_length=10_000)


class ItemsAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(min_length=1)


class EventRead(BaseModel):
    id: uuid.UUID
    position: int
    type: str
    encoding: str
    item_count: int
    size_bytes: int
    complete: bool
    items_url: str


class EnvelopeRead(BaseModel):
    id: uuid.UUID
    status: EnvelopeStatus
    status_reason: str | None
    emitter_id: uuid.UUID | None
    process_id: uuid.UUID | None
    node_id: str | None
    output: str | None
    event_count: int
    item_count: int
    size_bytes: int
    created_at: datetime
    last_fragment_at: datetime
    completed_at: datetime | None
    events: list[EventRead]


class UploadRead(BaseModel):
    envelope_id: uuid.UUID
    status: EnvelopeStatus
    events: list[EventRead]
    stall_deadline: datetime


class AppendRead(BaseModel):
    envelope_id: uuid.UUID
    event_id: uuid.UUID
    items_received: int
    envelope_item_count: int
    envelope_size_bytes: int
    stall_deadline: datetime


class ItemPage(BaseModel):
    event_id: uuid.UUID
    encoding: str
    items: list[Any]
    next_cursor: str | None


class EmissionResult(BaseModel):
    """One envelope of a batch: `status` 202 with its `emission`, or the `problem` (RFC 9457)
    that refused it (nothing of it is stored; the others are not affected)."""

    index: int = Field(description="the envelope's place in the batch, from 0")
    status: int
    emission: EmissionRead | None = None
    problem: dict[str, Any] | None = None
    replayed: bool = Field(
        False, description="answered from an earlier emission with the same idempotency_key"
    )


class EmissionBatchRead(BaseModel):
    results: list[EmissionResult]
