"""The Xbus NATS services, as the python-nrpc handlers generated in python-xbus call them:
one method per protocol method, subject parameters first, then the request message."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import nrpc
import sqlalchemy as sa
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.accounts import keys
from app.accounts.principal import Principal
from app.bus.director import add_log
from app.bus.notify import actor_key
from app.commit_hooks import notify_after_commit
from app.core.exceptions import XbusError
from app.envelopes.access import readable_envelope
from app.envelopes.repository import items_page
from app.models import Account, Actor, ActorRequest, Process, SessionToken
from app.models.enums import AccountStatus, LogLevel, ProcessStatus, RequestStatus
from app.nats_api import assembly, broker
from app.nats_api.convert import (
    LOG_LEVEL_TO_PB,
    PROCESS_STATUS,
    PROCESS_STATUS_FROM_PB,
    account_pb,
    actor_pb,
    uuid_of,
)
from app.nats_api.dispatcher import messages_of
from app.nats_api.payload import Reader, events_of, fragments, process_request, seen
from app.state import AppState
from app.store.connection import Unit, driver_connection
from app.store.processes import ProcessRow

log = logging.getLogger(__name__)
pb: Any = xbus_pb2

_LIST_BATCH = 100
SESSION_TOKEN_DEFAULT = 3600
SESSION_TOKEN_MAX = 86400


def client_error(message: str) -> nrpc.exc.ClientError:
    return nrpc.exc.ClientError(message)


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise client_error(f"{what} {value!r} is not a UUID") from None


class Base:
    def __init__(self, state: AppState) -> None:
        self.state = state


class WhoAmIServer(Base):
    def __init__(self, state: AppState, protocol_check: Any) -> None:
        super().__init__(state)
        self.protocol_check = protocol_check

    async def WhoAmI(self, identifier: str) -> Any:
        async with self.state.db.session() as session:
            account = (
                await session.execute(sa.select(Account).where(Account.name == identifier))
            ).scalar_one_or_none()
            if account is None:
                raise client_error(f"no account {identifier!r}")
            await self.protocol_check(identifier)
            return account_pb(account)


class ClientAPIServer(Base):
    async def GetActors(self, accountID: str) -> Any:
        account_id = _uuid(accountID, "account")
        async with self.state.db.session() as session:
            actors = (
                await session.execute(
                    sa.select(Actor).where(Actor.account_id == account_id).order_by(Actor.name)
                )
            ).scalars()
            return pb.ClientGetActorsReply(actors=[actor_pb(a) for a in actors])

    async def GetSessionToken(self, accountID: str, req: Any) -> Any:
        """A short-lived API key for the account (HTTP), optionally invalidating a previous
        one: `expiresIn` seconds (default 1 hour, at most a day)."""
        account_id = _uuid(accountID, "account")
        lifetime = req.expiresIn or SESSION_TOKEN_DEFAULT
        if lifetime > SESSION_TOKEN_MAX:
            raise client_error(f"expiresIn must be at most {SESSION_TOKEN_MAX} seconds")
        async with self.state.db.session() as session:
            account = await session.get(Account, account_id)
            if account is None or account.status != AccountStatus.ENABLED:
                raise client_error(f"account {accountID} is unknown or not enabled")
            if req.invalidateToken:
                old = keys.digest(req.invalidateToken)
                await session.execute(
                    sa.delete(SessionToken).where(
                        SessionToken.account_id == account_id, SessionToken.hash == old.hash
                    )
                )
            await session.execute(
                sa.delete(SessionToken).where(SessionToken.expires_at < datetime.now(UTC))
            )
            token = keys.generate_key()
            digest = keys.digest(token)
            valid_until = datetime.now(UTC) + timedelta(seconds=lifetime)
            session.add(
                SessionToken(
                    account_id=account_id,
                    lookup=digest.lookup,
                    hash=digest.hash,
                    expires_at=valid_until,
                )
            )
        answer = pb.SessionToken(token=token)
        answer.validUntil.FromDatetime(valid_until)
        return answer


class SentinelServer(Base):
    async def _set_online(self, actorID: str, online: bool) -> None:
        actor_id = _uuid(actorID, "actor")
        async with self.state.db.session() as session:
            actor = await session.get(Actor, actor_id)
            if actor is None:
                return
            actor.online = online
            actor.unresponsive = False
            actor.last_seen = datetime.now(UTC)
            if online:
                notify_after_commit(session, actor_key(actor_id))
        log.info("actor %s %s", actorID, "ready" if online else "leaving")

    async def ActorReady(self, actorID: str) -> None:
        await self._set_online(actorID, True)

    async def ActorLeaving(self, actorID: str) -> None:
        await self._set_online(actorID, False)

    # Survey is published by the server (NatsServer.survey_loop) and answered by actors
    # with ActorReady: no implementation here, so nothing subscribes to it as a request.

    async def ListActors(self) -> AsyncIterator[Any]:
        async with self.state.db.session() as session:
            actors = list((await session.execute(sa.select(Actor).order_by(Actor.name))).scalars())
        for start in range(0, len(actors), _LIST_BATCH):
            yield pb.ClientGetActorsReply(
                actors=[actor_pb(a) for a in actors[start : start + _LIST_BATCH]]
            )


class BrokerServer(Base):
    async def Output(self, actorID: str, req: Any) -> Any:
        actor_id = _uuid(actorID, "actor")
        try:
            async with self.state.db.working() as work:
                return await broker.output(
                    work, self.state.director, self.state.settings, self.state.cache, actor_id, req
                )
        except broker.OutputRejected as exc:
            await self._mark_error(req.envelope.id, str(exc))
            return broker.ack(bytes(req.envelope.id), broker.ERROR, str(exc))
        except XbusError as exc:
            return broker.ack(bytes(req.envelope.id), broker.ERROR, exc.detail)

    async def _mark_error(self, raw_id: bytes, reason: str) -> None:
        try:
            envelope_id = uuid_of(bytes(raw_id), "envelope id")
        except ValueError:
            return
        async with self.state.db.working() as work:
            await assembly.mark_error(work, envelope_id, reason, receiving=True)


class EnvelopeStorageServer(Base):
    async def Retrieve(self, clientKind: str, clientID: str, req: Any) -> AsyncIterator[Any]:
        envelope_id = uuid_of(bytes(req.envelopeID), "envelope id")
        actor_id = _uuid(clientID, "client")
        async with self.state.db.session() as session:
            actor = await session.get(Actor, actor_id)
            if clientKind != "actor" or actor is None:
                raise client_error(f"unknown client {clientKind}.{clientID}")

            account = await session.get(Account, actor.account_id)
            assert account is not None
            principal = Principal(
                account.id, account.name, account.type, account.status, account.is_admin
            )
            try:
                await readable_envelope(session, principal, envelope_id)
            except XbusError:
                raise client_error(f"no envelope {envelope_id}") from None
            events = await events_of(session, envelope_id)

        async def pages(after: tuple[int, int]) -> list[tuple[int, int, bytes]]:
            async with self.state.db.working() as work:
                return await items_page(work, envelope_id, after)

        # From the start, a page of items at a time: what the reader has is cut again (the
        # cut and the checksums depend on it) but not sent, and never all in memory.
        reader = Reader(envelope_id)
        ordinal = 0
        size = self.state.settings.nats_fragment_size
        async for fragment in fragments(events, envelope_id, pages, max_size=size):
            position = reader.past(fragment)
            if not seen(req, ordinal, fragment):
                yield pb.EnvelopeFragmentAndPosition(fragment=fragment, position=position)
            ordinal += 1


class DirectorServer(Base):
    async def ProcessingEnd(self, actorID: str, req: Any) -> None:
        actor_id = _uuid(actorID, "actor")
        status = {2: RequestStatus.SUCCESS, 3: RequestStatus.ERROR, 1: RequestStatus.RUNNING}.get(
            req.status
        )
        if status is None:
            raise client_error("ProcessingEnd needs a status RUNNING, SUCCESS or ERROR")
        process_id = uuid_of(bytes(req.context.processID), "process id")
        node_id = req.context.nodeID
        async with self.state.db.working() as work:
            request_id = await assembly.open_request(work, process_id, node_id, actor_id)
            if request_id is None:
                raise client_error(f"no open request for process {process_id} node {node_id}")
            try:
                await self.state.director.report(
                    work,
                    request_id,
                    status,
                    messages_of(req),
                    {},
                    account_id=None,
                    recorded_outputs=True,
                )
            except XbusError as exc:
                raise client_error(exc.detail) from None

    async def Log(self, actorID: str, req: Any) -> None:
        actor_id = _uuid(actorID, "actor")
        messages = messages_of(req)
        async with self.state.db.session() as session:
            process_id = None
            if req.Context.processID:
                process_id = uuid_of(bytes(req.Context.processID), "process id")
                process = await session.get(Process, process_id)
                if process is None:
                    raise client_error(f"no process {process_id}")
                if any(m.level == LogLevel.WARNING for m in messages):
                    # A warning changes how the process ends (its postmortem): written with
                    # its row, whose version an answer decided without the lock checks.
                    await session.execute(
                        sa.update(Process)
                        .where(Process.id == process_id)
                        .values(status=Process.status)
                        .execution_options(synchronize_session=False)
                    )
            envelope_id = uuid_of(bytes(req.envelopeID), "envelope id") if req.envelopeID else None
            for message in messages:
                add_log(
                    session,
                    message.level,
                    message.text,
                    process_id=process_id,
                    node_id=req.Context.nodeID or None,
                    actor_id=actor_id,
                    envelope_id=envelope_id,
                )

    async def GetRunningActorRequestList(self, actorID: str) -> AsyncIterator[Any]:
        actor_id = _uuid(actorID, "actor")
        async with self.state.db.session() as session:
            requests = list(
                (
                    await session.execute(
                        sa.select(ActorRequest).where(
                            ActorRequest.actor_id == actor_id,
                            ActorRequest.status.in_((RequestStatus.LEASED, RequestStatus.RUNNING)),
                        )
                    )
                ).scalars()
            )
            size = self.state.settings.nats_fragment_size
            messages = [await process_request(session, r, max_size=size) for r in requests]
        for message in messages:
            yield message


async def envelope_state(session: Any, process: Process | ProcessRow) -> Any:
    errors = await error_lines(session, process.id)
    return envelope_state_of(process, errors)


@dataclass(frozen=True, slots=True)
class ErrorLine:
    level: LogLevel
    text: str
    time: datetime


async def error_lines(unit: Unit, process_id: uuid.UUID) -> list[ErrorLine]:
    """The first error lines of a process (what EmitterEnvelopeState tells the emitter)."""
    conn = await driver_connection(unit, begin=False)
    rows = await conn.fetch(
        "SELECT level, text, time FROM log_entries WHERE process_id = $1 AND level = $2 "
        "ORDER BY id LIMIT 20",
        process_id,
        LogLevel.ERROR.value,
    )
    return [ErrorLine(LogLevel(row[0]), row[1], row[2]) for row in rows]


def envelope_state_of(process: Process | ProcessRow, errors: list[ErrorLine]) -> Any:
    state = pb.EmitterEnvelopeState(
        processID=process.id.bytes, status=PROCESS_STATUS[process.status]
    )
    state.processCreatedAt.FromDatetime(process.created_at)
    for entry in errors:
        message = state.errors.add(level=LOG_LEVEL_TO_PB[entry.level], Text=entry.text)
        message.time.FromDatetime(entry.time)
    return state


class ProcessStateServer(Base):
    async def GetEnvelopeState(self, emitterID: str, req: Any) -> Any:
        emitter_id = _uuid(emitterID, "emitter")
        envelope_id = uuid_of(bytes(req.id), "envelope id")
        async with self.state.db.session() as session:
            process = (
                await session.execute(
                    sa.select(Process)
                    .where(
                        Process.emitter_id == emitter_id, Process.trigger_envelope_id == envelope_id
                    )
                    .order_by(Process.created_at.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if process is None:
                raise client_error(f"no process for envelope {envelope_id}")
            return await envelope_state(session, process)

    async def AckResult(self, emitterID: str, req: Any) -> None:
        emitter_id = _uuid(emitterID, "emitter")
        process_id = uuid_of(bytes(req.processID), "process id")
        async with self.state.db.session() as session:
            process = await session.get(Process, process_id)
            if process is None or process.emitter_id != emitter_id:
                raise client_error(f"no process {process_id}")
            if not process.status.final:
                raise client_error(f"process {process_id} has not ended")
            process.result_acked = True

    async def List(self, emitterID: str, req: Any) -> AsyncIterator[Any]:
        emitter_id = _uuid(emitterID, "emitter")
        query = sa.select(Process).where(Process.emitter_id == emitter_id)
        if req.id:
            query = query.where(Process.id.in_([uuid_of(bytes(i), "process id") for i in req.id]))
        if req.triggerEnvelopeID:
            query = query.where(
                Process.trigger_envelope_id.in_(
                    [uuid_of(bytes(i), "envelope id") for i in req.triggerEnvelopeID]
                )
            )
        if req.status:
            query = query.where(
                Process.status.in_(
                    [PROCESS_STATUS_FROM_PB[s] for s in req.status if s in PROCESS_STATUS_FROM_PB]
                )
            )
        if len(req.resultAcked) == 1:
            query = query.where(Process.result_acked.is_(bool(req.resultAcked[0])))
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            page = query
            if after is not None:
                page = page.where(sa.tuple_(Process.created_at, Process.id) > sa.tuple_(*after))
            async with self.state.db.session() as session:
                processes = list(
                    (
                        await session.execute(
                            page.order_by(Process.created_at, Process.id).limit(_LIST_BATCH)
                        )
                    ).scalars()
                )
                states = [await envelope_state(session, p) for p in processes]
            if states:
                yield pb.EmitterEnvelopeStateList(list=states)
            if len(processes) < _LIST_BATCH:
                return
            after = (processes[-1].created_at, processes[-1].id)


__all__ = [
    "BrokerServer",
    "ClientAPIServer",
    "DirectorServer",
    "EnvelopeStorageServer",
    "ProcessStateServer",
    "ProcessStatus",
    "SentinelServer",
    "WhoAmIServer",
    "envelope_state",
]
