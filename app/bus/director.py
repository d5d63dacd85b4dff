"""The director: starts processes, dispatches envelopes along the pipeline graph as durable
requests, and moves nodes and processes through their states as actors answer.

Every change to one process happens under a lock on its row (process first, then its
requests), so parallel answers for one process serialise while different processes run
in parallel, on any number of replicas. A change is decided in Python over plain rows (a
`ProcessContext`) and written by `app.store.processes.save` in one statement: a state change
costs a read under lock and a write, whatever it touches."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.bus.notify import NATS_WORK, actor_key, process_key
from app.bus.routing import Route, Targets, node_targets, route_for
from app.commit_hooks import notify_after_commit, on_commit
from app.core.exceptions import Conflict, Forbidden, NotFound, Unprocessable
from app.envelopes.codec import EnvelopeData
from app.envelopes.repository import (
    STORE_PARTS,
    EnvelopeRows,
    check_new_envelope,
    insert_items,
    store_envelope,
)
from app.models import LogEntry
from app.models.enums import (
    ActorKind,
    ActorStatus,
    LogLevel,
    NodeStatus,
    PostmortemStatus,
    ProcessStatus,
    RequestChannel,
    RequestStatus,
)
from app.models.ids import new_id
from app.pipelines.graph import Graph
from app.pipelines.graphs import graph_of
from app.store import processes as store
from app.store.connection import Unit, committed_alone, driver_connection
from app.store.processes import (
    OPEN_REQUEST,
    Changes,
    LogRow,
    NewRequest,
    NodeRow,
    ProcessRow,
    RequestRow,
    clean_text,
)

log = logging.getLogger(__name__)

__all__ = ["OPEN_REQUEST", "Director", "Message", "ProcessContext", "ProcessRow", "add_log"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int
    lease: timedelta


class Emitter(Protocol):
    """What starting a process needs of its emitter (an ORM actor or a cached one)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> ActorKind: ...
    @property
    def status(self) -> ActorStatus: ...
    @property
    def roles(self) -> list[str]: ...


@dataclass(slots=True)
class ProcessContext:
    process: ProcessRow
    graph: Graph
    nodes: dict[str, NodeRow]
    # Requests dispatched in this transaction: while there are some, the process is not done.
    dispatched: int = 0
    new: bool = False  # the process starts in this transaction
    changes: Changes = field(default_factory=Changes)
    notify: set[str] = field(default_factory=set)
    ended: list[tuple[str, str]] = field(default_factory=list)  # (channel, status) of requests
    after_commit: list[Callable[[], None]] = field(default_factory=list)

    def log(
        self,
        level: LogLevel,
        text: str,
        *,
        node_id: str | None = None,
        actor_id: uuid.UUID | None = None,
        envelope_id: uuid.UUID | None = None,
        request_id: uuid.UUID | None = None,
        processing_error: bool = False,
    ) -> None:
        self.changes.logs.append(
            LogRow(
                utcnow(),
                level,
                clean_text(text),
                self.process.id,
                node_id,
                actor_id,
                envelope_id,
                request_id,
                processing_error,
            )
        )
        if level == LogLevel.WARNING:
            self.process.warnings += 1

    def node(self, node_id: str) -> NodeRow:
        """A node about to change (it is written with the decision)."""
        self.changes.nodes.add(node_id)
        return self.nodes[node_id]


@dataclass(frozen=True, slots=True)
class Message:
    level: LogLevel
    text: str


def add_log(
    session: AsyncSession,
    level: LogLevel,
    text: str,
    *,
    process_id: uuid.UUID | None = None,
    node_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    envelope_id: uuid.UUID | None = None,
    request_id: uuid.UUID | None = None,
    processing_error: bool = False,
) -> None:
    """A log line written with the session's unit of work (outside the director's decisions)."""
    session.add(
        LogEntry(
            time=utcnow(),
            level=level,
            text=clean_text(text),
            process_id=process_id,
            node_id=node_id,
            actor_id=actor_id,
            envelope_id=envelope_id,
            request_id=request_id,
            processing_error=processing_error,
        )
    )


# A new envelope to start a process with: its rows, its event types, its route.
Planned = tuple[EnvelopeRows, list[str], Route]


def _owned(envelope: EnvelopeRows, process_id: uuid.UUID, node_id: str) -> tuple[Any, ...]:
    """The envelope's row parameters, stored as its process's (from the start)."""
    return (*envelope.parameters[:2], process_id, node_id, *envelope.parameters[4:])


@dataclass(frozen=True, slots=True)
class _Answer:
    """What an actor answered for a request (`Director.report`)."""

    status: RequestStatus
    messages: list[Message]
    outputs: dict[str, EnvelopeData]
    account_id: uuid.UUID | None
    recorded_outputs: bool
    joined: store.Joined | None


