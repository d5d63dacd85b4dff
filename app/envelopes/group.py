"""Group commit of emissions.

Envelopes emitted one per request while a group is being written wait for the next group:
each group is one transaction (one statement for all its envelopes, processes, nodes,
requests and log lines; one WAL flush), and each emitter is answered once the group that
holds its envelope has committed, so "202 only once stored" holds. Nothing waits on
purpose: alone, an envelope is a group of one, written at once by its own request (in the
request's unit of work: no task, no second one); under load, a group is what arrived while
the previous one was written (at most `most` envelopes).

Only envelopes that cannot conflict are grouped: no id chosen by the client (the ids are
new), no idempotency key, no items left for COPY (a large envelope). The others are written
by the request itself, as before. A group that fails (the database went away) fails each
of its emissions with the same error: none of them is stored, each emitter gets the answer
a lone emission would have had (503, retry)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.bus.director import Director, Emitter, Planned, ProcessRow
from app.db import Database
from app.envelopes.codec import EnvelopeData
from app.metrics import EMISSION_GROUP_SIZE
from app.store.connection import Unit


@dataclass(slots=True)
class _Waiting:
    emitter: Emitter
    planned: Planned
    started: asyncio.Future[ProcessRow]


class EmissionGroups:
    def __init__(self, db: Database, director: Director, most: int) -> None:
        self.db = db
        self.director = director
        self.most = most
        self._queue: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self._alone = 0  # lone emissions being written by their own requests

    @staticmethod
    def takes(envelope: EnvelopeData, planned: Planned) -> bool:
        """Whether this envelope may be written in a group (it cannot conflict)."""
        rows = planned[0]
        return (
            envelope.id is None and not rows.copied and all(e.id is None for e in envelope.events)
        )

    async def start(
        self, emitter: Emitter, planned: Planned, session: Unit | None = None
    ) -> ProcessRow:
        """Store this routed envelope with its process in the next group; return its process
        once the group has committed. With the request's unit of work (`session`) and nothing
        else being written, the envelope is written and committed in that unit, at once
        (emissions that come meanwhile form the next group); otherwise the unit is committed first
        (its connection goes back to the pool: requests waiting on a group while holding
        connections could starve the group's writer of one)."""
        if session is not None and self._writer is None and not self._queue and not self._alone:
            return await self._write_alone(session, emitter, planned)
        if session is not None:
            await session.commit()
        started: asyncio.Future[ProcessRow] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(emitter, planned, started))
        self._wake_writer()
        # A request cancelled meanwhile does not take its envelope out of a group being
        # written: it is stored or not with the others, like a lone emission past its send.
        return await asyncio.shield(started)

    async def _write_alone(self, session: Unit, emitter: Emitter, planned: Planned) -> ProcessRow:
        self._alone += 1
        try:
            EMISSION_GROUP_SIZE.observe(1)
            [process] = await self.director.start_many(session, [(emitter, planned)])
            await session.commit()
            return process
        finally:
            self._alone -= 1
            self._wake_writer()

    def _wake_writer(self) -> None:
        """Start the group writer for what is queued, unless it runs already or a lone
        emission is being written (its end starts it: what came meanwhile is one group)."""
        if self._queue and self._writer is None and not self._alone:
            self._writer = asyncio.create_task(self._write_all(), name="emission-groups")

    async def close(self) -> None:
        """Write what is queued, then stop (at shutdown)."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_all(self) -> None:
        try:
            while self._queue:
                group, self._queue = self._queue[: self.most], self._queue[self.most :]
                await self._write(group)
        finally:
            self._writer = None
            for waiting in self._queue:  # only when cancelled: nothing of these was written
                if not waiting.started.done():
                    waiting.started.set_exception(asyncio.CancelledError())
            self._queue = []

    async def _write(self, group: list[_Waiting]) -> None:
        EMISSION_GROUP_SIZE.observe(len(group))
        try:
            async with self.db.working() as work:
                processes = await self.director.start_many(
                    work, [(w.emitter, w.planned) for w in group]
                )
        except BaseException as error:
            for waiting in group:
                if not waiting.started.done():
                    waiting.started.set_exception(error)
            if not isinstance(error, Exception):
                raise  # cancelled (shutdown): stop here
            return
        for waiting, process in zip(group, processes, strict=True):
            if not waiting.started.done():
                waiting.started.set_result(process)
