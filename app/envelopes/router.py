"""Emission and envelope endpoints."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import metrics
from app.actors.access import ActorInfo, load_owned_actor, owned_actor_info
from app.bus.director import Planned
from app.commit_hooks import on_commit
from app.core.deps import (
    Caller,
    DirectorDep,
    Session,
    SettingsDep,
    State,
    authenticate,
    require_enabled,
    state_of,
)
from app.core.direct import DirectRoute, direct
from app.core.errors import Problem, error_body
from app.core.exceptions import (
    NotFound,
    PayloadTooLarge,
    Unprocessable,
    UnsupportedMediaType,
    XbusError,
)
from app.core.pagination import decode_cursor, encode_cursor
from app.envelopes import repository, service
from app.envelopes.access import readable_envelope
from app.envelopes.codec import (
    EnvelopeData,
    EnvelopeFormatError,
    EnvelopeTooLargeError,
    encode_item,
    envelope_from_complete_fragment,
    parse_envelope_json,
    parse_output_request,
)
from app.envelopes.schemas import (
    AppendRead,
    EmissionBatchRead,
    EmissionRead,
    EmissionResult,
    EnvelopeRead,
    EventRead,
    ItemPage,
    ItemsAppend,
    UploadCreate,
    UploadRead,
)
from app.models import Envelope
from app.store.connection import Unit, driver_connection, savepoint

router = APIRouter(prefix="/api/v1", tags=["envelopes"], route_class=DirectRoute)

PROTOBUF = "application/x-protobuf"


class EventIn(BaseModel):
    """Documentation of the envelope JSON (parsed by the codec, which reports every problem
    with a JSON pointer)."""

    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID | None = None
    type: str
    encoding: str = Field("text", pattern="^(text|base64|json)$")
    items: list[Any]


class EnvelopeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: uuid.UUID | None = None
    events: list[EventIn]


class BatchEnvelopeIn(EnvelopeIn):
    """An envelope of `POST .../outputs`, with its optional idempotency key."""

    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="Works as the `Idempotency-Key` header does for one emission.",
    )


_OUTPUT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": EnvelopeIn.model_json_schema(ref_template="#/components/schemas/{model}")
            },
            PROTOBUF: {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "description": "xbus.OutputRequest",
                }
            },
        },
    }
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _decode_envelope(media: str, body: bytes, max_items: int, max_bytes: int) -> Any:
    if media == PROTOBUF:
        try:
            output, fragment = parse_output_request(body)
            envelope = envelope_from_complete_fragment(fragment)
        except EnvelopeFormatError as exc:
            raise Unprocessable(
                f"{exc}; an OutputRequest over HTTP must carry a whole envelope "
                "(use the upload endpoints for fragments)"
            ) from None
        if output != "default":
            raise Unprocessable("emitters write to the output 'default'")
        if envelope.item_count > max_items or envelope.byte_size > max_bytes:
            raise PayloadTooLarge("the envelope is larger than the configured limits")
        return envelope
    if media not in ("application/json", ""):
        raise UnsupportedMediaType(f"send application/json or {PROTOBUF}, not {media}")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Unprocessable(f"the body is not valid JSON: {exc}") from None
    try:
        return parse_envelope_json(obj, max_items=max_items, max_bytes=max_bytes)
    except EnvelopeTooLargeError as exc:
        raise PayloadTooLarge(str(exc)) from None
    except EnvelopeFormatError as exc:
        raise Unprocessable(exc.detail, extra={"pointer": exc.pointer}) from None


async def _output_direct(request: Request) -> Any:
    """`output`'s parameters read from the request (`app.core.direct`)."""
    caller = await require_enabled(await authenticate(request))
    return await output(
        request.path_params["emitter"],
        request,
        caller,
        state_of(request),
        request.headers.get("idempotency-key"),
    )


