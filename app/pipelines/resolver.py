"""Actor and role references of pipeline graphs, resolved against the actors table.

`graph.validate_graph` asks its resolver synchronously, node by node; this module loads
everything a set of graphs mentions in two queries first, and answers from that snapshot.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from app.pipelines import repository
from app.pipelines.graph import Graph, Node


@dataclass(frozen=True, slots=True)
class ActorInfo:
    id: uuid.UUID
    name: str
    kind: str


def as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


@dataclass
class DbActorResolver:
    """An `ActorResolver` over the actors a set of graphs mentions.

    An actor reference is an actor id or name (an id wins when both exist); any actor
    counts, whatever its status. A role counts the enabled or pending actors having it.
    """

    by_id: dict[uuid.UUID, ActorInfo] = field(default_factory=dict)
    by_name: dict[str, ActorInfo] = field(default_factory=dict)
    by_role: dict[str, list[ActorInfo]] = field(default_factory=dict)

    def actor(self, ref: str) -> ActorInfo | None:
        actor_id = as_uuid(ref)
        if actor_id is not None and actor_id in self.by_id:
            return self.by_id[actor_id]
        return self.by_name.get(ref)

    def actor_kind(self, ref: str) -> str | None:
        actor = self.actor(ref)
        return actor.kind if actor is not None else None

    def role_kinds(self, role: str) -> set[str]:
        return {actor.kind for actor in self.by_role.get(role, [])}

    def node_actors(self, node: Node) -> dict[uuid.UUID, ActorInfo]:
        """The actors a node can stand for: those it names, and those having its roles."""
        found: dict[uuid.UUID, ActorInfo] = {}
        for ref in node.actors:
            actor = self.actor(ref)
            if actor is not None:
                found[actor.id] = actor
        for role in node.roles:
            for actor in self.by_role.get(role, []):
                found[actor.id] = actor
        return found


async def load_resolver(session: AsyncSession, graphs: Iterable[Graph]) -> DbActorResolver:
    names: set[str] = set()
    ids: set[uuid.UUID] = set()
    roles: set[str] = set()
    for graph in graphs:
        for node in graph.nodes.values():
            for ref in node.actors:
                names.add(ref)
                actor_id = as_uuid(ref)
                if actor_id is not None:
                    ids.add(actor_id)
            roles.update(node.roles)

    resolver = DbActorResolver()
    for actor_id, name, kind in await repository.actors_by_ref(session, names, ids):
        info = ActorInfo(actor_id, name, kind.value)
        resolver.by_id[actor_id] = info
        resolver.by_name[name] = info
    for actor_id, name, kind, actor_roles in await repository.actors_with_roles(session, roles):
        info = ActorInfo(actor_id, name, kind.value)
        for role in actor_roles:
            if role in roles:
                resolver.by_role.setdefault(role, []).append(info)
    return resolver
