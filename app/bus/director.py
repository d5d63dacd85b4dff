"""The director: starts processes, dispatches envelopes along the pipeline graph as durable
requests, and moves nodes and processes through their states as actors answer.

Every change to one process happens under a lock on its row (process first, then its
requests), so parallel answers for one process serialise while different processes run
in parallel, on any number of replicas."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.bus.notify import actor_key, notify_after_commit, on_commit, process_key
from app.bus.routing import Route, node_targets, pipeline_graph, route_for
from app.core.exceptions import Conflict, Forbidden, NotFound, Unprocessable
from app.envelopes.codec import EnvelopeData
from app.envelopes.repository import store_envelope
from app.models import Actor, ActorRequest, Envelope, LogEntry, Pipeline, Process, ProcessNode
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
from app.pipelines.graph import Graph

log = logging.getLogger(__name__)

OPEN_REQUEST = (RequestStatus.PENDING, RequestStatus.LEASED, RequestStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Limits:
    max_attempts: int
    lease: timedelta


@dataclass(slots=True)
class ProcessContext:
    process: Process
    graph: Graph
    nodes: dict[str, ProcessNode]
    # Requests dispatched in this transaction: while there are some, the process is not done.
    dispatched: int = 0
    new: bool = False  # the process starts in this transaction


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
    # Log text is stored as valid UTF-8 whatever the actor sent (the original crashed on it).
    clean = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    session.add(
        LogEntry(
            time=utcnow(),
            level=level,
            text=clean,
            process_id=process_id,
            node_id=node_id,
            actor_id=actor_id,
            envelope_id=envelope_id,
            request_id=request_id,
            processing_error=processing_error,
        )
    )


def channel_for(actor: Actor) -> RequestChannel:
    if actor.config.get("http.webhook.url"):
        return RequestChannel.WEBHOOK
    if actor.online:
        return RequestChannel.NATS
    return RequestChannel.POLL


async def lock_process_row(
    session: AsyncSession, process_id: uuid.UUID, *, skip_locked: bool = False
) -> Process | None:
    """The process row, locked FOR UPDATE and read afresh: every change to one process is
    made under this lock (process first, then its requests)."""
    query = (
        sa.select(Process)
        .where(Process.id == process_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def process_nodes(session: AsyncSession, process_id: uuid.UUID) -> dict[str, ProcessNode]:
    """The process's node states, read afresh, by node id."""
    nodes = await session.execute(
        sa.select(ProcessNode)
        .where(ProcessNode.process_id == process_id)
        .execution_options(populate_existing=True)
    )
    return {n.node_id: n for n in nodes.scalars()}


def lease_due(
    filters: list[sa.ColumnElement[bool]],
    *,
    limit: int,
    holder: str,
    lease: timedelta,
    channel: RequestChannel | None = None,
) -> sa.Update:
    """The statement that leases up to `limit` due requests (pending, available, of a running
    process) matching `filters`, oldest first, skipping rows another transaction holds: any
    number of replicas claim side by side and never get the same request. One attempt more
    each; `channel` moves them to the channel that delivers them."""
    now = utcnow()
    due = (
        sa.select(ActorRequest.id)
        .join(Process, Process.id == ActorRequest.process_id)
        .where(
            ActorRequest.status == RequestStatus.PENDING,
            ActorRequest.available_at <= now,
            Process.status == ProcessStatus.RUNNING,
            *filters,
        )
        .order_by(ActorRequest.available_at, ActorRequest.created_at)
        .limit(limit)
        .with_for_update(of=ActorRequest, skip_locked=True)
    )
    values: dict[str, object] = {
        "status": RequestStatus.LEASED,
        "attempts": ActorRequest.attempts + 1,
        "lease_expires_at": now + lease,
        "leased_by": holder,
        "updated_at": now,
    }
    if channel is not None:
        values["channel"] = channel
    return sa.update(ActorRequest).where(ActorRequest.id.in_(due.scalar_subquery())).values(values)


class OutputConflict(Conflict):
    """An actor's output envelope cannot be stored (its id, or an event id, is taken): the
    request is left as it was."""


