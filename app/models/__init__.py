"""SQLAlchemy models, one module per table family. Importing this package registers them all
on `Base.metadata` (Alembic and the tests rely on that)."""

from app.models.accounts import Account, Actor, SessionToken
from app.models.base import Base
from app.models.console import ConsoleSession
from app.models.envelopes import Envelope, Event, IdempotencyKey, Item
from app.models.pipelines import Pipeline
from app.models.processes import (
    LogEntry,
    Process,
    ProcessNode,
    process_count_deltas,
    process_counts,
)
from app.models.requests import ActorRequest, DeliveryAttempt

__all__ = [
    "Account",
    "Actor",
    "ActorRequest",
    "Base",
    "ConsoleSession",
    "DeliveryAttempt",
    "Envelope",
    "Event",
    "IdempotencyKey",
    "Item",
    "LogEntry",
    "Pipeline",
    "Process",
    "ProcessNode",
    "SessionToken",
    "process_count_deltas",
    "process_counts",
]
