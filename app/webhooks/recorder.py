"""Recording webhook attempts' outcomes, delivered answers in groups.

An attempt's outcome is its attempt row and what its answer changes, committed together
(`Outcomes`). Recorded one by one, each delivery cost its own read, write and commit on one
of the dispatcher's database connections, and waited for one: at a few hundred deliveries a
second the attempts spent more time recording than sending. Here a delivery whose answer
stores no envelope (`Outcomes.groupable`: most of them) joins a group: the deliveries that
end while a group is being written are written next, together, by one task (one: the next
group gathers while one is written; with two or four, drains were no faster and PostgreSQL
busier) (`Outcomes.record_group`): their requests read in one statement, without a lock,
then the answers with their attempts' rows in one round trip and one commit, each written
only if its process and request are still as read and no other transaction holds them (not
waited for); one that is not (another answer came first, another request of its process is
in the group, a transaction holds its process) is recorded again alone. No delay is added: a
lone delivery is written at once, and groups grow only while writes are under way; a group
of one is recorded as an attempt alone. Each attempt learns its own verdict once its group
committed.

A delivery's exchange with its endpoint is over once it joins a group: it is no longer in
flight to its actor, and `released` (the dispatcher's wake-up) lets another request take its
slot while its outcome is written (`delivered` lists them, up to the actor's concurrency, for
the dispatcher's count of the requests in flight; other replicas count them until they are
written). Any other outcome keeps its slot until it is recorded: a failing endpoint gets no
more attempts than its concurrency before its failures are written (and its webhook
suspended, if they say so).

A group that fails on a statement (a deadlock, a row refused) rolled back whole and is
written again one attempt at a time, each in a unit of its own, so one attempt never sinks
the others; a group whose connection was lost may have committed, and its attempts fail as
lone ones would (their leases bring the requests back), rather than be written twice.
Every other outcome (a failure, a retry, a probe, an answer with outputs) is recorded on
its own, as before. Every unit, a group's or one attempt's, holds one of `units` database
slots: the attempts never take more of the hot routes' connections than that.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from app.db import Database
from app.store.connection import connection_lost
from app.webhooks.service import AttemptResult, Job, Outcomes, Verdict

log = logging.getLogger(__name__)

# One delivery's place in a group: the attempt, its result, its verdict, and who waits.
_Waiting = tuple[Job, AttemptResult, Verdict, "asyncio.Future[Verdict]"]


class Recorder:
    def __init__(
        self,
        db: Database,
        outcomes: Outcomes,
        units: int,
        group_max: int,
        released: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.outcomes = outcomes
        self._units = asyncio.Semaphore(units)
        self._writing = False  # the writer runs (set and cleared without an await between)
        self._group_max = group_max
        self._waiting: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._released = released
        self._delivered: dict[uuid.UUID, Job] = {}

    def delivered(self) -> tuple[list[uuid.UUID], list[int]]:
        """The attempts delivered (their exchange over) whose outcomes are being recorded in
        groups, as their requests' ids and attempt numbers: still leased until then, no
        longer in flight to their actors. At most an actor's `concurrency` of them: beyond,
        they count as in flight again, so that writes that stall hold the sending back (a
        stall longer than the leases sends again only what they let through)."""
        ids: list[uuid.UUID] = []
        attempts: list[int] = []
        left: dict[uuid.UUID, int] = {}
        for job in self._delivered.values():
            room = left.setdefault(job.actor_id, job.settings.concurrency)
            if room > 0:
                left[job.actor_id] = room - 1
                ids.append(job.request_id)
                attempts.append(job.attempt)
        return ids, attempts

    async def record(self, job: Job, result: AttemptResult) -> Verdict:
        """Record an attempt's outcome; its verdict once committed."""
        verdict = self.outcomes.judge(job, result)
        if not self.outcomes.groupable(job, verdict):
            return await self._alone(job, result, verdict)
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting.append((job, result, verdict, done))
        if not self._writing:
            self._writing = True
            self._start(self._write(), "webhook-outcomes")
        self._delivered[job.request_id] = job
        if self._released is not None:
            self._released()
        try:
            return await done
        finally:
            if self._delivered.get(job.request_id) is job:
                del self._delivered[job.request_id]

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop the writer and the lone records (after the attempts that wait for them):
        whoever still waits is cancelled, and the leases of their requests bring them back."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for *_, done in self._waiting:
            done.cancel()
        self._waiting.clear()

    async def _alone(self, job: Job, result: AttemptResult, verdict: Verdict) -> Verdict:
        async with self._units, self.db.working() as session:
            return await self.outcomes.record(session, job, result, verdict)

    async def _write(self) -> None:
        group: list[_Waiting] = []
        try:
            while self._waiting:
                group = self._waiting[: self._group_max]
                del self._waiting[: self._group_max]
                await self._write_group(group)
                group = []  # answered, or handed to the lone records' tasks
        finally:
            self._writing = False
            for *_, done in group:  # a group cut short (the writer cancelled)
                if not done.done():
                    done.cancel()

    async def _write_group(self, group: list[_Waiting]) -> None:
        if len(group) > 1:
            try:
                async with self._units, self.db.working() as session:
                    flags = await self.outcomes.record_group(
                        session, [(job, result, verdict) for job, result, verdict, _ in group]
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if connection_lost(exc):
                    # The group may have committed before the connection went: recorded
                    # again, its attempts' rows would be doubled. Each attempt fails as a
                    # lone one would; the leases bring their requests back.
                    for *_, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    return
                # A statement refused: the group's transaction rolled back, nothing of it
                # was written.
                log.warning(
                    "recording %d webhook attempts together failed; recording each alone",
                    len(group),
                    exc_info=True,
                )
            else:
                for (_, _, verdict, done), flag in zip(group, flags, strict=True):
                    if flag is not None and not done.done():
                        done.set_result(verdict)
                resumed = set()
                for (job, *_), flag in zip(group, flags, strict=True):
                    if flag and job.actor_id not in resumed:  # once an actor
                        resumed.add(job.actor_id)
                        await self._resume(job)
                group = [
                    waiting for waiting, flag in zip(group, flags, strict=True) if flag is None
                ]
        # Alone, each in a task of its own (one may wait for a lock: the writer goes on): a
        # lone delivery, an answer the group's could not write, or a group that failed.
        for job, result, verdict, done in group:
            self._start(self._each(job, result, verdict, done), f"webhook-outcome-{job.request_id}")

    async def _resume(self, job: Job) -> None:
        """Delivered while its webhook was suspended: lift the suspension, after the answer's
        commit, as `Outcomes.record` does."""
        try:
            async with self._units, self.db.working() as session:
                await self.outcomes.resume(session, job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("could not resume the webhook of actor %s", job.actor_name)

    async def _each(
        self, job: Job, result: AttemptResult, verdict: Verdict, done: asyncio.Future[Verdict]
    ) -> None:
        try:
            verdict = await self._alone(job, result, verdict)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            if not done.done():
                done.set_exception(exc)
            return
        if not done.done():
            done.set_result(verdict)