@router.post(
    "/actors/{emitter}/output",
    summary="Emit an envelope: store it and start its process",
    status_code=202,
    response_model=EmissionRead,
    responses=Problem.of(401, 403, 404, 409, 413, 415, 422),
    openapi_extra=_OUTPUT_BODY,
)
@direct(_output_direct)
async def output(
    emitter: str,
    request: Request,
    caller: Caller,
    state: State,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> Any:
    async with state.db.working() as session:
        director, settings = state.director, state.settings
        actor = await owned_actor_info(session, state.cache, caller, emitter)
        body = await request.body()
        media = _media_type(request)
        transport = "http-protobuf" if media == PROTOBUF else "http"
        metrics.ENVELOPES_RECEIVED.labels(transport).inc()
        try:
            if idempotency_key is not None:
                stored = await service.claim_idempotency_key(
                    session, actor.id, idempotency_key, service.body_hash(media, body)
                )
                if stored is not None:
                    status_code, answer = stored
                    return JSONResponse(
                        answer, status_code=status_code, headers={"Idempotency-Replayed": "true"}
                    )
            limits = (settings.envelope_max_items, settings.envelope_max_bytes)
            envelope = _decode_envelope(media, body, *limits)
            # Without a key, the envelope may be written in a group commit (stored on return).
            groups = state.emissions if idempotency_key is None else None
            emission = await service.emit(session, director, actor, envelope, groups)
        except XbusError as exc:
            metrics.ENVELOPES_REJECTED.labels(transport, exc.code).inc()
            raise
        if idempotency_key is not None:
            await service.record_idempotent_answer(
                session, actor.id, idempotency_key, 202, emission.model_dump(mode="json")
            )
        on_commit(session, lambda: metrics.ENVELOPES_ACCEPTED.labels(transport).inc())
        return emission


NDJSON = "application/x-ndjson"
BATCH = "http-batch"

# The JSON array form; NDJSON (`application/x-ndjson`, one envelope per line) is taken too,
# and said in the operation's description: OpenAPI client generators take no NDJSON body.
_OUTPUTS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/BatchEnvelopeIn"},
                }
            },
        },
    }
}
# BatchEnvelopeIn's own schema, put in the components by app.main (it is no route's model).
BATCH_ENVELOPE_SCHEMA = BatchEnvelopeIn.model_json_schema(
    ref_template="#/components/schemas/{model}"
)


def _batch(media: str, body: bytes, most: int) -> list[Any]:
    """The envelopes of a batch body, as parsed JSON values; a line of NDJSON that is not
    JSON stays as the error it raised, for that entry alone."""
    if media == NDJSON:
        entries: list[Any] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                entries.append(Unprocessable(f"the line is not valid JSON: {exc}"))
    elif media in ("application/json", ""):
        try:
            entries = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise Unprocessable(f"the body is not valid JSON: {exc}") from None
        if not isinstance(entries, list):
            raise Unprocessable("the body must be a JSON array of envelopes")
    else:
        raise UnsupportedMediaType(f"send application/json or {NDJSON}, not {media}")
    if len(entries) > most:
        raise PayloadTooLarge(f"a batch holds at most {most} envelopes, not {len(entries)}")
    return entries


async def _outputs_direct(request: Request) -> EmissionBatchRead:
    """`outputs`' parameters read from the request (`app.core.direct`)."""
    caller = await require_enabled(await authenticate(request))
    state = state_of(request)
    return await outputs(
        request.path_params["emitter"], request, caller, state.director, state.settings, state
    )


@router.post(
    "/actors/{emitter}/outputs",
    summary="Emit many envelopes at once: each stored and routed, with one result each",
    response_model=EmissionBatchRead,
    responses=Problem.of(401, 403, 404, 413, 415, 422),
    openapi_extra=_OUTPUTS_BODY,
)
@direct(_outputs_direct)
async def outputs(
    emitter: str,
    request: Request,
    caller: Caller,
    director: DirectorDep,
    settings: SettingsDep,
    state: State,
) -> EmissionBatchRead:
    """A JSON array of envelopes, or NDJSON (one envelope per line). Each is taken as `POST
    .../output` takes one, in one transaction for the whole batch: an envelope refused (bad
    JSON, no pipeline, an id taken) answers its problem in its place and stores nothing; the
    others are stored and routed. An `idempotency_key` field in an envelope works as the
    `Idempotency-Key` header does for one emission."""
    async with state.db.working() as session:
        actor = await owned_actor_info(session, state.cache, caller, emitter)
        entries = _batch(_media_type(request), await request.body(), settings.emission_batch_max)
        # One transaction for the whole batch: nothing of it is stored unless all of what is
        # accepted is (a lone emission may be its own statement; a batch may not).
        await driver_connection(session)
        results: list[EmissionResult | None] = [None] * len(entries)
        # Envelopes without an idempotency key or ids of their own are only routed here, then
        # all written by one statement.
        planned: list[tuple[int, Planned]] = []
        metrics.ENVELOPES_RECEIVED.labels(BATCH).inc(len(entries))
        for index, entry in enumerate(entries):
            try:
                parsed = _batch_entry(entry, settings)
                envelope = parsed.envelope
                if (
                    parsed.key is None
                    and envelope.id is None
                    and all(e.id is None for e in envelope.events)
                ):
                    service.check_emitter(actor)
                    types = list(dict.fromkeys(e.type for e in envelope.events))
                    route = await director.route(session, actor, types)
                    rows = repository.envelope_rows(envelope, emitter_id=actor.id)
                    planned.append((index, (rows, types, route)))
                    continue
                # In a savepoint: a conflict found by the database undoes this one alone.
                async with savepoint(session):
                    results[index] = await _emit_one(session, director, actor, index, parsed)
            except XbusError as exc:
                metrics.ENVELOPES_REJECTED.labels(BATCH, exc.code).inc()
                results[index] = EmissionResult(
                    index=index, status=exc.status, problem=error_body(exc)
                )
        if planned:
            started = await director.start_many(session, [(actor, p) for _, p in planned])
            for (index, (rows, _, _)), process in zip(planned, started, strict=True):
                emission = EmissionRead(
                    envelope_id=rows.id, process_id=process.id, status=process.status
                )
                results[index] = EmissionResult(index=index, status=202, emission=emission)
        done = [r for r in results if r is not None]
        accepted = sum(1 for r in done if r.status == 202 and not r.replayed)
        on_commit(session, lambda: metrics.ENVELOPES_ACCEPTED.labels(BATCH).inc(accepted))
        return EmissionBatchRead(results=done)


