"""Between the database models and the protobuf messages of the Xbus protocol."""

from __future__ import annotations

import uuid
from typing import Any

from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.models import Account, Actor, Process
from app.models.enums import (
    AccountStatus,
    AccountType,
    ActorKind,
    ActorStatus,
    LogLevel,
    ProcessStatus,
)
from app.store.processes import ProcessRow

pb: Any = xbus_pb2

ACCOUNT_TYPE = {AccountType.ACTOR: 1, AccountType.USER: 2, AccountType.GATEWAY: 3}
ACCOUNT_STATUS = {
    AccountStatus.PENDING: 1,
    AccountStatus.ENABLED: 2,
    AccountStatus.DISABLED: 3,
    AccountStatus.REJECTED: 3,
}
ACTOR_KIND = {ActorKind.CONSUMER: 0, ActorKind.EMITTER: 1, ActorKind.WORKER: 2}
ACTOR_STATUS = {
    ActorStatus.PENDING: 0,
    ActorStatus.ENABLED: 1,
    ActorStatus.DISABLED: 2,
    ActorStatus.REJECTED: 3,
}
PROCESS_STATUS = {
    ProcessStatus.INITIAL: 1,
    ProcessStatus.RUNNING: 2,
    ProcessStatus.PAUSED: 3,
    ProcessStatus.DONE: 4,
    ProcessStatus.ERROR: 5,
}
PROCESS_STATUS_FROM_PB = {v: k for k, v in PROCESS_STATUS.items()}
LOG_LEVEL_FROM_PB = {0: LogLevel.NOTICE, 1: LogLevel.WARNING, 2: LogLevel.ERROR}
LOG_LEVEL_TO_PB = {v: k for k, v in LOG_LEVEL_FROM_PB.items()}


def uuid_of(raw: bytes, what: str) -> uuid.UUID:
    if len(raw) != 16:
        raise ValueError(f"{what} must be 16 bytes (a UUID), got {len(raw)}")
    return uuid.UUID(bytes=raw)


def account_pb(account: Account) -> Any:
    return pb.Account(
        id=account.id.bytes,
        name=account.name,
        description=account.description,
        type=ACCOUNT_TYPE[account.type],
        status=ACCOUNT_STATUS[account.status],
        cert=account.certificate or "",
    )


def actor_pb(actor: Actor) -> Any:
    message = pb.Actor(
        id=actor.id.bytes,
        name=actor.name,
        description=actor.description,
        kind=ACTOR_KIND[actor.kind],
        status=ACTOR_STATUS[actor.status],
        accountID=actor.account_id.bytes,
        roles=list(actor.roles),
        online=actor.online,
        unresponsive=actor.unresponsive,
    )
    if actor.last_seen is not None:
        message.lastSeen.FromDatetime(actor.last_seen)
    for key, value in sorted(actor.config.items()):
        if key.endswith("secret"):
            continue
        message.config.add(key=key, value=str(value))
    return message


def process_pb(process: Process | ProcessRow) -> Any:
    message = pb.Process(
        id=process.id.bytes,
        status=PROCESS_STATUS[process.status],
        state=process.status_reason or "",
    )
    if process.group_id:
        message.groupID = process.group_id.bytes
    if process.replay_of:
        message.replayOf = process.replay_of.bytes
    if process.emitter_id:
        message.triggerEmitterID = process.emitter_id.bytes
    if process.trigger_envelope_id:
        message.triggerEnvelopeID = process.trigger_envelope_id.bytes
    if process.pipeline_id:
        message.pipelineID = process.pipeline_id.bytes
    message.createdAt.FromDatetime(process.created_at)
    return message
