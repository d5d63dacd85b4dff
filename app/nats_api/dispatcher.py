"""Requests to actors connected over NATS: claimed with SKIP LOCKED (replicas share the
work), sent with ActorAgent.Process, and their streamed states (RUNNING with log lines,
SUCCESS, ERROR) reported to the director. A job that detaches ends later with
Director.ProcessingEnd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import nrpc
import sqlalchemy as sa
from nats.aio.client import Client
from xbus import conn as xbus_conn  # type: ignore[import-untyped, unused-ignore]
from xbus import xbus_pb2

from app.bus.director import Director, Message, add_log
from app.bus.notify import NATS_WORK
from app.core.exceptions import XbusError
from app.models import Account, Actor, ActorRequest, Process
from app.models.enums import ActorStatus, LogLevel, RequestChannel, RequestStatus
from app.nats_api.convert import LOG_LEVEL_FROM_PB
from app.nats_api.liveness import Liveness
from app.nats_api.payload import held_envelopes, process_request
from app.nats_auth import server_inbox_prefix
from app.state import AppState
from app.store.connection import driver_connection
from app.store.processes import RequestRow

log = logging.getLogger(__name__)
pb: Any = xbus_pb2

RUNNING, SUCCESS, ERROR = 1, 2, 3
_BATCH = 50
_MAX_IN_FLIGHT = 200
# Envelopes up to this size come whole with the claim that leases their requests (one read
# less per delivery, at most _BATCH times this in memory a claim); larger ones are read a
# page at a time as their request is sent.
INLINE_MAX = 64 * 1024
# How often actors marked offline for not answering are tried again, and how many a pass.
PROBE_EVERY = 2.0
_PROBE_BATCH = 20


_DETACHED = """
UPDATE requests SET status = 'running', lease_expires_at = $2, updated_at = $3
WHERE id = $1 AND status = ANY($4::text[])"""


class NoResponders(ConnectionError):
    """Nobody listens on the actor's subject: nothing was delivered."""


def messages_of(state: Any) -> list[Message]:
    return [
        Message(LOG_LEVEL_FROM_PB.get(m.level, LogLevel.NOTICE), m.Text) for m in state.messages
    ]


