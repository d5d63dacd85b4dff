from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from app.models.enums import LogLevel, NodeStatus, PostmortemStatus, ProcessStatus
from app.requests.schemas import RequestSummary


class Postmortem(BaseModel):
    level: LogLevel
    status: PostmortemStatus
    comment: str | None
    changed_at: datetime | None


class NodeRead(BaseModel):
    node_id: str
    type: str | None
    status: NodeStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    started_at: datetime | None
    ended_at: datetime | None
    requests: list[RequestSummary]


class ProcessRead(BaseModel):
    id: uuid.UUID
    status: ProcessStatus
    status_reason: str | None
    pipeline_id: uuid.UUID | None
    pipeline_name: str | None
    pipeline_version: str | None
    trigger_envelope_id: uuid.UUID | None
    emitter_id: uuid.UUID | None
    emitter_name: str | None
    group_id: uuid.UUID | None
    replay_of: uuid.UUID | None
    created_at: datetime
    status_changed_at: datetime
    nodes_state_changed_at: datetime | None
    ended_at: datetime | None
    result_acked: bool
    postmortem: Postmortem | None


class ProcessDetail(ProcessRead):
    nodes: list[NodeRead]


class ProcessPage(BaseModel):
    items: list[ProcessRead]
    next_cursor: str | None


class LogRead(BaseModel):
    id: int
    time: datetime
    level: LogLevel
    text: str
    node_id: str | None
    actor_id: uuid.UUID | None
    envelope_id: uuid.UUID | None
    request_id: uuid.UUID | None


class LogPage(BaseModel):
    items: list[LogRead]
    next_cursor: str | None
