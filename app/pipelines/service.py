"""Pipeline rules: saving and checking graphs, the draft/active/inactive life cycle, and the
active pipelines the bus core routes envelopes with.

Nothing here knows HTTP: errors are `app.core.errors` classes, and the caller's unit of work
commits (services only flush).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import BadRequest, Conflict, NotFound, Unprocessable, XbusError
from app.core.pagination import decode_cursor, encode_cursor
from app.models import Pipeline
from app.models.enums import PipelineStatus
from app.models.ids import new_id
from app.pipelines import repository
from app.pipelines.graph import Graph, Node, ValidationMessage, check_graph, parse_graph
from app.pipelines.graphs import PipelineRef, active_pipelines
from app.pipelines.resolver import DbActorResolver, load_resolver
from app.pipelines.schemas import GRAPH_SOURCE_MAX, PipelineCreate, PipelineUpdate

# Beyond these sizes a graph is refused outright (422) rather than checked: checking runs
# on the event loop, and no real pipeline comes near them.
MAX_NODES = 1000
MAX_EDGES = 5000

log = logging.getLogger(__name__)

_YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- graph checking


@dataclass(frozen=True)
class GraphCheck:
    """A graph as sent, and what checking it found."""

    source: str
    graph: Graph | None
    messages: list[ValidationMessage]

    @property
    def valid(self) -> bool:
        return self.graph is not None and not any(m.level == "error" for m in self.messages)

    @property
    def canonical(self) -> dict[str, Any] | None:
        return self.graph.to_dict() if self.graph is not None else None

    @property
    def message_dicts(self) -> list[dict[str, str | None]]:
        return [m.to_dict() for m in self.messages]


def _refuse(detail: str) -> Unprocessable:
    message = ValidationMessage("error", detail)
    return Unprocessable(f"graph: {detail}", extra={"validation_messages": [message.to_dict()]})


def _check_shape(data: Mapping[Any, Any]) -> None:
    for key, most in (("nodes", MAX_NODES), ("edges", MAX_EDGES)):
        items = data.get(key)
        if isinstance(items, list) and len(items) > most:
            raise _refuse(f"the graph has {len(items)} {key}; at most {most} are allowed")


def _load(graph: Mapping[str, Any] | str) -> tuple[str, Mapping[Any, Any] | None]:
    """The source text to store and the document it holds; the document is None when it is
    YAML that does not parse (saved as it is, with the syntax error as a message).

    Raises Unprocessable when the document is not a mapping at all, or too large.
    """
    if isinstance(graph, Mapping):
        try:
            source = json.dumps(graph, ensure_ascii=False)
        except RecursionError:
            raise _refuse("the graph is nested too deeply") from None
        if len(source) > GRAPH_SOURCE_MAX:
            raise _refuse(f"the graph is larger than {GRAPH_SOURCE_MAX} characters")
        _check_shape(graph)
        return source, graph
    try:
        data = yaml.load(graph, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except (yaml.YAMLError, RecursionError):
        parsed, _ = parse_graph(graph)
        if parsed is None:
            return graph, None
        # The C and the pure-Python parsers disagree: go with the one graph.py uses.
        data = yaml.safe_load(graph)
    if not isinstance(data, Mapping):
        raise _refuse(
            'the graph must be a mapping with "nodes" and "edges", but the document is '
            + _kind_of(data)
        )
    _check_shape(data)
    return graph, data


def _kind_of(data: object) -> str:
    if data is None:
        return "empty"
    if isinstance(data, list):
        return "a list"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, int | float):
        return "a number"
    if isinstance(data, str):
        return "a plain string"
    return f"a {type(data).__name__}"


def _stored_document(source: str) -> Mapping[str, Any] | str:
    """The document a stored source holds: a serialised JSON object or the YAML text."""
    try:
        data = json.loads(source)
    except (ValueError, RecursionError):
        return source
    return data if isinstance(data, dict) else source


async def check_graph_input(session: AsyncSession, graph: Mapping[str, Any] | str) -> GraphCheck:
    """Parse and validate a graph as a client sent it, against the current actors."""
    source, data = _load(graph)
    if data is None:
        # YAML that does not parse: graph.py words the syntax error.
        return GraphCheck(source, None, parse_graph(source)[1])
    # Parse once to learn which actors and roles to look up, then check with them.
    parsed, _ = parse_graph(data)
    assert parsed is not None  # `data` is a mapping
    resolver = await load_resolver(session, [parsed])
    checked, messages = check_graph(data, resolver)
    return GraphCheck(source, checked, messages)


async def recheck(session: AsyncSession, pipeline: Pipeline) -> GraphCheck:
    """Check a stored pipeline's source again, against the actors as they are now."""
    check = await check_graph_input(session, _stored_document(pipeline.source))
    return GraphCheck(pipeline.source, check.graph, check.messages)