@dataclass(frozen=True, slots=True)
class _Write:
    """An answer of a batch decided, to be written by `Director.write_answers`."""

    ctx: ProcessContext
    joined: store.Joined | None
    statement: str
    arguments: tuple[Any, ...]


@dataclass(slots=True)
class Answering:
    """A batch of answers under way: the answers decided but not yet written
    (`Director.write_answers`), and the rows they are decided on, read either

    - after locking their processes (`Director.lock_answers`): a row serves the first answer
      of its process only; once an answer has changed a process, the next answer to a
      request of it reads again, after what the batch decided so far is written (in the same
      transaction, it sees what the first wrote);
    - or without a lock (`Director.peek_answers`, `guarded`): each answer is written only if
      its process and request are still as read (SAVE's guard) and no other transaction
      holds them (not waited for), whatever else the batch wrote; one whose guard refuses is
      left to its caller (a second answer to a process the batch changed always is), which
      learns it from the answer's `joined`, whose `result` stays None."""

    locked: set[uuid.UUID]
    rows: dict[uuid.UUID, Any]
    touched: set[uuid.UUID] = field(default_factory=set)
    writes: list[_Write] = field(default_factory=list)
    guarded: bool = False

    def take(self, request_id: uuid.UUID) -> Any:
        """The row read for this request, unless an answer of the batch came to its process
        before (then None: read it again). Guarded, the row as read, every time."""
        if self.guarded:
            return self.rows.get(request_id)
        row = self.rows.pop(request_id, None)
        return None if row is None or row["id"] in self.touched else row


def _check_distinct(outputs: dict[str, EnvelopeData]) -> None:
    """The ids a worker chose for its outputs are each used once across them: otherwise the
    second output's store would be refused after the first one wrote, and in a batch of
    answers (one transaction) the first would stay."""
    seen: dict[uuid.UUID, str] = {}
    for port, envelope in outputs.items():
        ids = [e.id for e in envelope.events if e.id is not None]
        if envelope.id is not None:
            ids.append(envelope.id)
        for chosen in ids:
            if chosen in seen:
                raise OutputConflict(
                    f"output {port}: id {chosen} is used by output {seen[chosen]} too"
                )
            seen[chosen] = port


def check_emitter(emitter: Emitter) -> None:
    if emitter.kind != ActorKind.EMITTER:
        raise Unprocessable(
            f"actor {emitter.name!r} is a {emitter.kind.value}; only emitters start processes"
        )
    if emitter.status != ActorStatus.ENABLED:
        raise Forbidden(f"actor {emitter.name!r} is {emitter.status.value}")


class OutputConflict(Conflict):
    """An actor's output envelope cannot be stored (its id, or an event id, is taken): the
    request is left as it was."""


class OutputTaken(Conflict):
    """An output's id was taken by another answer between its check and its write (both
    passed the check at the same moment): the unit's transaction is spent, nothing of it is
    kept; sent again, the answer meets the id taken (OutputConflict)."""


