"""HTTP-polling actors: lease the next request, report its state."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from app.accounts.principal import Principal
from app.actors.access import actor_info, owned_actor_info
from app.bus.director import Answering, Message, OutputTaken
from app.bus.notify import actor_key
from app.core.deps import Caller, State, authenticate, require_enabled, state_of
from app.core.direct import (
    DirectRoute,
    direct,
    json_body,
    query_number,
    uuid_text,
    validated,
)
from app.core.errors import Problem, error_body, unavailable
from app.core.exceptions import Forbidden, PayloadTooLarge, Unprocessable, XbusError
from app.envelopes.codec import (
    EnvelopeData,
    EnvelopeFormatError,
    EnvelopeTooLargeError,
    parse_envelope_json,
)
from app.models.enums import ActorStatus, RequestStatus
from app.ops.supervision import record_poll
from app.requests.schemas import (
    ActorRequestBatch,
    ActorRequestRead,
    RequestStateIn,
    RequestStateNextRead,
    RequestStateRead,
    RequestStateResult,
    RequestStatesIn,
    RequestStatesRead,
)
from app.requests.service import handed_payloads
from app.state import AppState
from app.store.connection import Unit
from app.store.processes import RequestRow

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["requests"], route_class=DirectRoute)

# Even without a wake-up, re-check this often (due retries, missed doorbells).
_RECHECK = 1.0


async def _lease_direct(request: Request) -> Any:
    """`lease_request`'s parameters read from the request (`app.core.direct`)."""
    plain_wait, wait = query_number(request, "wait", integer=False)
    plain_max, most = query_number(request, "max", integer=True)
    if not (plain_wait and plain_max) or (most is not None and not 1 <= most <= 1000):
        return None
    caller = await require_enabled(await authenticate(request))
    return await lease_request(
        request.path_params["actor"], request, caller, state_of(request), wait or 0, most
    )


@router.get(
    "/actors/{actor}/requests",
    summary="Lease the next request of a polling actor (long-poll with ?wait=N)",
    response_model=ActorRequestRead | ActorRequestBatch,
    responses={
        200: {
            "description": "The request leased (without `max`), or up to `max` requests "
            'leased at once, oldest first (`{"requests": [...]}`)'
        },
        204: {"description": "No request came within the wait"},
        **Problem.of(401, 403, 404, 422),
    },
)
@direct(_lease_direct)
async def lease_request(
    actor: str,
    http_request: Request,
    caller: Caller,
    state: State,
    wait: Annotated[float, Query(ge=0, description="seconds to wait for a request")] = 0,
    batch: Annotated[
        int | None,
        Query(
            alias="max",
            ge=1,
            le=1000,
            description="lease up to this many requests at once; the answer is then a batch",
        ),
    ] = None,
) -> Any:
    async with state.db.working() as session:
        target = await owned_actor_info(session, state.cache, caller, actor)
        if target.status != ActorStatus.ENABLED:
            raise Forbidden(f"actor {target.name!r} is {target.status.value}")
        await record_poll(session, target)  # alive: last_seen, and no longer unresponsive
        deadline = time.monotonic() + min(wait, state.settings.long_poll_max)
        while True:
            payloads = await _lease(session, state, caller, target.id, batch or 1)
            if payloads:
                return payloads[0] if batch is None else ActorRequestBatch(requests=payloads)
            await session.commit()  # hold no connection while waiting
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return Response(status_code=204)
            await state.notifier.wait(actor_key(target.id), min(remaining, _RECHECK))
            if await http_request.is_disconnected():
                # The poller is gone: leasing now would strand the request until its lease ends.
                return Response(status_code=204)


async def _report_direct(request: Request) -> RequestStateNextRead | None:
    """`report_state`'s parameters read from the request (`app.core.direct`)."""
    request_id = request.path_params["request_id"]
    plain_next, most = query_number(request, "next", integer=True)
    if not uuid_text(request_id) or not plain_next or not (most is None or 1 <= most <= 1000):
        return None
    body = validated(RequestStateIn, await json_body(request))
    if body is None:
        return None
    caller = await require_enabled(await authenticate(request))
    return await report_state(uuid.UUID(request_id), body, caller, state_of(request), most)


async def _reports_direct(request: Request) -> RequestStatesRead | None:
    """`report_states`' parameters read from the request (`app.core.direct`)."""
    body = validated(RequestStatesIn, await json_body(request))
    if body is None:
        return None
    caller = await require_enabled(await authenticate(request))
    return await report_states(body, caller, state_of(request))