class BatchEntry(NamedTuple):
    envelope: EnvelopeData
    key: str | None = None  # its idempotency key
    digest: str | None = None  # the hash of its body (without the key), when it has a key


def _batch_entry(entry: Any, settings: SettingsDep) -> BatchEntry:
    """An envelope of a batch and its idempotency key, or the problem it has."""
    if isinstance(entry, XbusError):
        raise entry
    key = entry.pop("idempotency_key", None) if isinstance(entry, dict) else None
    if key is not None and not isinstance(key, str):
        raise Unprocessable("idempotency_key must be a string")
    try:
        envelope = parse_envelope_json(
            entry, max_items=settings.envelope_max_items, max_bytes=settings.envelope_max_bytes
        )
    except EnvelopeTooLargeError as exc:
        raise PayloadTooLarge(str(exc)) from None
    except EnvelopeFormatError as exc:
        raise Unprocessable(exc.detail, extra={"pointer": exc.pointer}) from None
    if key is None:
        return BatchEntry(envelope)
    # The key's body: the envelope as sent, without the key.
    canonical = json.dumps(entry, sort_keys=True).encode()
    return BatchEntry(envelope, key, service.body_hash("application/json", canonical))


async def _emit_one(
    session: Unit,
    director: DirectorDep,
    actor: ActorInfo,
    index: int,
    entry: BatchEntry,
) -> EmissionResult:
    """An envelope of a batch with an idempotency key or ids of its own: on its own."""
    envelope, key, digest = entry
    if key is None or digest is None:
        emission = await service.emit(session, director, actor, envelope)
        return EmissionResult(index=index, status=202, emission=emission)
    stored = await service.claim_idempotency_key(session, actor.id, key, digest)
    if stored is not None:
        status_code, answer = stored
        return EmissionResult(
            index=index, status=status_code, emission=EmissionRead(**answer), replayed=True
        )
    try:
        emission = await service.emit(session, director, actor, envelope)
    except XbusError:
        await service.release_idempotency_key(session, actor.id, key)
        raise
    await service.record_idempotent_answer(
        session, actor.id, key, 202, emission.model_dump(mode="json")
    )
    return EmissionResult(index=index, status=202, emission=emission)


def _events(envelope: Envelope, summaries: list[repository.EventSummary]) -> list[EventRead]:
    return [
        EventRead(
            id=s.id,
            position=s.position,
            type=s.type,
            encoding=s.encoding,
            item_count=s.item_count,
            size_bytes=s.size_bytes,
            complete=s.complete,
            items_url=f"/api/v1/envelopes/{envelope.id}/events/{s.id}/items",
        )
        for s in summaries
    ]


