"""Every enumerated value of the domain, named as in Xbus (lower-case on the wire)."""

from __future__ import annotations

import enum


class AccountType(enum.StrEnum):
    ACTOR = "actor"
    USER = "user"
    GATEWAY = "gateway"


class AccountStatus(enum.StrEnum):
    PENDING = "pending"
    ENABLED = "enabled"
    DISABLED = "disabled"
    REJECTED = "rejected"


class ActorKind(enum.StrEnum):
    EMITTER = "emitter"
    WORKER = "worker"
    CONSUMER = "consumer"


class ActorStatus(enum.StrEnum):
    PENDING = "pending"
    ENABLED = "enabled"
    DISABLED = "disabled"
    REJECTED = "rejected"


class PipelineStatus(enum.StrEnum):
    DRAFT = "draft"
    ACTIVE = "active"
    INACTIVE = "inactive"


class EnvelopeStatus(enum.StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"
    ERROR = "error"
    STALLED = "stalled"


class ProcessStatus(enum.StrEnum):
    INITIAL = "initial"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    ERROR = "error"

    @property
    def final(self) -> bool:
        return self in (ProcessStatus.DONE, ProcessStatus.ERROR)


class NodeStatus(enum.StrEnum):
    WAITING = "waiting"  # not all connected inputs have an envelope yet
    RUNNING = "running"  # requests dispatched
    DONE = "done"
    ERROR = "error"
    CANCELED = "canceled"
    SKIPPED = "skipped"  # the process ended before any input reached it


class LogLevel(enum.StrEnum):
    NOTICE = "notice"
    WARNING = "warning"
    ERROR = "error"


class PostmortemStatus(enum.StrEnum):
    NEW = "new"
    OPENED = "opened"
    CLOSED = "closed"


class RequestStatus(enum.StrEnum):
    PENDING = "pending"  # due at available_at
    LEASED = "leased"  # handed to an actor (poll lease, webhook in flight, NATS sent)
    RUNNING = "running"  # the actor said it is working on it
    SUCCESS = "success"
    ERROR = "error"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (RequestStatus.SUCCESS, RequestStatus.ERROR, RequestStatus.CANCELED)


class RequestChannel(enum.StrEnum):
    POLL = "poll"
    WEBHOOK = "webhook"
    NATS = "nats"


class AttemptOutcome(enum.StrEnum):
    SUCCESS = "success"
    RUNNING = "running"
    RETRY = "retry"
    FAILURE = "failure"
