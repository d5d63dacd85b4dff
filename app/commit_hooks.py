"""What a unit of work does once its transaction commits, and only then: callbacks (metrics,
anything that must not count work that was rolled back) and wake-up keys handed to the
unit's notifier (`app.bus.notify`, given to the units by `app.db.Database`). A rollback
forgets both. A unit is a SQLAlchemy session, or a `Work` of `app.store.connection` (a pooled
asyncpg connection without the ORM): both keep what is pending in their `info`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_PENDING = "xbus_notify"
_CALLBACKS = "xbus_on_commit"
# The key of a session's notifier in its `info`.
NOTIFIER = "xbus_notifier"


class Publisher(Protocol):
    """What a commit hands its wake-up keys to (`app.bus.notify.Notifier`)."""

    def publish(self, keys: list[str]) -> None: ...


class HasInfo(Protocol):
    """A unit of work other than a session: what it keeps for after its commit."""

    info: dict[str, Any]


def _info(unit: AsyncSession | Session | HasInfo) -> dict[str, Any]:
    if isinstance(unit, AsyncSession):
        return unit.sync_session.info
    return unit.info


def notify_after_commit(unit: AsyncSession | Session | HasInfo, key: str) -> None:
    _info(unit).setdefault(_PENDING, set()).add(key)


def on_commit(unit: AsyncSession | Session | HasInfo, callback: Callable[[], None]) -> None:
    """Run `callback` once the transaction commits (metrics, anything that must not count
    work that was rolled back)."""
    _info(unit).setdefault(_CALLBACKS, []).append(callback)


def committed(info: dict[str, Any]) -> None:
    """A unit's transaction committed: run its callbacks, hand its keys to its notifier."""
    for callback in info.pop(_CALLBACKS, ()):
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")
    keys = info.pop(_PENDING, None)
    notifier: Publisher | None = info.get(NOTIFIER)
    if keys and notifier is not None:
        notifier.publish(sorted(keys))


def rolled_back(info: dict[str, Any]) -> None:
    info.pop(_PENDING, None)
    info.pop(_CALLBACKS, None)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    committed(session.info)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    rolled_back(session.info)
