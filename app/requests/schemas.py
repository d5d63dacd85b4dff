from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models.enums import LogLevel, RequestChannel, RequestStatus


class RequestInput(BaseModel):
    name: str
    envelope_id: uuid.UUID
    envelope_url: str
    size_bytes: int
    item_count: int
    inline: bool = Field(
        description="false when the envelope is too large to inline: read it at envelope_url"
    )
    envelope: dict[str, Any] | None = Field(None, description="the envelope JSON, when inline")


class ActorRequestRead(BaseModel):
    """A request handed to an actor (polling answer and webhook body)."""

    request_id: uuid.UUID
    process_id: uuid.UUID
    node_id: str
    actor_id: uuid.UUID | None
    attempt: int
    lease_expires_at: datetime | None
    inputs: list[RequestInput]


class StateMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: LogLevel = LogLevel.NOTICE
    text: str = Field(max_length=65536)


class RequestStateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["running", "success", "error"]
    messages: list[StateMessage] = Field(default_factory=list, max_length=1000)
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="worker outputs: {output name: envelope JSON}"
    )


class RequestStateRead(BaseModel):
    request_id: uuid.UUID
    status: RequestStatus
    lease_expires_at: datetime | None


class RequestStateNextRead(RequestStateRead):
    """The state of `POST /requests/{id}/state`, with the requests `?next=N` leased."""

    next: list[ActorRequestRead] | None = Field(
        None,
        description="With `?next=N`: up to N due requests of the same actor, leased once the "
        "state was recorded, oldest first, as `GET /actors/{actor}/requests?max=N` leases "
        "them (empty when none is due, the actor is not enabled, or they could not be leased "
        "then: poll as usual); null without `?next`.",
    )


class RequestSummary(BaseModel):
    id: uuid.UUID
    node_id: str
    actor_id: uuid.UUID | None
    actor_name: str | None
    channel: RequestChannel
    status: RequestStatus
    attempts: int
    max_attempts: int
    created_at: datetime
    ended_at: datetime | None
    last_error: str | None
    lease_expires_at: datetime | None = Field(
        None, description="While leased or running: when the lease runs out"
    )
    leased_at: datetime | None = Field(
        None, description="When its last attempt was leased (taken by its actor)"
    )


class ActorRequestBatch(BaseModel):
    """Requests leased at once (`?max=M`), oldest first."""

    requests: list[ActorRequestRead]


class RequestStateItem(RequestStateIn):
    request_id: uuid.UUID


class RequestStatesIn(BaseModel):
    states: list[RequestStateItem] = Field(max_length=1000)


class RequestStateResult(BaseModel):
    """One state of a batch: its answer (`status` 200, `state`) or its problem (`status`
    4xx, `problem`, RFC 9457); a refused state changes nothing and sinks no other."""

    request_id: uuid.UUID
    status: int
    state: RequestStateRead | None = None
    problem: dict[str, Any] | None = None


class RequestStatesRead(BaseModel):
    results: list[RequestStateResult]