def _apply_check(
    pipeline: Pipeline, check: GraphCheck, extra: Sequence[ValidationMessage] = ()
) -> None:
    pipeline.source = check.source
    pipeline.graph = check.canonical
    pipeline.valid = check.valid
    pipeline.validation_messages = check.message_dicts + [m.to_dict() for m in extra]


# --------------------------------------------------------------------------- CRUD


def _parse_id(raw: uuid.UUID | str) -> uuid.UUID:
    if isinstance(raw, uuid.UUID):
        return raw
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise NotFound(f"no pipeline with id {raw!r}") from None


async def get_pipeline(
    session: AsyncSession, pipeline_id: uuid.UUID | str, *, lock: bool = False
) -> Pipeline:
    """The pipeline, or NotFound (also for an id that is not a UUID)."""
    pipeline = await repository.get(session, _parse_id(pipeline_id), lock=lock)
    if pipeline is None:
        raise NotFound(f"no pipeline with id {str(pipeline_id)!r}")
    return pipeline


def _name_taken(name: str, version: str) -> Conflict:
    return Conflict(f"a pipeline {name!r} version {version!r} already exists")


async def _flush_unique(session: AsyncSession, pipeline: Pipeline) -> None:
    """Flush; a (name, version) taken by a concurrent request becomes a Conflict."""
    try:
        await session.flush()
    except IntegrityError as exc:
        if "uq_pipelines_name_version" in str(exc.orig):
            raise _name_taken(pipeline.name, pipeline.version) from None
        raise


async def create_pipeline(session: AsyncSession, data: PipelineCreate) -> Pipeline:
    """Save a new draft. A graph with problems is saved too, with its messages."""
    if await repository.get_by_name_version(session, data.name, data.version) is not None:
        raise _name_taken(data.name, data.version)
    check = await check_graph_input(session, data.graph)
    now = _utcnow()
    pipeline = Pipeline(
        id=new_id(),
        name=data.name,
        version=data.version,
        description=data.description or "",
        status=PipelineStatus.DRAFT,
        created_at=now,
        updated_at=now,
        status_changed_at=now,
    )
    _apply_check(pipeline, check)
    repository.add(session, pipeline)
    await _flush_unique(session, pipeline)
    return pipeline


def _not_a_draft(pipeline: Pipeline, doing: str) -> Conflict:
    how = (
        "set its status to inactive, then to draft"
        if pipeline.status == PipelineStatus.ACTIVE
        else "set its status to draft first"
    )
    return Conflict(
        f"pipeline {pipeline.id} is {pipeline.status.value}: only a draft can be {doing}; {how}"
    )


async def update_pipeline(
    session: AsyncSession, pipeline_id: uuid.UUID | str, data: PipelineUpdate
) -> Pipeline:
    """Edit a draft and check its graph again (the actors may have changed too)."""
    pipeline = await get_pipeline(session, pipeline_id, lock=True)
    if pipeline.status != PipelineStatus.DRAFT:
        raise _not_a_draft(pipeline, "edited")
    name = data.name if data.name is not None else pipeline.name
    version = data.version if data.version is not None else pipeline.version
    if (name, version) != (pipeline.name, pipeline.version):
        other = await repository.get_by_name_version(session, name, version)
        if other is not None and other.id != pipeline.id:
            raise _name_taken(name, version)
    if data.graph is not None:
        check = await check_graph_input(session, data.graph)
    else:
        check = await recheck(session, pipeline)
    pipeline.name = name
    pipeline.version = version
    if "description" in data.model_fields_set:
        pipeline.description = data.description or ""
    _apply_check(pipeline, check)
    await _flush_unique(session, pipeline)
    return pipeline


async def delete_pipeline(session: AsyncSession, pipeline_id: uuid.UUID | str) -> None:
    """Delete a pipeline that is not active. Its processes stay, without a pipeline."""
    pipeline = await get_pipeline(session, pipeline_id, lock=True)
    if pipeline.status == PipelineStatus.ACTIVE:
        raise Conflict(
            f"pipeline {pipeline.id} is active: set its status to inactive before deleting it"
        )
    await repository.delete(session, pipeline)


