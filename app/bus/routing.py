"""Which active pipeline an emitter's envelope starts, and which actors a node reaches."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.bus.notify import actor_key
from app.core.exceptions import Unprocessable
from app.models import Actor, Pipeline
from app.models.enums import ActorKind, ActorStatus, RequestChannel
from app.pipelines.graph import Graph, Node
from app.pipelines.graphs import PipelineRef, active_pipelines
from app.pipelines.graphs import pipeline_graph as stored_graph
from app.store.cache import Cache
from app.store.connection import Unit, read_with


def pipeline_graph(pipeline: Pipeline) -> Graph:
    graph = stored_graph(pipeline)
    if graph is None:
        raise Unprocessable(f"pipeline {pipeline.name} {pipeline.version} has no usable graph")
    return graph


def node_refers_to(node: Node, actor: Any) -> bool:
    if actor.name in node.actors or str(actor.id) in node.actors:
        return True
    return bool(set(node.roles) & set(actor.roles))


@dataclass(frozen=True, slots=True)
class Route:
    pipeline: PipelineRef
    graph: Graph
    node: Node


def choose_route(
    pipelines: list[tuple[PipelineRef, Graph]],
    emitter: Any,
    event_types: list[str],
    *,
    partial: bool = False,
) -> Route:
    """Exactly one of these active pipelines must take this emitter's envelope. With
    `partial`, `event_types` are only some of the envelope's (it is still arriving): at
    least one pipeline must take them (an envelope takes a pipeline only if the pipeline
    accepts all its types, so more types never make a refusal good), and which one is
    decided once the envelope is complete."""
    routes: list[Route] = []
    other_types: list[str] = []
    for pipeline, graph in pipelines:
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
    if len(routes) > 1 and not partial:
        names = "; ".join(
            f"{r.pipeline.name} {r.pipeline.version} (node {r.node.id})" for r in routes
        )
        raise Unprocessable(
            f"more than one active pipeline takes event types [{types}] from emitter "
            f"{emitter.name!r}: {names}; deactivate all but one"
        )
    return routes[0]


# Where each (replica, node) is in its round: spreading needs no shared state, so it takes
# no lock; several replicas each go round, which spreads the work as evenly overall.
_rounds: dict[tuple[object, ...], int] = {}
_ROUNDS_MAX = 10_000


def _next_turn(node: Node) -> int:
    key = (node.type, tuple(sorted(node.actors)), tuple(sorted(node.roles)))
    # A round starts anywhere: replicas (and restarts) do not all begin with the same actor.
    turn = _rounds.get(key)
    if turn is None:
        turn = random.randrange(1 << 16)  # spreading, not secrecy
    if len(_rounds) >= _ROUNDS_MAX and key not in _rounds:
        _rounds.clear()
    _rounds[key] = turn + 1
    return turn


@dataclass(frozen=True, slots=True)
class Target:
    """An enabled actor a node dispatches to, and the channel that reaches it."""

    id: uuid.UUID
    name: str
    channel: RequestChannel
    # Its wake-up key (`actor_key`), made once with the target the cache keeps.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", actor_key(self.id))


def channel_for(config: dict[str, str], online: bool) -> RequestChannel:
    if config.get("http.webhook.url"):
        return RequestChannel.WEBHOOK
    if online:
        return RequestChannel.NATS
    return RequestChannel.POLL


class Targets:
    """What routing reads on every emission and dispatch, cached: the active pipelines with
    their graphs, and each node's enabled actors. Both are dropped on any change of actors,
    accounts or pipelines (`Cache`: on this replica at once, on the others through the
    doorbell) and after a few seconds at most."""

    def __init__(self, cache: Cache | None = None) -> None:
        self.cache = cache or Cache(None)

    async def pipelines(
        self, session: Unit, *, fresh: bool = False
    ) -> list[tuple[PipelineRef, Graph]]:
        return await self.cache.get(
            ("pipelines",), lambda: read_with(session, active_pipelines), fresh=fresh
        )

    async def of_node(self, session: Unit, node: Node) -> list[Target]:
        """A node's enabled actors; none found is read again every time (an actor enabled a
        moment ago on another replica is not missed)."""
        key = ("targets", node.type, node.actors, node.roles, node.rolebroadcast)
        return await self.cache.get(
            key, lambda: read_with(session, lambda orm: _enabled_actors(orm, node))
        )


async def route_for(
    session: Unit,
    emitter: Any,
    event_types: list[str],
    targets: Targets,
    *,
    partial: bool = False,
) -> Route:
    """Exactly one active pipeline must take this emitter's envelope (`choose_route`). A
    refusal is checked against the database, not the cache: a pipeline activated a moment
    ago on another replica (its doorbell still on the way) takes the envelope."""
    try:
        return choose_route(await targets.pipelines(session), emitter, event_types, partial=partial)
    except Unprocessable:
        fresh = await targets.pipelines(session, fresh=True)
        return choose_route(fresh, emitter, event_types, partial=partial)


async def _enabled_actors(session: AsyncSession, node: Node) -> list[Target]:
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
    query = (
        sa.select(Actor.id, Actor.name, Actor.config, Actor.online)
        .where(
            Actor.status == ActorStatus.ENABLED,
            Actor.kind == ActorKind(node.type),
            sa.or_(*refers),
        )
        .order_by(Actor.name if node.rolebroadcast else Actor.id)
    )
    rows = await session.execute(query)
    return [Target(i, name, channel_for(config or {}, online)) for i, name, config, online in rows]


async def node_targets(session: Unit, node: Node, targets: Targets) -> list[Target]:
    """The enabled actors a node dispatches to: all of them with `rolebroadcast`, else one,
    taken round-robin."""
    candidates = await targets.of_node(session, node)
    if node.rolebroadcast or len(candidates) <= 1:
        return candidates
    return [candidates[_next_turn(node) % len(candidates)]]
