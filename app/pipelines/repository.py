"""Pipeline and actor-lookup queries."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from app.models import Actor, Pipeline
from app.models.enums import ActorKind, ActorStatus, PipelineStatus

# Actors that count for a role: those that can be (or soon be) dispatched to.
ROLE_ACTOR_STATUSES = (ActorStatus.ENABLED, ActorStatus.PENDING)


async def get(
    session: AsyncSession, pipeline_id: uuid.UUID, *, lock: bool = False
) -> Pipeline | None:
    """The pipeline, or None. With ``lock``, its row is locked until the transaction ends, so
    that an edit and a status change cannot interleave."""
    query = sa.select(Pipeline).where(Pipeline.id == pipeline_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def get_by_name_version(session: AsyncSession, name: str, version: str) -> Pipeline | None:
    query = sa.select(Pipeline).where(Pipeline.name == name, Pipeline.version == version)
    return (await session.execute(query)).scalar_one_or_none()


async def list_page(
    session: AsyncSession,
    *,
    limit: int,
    after: tuple[datetime, uuid.UUID] | None = None,
    name: str | None = None,
    version: str | None = None,
    status: PipelineStatus | None = None,
    valid: bool | None = None,
) -> Sequence[Pipeline]:
    """Up to ``limit`` pipelines in (created_at, id) order, after the given position. The
    source text is not loaded (lists leave it out)."""
    query = sa.select(Pipeline).options(defer(Pipeline.source, raiseload=True))
    if name is not None:
        query = query.where(Pipeline.name == name)
    if version is not None:
        query = query.where(Pipeline.version == version)
    if status is not None:
        query = query.where(Pipeline.status == status)
    if valid is not None:
        query = query.where(Pipeline.valid.is_(valid))
    if after is not None:
        query = query.where(sa.tuple_(Pipeline.created_at, Pipeline.id) > sa.tuple_(*after))
    query = query.order_by(Pipeline.created_at, Pipeline.id).limit(limit)
    return (await session.execute(query)).scalars().all()


async def active_refs(session: AsyncSession) -> list[tuple[uuid.UUID, str, str, datetime]]:
    """(id, name, version, updated_at) of the active pipelines, in creation order: what the
    router reads on every emission, without the graphs (they come from a cache)."""
    query = (
        sa.select(Pipeline.id, Pipeline.name, Pipeline.version, Pipeline.updated_at)
        .where(Pipeline.status == PipelineStatus.ACTIVE)
        .order_by(Pipeline.created_at, Pipeline.id)
    )
    return [(pid, name, version, at) for pid, name, version, at in await session.execute(query)]


async def graphs(
    session: AsyncSession, ids: Collection[uuid.UUID]
) -> dict[uuid.UUID, tuple[datetime, dict[str, Any] | None]]:
    """The stored graphs of these pipelines, each with the updated_at it goes with."""
    rows = await session.execute(
        sa.select(Pipeline.id, Pipeline.updated_at, Pipeline.graph).where(Pipeline.id.in_(ids))
    )
    return {pid: (updated_at, graph) for pid, updated_at, graph in rows}


def add(session: AsyncSession, pipeline: Pipeline) -> None:
    """Stage a new pipeline; the caller flushes (and turns a taken name into a Conflict)."""
    session.add(pipeline)


async def delete(session: AsyncSession, pipeline: Pipeline) -> None:
    # processes.pipeline_id is ON DELETE SET NULL: the processes stay.
    await session.delete(pipeline)
    await session.flush()


async def actors_by_ref(
    session: AsyncSession, names: Collection[str], ids: Collection[uuid.UUID]
) -> Sequence[sa.Row[uuid.UUID, str, ActorKind]]:
    """(id, name, kind) of the actors with one of these names or ids, whatever their status."""
    if not names and not ids:
        return []
    query = sa.select(Actor.id, Actor.name, Actor.kind).where(
        sa.or_(Actor.name.in_(names), Actor.id.in_(ids))
    )
    return (await session.execute(query)).all()


async def actors_with_roles(
    session: AsyncSession, roles: Collection[str]
) -> Sequence[sa.Row[uuid.UUID, str, ActorKind, list[str]]]:
    """(id, name, kind, roles) of the enabled or pending actors having any of these roles."""
    if not roles:
        return []
    query = sa.select(Actor.id, Actor.name, Actor.kind, Actor.roles).where(
        Actor.roles.overlap(list(roles)),
        Actor.status.in_(ROLE_ACTOR_STATUSES),
    )
    return (await session.execute(query)).all()