class NatsDispatcher:
    def __init__(self, state: AppState, client: Client, liveness: Liveness) -> None:
        self.state = state
        self.client = client
        self.liveness = liveness
        self.holder = f"nats:{socket.gethostname()}"
        self.in_flight: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(_MAX_IN_FLIGHT)

    @property
    def director(self) -> Director:
        return self.state.director

    async def run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except Exception:
                log.exception("claiming NATS requests failed")
                claimed = []
            for request, rows in claimed:
                await self.slots.acquire()
                task = asyncio.create_task(self._deliver(request, rows))
                self.in_flight.add(task)
                task.add_done_callback(self._done)
            if len(claimed) < _BATCH:
                # Woken when requests for NATS actors are dispatched (on any replica); the
                # timeout catches the rest (an actor that came back, a retry now due).
                await self.state.notifier.wait(NATS_WORK, 0.5)

    async def probe_loop(self) -> None:
        """Actors marked offline for not answering come back when they call the bus, but a
        python-xbus consumer that reconnected (to another node of a cluster) calls nothing
        and announces nothing: one due request of each is tried again every PROBE_EVERY
        seconds. Nobody listening gives it back at once, uncounted; an answer brings the
        actor back online and its other requests follow."""
        while True:
            await asyncio.sleep(PROBE_EVERY)
            try:
                for actor_id in await self._to_probe():
                    async with self.state.db.working() as work:
                        leased = await self.director.lease(
                            work,
                            actor_id,
                            self.holder,
                            channels=(RequestChannel.POLL, RequestChannel.NATS),
                            moved_to=RequestChannel.NATS,
                            lease=timedelta(seconds=self.state.settings.request_lease),
                            inline_max=INLINE_MAX,
                        )
                    for request, rows in leased:
                        await self.slots.acquire()
                        task = asyncio.create_task(self._deliver(request, rows, probe=True))
                        self.in_flight.add(task)
                        task.add_done_callback(self._done)
            except Exception:
                log.exception("probing offline NATS actors failed")

    async def _to_probe(self) -> list[uuid.UUID]:
        """Enabled actors marked offline for not answering, of accounts that hold a NATS
        certificate, with a request due."""
        async with self.state.db.session() as session:
            due = (
                sa.select(ActorRequest.id)
                .where(
                    ActorRequest.actor_id == Actor.id,
                    ActorRequest.status == RequestStatus.PENDING,
                    ActorRequest.available_at <= datetime.now(UTC),
                )
                .exists()
            )
            rows = await session.execute(
                sa.select(Actor.id)
                .join(Account, Account.id == Actor.account_id)
                .where(
                    Actor.unresponsive.is_(True),
                    Actor.online.is_(False),
                    Actor.status == ActorStatus.ENABLED,
                    Account.certificate.is_not(None),
                    due,
                )
                .limit(_PROBE_BATCH)
            )
            return list(rows.scalars())

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.slots.release()

    async def stop(self) -> None:
        for task in list(self.in_flight):
            task.cancel()
        for task in list(self.in_flight):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _claim(self) -> list[tuple[RequestRow, list[Any]]]:
        async with self.state.db.working() as work:
            leased = await self.director.lease(
                work,
                None,
                self.holder,
                limit=_BATCH,
                moved_to=RequestChannel.NATS,
                lease=timedelta(seconds=self.state.settings.request_lease),
                inline_max=INLINE_MAX,
            )
        return leased

    async def _deliver(self, request: RequestRow, rows: list[Any], *, probe: bool = False) -> None:
        """Hand a request just leased (its row as the lease returned it, with the rows of its
        envelopes) to its actor."""
        request_id, actor_id = request.id, request.actor_id
        if actor_id is None:
            return
        unreadable: str | None = None
        async with self.state.db.working() as work:
            try:
                message = await process_request(
                    work,
                    request,
                    max_size=self.state.settings.nats_fragment_size,
                    held=held_envelopes(rows, INLINE_MAX),
                )
            except LookupError as exc:
                unreadable = str(exc)
        if unreadable is not None:
            await self._report(
                request_id, RequestStatus.ERROR, [Message(LogLevel.ERROR, unreadable)]
            )
            return
        subject = f"xbus.default.actoragent.{actor_id}.process"
        conn = xbus_conn.CustomInboxPrefixConn(self.client, server_inbox_prefix(actor_id))
        final = False
        try:
            async for msg in nrpc.streamed_reply_request(
                conn,
                subject,
                message.SerializeToString(),
                self.state.settings.nats_actor_timeout,
            ):
                if not msg.data:
                    if msg.headers and msg.headers.get("Status") == "503":
                        raise NoResponders("no responders")
                    continue
                if probe:
                    probe = False
                    await self.liveness.seen(str(actor_id))  # it answers: back online
                state = pb.ActorProcessingState.FromString(msg.data)
                if state.status == RUNNING:
                    await self._report(request_id, RequestStatus.RUNNING, messages_of(state))
                elif state.status in (SUCCESS, ERROR):
                    status = (
                        RequestStatus.SUCCESS if state.status == SUCCESS else RequestStatus.ERROR
                    )
                    await self._report(request_id, status, messages_of(state))
                    final = True
        except NoResponders:
            await self._unreachable(request_id, actor_id, "no responders", counted=False)
            return
        except (TimeoutError, ConnectionError) as exc:
            if not final:
                await self._unreachable(request_id, actor_id, str(exc) or type(exc).__name__)
            return
        except nrpc.exc.NrpcError as exc:
            await self._report(
                request_id, RequestStatus.ERROR, [Message(LogLevel.ERROR, str(exc.message))]
            )
            return
        except Exception as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            if hasattr(exc, "message") or type(exc).__name__ == "Error":
                await self._report(
                    request_id, RequestStatus.ERROR, [Message(LogLevel.ERROR, str(exc))]
                )
                return
            log.exception("delivering request %s over NATS failed", request_id)
            return
        if not final:
            await self._detached(request_id)

    async def _report(
        self, request_id: uuid.UUID, status: RequestStatus, messages: list[Message]
    ) -> None:
        try:
            async with self.state.db.working() as work:
                await self.director.report(
                    work, request_id, status, messages, {}, account_id=None, recorded_outputs=True
                )
        except XbusError as exc:
            log.info("state for request %s not recorded: %s", request_id, exc.detail)

    async def _detached(self, request_id: uuid.UUID) -> None:
        """The actor detached the job: it ends it later with Director.ProcessingEnd."""
        lease = timedelta(seconds=self.state.settings.nats_detached_lease)
        now = datetime.now(UTC)
        async with self.state.db.working() as work:
            conn = await driver_connection(work, begin=False)
            await conn.execute(
                _DETACHED,
                request_id,
                now + lease,
                now,
                [RequestStatus.LEASED.value, RequestStatus.RUNNING.value],
            )

    async def _unreachable(
        self, request_id: uuid.UUID, actor_id: uuid.UUID, why: str, *, counted: bool = True
    ) -> None:
        """No answer: the actor is marked offline (an error in the log) and the delivery
        counts as an attempt. Below the request's attempt limit it waits for the actor to
        come back (or for an HTTP poll); at the limit it ends in error, and its node with it
        (the reason in the process log and its postmortem). Nobody listening (`counted`
        False): nothing was delivered, the attempt is given back."""
        exhausted: str | None = None
        async with self.state.db.session() as session:
            actor = await session.get(Actor, actor_id)
            # The request locked before it is read (an answer committed meanwhile is seen,
            # not overwritten), its process key-shared first: the lock order of every writer
            # of a process (the process, then its requests), which the log line's foreign key
            # would otherwise take after the request's lock.
            await session.execute(
                sa.select(Process.id)
                .join(ActorRequest, ActorRequest.process_id == Process.id)
                .where(ActorRequest.id == request_id)
                .with_for_update(read=True, key_share=True, of=Process)
            )
            request = await session.get(
                ActorRequest, request_id, with_for_update=True, populate_existing=True
            )
            name = actor.name if actor else str(actor_id)
            if actor is not None and actor.online:
                actor.online = False
                actor.unresponsive = True
                log.error("actor %s marked offline after not responding (%s)", name, why)
            if request is not None and request.status == RequestStatus.LEASED:
                if counted and request.attempts >= request.max_attempts:
                    exhausted = (
                        f"actor {name} did not answer ({why}) on any of the "
                        f"{request.attempts} attempts"
                    )
                else:
                    request.status = RequestStatus.PENDING
                    request.channel = RequestChannel.POLL
                    request.lease_expires_at = None
                if not counted:
                    request.attempts = max(request.attempts - 1, 0)
                elif exhausted is None:
                    add_log(
                        session,
                        LogLevel.ERROR,
                        f"actor {name} marked offline after not responding ({why}); the "
                        f"request waits for it (attempt {request.attempts} of "
                        f"{request.max_attempts} used)",
                        process_id=request.process_id,
                        node_id=request.node_id,
                        actor_id=actor_id,
                        request_id=request_id,
                    )
        # Committed: the actor's next call on this replica is checked at once.
        self.liveness.forget(actor_id)
        if exhausted is not None:
            await self._report(
                request_id, RequestStatus.ERROR, [Message(LogLevel.ERROR, exhausted)]
            )