@router.post(
    "/actors/{emitter}/envelopes",
    summary="Open an envelope to upload in fragments",
    status_code=201,
    response_model=UploadRead,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def open_upload(
    emitter: str, body: UploadCreate, session: Session, caller: Caller, settings: SettingsDep
) -> UploadRead:
    actor = await load_owned_actor(session, caller, emitter)
    envelope = await service.open_upload(session, actor, body.id, body.events)
    return UploadRead(
        envelope_id=envelope.id,
        status=envelope.status,
        events=_events(envelope, await repository.list_events(session, envelope.id)),
        stall_deadline=service.stall_deadline(envelope, settings),
    )


async def _own_upload(session: Session, caller: Caller, envelope_id: uuid.UUID) -> Any:
    envelope = await session.get(Envelope, envelope_id)
    if envelope is None or envelope.emitter_id is None:
        raise NotFound(f"no envelope {envelope_id}")
    return await load_owned_actor(session, caller, str(envelope.emitter_id))


@router.post(
    "/envelopes/{envelope_id}/events/{event_id}/items",
    summary="Append items to an event of an envelope being uploaded",
    response_model=AppendRead,
    responses=Problem.of(401, 403, 404, 409, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ItemsAppend.model_json_schema()},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def append_items(
    envelope_id: uuid.UUID,
    event_id: uuid.UUID,
    request: Request,
    session: Session,
    caller: Caller,
    settings: SettingsDep,
) -> AppendRead:
    await _own_upload(session, caller, envelope_id)
    media = _media_type(request)
    body = await request.body()
    raw_items: list[Any] | None = None
    binary: bytes | None = None
    if media == "application/octet-stream":
        binary = body
    elif media in ("application/json", ""):
        try:
            raw_items = ItemsAppend.model_validate_json(body).items
        except ValueError as exc:
            raise Unprocessable(
                f'expected {{"items": [...]}}: {str(exc).splitlines()[0]}'
            ) from None
    else:
        raise UnsupportedMediaType(
            f"send application/json or application/octet-stream, not {media}"
        )
    envelope, event = await service.append_items(
        session, settings, envelope_id, event_id, raw_items, binary
    )
    return AppendRead(
        envelope_id=envelope.id,
        event_id=event.id,
        items_received=event.items_received,
        envelope_item_count=envelope.item_count,
        envelope_size_bytes=envelope.size_bytes,
        stall_deadline=service.stall_deadline(envelope, settings),
    )


@router.post(
    "/envelopes/{envelope_id}/close",
    summary="Close an uploaded envelope and start its process",
    status_code=202,
    response_model=EmissionRead,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def close_upload(
    envelope_id: uuid.UUID,
    session: Session,
    caller: Caller,
    director: DirectorDep,
    settings: SettingsDep,
) -> EmissionRead:
    actor = await _own_upload(session, caller, envelope_id)
    return await service.close_upload(session, director, settings, actor, envelope_id)


@router.get(
    "/envelopes/{envelope_id}",
    summary="An envelope: status, sizes and events",
    response_model=EnvelopeRead,
    responses=Problem.of(401, 403, 404),
)
async def get_envelope(envelope_id: str, session: Session, caller: Caller) -> EnvelopeRead:
    envelope = await readable_envelope(session, caller, envelope_id)
    return EnvelopeRead(
        id=envelope.id,
        status=envelope.status,
        status_reason=envelope.status_reason,
        emitter_id=envelope.emitter_id,
        process_id=envelope.process_id,
        node_id=envelope.node_id,
        output=envelope.output,
        event_count=envelope.event_count,
        item_count=envelope.item_count,
        size_bytes=envelope.size_bytes,
        created_at=envelope.created_at,
        last_fragment_at=envelope.last_fragment_at,
        completed_at=envelope.completed_at,
        events=_events(envelope, await repository.list_events(session, envelope.id)),
    )


@router.get(
    "/envelopes/{envelope_id}/events/{event_id}/items",
    summary="Read an event's items, a page at a time",
    response_model=ItemPage,
    responses=Problem.of(400, 401, 403, 404),
)
async def get_items(
    envelope_id: str,
    event_id: uuid.UUID,
    session: Session,
    caller: Caller,
    settings: SettingsDep,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> ItemPage:
    envelope = await readable_envelope(session, caller, envelope_id)
    summaries = {s.id: s for s in await repository.list_events(session, envelope.id)}
    event = summaries.get(event_id)
    if event is None:
        raise NotFound(f"envelope {envelope.id} has no event {event_id}")
    size = min(limit or settings.page_size_default, settings.page_size_max)
    after = int(decode_cursor(cursor, 1)[0]) if cursor else -1
    rows = await repository.item_page(session, event.id, after, size)
    items: list[Any] = []
    budget = settings.inline_envelope_max_bytes
    last = after
    for position, data in rows:
        if items and budget - len(data) < 0:
            break
        budget -= len(data)
        try:
            items.append(encode_item(data, event.encoding))
        except ValueError:
            items.append(encode_item(data, "base64"))
        last = position
    more = len(items) < len(rows) or len(rows) == size
    return ItemPage(
        event_id=event.id,
        encoding=event.encoding,
        items=items,
        next_cursor=encode_cursor([last]) if more and items else None,
    )


__all__ = ["Response", "router"]
