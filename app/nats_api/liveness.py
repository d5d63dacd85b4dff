"""Signs of life of NATS actors: an actor marked offline because it stopped answering
(`unresponsive`) comes back online on its next call to any Xbus service, not only on
ActorReady. An actor that said ActorLeaving stays offline (it is not `unresponsive`).

One conditional UPDATE per actor at most every `RECHECK` seconds on this replica (it changes
a row only for an actor marked unresponsive); the dispatcher that marks an actor forgets its
last check, so the next call of that actor on this replica is checked at once."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from app.bus.notify import CONFIG, NATS_WORK, actor_key
from app.commit_hooks import notify_after_commit
from app.state import AppState
from app.store.connection import driver_connection

log = logging.getLogger(__name__)

RECHECK = 2.0
_BACK_TEXT = "actor {name} calls the bus again: back online"
# The text's {name} is replaced in SQL (a name read from PostgreSQL is clean text already).
_BACK_ONLINE = """
WITH back AS (
    UPDATE actors SET online = true, unresponsive = false, last_seen = $2, updated_at = $2
    WHERE id = $1 AND unresponsive RETURNING name
),
told AS (
    INSERT INTO log_entries (time, level, text, actor_id, processing_error)
    SELECT $2, 'notice', replace($3::text, '{name}', name), $1, false FROM back
)
SELECT name FROM back"""
_MAX_TRACKED = 100_000


class Liveness:
    def __init__(self, state: AppState) -> None:
        self.state = state
        self._checked: dict[uuid.UUID, float] = {}

    def forget(self, actor_id: uuid.UUID) -> None:
        """This replica just marked the actor: check its next call at once."""
        self._checked.pop(actor_id, None)

    async def seen(self, raw_id: str) -> None:
        """A call from the actor `raw_id` (a subject parameter): bring it back online if it
        was marked offline for not answering. Never fails the call it comes with."""
        try:
            actor_id = uuid.UUID(raw_id)
        except ValueError:
            return
        now = time.monotonic()
        last = self._checked.get(actor_id)
        if last is not None and now - last < RECHECK:
            return
        if len(self._checked) > _MAX_TRACKED:
            self._checked.clear()
        self._checked[actor_id] = now
        try:
            now_utc = datetime.now(UTC)
            async with self.state.db.working() as work:
                # One statement, its own transaction: the actor back online and the log line.
                conn = await driver_connection(work, begin=False)
                name = await conn.fetchval(_BACK_ONLINE, actor_id, now_utc, _BACK_TEXT)
                if name is None:
                    return
                text = _BACK_TEXT.format(name=name)
                # Drops the caches only when it changed the actor (a plain UPDATE does not).
                for key in (CONFIG, actor_key(actor_id), NATS_WORK):
                    notify_after_commit(work, key)
            log.info("%s", text)
        except Exception as exc:  # the call itself goes on; the next one checks again
            self._checked.pop(actor_id, None)
            log.warning("sign of life of actor %s not recorded: %s", actor_id, exc)
