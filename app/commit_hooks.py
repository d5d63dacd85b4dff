"""What a unit of work does once its transaction commits, and only then: callbacks (metrics,
anything that must not count work that was rolled back) and wake-up keys handed to the
session's notifier (`app.bus.notify`, given to the sessions by `app.db.Database`). A rollback
forgets both."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

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


def notify_after_commit(session: AsyncSession | Session, key: str) -> None:
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_PENDING, set()).add(key)


def on_commit(session: AsyncSession | Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the transaction commits (metrics, anything that must not count
    work that was rolled back)."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    sync.info.setdefault(_CALLBACKS, []).append(callback)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for callback in session.info.pop(_CALLBACKS, ()):
        try:
            callback()
        except Exception:
            log.exception("after-commit callback failed")
    keys = session.info.pop(_PENDING, None)
    notifier: Publisher | None = session.info.get(NOTIFIER)
    if keys and notifier is not None:
        notifier.publish(sorted(keys))


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_CALLBACKS, None)