@router.post(
    "/requests/{request_id}/state",
    summary="Report the state of a request: running, success (with outputs) or error",
    response_model=RequestStateNextRead,
    responses=Problem.of(401, 403, 404, 409, 413, 422),
)
@direct(_report_direct)
async def report_state(
    request_id: uuid.UUID,
    body: RequestStateIn,
    caller: Caller,
    state: State,
    next_requests: Annotated[
        int | None,
        Query(
            alias="next",
            ge=1,
            le=1000,
            description="once the state is recorded, lease up to this many due requests of "
            "the same actor and return them in `next`: a consumer's answer and its next "
            "request in one round trip",
        ),
    ] = None,
) -> RequestStateNextRead:
    async with state.db.working() as session:
        request = await _report(session, caller, state, request_id, body)
    following = None
    if next_requests is not None:
        following = await _lease_next(caller, state, request.actor_id, next_requests)
    return RequestStateNextRead(
        request_id=request.id,
        status=request.status,
        lease_expires_at=request.lease_expires_at,
        next=following,
    )


async def _lease_next(
    caller: Principal, state: AppState, actor_id: uuid.UUID | None, most: int
) -> list[ActorRequestRead]:
    """`?next=N` of a state: up to N due requests of the answered request's actor, leased
    as `GET .../requests?max=N` would (no wait), after the state's own unit is done (an
    answer already recorded is never undone by this lease). The caller owns that actor: the
    state was taken. Whatever fails now leases none (a database out of reach: logged as a
    warning; anything else: logged as an error, with its traceback): the state was
    recorded and is answered as such, and the consumer polls as usual (where it gets the
    503). An error here must not make a consumer send again a state already taken."""
    if actor_id is None:
        return []  # the actor was deleted
    try:
        async with state.db.working() as session:
            target = await actor_info(session, state.cache, str(actor_id))
            if target is None or target.status != ActorStatus.ENABLED:
                return []
            await record_poll(session, target)
            return await _lease(session, state, caller, target.id, most)
    except Exception as exc:
        if unavailable(exc):
            log.warning("state recorded, its next requests not leased: %s", exc)
        else:
            log.exception("state recorded, its next requests not leased")
        return []


async def _lease(
    session: Unit, state: AppState, caller: Principal, actor_id: uuid.UUID, most: int
) -> list[ActorRequestRead]:
    """Up to `most` due requests of the actor, leased to the caller (one statement), as
    handed out: oldest first, envelopes inline up to the configured size."""
    inline = state.settings.inline_envelope_max_bytes
    leased = await state.director.lease(
        session, actor_id, f"http:{caller.name}", limit=most, inline_max=inline
    )
    return handed_payloads(leased, inline)


@router.post(
    "/requests/states",
    summary="Report the states of many requests at once",
    response_model=RequestStatesRead,
    responses=Problem.of(401, 403, 409, 422),
)
@direct(_reports_direct)
async def report_states(
    body: RequestStatesIn,
    caller: Caller,
    state: State,
) -> RequestStatesRead:
    """Each state as `POST /requests/{id}/state` would take it, in one transaction: one that
    is refused (unknown request, already ended, bad outputs) changes nothing and answers its
    problem in its place; the others are recorded. Only an output id taken by another answer
    at the same moment refuses the whole batch (409, nothing recorded: send it again)."""
    async with state.db.working() as session:
        answering = await state.director.lock_answers(
            session, [item.request_id for item in body.states]
        )
        results = []
        for item in body.states:
            try:
                request = await _report(session, caller, state, item.request_id, item, answering)
            except OutputTaken:
                raise  # the batch's transaction is spent: the whole batch is refused (409)
            except XbusError as exc:
                results.append(
                    RequestStateResult(
                        request_id=item.request_id,
                        status=exc.status,
                        problem=error_body(exc, f"/api/v1/requests/{item.request_id}/state"),
                    )
                )
                continue
            answer = RequestStateRead(
                request_id=request.id,
                status=request.status,
                lease_expires_at=request.lease_expires_at,
            )
            results.append(RequestStateResult(request_id=item.request_id, status=200, state=answer))
        await state.director.write_answers(session, answering)
        return RequestStatesRead(results=results)


async def _report(
    session: Unit,
    caller: Principal,
    state: AppState,
    request_id: uuid.UUID,
    body: RequestStateIn,
    answering: Answering | None = None,
) -> RequestRow:
    """The state taken: the request as it was written."""
    settings = state.settings
    outputs: dict[str, EnvelopeData] = {}
    for name, raw in body.outputs.items():
        try:
            outputs[name] = parse_envelope_json(
                raw, max_items=settings.envelope_max_items, max_bytes=settings.envelope_max_bytes
            )
        except EnvelopeTooLargeError as exc:
            raise PayloadTooLarge(f"output {name}: {exc}") from None
        except EnvelopeFormatError as exc:
            pointer = f"/outputs/{name}{exc.pointer or ''}"
            raise Unprocessable(
                f"output {name}: {exc.detail}", extra={"pointer": pointer}
            ) from None
    request = await state.director.report(
        session,
        request_id,
        RequestStatus(body.status),
        [Message(m.level, m.text) for m in body.messages],
        outputs,
        account_id=None if caller.admin else caller.account_id,
        answering=answering,
    )
    return request
