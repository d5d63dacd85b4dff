"""Operator control of one process: pause, resume, cancel and replay.

- pause: a running process stops dispatching. Nothing of it is leased or sent while it is
  paused (polling, webhooks and NATS only hand out requests of running processes); requests
  already handed out may still report, and their outputs are dispatched as pending requests
  that wait for the resume.
- resume: the process runs again; the actors with pending requests are woken, and a process
  whose last open request ended while it was paused is done now.
- cancel: the process ends in `error` with the reason "canceled"; every open request
  (pending, leased, running, on any channel) is withdrawn as canceled.
- replay: a new process on the same trigger envelope, `replay_of` the original, on the
  original's pipeline or on the pipeline that matches the envelope today.

Each change happens under the process row lock, like every other change of a process (see
the director). A transition that makes no sense for the process's status is a Conflict."""

from __future__ import annotations

import enum
import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.bus.director import Director, ProcessContext, ProcessRow, add_log, utcnow
from app.bus.notify import actor_key, process_key
from app.bus.routing import Route, node_refers_to, pipeline_graph
from app.core.exceptions import Conflict, NotFound
from app.envelopes.repository import event_types
from app.models import Actor, ActorRequest, Envelope, Pipeline, Process
from app.models.enums import (
    ActorStatus,
    EnvelopeStatus,
    LogLevel,
    ProcessStatus,
    RequestStatus,
)
from app.pipelines.graphs import PipelineRef

CANCELED = "canceled"
ACTIVE = (ProcessStatus.INITIAL, ProcessStatus.RUNNING, ProcessStatus.PAUSED)


class ReplayPipeline(enum.StrEnum):
    SAME = "same"  # the pipeline (and version) the original process ran on
    CURRENT = "current"  # the active pipeline that takes the envelope today


async def lock_process(
    session: AsyncSession, director: Director, process_id: uuid.UUID
) -> ProcessContext:
    # Control never walks the graph (a process whose pipeline was deleted can be canceled).
    ctx = await director.lock_context(session, process_id, graph=False)
    if ctx is None:
        raise NotFound(f"no process {process_id}")
    return ctx


def _by(operator: str | None) -> str:
    return f" by {operator}" if operator else ""


def _refuse(process: ProcessRow, action: str, allowed: str) -> Conflict:
    return Conflict(
        f"process {process.id} is {process.status.value}; only {allowed} process can be {action}",
        extra={"process_status": process.status.value},
    )


def _set_status(ctx: ProcessContext, status: ProcessStatus) -> None:
    ctx.process.status = status
    ctx.process.status_changed_at = utcnow()
    ctx.changes.process = True
    ctx.notify.add(process_key(ctx.process.id))


async def pause(
    session: AsyncSession, director: Director, process_id: uuid.UUID, *, operator: str | None
) -> ProcessRow:
    ctx = await lock_process(session, director, process_id)
    process = ctx.process
    if process.status not in (ProcessStatus.INITIAL, ProcessStatus.RUNNING):
        raise _refuse(process, "paused", "a running")
    _set_status(ctx, ProcessStatus.PAUSED)
    ctx.log(LogLevel.NOTICE, f"process paused{_by(operator)}")
    await director.save(session, ctx)
    return process


async def resume(
    session: AsyncSession, director: Director, process_id: uuid.UUID, *, operator: str | None
) -> ProcessRow:
    ctx = await lock_process(session, director, process_id)
    process = ctx.process
    if process.status != ProcessStatus.PAUSED:
        raise _refuse(process, "resumed", "a paused")
    _set_status(ctx, ProcessStatus.RUNNING)
    ctx.log(LogLevel.NOTICE, f"process resumed{_by(operator)}")
    waiting = await session.scalars(
        sa.select(ActorRequest.actor_id)
        .where(
            ActorRequest.process_id == process.id,
            ActorRequest.status == RequestStatus.PENDING,
            ActorRequest.actor_id.is_not(None),
        )
        .distinct()
    )
    for actor_id in waiting:
        if actor_id is not None:
            ctx.notify.add(actor_key(actor_id))
    await director.settle(session, ctx)
    return process


