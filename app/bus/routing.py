"""Which active pipeline an emitter's envelope starts, and which actors a node reaches."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import Unprocessable
from app.models import Actor, Pipeline
from app.models.enums import ActorKind, ActorStatus
from app.pipelines.graph import Graph, Node
from app.pipelines.service import active_pipelines
from app.pipelines.service import pipeline_graph as stored_graph


def pipeline_graph(pipeline: Pipeline) -> Graph:
    graph = stored_graph(pipeline)
    if graph is None:
        raise Unprocessable(f"pipeline {pipeline.name} {pipeline.version} has no usable graph")
    return graph


def node_refers_to(node: Node, actor: Actor) -> bool:
    if actor.name in node.actors or str(actor.id) in node.actors:
        return True
    return bool(set(node.roles) & set(actor.roles))


@dataclass(frozen=True, slots=True)
class Route:
    pipeline: Pipeline
    graph: Graph
    node: Node


async def route_for(session: AsyncSession, emitter: Actor, event_types: list[str]) -> Route:
    """Exactly one active pipeline must take this emitter's envelope."""
    routes: list[Route] = []
    other_types: list[str] = []
    for pipeline, graph in await active_pipelines(session):
        for node in graph.emitters():
            if not node_refers_to(node, emitter):
                continue
            if graph.matches(node.id, event_types):
                routes.append(Route(pipeline, graph, node))
            else:
                accepted = ", ".join(node.eventtypes)
                other_types.append(
                    f"{pipeline.name} {pipeline.version} (node {node.id}: {accepted})"
                )
    types = ", ".join(event_types) or "(none)"
    if not routes:
        if other_types:
            raise Unprocessable(
                f"no active pipeline takes event types [{types}] from emitter {emitter.name!r}; "
                f"its active pipelines accept: {'; '.join(other_types)}"
            )
        raise Unprocessable(f"no active pipeline has emitter {emitter.name!r}")
    if len(routes) > 1:
        names = "; ".join(
            f"{r.pipeline.name} {r.pipeline.version} (node {r.node.id})" for r in routes
        )
        raise Unprocessable(
            f"more than one active pipeline takes event types [{types}] from emitter "
            f"{emitter.name!r}: {names}; deactivate all but one"
        )
    return routes[0]


async def node_targets(session: AsyncSession, node: Node) -> list[Actor]:
    """The enabled actors a node dispatches to: all of them with `rolebroadcast`, else one,
    spread round-robin (least dispatched first)."""
    ids = []
    names = []
    for ref in node.actors:
        try:
            ids.append(uuid.UUID(ref))
        except ValueError:
            names.append(ref)
    refers = [Actor.name.in_(names), Actor.id.in_(ids)]
    if node.roles:
        refers.append(Actor.roles.overlap(list(node.roles)))
    query = sa.select(Actor).where(
        Actor.status == ActorStatus.ENABLED, Actor.kind == ActorKind(node.type), sa.or_(*refers)
    )
    if node.rolebroadcast:
        return list((await session.execute(query.order_by(Actor.name))).scalars())
    candidates = list(
        (await session.execute(query.order_by(Actor.dispatch_count, Actor.id))).scalars()
    )
    if len(candidates) <= 1:
        return candidates
    chosen = candidates[0]
    await session.execute(
        sa.update(Actor)
        .where(Actor.id == chosen.id)
        .values(dispatch_count=Actor.dispatch_count + 1)
        .execution_options(synchronize_session=False)
    )
    return [chosen]
