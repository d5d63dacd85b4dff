"""Wake-ups for long-polls: "a request is due for actor X", "process Y changed".

Code that changes state calls `notify_after_commit(session, key)` (`app.commit_hooks`); once
the transaction commits, local waiters wake and the key is handed to `remote` (the NATS
doorbell, so waiters on other replicas wake too). A waiter always re-reads the database: a
wake-up is a hint, never the data, so a lost one only costs the poll interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from app.commit_hooks import notify_after_commit
from app.models import Account, Actor, Pipeline, SessionToken

log = logging.getLogger(__name__)

ANY = "*"  # wait(ANY) wakes on every key
# Requests for actors connected over NATS are due: the NATS dispatcher claims them.
NATS_WORK = "nats.work"
# Accounts, keys, actors or pipelines changed: caches of them are dropped (app.store.cache).
CONFIG = "config"


def actor_key(actor_id: uuid.UUID) -> str:
    return f"actor.{actor_id}"


def process_key(process_id: uuid.UUID) -> str:
    return f"process.{process_id}"


class Notifier:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)
        self.remote: Callable[[list[str]], Awaitable[None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Raised by every committed change of accounts, actors or pipelines (CONFIG).
        self.generation = 0
        self._outgoing: set[str] = set()
        self._ringing = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def wake_local(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        if CONFIG in keys:
            self.generation += 1
        if keys:
            for waiter in self._waiters.get(ANY, ()):
                waiter.set()
        for key in keys:
            for waiter in self._waiters.get(key, ()):
                waiter.set()

    def publish(self, keys: list[str]) -> None:
        """Called after a commit: wake here and on the other replicas. The keys of the
        commits of one turn of the event loop go out together, in one doorbell ring."""
        self.wake_local(keys)
        if self.remote is None or self._loop is None:
            return
        self._outgoing.update(keys)
        if not self._ringing:
            self._ringing = True
            task = self._loop.create_task(self._send_remote())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def _send_remote(self) -> None:
        await asyncio.sleep(0)  # let the other commits of this turn add their keys
        keys = sorted(self._outgoing)
        self._outgoing.clear()
        self._ringing = False
        if self.remote is None:
            return
        try:
            await self.remote(keys)
        except Exception as exc:
            log.debug("doorbell not sent: %s", exc)

    async def wait(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait for a wake-up on `key`; False on timeout."""
        waiter = asyncio.Event()
        self._waiters[key].add(waiter)
        try:
            return await wait_set(waiter, timeout)
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[key]


async def wait_set(event: asyncio.Event, timeout: float) -> bool:  # noqa: ASYNC109
    """Wait for `event` at most `timeout` seconds; whether it is set. A cancellation that
    comes as the event is set ends the wait cancelled: Python 3.11's `asyncio.wait_for`
    returned the event's result then and dropped the cancellation, so a duty's loop waiting
    for its next wake-up went on after the shutdown had cancelled it (seen: a webhook
    dispatcher going round on a closed pool)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


def _config_classes() -> tuple[type, ...]:
    return (Account, Actor, Pipeline, SessionToken)


@event.listens_for(Session, "before_flush")
def _config_flushed(session: Session, _context: object, _instances: object) -> None:
    """A change of an account, key, actor or pipeline drops the caches once committed."""
    classes = _config_classes()
    for obj in (*session.new, *session.dirty, *session.deleted):
        if isinstance(obj, classes):
            notify_after_commit(session, CONFIG)
            return


@event.listens_for(Session, "do_orm_execute")
def _config_statement(state: ORMExecuteState) -> None:
    if state.is_select or state.execution_options.get("xbus_cache_neutral"):
        return
    classes = _config_classes()
    if any(mapper.class_ in classes for mapper in state.all_mappers):
        notify_after_commit(state.session, CONFIG)