async def cancel(
    session: AsyncSession, director: Director, process_id: uuid.UUID, *, operator: str | None
) -> ProcessRow:
    ctx = await lock_process(session, director, process_id)
    process = ctx.process
    if process.status not in ACTIVE:
        raise _refuse(process, "canceled", "a running or paused")
    withdrawn = await director.cancel(session, ctx, CANCELED, pm=LogLevel.NOTICE)
    add_log(
        session,
        LogLevel.NOTICE,
        f"process canceled{_by(operator)}; {_requests(withdrawn)} withdrawn",
        process_id=process.id,
    )
    await session.flush()
    return process


def _requests(count: int) -> str:
    return f"{count} open request{'s' if count != 1 else ''}"


async def cancel_stalled(
    session: AsyncSession, director: Director, process_id: uuid.UUID, reason: str
) -> bool:
    """Cancel a process that waits on an envelope upload that stalled (the supervision duty).
    False when the process already ended."""
    try:
        ctx = await lock_process(session, director, process_id)
    except NotFound:
        return False
    if ctx.process.status not in ACTIVE:
        return False
    withdrawn = await director.cancel(session, ctx, reason, pm=LogLevel.ERROR)
    add_log(
        session,
        LogLevel.ERROR,
        f"{reason}; {_requests(withdrawn)} withdrawn",
        process_id=process_id,
        processing_error=True,
    )
    return True


async def replay(
    session: AsyncSession,
    director: Director,
    process_id: uuid.UUID,
    *,
    pipeline: ReplayPipeline,
    operator: str | None,
) -> ProcessRow:
    original = (
        await session.execute(
            sa.select(Process)
            .where(Process.id == process_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if original is None:
        raise NotFound(f"no process {process_id}")
    if not original.status.final:
        # One envelope never has two concurrent processes.
        raise Conflict(
            f"process {process_id} is {original.status.value}; only an ended process can be "
            "replayed (cancel it first)",
            extra={"process_status": original.status.value},
        )
    envelope_id = original.trigger_envelope_id
    envelope = await session.get(Envelope, envelope_id) if envelope_id is not None else None
    if envelope_id is None or envelope is None:
        raise Conflict(f"the trigger envelope of process {process_id} was purged; cannot replay")
    if envelope.status != EnvelopeStatus.COMPLETE:
        raise Conflict(f"the trigger envelope {envelope_id} is {envelope.status.value}")
    emitter = await session.get(Actor, original.emitter_id) if original.emitter_id else None
    if emitter is None:
        raise Conflict(f"the emitter of process {process_id} was deleted; cannot replay")
    if emitter.status != ActorStatus.ENABLED:
        raise Conflict(f"emitter {emitter.name!r} is {emitter.status.value}; enable it to replay")
    types = await event_types(session, envelope_id)
    route = None
    if pipeline == ReplayPipeline.SAME:
        route = await _same_route(session, original, emitter, types)
    replayed = await director.start_process(
        session,
        emitter,
        envelope_id,
        types,
        replay_of=original.id,
        group_id=original.group_id,
        route=route,
    )
    add_log(
        session,
        LogLevel.NOTICE,
        f"replayed as process {replayed.id}{_by(operator)}",
        process_id=original.id,
    )
    add_log(
        session,
        LogLevel.NOTICE,
        f"replay of process {original.id}{_by(operator)}",
        process_id=replayed.id,
    )
    await session.flush()
    return replayed


async def _same_route(
    session: AsyncSession, original: Process, emitter: Actor, types: list[str]
) -> Route:
    stored = await session.get(Pipeline, original.pipeline_id) if original.pipeline_id else None
    if stored is None:
        raise Conflict(
            f"the pipeline of process {original.id} was deleted; replay on the current pipeline"
        )
    graph = pipeline_graph(stored)
    candidates = [node for node in graph.emitters() if node_refers_to(node, emitter)]
    matching = [node for node in candidates if graph.matches(node.id, types)]
    if not candidates:
        raise Conflict(
            f"pipeline {stored.name} {stored.version} no longer has emitter {emitter.name!r}"
        )
    return Route(PipelineRef.of(stored), graph, (matching or candidates)[0])
