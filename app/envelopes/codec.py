"""Envelope codec: the JSON form (HTTP) and the protobuf fragments (NATS).

Pure functions and plain dataclasses, no I/O: the HTTP layer parses request
bodies with :func:`parse_envelope_json`, the NATS broker feeds received
``xbus.Envelope`` fragments to :func:`apply_fragment` (whose per-event state,
:class:`EventProgress`, is persisted between fragments), and envelopes handed to
NATS actors are cut with :func:`envelope_to_fragments`.

Wire behaviour follows python-xbus 0.4.0 (the conformance target), including
its quirks:

- ``EnvelopeWriter`` puts ``itemCount`` and ``checksum`` on *every* fragment of
  an event built after the event was closed, so they may arrive before the last
  item, and it can send one more item-less fragment of an event that is already
  complete. Both are accepted here.
- ``EnvelopeWriter`` sets ``eventIDs`` on every fragment built after
  ``last_message()`` (usually only the final one) and never sets ``last``;
  ``EnvelopeReceiver`` accepts ``eventIDs`` on any fragment. An envelope is
  therefore complete when its declared events are all complete, whatever
  ``last`` says.
- The checksum is CRC-32C (Castagnoli, the usual init/xor-out ``0xFFFFFFFF``,
  as ``crccheck.crc.Crc32c``) over the 16 id bytes, the type and every item, in
  order. python-xbus encodes the type as ASCII; UTF-8 is the same bytes for
  ASCII types and the only sensible extension for others.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import unicodedata
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
from google.protobuf.message import DecodeError
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

__all__ = [
    "ENCODINGS",
    "MAX_EVENT_TYPE_LENGTH",
    "EnvelopeData",
    "EnvelopeFormatError",
    "EnvelopeTooLargeError",
    "EventData",
    "EventProgress",
    "FragmentResult",
    "apply_fragment",
    "choose_encoding",
    "crc32c_extend",
    "decode_item",
    "encode_item",
    "envelope_complete",
    "envelope_from_complete_fragment",
    "envelope_to_fragments",
    "envelope_to_json",
    "event_checksum",
    "event_to_json",
    "parse_envelope_json",
    "parse_output_request",
]

ENCODINGS = ("text", "base64", "json")
MAX_EVENT_TYPE_LENGTH = 255

_ENVELOPE_KEYS = frozenset({"events", "id"})
_EVENT_KEYS = frozenset({"type", "encoding", "items", "id"})
_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


# --------------------------------------------------------------------------- errors


class EnvelopeFormatError(ValueError):
    """The envelope (JSON or protobuf) is malformed; the HTTP layer answers 422.

    ``detail`` says what is wrong, ``pointer`` (a JSON pointer such as
    ``/events/0/items/3``, ``""`` for the whole document) says where, when the
    input was JSON.
    """

    def __init__(self, detail: str, pointer: str | None = None) -> None:
        self.detail = detail
        self.pointer = pointer
        if pointer is None:
            message = detail
        elif pointer == "":
            message = f"{detail} (at the top level of the envelope)"
        else:
            message = f"{detail} (at {pointer})"
        super().__init__(message)


class EnvelopeTooLargeError(EnvelopeFormatError):
    """The envelope exceeds the item-count or byte limits; the HTTP layer answers 413."""


# --------------------------------------------------------------------------- data


@dataclass(slots=True)
class EventData:
    type: str
    encoding: str
    items: list[bytes]
    id: uuid.UUID | None = None


@dataclass(slots=True)
class EnvelopeData:
    events: list[EventData]
    id: uuid.UUID | None = None

    @property
    def item_count(self) -> int:
        return sum(len(event.items) for event in self.events)

    @property
    def byte_size(self) -> int:
        return sum(len(item) for event in self.events for item in event.items)


# --------------------------------------------------------------------------- checksum


def crc32c_extend(crc: int, data: bytes) -> int:
    """Continue a CRC-32C: ``crc32c_extend(crc32c(a), b) == crc32c(a + b)``; start from 0."""
    return int(google_crc32c.extend(crc, data))


def _initial_crc(event_id: uuid.UUID, event_type: str) -> int:
    return crc32c_extend(0, event_id.bytes + event_type.encode("utf-8"))


def event_checksum(event_id: uuid.UUID, event_type: str, items: Iterable[bytes]) -> int:
    """The ``Event.checksum`` of an event: CRC-32C over id bytes + type + every item."""
    crc = _initial_crc(event_id, event_type)
    for item in items:
        crc = crc32c_extend(crc, item)
    return crc


# --------------------------------------------------------------------------- JSON form


def _escape_pointer_token(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _reject_unknown_keys(obj: dict[Any, Any], allowed: frozenset[str], pointer: str) -> None:
    unknown = sorted(str(key) for key in obj if key not in allowed)
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        expected = ", ".join(repr(key) for key in sorted(allowed))
        raise EnvelopeFormatError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {names}; allowed keys are {expected}",
            f"{pointer}/{_escape_pointer_token(unknown[0])}",
        )


def _parse_uuid(value: object, pointer: str) -> uuid.UUID:
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else _json_type(value)
        raise EnvelopeFormatError(
            f"id must be a UUID string like '123e4567-e89b-12d3-a456-426614174000', got {shown}",
            pointer,
        )
    return uuid.UUID(value)


def _event_type_problem(value: object) -> str | None:
    """Why ``value`` is not a valid event type, or None if it is."""
    if not isinstance(value, str):
        return f"type must be a string, got {_json_type(value)}"
    if not value:
        return "type must not be empty"
    if len(value) > MAX_EVENT_TYPE_LENGTH:
        return f"type is {len(value)} characters long, the limit is {MAX_EVENT_TYPE_LENGTH}"
    for position, char in enumerate(value):
        category = unicodedata.category(char)
        if category == "Cc":
            return f"type contains the control character U+{ord(char):04X} at position {position}"
        if category == "Cs":
            return f"type contains a lone surrogate U+{ord(char):04X} at position {position}"
    return None


def decode_item(value: object, encoding: str, pointer: str) -> bytes:
    """Turn one JSON item into the bytes stored for it, per the event's ``encoding``."""
    if encoding == "text":
        if not isinstance(value, str):
            raise EnvelopeFormatError(
                f"a 'text' item must be a string, got {_json_type(value)}", pointer
            )
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EnvelopeFormatError(
                f"a 'text' item must be valid Unicode; it has a lone surrogate at position "
                f"{exc.start}",
                pointer,
            ) from None
    if encoding == "base64":
        if not isinstance(value, str):
            raise EnvelopeFormatError(
                f"a 'base64' item must be a string, got {_json_type(value)}", pointer
            )
        # b64decode(validate=True) checks the alphabet but lets stray or excess
        # padding through ("YWJj=" decodes), hence the length and padding checks.
        unpadded = value.rstrip("=")
        try:
            if len(value) % 4 != 0:
                raise ValueError(f"length {len(value)} is not a multiple of 4")
            if len(value) - len(unpadded) > 2 or "=" in unpadded:
                raise ValueError("'=' may only pad the end, at most twice")
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeFormatError(
                f"a 'base64' item must be standard base64 (alphabet A-Z a-z 0-9 + /, padded "
                f"with '=', no whitespace; the URL-safe alphabet is not accepted): {exc}",
                pointer,
            ) from None
    if encoding == "json":
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            return text.encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise EnvelopeFormatError(
                f"a 'json' item must be a JSON value (finite numbers, valid Unicode): {exc}",
                pointer,
            ) from None
    raise EnvelopeFormatError(
        f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}", pointer
    )


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def encode_item(data: bytes, encoding: str) -> object:
    """The inverse of :func:`decode_item`: the JSON value that carries ``data``.

    Raises ValueError when the bytes cannot be expressed in that encoding
    (invalid UTF-8 for "text", not a JSON document for "json").
    """
    if encoding == "text":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"item is not valid UTF-8 (byte {exc.start}); use the 'base64' encoding"
            ) from None
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    if encoding == "json":
        try:
            return json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"item is not a JSON document: {exc}") from None
    raise ValueError(f"unknown encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


def choose_encoding(items: Sequence[bytes]) -> str:
    """The encoding for an event that arrived without one (from NATS)."""
    for item in items:
        try:
            item.decode("utf-8")
        except UnicodeDecodeError:
            return "base64"
    return "text"


def parse_envelope_json(obj: object, *, max_items: int, max_bytes: int) -> EnvelopeData:
    """Validate the JSON form of an envelope and decode its items.

    Raises EnvelopeFormatError (422) for malformed input and EnvelopeTooLargeError
    (413) when the envelope holds more than ``max_items`` items or more than
    ``max_bytes`` bytes of decoded items.
    """
    if not isinstance(obj, dict):
        raise EnvelopeFormatError(f"an envelope must be a JSON object, got {_json_type(obj)}", "")
    _reject_unknown_keys(obj, _ENVELOPE_KEYS, "")
    envelope_id = _parse_uuid(obj["id"], "/id") if "id" in obj else None
    if "events" not in obj:
        raise EnvelopeFormatError("the 'events' key is required", "")
    raw_events = obj["events"]
    if not isinstance(raw_events, list):
        raise EnvelopeFormatError(
            f"'events' must be an array, got {_json_type(raw_events)}", "/events"
        )
    if not raw_events:
        raise EnvelopeFormatError("'events' must contain at least one event", "/events")

    events: list[EventData] = []
    seen_ids: dict[uuid.UUID, int] = {}
    total_items = 0
    total_bytes = 0
    for index, raw in enumerate(raw_events):
        pointer = f"/events/{index}"
        if not isinstance(raw, dict):
            raise EnvelopeFormatError(
                f"an event must be a JSON object, got {_json_type(raw)}", pointer
            )
        _reject_unknown_keys(raw, _EVENT_KEYS, pointer)

        if "type" not in raw:
            raise EnvelopeFormatError("the 'type' key is required", pointer)
        problem = _event_type_problem(raw["type"])
        if problem is not None:
            raise EnvelopeFormatError(problem, f"{pointer}/type")
        event_type: str = raw["type"]

        encoding = raw.get("encoding", "text")
        if not isinstance(encoding, str) or encoding not in ENCODINGS:
            shown = repr(encoding) if isinstance(encoding, str) else _json_type(encoding)
            raise EnvelopeFormatError(
                f"encoding must be one of {', '.join(map(repr, ENCODINGS))}, got {shown}",
                f"{pointer}/encoding",
            )

        event_id: uuid.UUID | None = None
        if "id" in raw:
            event_id = _parse_uuid(raw["id"], f"{pointer}/id")
            if event_id in seen_ids:
                raise EnvelopeFormatError(
                    f"duplicate event id {event_id}, already used by /events/{seen_ids[event_id]}",
                    f"{pointer}/id",
                )
            seen_ids[event_id] = index

        if "items" not in raw:
            raise EnvelopeFormatError("the 'items' key is required (it may be [])", pointer)
        raw_items = raw["items"]
        if not isinstance(raw_items, list):
            raise EnvelopeFormatError(
                f"'items' must be an array, got {_json_type(raw_items)}", f"{pointer}/items"
            )
        total_items += len(raw_items)
        if total_items > max_items:
            raise EnvelopeTooLargeError(
                f"the envelope has more than {max_items} items, the limit", f"{pointer}/items"
            )

        items: list[bytes] = []
        for item_index, raw_item in enumerate(raw_items):
            item_pointer = f"{pointer}/items/{item_index}"
            data = decode_item(raw_item, encoding, item_pointer)
            total_bytes += len(data)
            if total_bytes > max_bytes:
                raise EnvelopeTooLargeError(
                    f"the envelope's items exceed {max_bytes} bytes, the limit", item_pointer
                )
            items.append(data)
        events.append(EventData(type=event_type, encoding=encoding, items=items, id=event_id))
    return EnvelopeData(events=events, id=envelope_id)


def event_to_json(event: EventData) -> dict[str, Any]:
    """The JSON form of an event; ``id`` only when known. ValueError if an item
    cannot be expressed in the event's encoding."""
    result: dict[str, Any] = {}
    if event.id is not None:
        result["id"] = str(event.id)
    result["type"] = event.type
    result["encoding"] = event.encoding
    result["items"] = [encode_item(item, event.encoding) for item in event.items]
    return result


def envelope_to_json(env: EnvelopeData) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if env.id is not None:
        result["id"] = str(env.id)
    result["events"] = [event_to_json(event) for event in env.events]
    return result


# --------------------------------------------------------------------------- fragments


@dataclass(slots=True)
class EventProgress:
    """Reception state of one event of an envelope arriving in fragments.

    Plain values only, so the server can persist it between fragments.
    ``crc`` is the running CRC-32C of what was received (it starts over id +
    type); ``item_count`` and ``checksum`` are what the sender declared, once it
    did (python-xbus may declare them before the last item arrives).
    """

    event_id: uuid.UUID
    type: str
    next_index: int = 1
    items_received: int = 0
    crc: int = -1  # -1: start value, replaced by the CRC of id + type
    item_count: int | None = None
    complete: bool = False
    checksum: int | None = None

    def __post_init__(self) -> None:
        if self.crc < 0:
            self.crc = _initial_crc(self.event_id, self.type)


@dataclass(slots=True)
class FragmentResult:
    new_events: list[EventProgress]
    """Events seen for the first time in this fragment (the objects now in ``progress``)."""
    items: list[tuple[uuid.UUID, int, bytes]] = field(default_factory=list)
    """(event id, 0-based position within the event, data), in fragment order."""
    event_ids_declared: list[uuid.UUID] | None = None
    """The fragment's ``eventIDs`` (the full list of the envelope's events), if present."""
    last: bool = False


def _event_uuid(raw: bytes, what: str) -> uuid.UUID:
    if len(raw) != 16:
        raise EnvelopeFormatError(f"{what} must be 16 bytes (a UUID), got {len(raw)} bytes")
    return uuid.UUID(bytes=raw)


def apply_fragment(
    progress: dict[uuid.UUID, EventProgress],
    fragment: Any,
    *,
    declared: Sequence[uuid.UUID] | None = None,
) -> FragmentResult:
    """Validate one ``xbus_pb2.Envelope`` fragment against ``progress`` and apply it.

    ``progress`` maps event ids to their reception state and is updated in
    place, only when the whole fragment is valid (on error it is left as it
    was). ``declared`` is the ``eventIDs`` list of an earlier fragment, if any:
    a fragment may repeat it but not change it, and events outside it are
    rejected.
    """
    _event_uuid(fragment.id, "the envelope id")

    declared_now: list[uuid.UUID] | None = None
    if len(fragment.eventIDs) > 0:
        declared_now = []
        seen: set[uuid.UUID] = set()
        for raw in fragment.eventIDs:
            event_id = _event_uuid(raw, "an eventIDs entry")
            if event_id in seen:
                raise EnvelopeFormatError(f"eventIDs lists event {event_id} twice")
            seen.add(event_id)
            declared_now.append(event_id)
        if declared is not None and seen != set(declared):
            raise EnvelopeFormatError("eventIDs differs from the list an earlier fragment declared")

    staged: dict[uuid.UUID, EventProgress] = {}
    new_events: list[EventProgress] = []
    items: list[tuple[uuid.UUID, int, bytes]] = []
    for event in fragment.events:
        event_id = _event_uuid(event.id, "an event id")
        state = staged.get(event_id)
        if state is None:
            known = progress.get(event_id)
            if known is None:
                if not event.type:
                    raise EnvelopeFormatError(
                        f"event {event_id}: the first fragment of an event must carry its type"
                    )
                problem = _event_type_problem(event.type)
                if problem is not None:
                    raise EnvelopeFormatError(f"event {event_id}: {problem}")
                state = EventProgress(event_id=event_id, type=event.type)
                new_events.append(state)
            else:
                state = dataclasses.replace(known)  # work on a copy until all is valid
            staged[event_id] = state

        if event.index != state.next_index:
            raise EnvelopeFormatError(
                f"event {event_id}: fragment index {event.index}, expected {state.next_index}"
            )
        if event.type and event.type != state.type:
            raise EnvelopeFormatError(
                f"event {event_id}: type changed from {state.type!r} to {event.type!r}"
            )

        # itemCount/checksum are proto3 scalars: 0 means "not sent". An event with
        # no items is closed by a non-zero checksum (the CRC of its id + type).
        if event.itemCount != 0 or event.checksum != 0:
            if state.item_count is not None and (
                event.itemCount != state.item_count or event.checksum != state.checksum
            ):
                raise EnvelopeFormatError(
                    f"event {event_id}: itemCount/checksum changed from "
                    f"{state.item_count}/{state.checksum:08x} to "
                    f"{event.itemCount}/{event.checksum:08x}"
                )
            state.item_count = event.itemCount
            state.checksum = event.checksum

        if state.complete and len(event.items) > 0:
            raise EnvelopeFormatError(
                f"event {event_id}: {len(event.items)} item(s) after the event was complete"
            )
        received = state.items_received + len(event.items)
        if state.item_count is not None and received > state.item_count:
            raise EnvelopeFormatError(
                f"event {event_id}: item count mismatch: itemCount is {state.item_count} "
                f"but {received} items were sent"
            )
        crc = state.crc
        for item in event.items:
            items.append((event_id, state.items_received, item))
            state.items_received += 1
            crc = crc32c_extend(crc, item)
        state.crc = crc
        state.next_index += 1

        if not state.complete and state.item_count == state.items_received:
            if state.checksum != state.crc:
                raise EnvelopeFormatError(
                    f"event {event_id}: checksum mismatch: the sender says "
                    f"{state.checksum:08x}, the items give {state.crc:08x}"
                )
            state.complete = True

    scope = declared_now if declared_now is not None else declared
    if scope is not None:
        allowed = set(scope)
        for event_id in [*staged, *progress]:
            if event_id not in allowed:
                raise EnvelopeFormatError(
                    f"event {event_id} is not listed in the envelope's eventIDs"
                )

    # python-xbus never sets `last`; a sender that does says nothing more will
    # come, so anything still missing is an error now rather than a stall later.
    # (A fragment with `last` and no events at all, when nothing was received,
    # forwards an existing envelope: that is the caller's business.)
    if fragment.last and (staged or progress):
        if scope is None:
            raise EnvelopeFormatError(
                "the last fragment arrived but no fragment listed the envelope's events (eventIDs)"
            )
        final = {**progress, **staged}
        for event_id in scope:
            state = final.get(event_id)
            if state is None:
                raise EnvelopeFormatError(
                    f"event {event_id}: the last fragment arrived but the event was never sent"
                )
            if not state.complete:
                expected = "?" if state.item_count is None else str(state.item_count)
                raise EnvelopeFormatError(
                    f"event {event_id}: the last fragment arrived with "
                    f"{state.items_received} of {expected} items"
                )

    progress.update(staged)
    return FragmentResult(
        new_events=new_events,
        items=items,
        event_ids_declared=declared_now,
        last=bool(fragment.last),
    )


def envelope_complete(
    progress: dict[uuid.UUID, EventProgress], declared: Sequence[uuid.UUID] | None
) -> bool:
    """True when the event list is known and every listed event has all its items."""
    if not declared:
        return False
    for event_id in declared:
        state = progress.get(event_id)
        if state is None or not state.complete:
            return False
    return True


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _field_size(payload: int) -> int:
    """Serialized size of a length-delimited field with a one-byte tag."""
    return 1 + _varint_size(payload) + payload


def _event_size_bound(type_size: int, index: int, items_size: int) -> int:
    """Upper bound of the serialized size of an event part inside an Envelope:
    id, type, index, itemCount (a 10-byte varint at most), checksum (5 bytes at
    most) and the items (``items_size`` bytes, their field overhead included)."""
    header = 18 + _field_size(type_size) + 1 + _varint_size(index) + 11 + 6
    return _field_size(header + items_size)


# python-xbus's own fragment size (its EnvelopeWriter cuts at ~500 KiB).
FRAGMENT_SIZE = 500 * 1024


class FragmentCutter:
    """Cuts an envelope into ``xbus_pb2.Envelope`` fragments as python-xbus's EnvelopeWriter
    would send them, one item at a time: the whole envelope is never in memory, only the
    fragment being filled (at most ``max_fragment_size`` bytes, or one larger item).

    Per event: ``index`` counts from 1, the event's last fragment carries ``itemCount`` and
    ``checksum``. ``eventIDs`` goes on the first fragment (the event list is known up front;
    python-xbus's EnvelopeReceiver takes it from any fragment) and ``last`` on the final one.
    An item too big for a fragment is sent whole in a fragment of its own: the NATS max
    payload must allow it. Items are never split nor merged: an item is the unit a consumer
    sees (python-xbus readers accept items of any size).

    ``add(event_no, item)`` for each item, in event then item order, then ``finish()``;
    each returns the fragments it completed."""

    def __init__(
        self,
        envelope_id: uuid.UUID,
        events: Sequence[tuple[uuid.UUID | None, str]],
        *,
        max_fragment_size: int = FRAGMENT_SIZE,
    ) -> None:
        if max_fragment_size <= 0:
            raise ValueError("max_fragment_size must be positive")
        ids: list[uuid.UUID] = []
        for position, (event_id, _) in enumerate(events):
            if event_id is None:
                raise ValueError(f"event {position} needs an id to be sent as fragments")
            ids.append(event_id)
        if len(set(ids)) != len(ids):
            raise ValueError("the envelope repeats an event id")
        self._envelope_id = envelope_id.bytes
        self._ids = ids
        self._types = [event_type for _, event_type in events]
        self._max = max_fragment_size
        self._ready: list[Any] = []
        self._current: Any = xbus_pb2.Envelope(
            id=self._envelope_id, eventIDs=[i.bytes for i in ids]
        )
        self._current_size = self._current.ByteSize()
        self._current_has_events = False
        self._event = -1  # the event being cut
        self._type_size = 0
        self._crc = 0
        self._index = 1
        self._count = 0
        self._part: list[bytes] = []
        self._part_size = 0
        self._finished = False

    def add(self, event_no: int, item: bytes) -> list[Any]:
        if event_no < self._event or event_no >= len(self._ids) or self._finished:
            raise ValueError(f"item of event {event_no} out of order")
        self._move_to(event_no)
        cost = _field_size(len(item))
        wanted = self._current_size + _event_size_bound(
            self._type_size, self._index, self._part_size + cost
        )
        if wanted > self._max and (self._part or self._current_has_events):
            if self._part:
                self._add_part(None)
                self._index += 1
                self._part, self._part_size = [], 0
            self._flush()
        self._part.append(item)
        self._part_size += cost
        self._count += 1
        self._crc = crc32c_extend(self._crc, item)
        return self._drain()

    def finish(self) -> list[Any]:
        self._move_to(len(self._ids))
        self._current.last = True
        self._ready.append(self._current)
        self._finished = True
        return self._drain()

    def _move_to(self, event_no: int) -> None:
        """Close the event being cut and the empty ones before `event_no`, then start it."""
        while self._event < event_no:
            if self._event >= 0:
                self._close_event()
            self._event += 1
            if self._event < len(self._ids):
                event_type = self._types[self._event]
                self._type_size = len(event_type.encode("utf-8"))
                self._crc = _initial_crc(self._ids[self._event], event_type)
                self._index, self._count = 1, 0
                self._part, self._part_size = [], 0

    def _close_event(self) -> None:
        wanted = self._current_size + _event_size_bound(
            self._type_size, self._index, self._part_size
        )
        if wanted > self._max and not self._part and self._current_has_events:
            self._flush()
        self._add_part((self._count, self._crc))

    def _add_part(self, close: tuple[int, int] | None) -> None:
        piece = self._current.events.add()
        piece.id = self._ids[self._event].bytes
        piece.type = self._types[self._event]
        piece.index = self._index
        piece.items.extend(self._part)
        if close is not None:
            piece.itemCount, piece.checksum = close
        self._current_size += _field_size(piece.ByteSize())
        self._current_has_events = True

    def _flush(self) -> None:
        self._ready.append(self._current)
        self._current = xbus_pb2.Envelope(id=self._envelope_id)
        self._current_size = self._current.ByteSize()
        self._current_has_events = False

    def _drain(self) -> list[Any]:
        ready, self._ready = self._ready, []
        return ready


def envelope_to_fragments(
    env: EnvelopeData,
    *,
    max_fragment_size: int = FRAGMENT_SIZE,
    max_chunk: int = 100 * 1024,
) -> list[Any]:
    """An envelope in memory cut into fragments (see `FragmentCutter`). ``max_chunk``
    (python-xbus's MessageWriter.MAX_CHUNK_SIZE, the size its writers cut a stream into)
    does not change the output: items are never split; it is only checked to be positive."""
    if env.id is None:
        raise ValueError("the envelope needs an id to be sent as fragments")
    if max_chunk <= 0:
        raise ValueError("max_fragment_size and max_chunk must be positive")
    cutter = FragmentCutter(
        env.id, [(e.id, e.type) for e in env.events], max_fragment_size=max_fragment_size
    )
    fragments: list[Any] = []
    for event_no, event in enumerate(env.events):
        for item in event.items:
            fragments.extend(cutter.add(event_no, item))
    fragments.extend(cutter.finish())
    return fragments


def parse_output_request(body: bytes) -> tuple[str, Any]:
    """Decode a Broker.Output request: (output name, "default" if empty; its fragment)."""
    try:
        request = xbus_pb2.OutputRequest.FromString(body)
    except DecodeError as exc:
        raise EnvelopeFormatError(f"not a valid OutputRequest: {exc}") from None
    return request.output or "default", request.envelope


def envelope_from_complete_fragment(fragment: Any) -> EnvelopeData:
    """Read a whole envelope carried by one fragment (e.g. in an OutputRequest).

    Each event gets the encoding :func:`choose_encoding` picks for its items.
    """
    progress: dict[uuid.UUID, EventProgress] = {}
    result = apply_fragment(progress, fragment)
    declared = result.event_ids_declared
    if declared is None:
        raise EnvelopeFormatError("the fragment does not list the envelope's events (eventIDs)")
    if not envelope_complete(progress, declared):
        missing = [str(i) for i in declared if i not in progress or not progress[i].complete]
        raise EnvelopeFormatError(
            "the envelope is not complete in this fragment; incomplete events: "
            + ", ".join(missing)
        )
    items: dict[uuid.UUID, list[bytes]] = {event_id: [] for event_id in declared}
    for event_id, _, data in result.items:
        items[event_id].append(data)
    events = [
        EventData(
            type=progress[event_id].type,
            encoding=choose_encoding(items[event_id]),
            items=items[event_id],
            id=event_id,
        )
        for event_id in declared
    ]
    return EnvelopeData(events=events, id=uuid.UUID(bytes=fragment.id))