class Director:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        # Called after the commit that ended a process (the NATS layer publishes
        # ProcessState.EnvelopeStates and CoreEvents from here).
        self.process_end_listeners: list[Callable[[Process], None]] = []

    # ------------------------------------------------------------------ starting
    async def start_process(
        self,
        session: AsyncSession,
        emitter: Actor,
        envelope_id: uuid.UUID,
        event_types: list[str],
        *,
        replay_of: uuid.UUID | None = None,
        group_id: uuid.UUID | None = None,
        route: Route | None = None,
    ) -> Process:
        """Start a process for this envelope, on `route` when given (a replay on the pipeline
        of the original process), else on the one active pipeline that takes it."""
        if emitter.kind != ActorKind.EMITTER:
            raise Unprocessable(
                f"actor {emitter.name!r} is a {emitter.kind.value}; only emitters start processes"
            )
        if emitter.status != ActorStatus.ENABLED:
            raise Forbidden(f"actor {emitter.name!r} is {emitter.status.value}")
        if route is None:
            route = await route_for(session, emitter, event_types)
        now = utcnow()
        process = Process(
            id=uuid.uuid4(),
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
        session.add(process)
        # The process row first: the unit of work does not order rows of unrelated mappers by
        # their foreign keys (log entries would go before it). Everything below is written in
        # one flush, each node already in its state.
        await session.flush()
        port = route.node.outputs[0] if len(route.node.outputs) == 1 else "default"
        nodes = {}
        for node in route.graph.nodes.values():
            pn = ProcessNode(
                process_id=process.id,
                node_id=node.id,
                status=NodeStatus.WAITING,
                inputs={},
                outputs={},
            )
            if node.id == route.node.id:
                pn.status = NodeStatus.DONE
                pn.outputs = {port: str(envelope_id)}
                pn.started_at = pn.ended_at = now
            nodes[node.id] = pn
            session.add(pn)
        ctx = ProcessContext(process, route.graph, nodes, new=True)
        add_log(
            session,
            LogLevel.NOTICE,
            f"process started by emitter {emitter.name} on pipeline {route.pipeline.name} "
            f"{route.pipeline.version} with envelope {envelope_id} [{', '.join(event_types)}]",
            process_id=process.id,
            node_id=route.node.id,
            actor_id=emitter.id,
            envelope_id=envelope_id,
        )
        await self._propagate(session, ctx, route.node.id, port, envelope_id)
        await session.execute(
            sa.update(Envelope)
            .where(Envelope.id == envelope_id, Envelope.process_id.is_(None))
            .values(process_id=process.id, node_id=route.node.id)
        )
        await self._settle(session, ctx)
        notify_after_commit(session, process_key(process.id))
        return process

    # ------------------------------------------------------------------ graph walking
    async def _propagate(
        self,
        session: AsyncSession,
        ctx: ProcessContext,
        node_id: str,
        port: str,
        envelope_id: uuid.UUID,
    ) -> None:
        for edge in ctx.graph.outgoing(node_id, port):
            target = ctx.nodes[edge.target]
            if target.status in (NodeStatus.ERROR, NodeStatus.CANCELED):
                continue
            target.inputs = {**target.inputs, edge.target_port: str(envelope_id)}
            if set(target.inputs) >= ctx.graph.connected_inputs(edge.target):
                await self._dispatch(session, ctx, edge.target)

    async def _dispatch(self, session: AsyncSession, ctx: ProcessContext, node_id: str) -> None:
        node = ctx.graph.nodes[node_id]
        pn = ctx.nodes[node_id]
        with session.no_autoflush:  # nodes and requests are written once, in their last state
            actors = await node_targets(session, node)
        if not actors:
            refs = ", ".join([*node.actors, *(f"role {r}" for r in node.roles)])
            await self._fail(
                session, ctx, node_id, f"no enabled {node.type} actor for node {node_id} ({refs})"
            )
            return
        now = utcnow()
        inputs = [{"name": name, "envelope_id": env} for name, env in sorted(pn.inputs.items())]
        for actor in actors:
            session.add(
                ActorRequest(
                    id=uuid.uuid4(),
                    process_id=ctx.process.id,
                    node_id=node_id,
                    actor_id=actor.id,
                    channel=channel_for(actor),
                    status=RequestStatus.PENDING,
                    inputs=inputs,
                    max_attempts=self.limits.max_attempts,
                    available_at=now,
                    created_at=now,
                )
            )
            notify_after_commit(session, actor_key(actor.id))
        ctx.dispatched += len(actors)
        pn.status = NodeStatus.RUNNING
        pn.started_at = pn.started_at or now
        if not ctx.new:  # a new process has its start time there already
            ctx.process.nodes_state_changed_at = now
        add_log(
            session,
            LogLevel.NOTICE,
            f"node {node_id} dispatched to {', '.join(a.name for a in actors)}",
            process_id=ctx.process.id,
            node_id=node_id,
        )

    # ------------------------------------------------------------------ ending
    async def _open_requests(
        self, session: AsyncSession, process_id: uuid.UUID, ended: uuid.UUID | None = None
    ) -> dict[str, int]:
        """Open requests of the process by node, as committed plus `ended` (a request this
        transaction has just ended). Nothing is flushed for it."""
        query = (
            sa.select(ActorRequest.node_id, sa.func.count())
            .where(ActorRequest.process_id == process_id, ActorRequest.status.in_(OPEN_REQUEST))
            .group_by(ActorRequest.node_id)
        )
        if ended is not None:
            query = query.where(ActorRequest.id != ended)
        with session.no_autoflush:
            return {node: int(count) for node, count in await session.execute(query)}

    async def _fail(
        self, session: AsyncSession, ctx: ProcessContext, node_id: str | None, reason: str
    ) -> None:
        now = utcnow()
        if node_id is not None:
            pn = ctx.nodes[node_id]
            pn.status = NodeStatus.ERROR
            pn.ended_at = now
        add_log(
            session,
            LogLevel.ERROR,
            reason,
            process_id=ctx.process.id,
            node_id=node_id,
            processing_error=True,
        )
        canceled = await session.execute(
            sa.update(ActorRequest)
            .where(ActorRequest.process_id == ctx.process.id, ActorRequest.status.in_(OPEN_REQUEST))
            .values(status=RequestStatus.CANCELED, ended_at=now, lease_expires_at=None)
            .returning(ActorRequest.channel)
            .execution_options(synchronize_session=False)
        )
        metrics.requests_ended(session, ((c, RequestStatus.CANCELED) for (c,) in canceled))
        self._end(session, ctx, ProcessStatus.ERROR, reason, LogLevel.ERROR)
        notify_after_commit(session, process_key(ctx.process.id))

    def _end(
        self,
        session: AsyncSession,
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
        for pn in ctx.nodes.values():
            if pn.status == NodeStatus.WAITING:
                pn.status = NodeStatus.SKIPPED
            elif pn.status == NodeStatus.RUNNING and status == ProcessStatus.ERROR:
                pn.status = NodeStatus.CANCELED
                pn.ended_at = now
        for listener in self.process_end_listeners:
            on_commit(session, lambda listener=listener: listener(process))  # type: ignore[misc]
        duration = (now - process.created_at).total_seconds()
        on_commit(session, lambda: metrics.PROCESSES_ENDED.labels(status.value).inc())
        on_commit(session, lambda: metrics.PROCESS_DURATION.observe(max(duration, 0.0)))
        if pm is not None:
            process.pm_level = pm
            process.pm_status = PostmortemStatus.NEW
            process.pm_changed_at = now

    async def _settle(
        self, session: AsyncSession, ctx: ProcessContext, open_left: dict[str, int] | None = None
    ) -> None:
        """A running process with no open request left is done. `open_left`: the open
        requests as `_open_requests` counted them in this transaction."""
        if ctx.process.status != ProcessStatus.RUNNING or ctx.dispatched:
            return
        if open_left is None:
            open_left = await self._open_requests(session, ctx.process.id)
        if any(open_left.values()):
            return
        with session.no_autoflush:
            warnings = await session.scalar(
                sa.select(sa.func.count()).where(
                    LogEntry.process_id == ctx.process.id, LogEntry.level == LogLevel.WARNING
                )
            )
        warnings = (warnings or 0) + sum(
            1
            for obj in session.new
            if isinstance(obj, LogEntry)
            and obj.process_id == ctx.process.id
            and obj.level == LogLevel.WARNING
        )
        add_log(session, LogLevel.NOTICE, "process done", process_id=ctx.process.id)
        self._end(session, ctx, ProcessStatus.DONE, None, LogLevel.WARNING if warnings else None)
        notify_after_commit(session, process_key(ctx.process.id))

    # ------------------------------------------------------------------ loading
    async def lock_context(
        self, session: AsyncSession, process_id: uuid.UUID, *, skip_locked: bool = False
    ) -> ProcessContext | None:
        process = await lock_process_row(session, process_id, skip_locked=skip_locked)
        if process is None:
            return None
        pipeline = await session.get(Pipeline, process.pipeline_id) if process.pipeline_id else None
        if pipeline is None:
            raise Conflict(f"the pipeline of process {process_id} no longer exists")
        nodes = await process_nodes(session, process_id)
        return ProcessContext(process, pipeline_graph(pipeline), nodes)

    async def _lock_request(
        self, session: AsyncSession, request_id: uuid.UUID, *, skip_locked: bool = False
    ) -> ActorRequest | None:
        query = (
            sa.select(ActorRequest)
            .where(ActorRequest.id == request_id)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
        return (await session.execute(query)).scalar_one_or_none()

    # ------------------------------------------------------------------ actor answers
    async def report(
        self,
        session: AsyncSession,
        request_id: uuid.UUID,
        status: RequestStatus,
        messages: list[Message],
        outputs: dict[str, EnvelopeData],
        *,
        account_id: uuid.UUID | None,
        stored_outputs: dict[str, uuid.UUID] | None = None,
    ) -> ActorRequest:
        """An actor's state for one request: running (lease extended), success (with a
        worker's outputs) or error. `account_id` None means the admin."""
        peek = (
            await session.execute(
                sa.select(ActorRequest.process_id, Actor.account_id, Actor.name)
                .select_from(ActorRequest)
                .outerjoin(Actor, Actor.id == ActorRequest.actor_id)
                .where(ActorRequest.id == request_id)
            )
        ).first()
        if peek is None:
            raise NotFound(f"no request {request_id}")
        process_id, actor_account_id, actor_name = peek
        if account_id is not None and actor_account_id != account_id:
            raise NotFound(f"no request {request_id}")
        ctx = await self.lock_context(session, process_id)
        request = await self._lock_request(session, request_id)
        if ctx is None or request is None:
            raise NotFound(f"no request {request_id}")
        if request.status.final:
            raise Conflict(f"request {request_id} already ended ({request.status.value})")
        node = ctx.graph.nodes[request.node_id]
        stored_outputs = stored_outputs or {}
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
            # Stored before anything else changes: an output that cannot be stored (an id
            # already taken) leaves the request as it was.
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
                except Conflict as exc:
                    raise OutputConflict(f"output {port}: {exc.detail}") from None
                produced.append((port, envelope_id))
        for message in messages:
            add_log(
                session,
                message.level,
                message.text,
                process_id=ctx.process.id,
                node_id=node.id,
                actor_id=actor_id,
                request_id=request.id,
                processing_error=message.level == LogLevel.ERROR and status == RequestStatus.ERROR,
            )
        now = utcnow()
        request.updated_at = now
        if status == RequestStatus.RUNNING:
            request.status = RequestStatus.RUNNING
            request.lease_expires_at = now + self.limits.lease
            return request
        if ctx.process.status.final:
            # The process ended meanwhile (canceled, another branch failed): record, nothing more.
            request.status = status
            request.ended_at = now
            metrics.requests_ended(session, [(request.channel, status)])
            return request
        request.status = status
        request.ended_at = now
        request.lease_expires_at = None
        metrics.requests_ended(session, [(request.channel, status)])
        name = actor_name or "(deleted actor)"
        if status == RequestStatus.ERROR:
            first = next((m.text for m in messages if m.level == LogLevel.ERROR), None)
            first = first or next((m.text for m in messages), None) or "no message"
            request.last_error = first
            await self._fail(
                session, ctx, node.id, f"actor {name} failed on node {node.id}: {first}"
            )
            return request
        pn = ctx.nodes[node.id]
        if produced:
            pn.outputs = {**pn.outputs, **{port: str(env) for port, env in produced}}
        open_left = await self._open_requests(session, ctx.process.id, ended=request.id)
        if not open_left.get(node.id):
            pn.status = NodeStatus.DONE
            pn.ended_at = now
            ctx.process.nodes_state_changed_at = now
        for port, envelope_id in produced:
            await self._propagate(session, ctx, node.id, port, envelope_id)
        await self._settle(session, ctx, open_left)
        notify_after_commit(session, process_key(ctx.process.id))
        return request

    # ------------------------------------------------------------------ leases
    async def expire_leases(self, session: AsyncSession, batch: int = 100) -> int:
        """Requests whose lease ran out go back to pending (another delivery) or, past the
        attempt limit, end their node in error. Safe on any number of replicas."""
        now = utcnow()
        candidates = (
            await session.execute(
                sa.select(ActorRequest.id, ActorRequest.process_id)
                .where(
                    ActorRequest.status.in_((RequestStatus.LEASED, RequestStatus.RUNNING)),
                    ActorRequest.lease_expires_at < now,
                )
                .order_by(ActorRequest.lease_expires_at)
                .limit(batch)
            )
        ).all()
        handled = 0
        for request_id, process_id in candidates:
            ctx = await self.lock_context(session, process_id, skip_locked=True)
            if ctx is None:
                continue
            request = await self._lock_request(session, request_id, skip_locked=True)
            if request is None or request.status not in (
                RequestStatus.LEASED,
                RequestStatus.RUNNING,
            ):
                continue
            if request.lease_expires_at is None or request.lease_expires_at >= now:
                continue
            actor = await session.get(Actor, request.actor_id) if request.actor_id else None
            name = actor.name if actor else "(deleted actor)"
            handled += 1
            if request.attempts >= request.max_attempts:
                request.status = RequestStatus.ERROR
                request.ended_at = now
                request.lease_expires_at = None
                request.last_error = f"no answer after {request.attempts} deliveries"
                metrics.requests_ended(session, [(request.channel, RequestStatus.ERROR)])
                if not ctx.process.status.final:
                    await self._fail(
                        session,
                        ctx,
                        request.node_id,
                        f"actor {name} did not answer on node {request.node_id} "
                        f"after {request.attempts} deliveries",
                    )
                continue
            request.status = RequestStatus.PENDING
            request.available_at = now
            request.lease_expires_at = None
            request.leased_by = None
            add_log(
                session,
                LogLevel.WARNING,
                f"actor {name} did not answer on node {request.node_id} within its lease; "
                f"delivering again (attempt {request.attempts + 1} of {request.max_attempts})",
                process_id=process_id,
                node_id=request.node_id,
                actor_id=request.actor_id,
                request_id=request.id,
            )
            if request.actor_id:
                notify_after_commit(session, actor_key(request.actor_id))
        return handled

    # ------------------------------------------------------------------ polling
    async def lease_next(
        self, session: AsyncSession, actor: Actor, holder: str
    ) -> ActorRequest | None:
        """Hand the actor its oldest due request (HTTP polling)."""
        statement = lease_due(
            [
                ActorRequest.actor_id == actor.id,
                ActorRequest.channel.in_((RequestChannel.POLL, RequestChannel.NATS)),
            ],
            limit=1,
            holder=holder,
            lease=self.limits.lease,
        )
        result = await session.execute(
            statement.returning(ActorRequest).execution_options(populate_existing=True)
        )
        return result.scalar_one_or_none()

    # ------------------------------------------------------------------ operator control
    async def settle(self, session: AsyncSession, ctx: ProcessContext) -> None:
        """End a running process that has no open request left (after a resume: answers that
        came while it was paused may have finished it)."""
        await self._settle(session, ctx)

    async def cancel(
        self,
        session: AsyncSession,
        ctx: ProcessContext,
        reason: str,
        *,
        pm: LogLevel | None,
    ) -> int:
        """End a process in `error` with `reason`: its open requests (pending, leased, running,
        whatever their channel) are withdrawn as canceled. Returns how many were withdrawn;
        the caller logs why."""
        now = utcnow()
        result = await session.execute(
            sa.update(ActorRequest)
            .where(ActorRequest.process_id == ctx.process.id, ActorRequest.status.in_(OPEN_REQUEST))
            .values(status=RequestStatus.CANCELED, ended_at=now, lease_expires_at=None)
            .returning(ActorRequest.channel)
            .execution_options(synchronize_session=False)
        )
        channels = result.scalars().all()
        metrics.requests_ended(session, ((c, RequestStatus.CANCELED) for c in channels))
        withdrawn = len(channels)
        self._end(session, ctx, ProcessStatus.ERROR, reason, pm)
        notify_after_commit(session, process_key(ctx.process.id))
        return withdrawn