class Director:
    def __init__(self, limits: Limits, targets: Targets | None = None) -> None:
        self.limits = limits
        self.targets = targets or Targets()
        # Called after the commit that ended a process (the NATS layer publishes
        # ProcessState.EnvelopeStates and CoreEvents from here).
        self.process_end_listeners: list[Callable[[ProcessRow], None]] = []

    # ------------------------------------------------------------------ writing
    async def _save(
        self,
        session: Unit,
        conn: Any,
        ctx: ProcessContext,
        joined: store.Joined | None = None,
        versions: tuple[int, int] | None = None,
    ) -> list[str] | None:
        """Write what was decided; what it tells (wake-ups, metrics, end listeners) goes out
        once the transaction commits. Returns the channels of the requests it canceled. With
        `versions` (a decision taken without the locks, `store.save_statement`): None when the
        process or the request changed since they were read, and nothing was written."""
        statement, arguments = self._statement(ctx, joined, versions)
        canceled = store.saved(await conn.fetchrow(statement, *arguments), joined)
        if canceled is not None:
            self._told(session, ctx, canceled)
        return canceled

    def _statement(
        self,
        ctx: ProcessContext,
        joined: store.Joined | None = None,
        versions: tuple[int, int] | None = None,
        *,
        skip_locked: bool = False,
    ) -> tuple[str, tuple[Any, ...]]:
        return store.save_statement(
            ctx.process,
            ctx.nodes,
            ctx.changes,
            now=utcnow(),
            max_attempts=self.limits.max_attempts,
            joined=joined,
            versions=versions,
            skip_locked=skip_locked,
        )

    def _told(self, session: Unit, ctx: ProcessContext, canceled: list[str]) -> None:
        """A decision is written: what it tells (wake-ups, metrics, end listeners) goes out
        once the transaction commits (at once when it was written with no transaction
        open: it committed on its own)."""
        ended = ctx.ended + [(channel, RequestStatus.CANCELED.value) for channel in canceled]
        metrics.requests_ended(session, ended)
        for key in ctx.notify:
            notify_after_commit(session, key)
        for callback in ctx.after_commit:
            on_commit(session, callback)
        ctx.changes = Changes()
        ctx.notify = set()
        ctx.ended = []
        ctx.after_commit = []
        committed_alone(session)

    async def save(self, session: Unit, ctx: ProcessContext) -> None:
        """Write a change made to a locked context (operator control)."""
        await self._save(session, await driver_connection(session), ctx)

    # ------------------------------------------------------------------ starting
    async def start_process(
        self,
        session: Unit,
        emitter: Emitter,
        envelope_id: uuid.UUID,
        event_types: list[str],
        *,
        replay_of: uuid.UUID | None = None,
        group_id: uuid.UUID | None = None,
        route: Route | None = None,
        envelope: EnvelopeRows | None = None,
    ) -> ProcessRow:
        """Start a process for this envelope, on `route` when given (a replay on the pipeline
        of the original process), else on the one active pipeline that takes it.

        With `envelope` (its rows, not stored yet), the envelope is written by the same
        statement as its process: when the session has nothing else open, that statement is
        the whole transaction (one round trip for an emission)."""
        if route is None:
            route = await self.route(session, emitter, event_types)
        else:
            check_emitter(emitter)
        ctx = await self._plan_start(
            session, emitter, envelope_id, event_types, route, replay_of, group_id
        )
        alone = envelope is not None and not envelope.copied
        conn = await driver_connection(session, begin=not alone)
        joined = None
        if envelope is not None:
            # Stored with its process: it belongs to it from the start.
            joined = store.Joined(STORE_PARTS, _owned(envelope, ctx.process.id, route.node.id))
        await self._save(session, conn, ctx, joined)
        if envelope is not None and envelope.copied:
            await insert_items(session, envelope.copied)
        return ctx.process

    async def start_many(
        self, session: Unit, starts: list[tuple[Emitter, Planned]]
    ) -> list[ProcessRow]:
        """Start a process for each of these new envelopes (routed already), of one emitter
        or several, all written by one statement with their envelopes: a batch of emissions
        costs one round trip."""
        contexts = []
        planned = [p for _, p in starts]
        for emitter, (envelope, types, route) in starts:
            contexts.append(
                await self._plan_start(session, emitter, envelope.id, types, route, None, None)
            )
        copied = [item for envelope, _, _ in planned for item in envelope.copied]
        conn = await driver_connection(session, begin=bool(copied))
        await store.insert_new(
            conn,
            [(ctx.process, ctx.nodes, ctx.changes) for ctx in contexts],
            [
                _owned(envelope, ctx.process.id, route.node.id)
                for (envelope, _, route), ctx in zip(planned, contexts, strict=True)
            ],
            now=utcnow(),
            max_attempts=self.limits.max_attempts,
        )
        for ctx in contexts:
            self._told(session, ctx, [])
        await insert_items(session, copied)
        return [ctx.process for ctx in contexts]

    async def _plan_start(
        self,
        session: Unit,
        emitter: Emitter,
        envelope_id: uuid.UUID,
        event_types: list[str],
        route: Route,
        replay_of: uuid.UUID | None,
        group_id: uuid.UUID | None,
    ) -> ProcessContext:
        """A new process on `route` with its first dispatches decided, not written yet."""
        now = utcnow()
        process = ProcessRow(
            id=new_id(),
            pipeline_id=route.pipeline.id,
            trigger_envelope_id=envelope_id,
            emitter_id=emitter.id,
            group_id=group_id,
            replay_of=replay_of,
            status=ProcessStatus.RUNNING,
            created_at=now,
            status_changed_at=now,
            nodes_state_changed_at=now,
        )
        port = route.node.outputs[0] if len(route.node.outputs) == 1 else "default"
        nodes = {node_id: NodeRow(node_id, NodeStatus.WAITING) for node_id in route.graph.nodes}
        start = nodes[route.node.id]
        start.status = NodeStatus.DONE
        envelope = str(envelope_id)
        start.outputs = {port: envelope}
        start.started_at = start.ended_at = now
        ctx = ProcessContext(process, route.graph, nodes, new=True)
        ctx.changes.new_process = True
        ctx.changes.nodes.update(nodes)
        ctx.changes.envelope = (envelope_id, route.node.id)
        ctx.log(
            LogLevel.NOTICE,
            f"process started by emitter {emitter.name} on pipeline {route.pipeline.name} "
            f"{route.pipeline.version} with envelope {envelope} [{', '.join(event_types)}]",
            node_id=route.node.id,
            actor_id=emitter.id,
            envelope_id=envelope_id,
        )
        await self._propagate(session, ctx, route.node.id, port, envelope)
        self._settle(ctx, {})
        ctx.notify.add(process_key(process.id))
        return ctx

    async def route(
        self,
        session: Unit,
        emitter: Emitter,
        event_types: list[str],
        *,
        partial: bool = False,
    ) -> Route:
        """The one active pipeline that takes this emitter's envelope (422 when none or more
        than one), checked before anything of the envelope is written. With `partial`, the
        types are those of an envelope still arriving: 422 only when no pipeline can take
        it, whatever its other types."""
        check_emitter(emitter)
        return await route_for(session, emitter, event_types, self.targets, partial=partial)

    # ------------------------------------------------------------------ graph walking
    async def _propagate(
        self,
        session: Unit,
        ctx: ProcessContext,
        node_id: str,
        port: str,
        envelope: str,
    ) -> None:
        """`envelope` (an id, as the nodes' inputs and outputs hold it) leaves `node_id` by
        `port`: the nodes it reaches take it, those with all their inputs are dispatched."""
        for edge in ctx.graph.outgoing(node_id, port):
            if ctx.process.status.final:
                return  # a dispatch on the way failed the process: nothing more moves
            target = ctx.node(edge.target)
            if target.status in (NodeStatus.ERROR, NodeStatus.CANCELED):
                continue
            target.inputs = {**target.inputs, edge.target_port: envelope}
            if set(target.inputs) >= ctx.graph.connected_inputs(edge.target):
                await self._dispatch(session, ctx, edge.target)

    async def _dispatch(self, session: Unit, ctx: ProcessContext, node_id: str) -> None:
        node = ctx.graph.nodes[node_id]
        pn = ctx.node(node_id)
        actors = await node_targets(session, node, self.targets)
        if not actors:
            refs = ", ".join([*node.actors, *(f"role {r}" for r in node.roles)])
            self._fail(ctx, node_id, f"no enabled {node.type} actor for node {node_id} ({refs})")
            return
        now = utcnow()
        inputs = [{"name": name, "envelope_id": env} for name, env in sorted(pn.inputs.items())]
        for actor in actors:
            ctx.changes.requests.append(
                NewRequest(new_id(), node_id, actor.id, actor.channel, inputs)
            )
            ctx.notify.add(actor.key)
            if actor.channel == RequestChannel.NATS:
                ctx.notify.add(NATS_WORK)
        ctx.dispatched += len(actors)
        pn.status = NodeStatus.RUNNING
        pn.started_at = pn.started_at or now
        if not ctx.new:  # a new process has its start time there already
            ctx.process.nodes_state_changed_at = now
            ctx.changes.process = True
        ctx.log(
            LogLevel.NOTICE,
            f"node {node_id} dispatched to {', '.join(a.name for a in actors)}",
            node_id=node_id,
        )

    # ------------------------------------------------------------------ ending
    def _fail(self, ctx: ProcessContext, node_id: str | None, reason: str) -> None:
        """End the process in error: its open requests are withdrawn, those this decision
        dispatched already included (they are written canceled)."""
        now = utcnow()
        ctx.ended += [(r.channel.value, RequestStatus.CANCELED.value) for r in ctx.changes.requests]
        if node_id is not None:
            pn = ctx.node(node_id)
            pn.status = NodeStatus.ERROR
            pn.ended_at = now
        ctx.log(LogLevel.ERROR, reason, node_id=node_id, processing_error=True)
        ctx.changes.cancel_open = True
        self._end(ctx, ProcessStatus.ERROR, reason, LogLevel.ERROR)

    def _end(
        self,
        ctx: ProcessContext,
        status: ProcessStatus,
        reason: str | None,
        pm: LogLevel | None,
    ) -> None:
        now = utcnow()
        process = ctx.process
        process.status = status
        process.status_reason = reason
        process.status_changed_at = now
        process.ended_at = now
        process.nodes_state_changed_at = now
        ctx.changes.process = True
        for node_id, pn in ctx.nodes.items():
            if pn.status == NodeStatus.WAITING:
                ctx.node(node_id).status = NodeStatus.SKIPPED
            elif pn.status == NodeStatus.RUNNING and status == ProcessStatus.ERROR:
                ctx.node(node_id).status = NodeStatus.CANCELED
                pn.ended_at = now
        if pm is not None:
            process.pm_level = pm
            process.pm_status = PostmortemStatus.NEW
            process.pm_changed_at = now
        ctx.notify.add(process_key(process.id))
        self._on_end(ctx, status, (now - process.created_at).total_seconds())

    def _on_end(self, ctx: ProcessContext, status: ProcessStatus, duration: float) -> None:
        ended = ctx.process
        listeners = list(self.process_end_listeners)

        def after_commit() -> None:
            metrics.PROCESSES_ENDED.labels(status.value).inc()
            metrics.PROCESS_DURATION.observe(max(duration, 0.0))
            for listener in listeners:
                listener(ended)

        ctx.after_commit.append(after_commit)

    def _settle(self, ctx: ProcessContext, open_left: dict[str, int]) -> None:
        """A running process with no open request left is done. `open_left`: the open
        requests as committed (left out: the one this change ends)."""
        if ctx.process.status != ProcessStatus.RUNNING or ctx.dispatched:
            return
        if any(open_left.values()):
            return
        warnings = ctx.process.warnings
        ctx.log(LogLevel.NOTICE, "process done")
        self._end(ctx, ProcessStatus.DONE, None, LogLevel.WARNING if warnings else None)

    # ------------------------------------------------------------------ loading
    async def _context(self, session: Unit, row: Any, *, graph: bool = True) -> ProcessContext:
        process, nodes = store.process_of(row)
        if not graph:
            return ProcessContext(process, Graph(nodes={}, edges=()), nodes)
        found = None
        if process.pipeline_id is not None and process.pipeline_updated_at is not None:
            found = await graph_of(session, process.pipeline_id, process.pipeline_updated_at)
        if found is None:
            raise Conflict(f"the pipeline of process {process.id} no longer exists")
        return ProcessContext(process, found, nodes)

    async def lock_context(
        self,
        session: Unit,
        process_id: uuid.UUID,
        *,
        skip_locked: bool = False,
        graph: bool = True,
    ) -> ProcessContext | None:
        """The process, locked, with its nodes (and its graph, unless `graph` is False:
        operator control never walks the graph, so it works on a deleted pipeline too)."""
        conn = await driver_connection(session)
        lock = store.LOCK_PROCESS_SKIP if skip_locked else store.LOCK_PROCESS
        if await conn.fetchval(lock, process_id) is None:
            return None
        row = await conn.fetchrow(store.READ_PROCESS, process_id)
        return await self._context(session, row, graph=graph)

    # ------------------------------------------------------------------ actor answers
    async def report(
        self,
        session: Unit,
        request_id: uuid.UUID,
        status: RequestStatus,
        messages: list[Message],
        outputs: dict[str, EnvelopeData],
        *,
        account_id: uuid.UUID | None,
        recorded_outputs: bool = False,
        answering: Answering | None = None,
        joined: store.Joined | None = None,
    ) -> RequestRow:
        """An actor's state for one request: running (lease extended), success (with a
        worker's outputs) or error. `account_id` None means the admin. `recorded_outputs`:
        a success takes the outputs recorded on the request (a NATS worker's, sent by
        Broker.Output before it ends), as read under the lock. `answering`: the batch this
        answer is part of (`lock_answers`). `joined`: rows written by the answer's statement
        (`store.Joined`; with `answering`, its `result` is there once `write_answers` wrote).

        An answer that stores no envelope is first decided on what one statement reads
        without a lock, and written by one statement only if neither the process nor the
        request changed meanwhile; if either did, it is decided again under the locks. Two
        round trips instead of five when the unit has no transaction open (no BEGIN, lock or
        COMMIT: each statement is its own transaction), one less than locking in one."""
        answer = _Answer(status, messages, outputs, account_id, recorded_outputs, joined)
        guarded = answering is not None and answering.guarded
        # Outputs are stored at once: never in a guarded batch.
        assert not (guarded and outputs)
        if guarded or (answering is None and not outputs):
            conn = await driver_connection(session, begin=False)
            if answering is not None:
                row = answering.take(request_id)
            else:
                row = await conn.fetchrow(store.PEEK_FOR_ANSWER, request_id)
            if row is None:
                raise NotFound(f"no request {request_id}")
            versions = (row["process_version"], row["request_version"])
            request = await self._answer(
                session, conn, request_id, row, answer, versions, answering
            )
            if request is not None:  # always in a guarded batch: written by write_answers
                return request
        conn = await driver_connection(session)
        row = answering.take(request_id) if answering is not None else None
        if row is None:
            if answering is not None:
                # Read under the lock, after what the batch decided is written.
                await self.write_answers(session, answering)
            locked = answering is not None and request_id in answering.locked
            lock = store.LOCK_PROCESS_OF_REQUEST
            if not locked and await conn.fetchval(lock, request_id) is None:
                raise NotFound(f"no request {request_id}")
            row = await conn.fetchrow(store.READ_FOR_ANSWER, request_id)
        if row is None:
            raise NotFound(f"no request {request_id}")
        if answering is not None:
            answering.touched.add(row["id"])
        request = await self._answer(session, conn, request_id, row, answer, None, answering)
        assert request is not None  # decided under the locks
        return request

    async def _answer(
        self,
        session: Unit,
        conn: Any,
        request_id: uuid.UUID,
        row: Any,
        answer: _Answer,
        versions: tuple[int, int] | None,
        answering: Answering | None = None,
    ) -> RequestRow | None:
        """`report` decided on `row` (READ_FOR_ANSWER's) and written (with `answering`: left
        to `write_answers`): None when `versions` were given and the process or the request
        changed since `row` was read."""
        status, messages, outputs = answer.status, answer.messages, answer.outputs
        account_id, recorded_outputs = answer.account_id, answer.recorded_outputs
        if account_id is not None and row["account_id"] != account_id:
            raise NotFound(f"no request {request_id}")
        actor_name = row["actor_name"]
        ctx = await self._context(session, row)
        request = store.request_of(row, store.ANSWER_REQUEST_AT)
        open_left = store.open_counts(row["open_left"])
        if request.status.final:
            raise Conflict(f"request {request_id} already ended ({request.status.value})")
        node = ctx.graph.nodes[request.node_id]
        stored_outputs: dict[str, uuid.UUID] = {}
        if recorded_outputs and status == RequestStatus.SUCCESS:
            stored_outputs = {port: uuid.UUID(env) for port, env in request.outputs.items()}
        if outputs or stored_outputs:
            if status != RequestStatus.SUCCESS:
                raise Unprocessable("outputs are only accepted with status success")
            if node.type != "worker":
                raise Unprocessable(f"node {node.id} is a {node.type}: only workers have outputs")
            unknown = sorted((set(outputs) | set(stored_outputs)) - set(node.outputs))
            if unknown:
                declared = ", ".join(node.outputs)
                raise Unprocessable(
                    f"node {node.id} has no output {', '.join(unknown)} (outputs: {declared})"
                )
        actor_id = request.actor_id
        produced: list[tuple[str, uuid.UUID]] = list(stored_outputs.items())
        if outputs and not ctx.process.status.final:
            # Every output checked, then stored, before anything else changes: an output that
            # cannot be stored (an id already taken) leaves the request, and all, as it was.
            _check_distinct(outputs)
            for port, envelope in outputs.items():
                try:
                    await check_new_envelope(session, envelope)
                except Conflict as exc:
                    raise OutputConflict(f"output {port}: {exc.detail}") from None
            for port, envelope in outputs.items():
                try:
                    envelope_id = await store_envelope(
                        session,
                        envelope,
                        emitter_id=actor_id,
                        process_id=ctx.process.id,
                        node_id=node.id,
                        output=port,
                    )
                except asyncpg.UniqueViolationError:
                    raise OutputTaken(
                        f"output {port}: an id of its envelope was taken meanwhile by another "
                        "answer; nothing of this answer was recorded"
                    ) from None
                produced.append((port, envelope_id))
        for message in messages:
            ctx.log(
                message.level,
                message.text,
                node_id=node.id,
                actor_id=actor_id,
                request_id=request.id,
                processing_error=message.level == LogLevel.ERROR and status == RequestStatus.ERROR,
            )
        now = utcnow()
        ctx.changes.request = request
        if status == RequestStatus.RUNNING:
            request.status = RequestStatus.RUNNING
            request.lease_expires_at = now + self.limits.lease
        elif ctx.process.status.final:
            # The process ended meanwhile (canceled, another branch failed): record, nothing more.
            request.status = status
            request.ended_at = now
            ctx.ended.append((request.channel.value, status.value))
        else:
            request.status = status
            request.ended_at = now
            request.lease_expires_at = None
            ctx.ended.append((request.channel.value, status.value))
            await self._answered(session, ctx, request, actor_name, messages, produced, open_left)
        request.updated_at = now
        if answering is not None:
            # Guarded, an answer whose process or request another transaction holds is not
            # waited for: it is refused, and its caller sees to it (the batch goes on).
            statement, arguments = self._statement(
                ctx, answer.joined, versions, skip_locked=answering.guarded
            )
            answering.writes.append(_Write(ctx, answer.joined, statement, arguments))
            return request
        if await self._save(session, conn, ctx, answer.joined, versions) is None:
            return None
        return request

    async def lock_answers(self, session: Unit, request_ids: list[uuid.UUID]) -> Answering:
        """Before a batch of answers: the processes of these requests locked, in the order of
        their ids (two batches that share processes wait for each other instead of
        deadlocking), then the requests read for their answers, all in two statements. Pass
        the result to each `report` of the batch."""
        conn = await driver_connection(session)
        locked = {r[0] for r in await conn.fetch(store.LOCK_PROCESSES_OF_REQUESTS, request_ids)}
        rows = await conn.fetch(store.READ_FOR_ANSWERS, list(locked)) if locked else []
        return Answering(locked, {row["request_id"]: row for row in rows})

    async def peek_answers(self, session: Unit, request_ids: list[uuid.UUID]) -> Answering:
        """Before a batch of answers decided without a lock: their requests read, in one
        statement (`Answering`, guarded; of answers to one process, the first written is the
        only one whose guard lets it through). With no transaction open on the unit,
        `write_answers` then writes them all in one more round trip, a transaction of its
        own."""
        conn = await driver_connection(session, begin=False)
        rows = await conn.fetch(store.PEEK_FOR_ANSWERS, request_ids)
        return Answering(set(), {row["request_id"]: row for row in rows}, guarded=True)

    async def write_answers(self, session: Unit, answering: Answering) -> None:
        """Write the answers of the batch decided since the last write, in one round trip
        (asyncpg's `fetchmany` sends them in a row, one statement each, and reads their
        answers once; with no transaction open, they commit together). Call it once the
        batch's answers are all given, before the commit. Guarded, an answer whose process
        or request was no longer as read, or another transaction held it, is not written:
        its `joined.result` stays None (each carries one). Guarded writes run in the order
        of their processes' ids, the order in which a batch locks them."""
        writes, answering.writes = answering.writes, []
        if not writes:
            return
        if answering.guarded:
            assert all(write.joined is not None for write in writes)  # to tell a refusal
            writes.sort(key=lambda write: write.ctx.process.id)
        by_statement: dict[str, list[_Write]] = {}
        for write in writes:
            by_statement.setdefault(write.statement, []).append(write)
        # Without a transaction, one statement's writes commit together; several need one.
        conn = await driver_connection(
            session, begin=not answering.guarded or len(by_statement) > 1
        )
        for statement, group in by_statement.items():
            rows = await conn.fetchmany(statement, [write.arguments for write in group])
            for write, row in zip(group, rows, strict=True):
                canceled = store.saved(row, write.joined)
                if canceled is not None:
                    self._told(session, write.ctx, canceled)
                else:
                    assert answering.guarded  # decided under the locks: always written

    async def _answered(
        self,
        session: Unit,
        ctx: ProcessContext,
        request: RequestRow,
        actor_name: str | None,
        messages: list[Message],
        produced: list[tuple[str, uuid.UUID]],
        open_left: dict[str, int],
    ) -> None:
        """A request of a running process ended: fail the process, or move its node on."""
        node_id = request.node_id
        name = actor_name or "(deleted actor)"
        if request.status == RequestStatus.ERROR:
            first = next((m.text for m in messages if m.level == LogLevel.ERROR), None)
            first = first or next((m.text for m in messages), None) or "no message"
            request.last_error = first
            self._fail(ctx, node_id, f"actor {name} failed on node {node_id}: {first}")
            return
        pn = ctx.node(node_id)
        outputs = [(port, str(env)) for port, env in produced]
        if outputs:
            pn.outputs = {**pn.outputs, **dict(outputs)}
        if not open_left.get(node_id):
            pn.status = NodeStatus.DONE
            pn.ended_at = utcnow()
            ctx.process.nodes_state_changed_at = pn.ended_at
            ctx.changes.process = True
        for port, envelope in outputs:
            await self._propagate(session, ctx, node_id, port, envelope)
        self._settle(ctx, open_left)
        ctx.notify.add(process_key(ctx.process.id))

    # ------------------------------------------------------------------ leases
    async def expire_leases(self, session: Unit, batch: int = 100) -> int:
        """Requests whose lease ran out go back to pending (another delivery) or, past the
        attempt limit, end their node in error. Safe on any number of replicas."""
        now = utcnow()
        conn = await driver_connection(session)
        candidates = await conn.fetch(
            """SELECT r.id, r.process_id, a.name FROM requests r
               LEFT JOIN actors a ON a.id = r.actor_id
               WHERE r.status IN ('leased', 'running') AND r.lease_expires_at < $1
               ORDER BY r.lease_expires_at LIMIT $2""",
            now,
            batch,
        )
        handled = 0
        for request_id, process_id, actor_name in candidates:
            if await conn.fetchval(store.LOCK_PROCESS_SKIP, process_id) is None:
                continue
            locked = await conn.fetchrow(store.LOCK_REQUEST_SKIP, request_id)
            if locked is None:
                continue
            request = store.request_of(locked)
            if request.status not in (RequestStatus.LEASED, RequestStatus.RUNNING):
                continue
            if request.lease_expires_at is None or request.lease_expires_at >= now:
                continue
            row = await conn.fetchrow(store.READ_PROCESS, process_id)
            ctx = await self._context(session, row, graph=False)
            name = actor_name or "(deleted actor)"
            handled += 1
            ctx.changes.request = request
            request.lease_expires_at = None
            if request.attempts >= request.max_attempts:
                request.status = RequestStatus.ERROR
                request.ended_at = now
                request.last_error = f"no answer after {request.attempts} deliveries"
                ctx.ended.append((request.channel.value, RequestStatus.ERROR.value))
                if not ctx.process.status.final:
                    ctx.nodes.setdefault(
                        request.node_id, NodeRow(request.node_id, NodeStatus.RUNNING)
                    )
                    self._fail(
                        ctx,
                        request.node_id,
                        f"actor {name} did not answer on node {request.node_id} "
                        f"after {request.attempts} deliveries",
                    )
            else:
                request.status = RequestStatus.PENDING
                request.available_at = now
                request.leased_by = None
                ctx.log(
                    LogLevel.WARNING,
                    f"actor {name} did not answer on node {request.node_id} within its lease; "
                    f"delivering again (attempt {request.attempts + 1} of {request.max_attempts})",
                    node_id=request.node_id,
                    actor_id=request.actor_id,
                    request_id=request.id,
                )
                if request.actor_id:
                    ctx.notify.add(actor_key(request.actor_id))
                    if request.channel == RequestChannel.NATS:
                        ctx.notify.add(NATS_WORK)
            await self._save(session, conn, ctx)
        return handled

    # ------------------------------------------------------------------ polling
    async def lease(
        self,
        session: Unit,
        actor_id: uuid.UUID | None,
        holder: str,
        *,
        limit: int = 1,
        channels: tuple[RequestChannel, ...] = (RequestChannel.POLL, RequestChannel.NATS),
        moved_to: RequestChannel | None = None,
        lease: timedelta | None = None,
        inline_max: int,
    ) -> list[tuple[RequestRow, list[Any]]]:
        """Lease up to `limit` due requests, oldest first: those of `actor_id` on `channels`
        (HTTP polling), or with `actor_id` None those of every actor connected over NATS,
        moved to the channel `moved_to`; each with what it hands out, read by the same
        statement: the rows of its input envelopes (`app.store.processes.handed`:
        events and items only of envelopes no larger than `inline_max`). One statement: it
        commits on its own unless the session has a transaction open."""
        conn = await driver_connection(session, begin=False)
        statement = store.LEASE_FOR_NATS if actor_id is None else store.LEASE_FOR_ACTOR
        args = self._lease_args(actor_id, holder, limit, channels, moved_to, lease)
        rows = await conn.fetch(statement, *args, inline_max)
        return [
            (store.request_of(first), envelopes)
            for first, envelopes in store.handed_rows(rows, store.HANDED_ENVELOPE_AT)
        ]

    def _lease_args(
        self,
        actor_id: uuid.UUID | None,
        holder: str,
        limit: int,
        channels: tuple[RequestChannel, ...],
        moved_to: RequestChannel | None,
        lease: timedelta | None,
    ) -> list[Any]:
        now = utcnow()
        args: list[Any] = [
            actor_id,
            now,
            limit,
            now + (lease or self.limits.lease),
            holder,
            moved_to.value if moved_to else None,
        ]
        if actor_id is not None:
            args.append([c.value for c in channels])
        return args

    # ------------------------------------------------------------------ operator control
    async def settle(self, session: Unit, ctx: ProcessContext) -> None:
        """End a running process that has no open request left (after a resume: answers that
        came while it was paused may have finished it)."""
        conn = await driver_connection(session)
        open_left = store.open_counts(await conn.fetchval(store.OPEN_BY_NODE, ctx.process.id))
        self._settle(ctx, open_left)
        await self._save(session, conn, ctx)

    async def cancel(
        self,
        session: Unit,
        ctx: ProcessContext,
        reason: str,
        *,
        pm: LogLevel | None,
    ) -> int:
        """End a process in `error` with `reason`: its open requests (pending, leased, running,
        whatever their channel) are withdrawn as canceled. Returns how many were withdrawn;
        the caller logs why."""
        conn = await driver_connection(session)
        ctx.changes.cancel_open = True
        self._end(ctx, ProcessStatus.ERROR, reason, pm)
        canceled = await self._save(session, conn, ctx)
        assert canceled is not None  # written under the lock
        return len(canceled)
