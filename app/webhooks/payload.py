"""What a webhook sends (the request body, JSON or protobuf) and how its answer reads.

JSON: the body of a polled request (`app.requests.service.handed_payloads`). Protobuf
(`http.webhook.content-type: application/x-protobuf`): an `xbus.ActorProcessRequest`, each
input a whole envelope in one `Envelope` fragment, or only `Envelope{id}` when the envelope is
too large to inline (read it at `/api/v1/envelopes/{id}`).

An answer with a success code may carry the actor's state:
- a JSON object whose `status` is `running`, `success` or `error`: the body of
  `POST /api/v1/requests/{id}/state` (`messages`, a worker's `outputs`);
- in protobuf mode, any non-empty answer that is not `application/json`: an
  `xbus.ActorProcessingState` (`PENDING` and `RUNNING` both mean "the actor posts its state
  later"); a JSON answer reads as above, so a protobuf worker can answer with outputs.
Anything else (an empty body, `{"ok": true}`, text in JSON mode) is a plain success.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from pydantic import ValidationError
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.bus.director import Message
from app.envelopes.codec import (
    EnvelopeData,
    EnvelopeFormatError,
    envelope_to_fragments,
    parse_envelope_json,
)
from app.models import ActorRequest
from app.models.enums import LogLevel, RequestStatus
from app.requests.schemas import RequestStateIn
from app.requests.service import handed_envelopes, handed_payloads
from app.webhooks.settings import JSON, PROTOBUF

_STATES = frozenset(
    s.value for s in (RequestStatus.RUNNING, RequestStatus.SUCCESS, RequestStatus.ERROR)
)
_PB_LEVELS = {0: LogLevel.NOTICE, 1: LogLevel.WARNING, 2: LogLevel.ERROR}
# One fragment for a whole inlined envelope, whatever its size.
_ONE_FRAGMENT = 1 << 62


class AnswerError(ValueError):
    """An answer that claims to be a state but is not a valid one."""


@dataclass(slots=True)
class ActorState:
    status: RequestStatus
    messages: list[Message] = field(default_factory=list)
    outputs: dict[str, EnvelopeData] = field(default_factory=dict)


def json_body(request: ActorRequest, rows: Sequence[Sequence[Any]], inline_max: int) -> bytes:
    [payload] = handed_payloads([(request, rows)], inline_max)
    return payload.model_dump_json().encode()


def protobuf_body(request: ActorRequest, rows: Sequence[Sequence[Any]], inline_max: int) -> bytes:
    message: Any = xbus_pb2.ActorProcessRequest()
    message.context.processID = request.process_id.bytes
    message.context.nodeID = request.node_id
    found = handed_envelopes(rows, inline_max)
    for entry in request.inputs:
        envelope_id = uuid.UUID(entry["envelope_id"])
        item = message.inputs.add()
        item.name = entry["name"]
        item.close = True
        data = found.get(envelope_id, (0, 0, None))[2]
        if data is None:
            item.envelope.id = envelope_id.bytes
            continue
        [fragment] = envelope_to_fragments(data, max_fragment_size=_ONE_FRAGMENT)
        item.envelope.CopyFrom(fragment)
    return bytes(message.SerializeToString())


def request_body(
    request: ActorRequest, rows: Sequence[Sequence[Any]], content_type: str, inline_max: int
) -> bytes:
    """The body of a request whose input envelopes' rows (`app.store.processes.handed`'s,
    as its claim read them) are `rows`."""
    if content_type == PROTOBUF:
        return protobuf_body(request, rows, inline_max)
    return json_body(request, rows, inline_max)


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def read_json_state(body: bytes, *, max_items: int, max_bytes: int) -> ActorState | None:
    """The state in a JSON answer, None when the answer is not a state."""
    if not body.strip():
        return None
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.get("status") not in _STATES:
        return None
    try:
        state = RequestStateIn.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AnswerError(f"the answer is not a valid state: {where}: {first['msg']}") from None
    outputs: dict[str, EnvelopeData] = {}
    for name, raw in state.outputs.items():
        try:
            outputs[name] = parse_envelope_json(raw, max_items=max_items, max_bytes=max_bytes)
        except EnvelopeFormatError as exc:
            raise AnswerError(f"output {name} of the answer: {exc}") from None
    return ActorState(
        RequestStatus(state.status),
        [Message(m.level, m.text) for m in state.messages],
        outputs,
    )


def read_protobuf_state(body: bytes) -> ActorState | None:
    if not body:
        return None
    try:
        message: Any = xbus_pb2.ActorProcessingState.FromString(body)
    except DecodeError as exc:
        raise AnswerError(f"the answer is not an xbus.ActorProcessingState: {exc}") from None
    if message.status == xbus_pb2.ActorProcessingState.SUCCESS:
        status = RequestStatus.SUCCESS
    elif message.status == xbus_pb2.ActorProcessingState.ERROR:
        status = RequestStatus.ERROR
    else:  # PENDING, RUNNING
        status = RequestStatus.RUNNING
    messages = [Message(_PB_LEVELS.get(m.level, LogLevel.NOTICE), m.Text) for m in message.messages]
    return ActorState(status, messages)


def read_state(
    content_type: str, response_type: str | None, body: bytes, *, max_items: int, max_bytes: int
) -> ActorState | None:
    """The actor's state in a success answer (None: a plain success). Raises AnswerError."""
    if content_type == PROTOBUF and _media(response_type) != JSON:
        return read_protobuf_state(body)
    return read_json_state(body, max_items=max_items, max_bytes=max_bytes)