async def list_pipelines(
    session: AsyncSession,
    *,
    limit: int,
    cursor: str | None = None,
    name: str | None = None,
    version: str | None = None,
    status: PipelineStatus | None = None,
    valid: bool | None = None,
) -> tuple[Sequence[Pipeline], str | None]:
    """A page of pipelines in creation order, and the cursor of the next page (or None)."""
    after = _decode_position(cursor) if cursor else None
    rows = await repository.list_page(
        session,
        limit=limit + 1,
        after=after,
        name=name,
        version=version,
        status=status,
        valid=valid,
    )
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    last = page[-1]
    return page, encode_cursor([last.created_at.isoformat(), str(last.id)])


def _decode_position(cursor: str) -> tuple[datetime, uuid.UUID]:
    created_at, pipeline_id = decode_cursor(cursor, 2)
    try:
        when = datetime.fromisoformat(created_at)
        return when, uuid.UUID(pipeline_id)
    except (TypeError, ValueError):
        raise BadRequest("cursor is not one this server handed out") from None


# --------------------------------------------------------------------------- life cycle


async def set_status(
    session: AsyncSession, pipeline_id: uuid.UUID | str, status: PipelineStatus
) -> Pipeline:
    """Move a pipeline along draft -> active <-> inactive -> draft.

    Activation checks the graph against the current actors and refuses an invalid one
    (Unprocessable with the messages); it warns when another active pipeline could take
    the same envelopes. Deactivation always works, even for a pipeline that became invalid.
    """
    pipeline = await get_pipeline(session, pipeline_id, lock=True)
    current = pipeline.status
    if status == current:
        return pipeline
    if current == PipelineStatus.ACTIVE and status == PipelineStatus.DRAFT:
        raise Conflict(
            f"pipeline {pipeline.id} is active: set its status to inactive before making it "
            "a draft again"
        )
    if status == PipelineStatus.ACTIVE:
        check = await recheck(session, pipeline)
        if not check.valid:
            errors = [m for m in check.messages if m.level == "error"]
            raise Unprocessable(
                f"pipeline {pipeline.id} cannot become active: its graph has "
                f"{len(errors)} error(s), the first: {errors[0].text}",
                extra={"validation_messages": check.message_dicts},
            )
        assert check.graph is not None
        _apply_check(pipeline, check, await _overlap_warnings(session, pipeline, check.graph))
    else:
        # Refresh the messages (the actors may have changed, and overlap warnings only
        # concern active pipelines), but never let checking stand in the way.
        try:
            _apply_check(pipeline, await recheck(session, pipeline))
        except XbusError:
            log.warning("pipeline %s: its stored graph cannot be checked again", pipeline.id)
    pipeline.status = status
    pipeline.status_changed_at = _utcnow()
    await session.flush()
    return pipeline


async def _overlap_warnings(
    session: AsyncSession, pipeline: Pipeline, graph: Graph
) -> list[ValidationMessage]:
    """Warnings for each emitter node that another active pipeline could also match: a common
    emitter actor (named, or through a role) or role, and a common event type. The director
    refuses such envelopes as ambiguous, so the operator should know before."""
    others = [(p, g) for p, g in await active_pipelines(session) if p.id != pipeline.id]
    emitters = graph.emitters()
    if not others or not emitters:
        return []
    resolver = await load_resolver(session, [graph, *(g for _, g in others)])
    warnings: list[ValidationMessage] = []
    for node in emitters:
        for other, other_graph in others:
            for other_node in other_graph.emitters():
                text = _overlap(resolver, node, other, other_node)
                if text is not None:
                    warnings.append(ValidationMessage("warning", text, node.id))
    return warnings


def _overlap(
    resolver: DbActorResolver, node: Node, other: PipelineRef, other_node: Node
) -> str | None:
    types = sorted(set(node.eventtypes) & set(other_node.eventtypes))
    if not types:
        return None
    mine = resolver.node_actors(node)
    theirs = resolver.node_actors(other_node)
    actors = sorted(mine[actor_id].name for actor_id in mine.keys() & theirs.keys())
    roles = sorted(set(node.roles) & set(other_node.roles))
    if not actors and not roles:
        return None
    who = []
    if actors:
        who.append(
            ("actor " if len(actors) == 1 else "actors ") + ", ".join(map(json.dumps, actors))
        )
    if roles:
        who.append(("role " if len(roles) == 1 else "roles ") + ", ".join(map(json.dumps, roles)))
    return (
        f"node {json.dumps(node.id)}: the active pipeline {json.dumps(other.name)} version "
        f"{json.dumps(other.version)} ({other.id}, node {json.dumps(other_node.id)}) can also "
        f"match envelopes from {' and '.join(who)} with event type(s) "
        f"{', '.join(map(json.dumps, types))}; the bus refuses such envelopes as ambiguous"
    )
