"""The parsed graphs of stored pipelines, for the bus core (routing, the director): the active
pipelines with their graphs, and the graph of one version of a pipeline. A graph is parsed
once per version (its `updated_at`) and kept; the database is read only for what is not
held."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Pipeline
from app.pipelines import repository
from app.pipelines.graph import Graph, parse_graph
from app.store.connection import Unit, read_with

# Parsed graphs by pipeline id, with the updated_at they were parsed at. A pipeline's graph
# changes only with a new updated_at (and an active one cannot be edited at all).
_graph_cache: dict[uuid.UUID, tuple[datetime, Graph]] = {}
_GRAPH_CACHE_MAX = 1000


@dataclass(frozen=True, slots=True)
class PipelineRef:
    """Who a pipeline is, for routing and messages (its graph comes from the cache)."""

    id: uuid.UUID
    name: str
    version: str
    updated_at: datetime

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelineRef:
        return cls(pipeline.id, pipeline.name, pipeline.version, pipeline.updated_at)


def _cached(pipeline_id: uuid.UUID, updated_at: datetime) -> Graph | None:
    cached = _graph_cache.get(pipeline_id)
    return cached[1] if cached is not None and cached[0] == updated_at else None


def _remember(
    pipeline_id: uuid.UUID, updated_at: datetime, raw: dict[str, Any] | None
) -> Graph | None:
    if raw is None:
        return None
    graph, _ = parse_graph(raw)
    if graph is None:
        return None
    if len(_graph_cache) >= _GRAPH_CACHE_MAX:
        _graph_cache.clear()
    _graph_cache[pipeline_id] = (updated_at, graph)
    return graph


def pipeline_graph(pipeline: Pipeline) -> Graph | None:
    """The parsed graph of a stored pipeline (None when it has no usable graph)."""
    cached = _cached(pipeline.id, pipeline.updated_at)
    if cached is not None:
        return cached
    return _remember(pipeline.id, pipeline.updated_at, pipeline.graph)


async def active_pipelines(session: AsyncSession) -> list[tuple[PipelineRef, Graph]]:
    """The active pipelines, in creation order, each with its parsed graph. Graphs are read
    from the database only when the cache does not hold their current version."""
    refs = [PipelineRef(*row) for row in await repository.active_refs(session)]
    missing = [ref.id for ref in refs if _cached(ref.id, ref.updated_at) is None]
    stored = await repository.graphs(session, missing) if missing else {}
    result: list[tuple[PipelineRef, Graph]] = []
    for ref in refs:
        graph = _cached(ref.id, ref.updated_at)
        if graph is None and ref.id in stored:
            graph = _remember(ref.id, *stored[ref.id])
        if graph is not None:
            result.append((ref, graph))
    return result


async def graph_of(session: Unit, pipeline_id: uuid.UUID, updated_at: datetime) -> Graph | None:
    """The graph of this version of a pipeline (its last change at `updated_at`), from the
    cache, or read once."""
    graph = _cached(pipeline_id, updated_at)
    if graph is not None:
        return graph
    stored = await read_with(session, lambda orm: repository.graphs(orm, [pipeline_id]))
    if pipeline_id not in stored:
        return None
    return _remember(pipeline_id, *stored[pipeline_id])
