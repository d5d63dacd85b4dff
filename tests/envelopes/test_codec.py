"""Tests of app.envelopes.codec against python-xbus 0.4.0, the reference client."""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import json
import random
import uuid
from typing import Any

import pytest
from xbus import checksum, xbus_pb2
from xbus.envelope_receiver import EnvelopeReceiver
from xbus.testutils import make_envelope

from app.envelopes.codec import (
    ENCODINGS,
    EnvelopeData,
    EnvelopeFormatError,
    EnvelopeTooLargeError,
    EventData,
    EventProgress,
    apply_fragment,
    choose_encoding,
    crc32c_extend,
    decode_item,
    encode_item,
    envelope_complete,
    envelope_from_complete_fragment,
    envelope_to_fragments,
    envelope_to_json,
    event_checksum,
    event_to_json,
    parse_envelope_json,
    parse_output_request,
)

KIB = 1024
LIMITS: dict[str, int] = {"max_items": 1000, "max_bytes": 10 * 1024 * KIB}


def parse(obj: object, **limits: int) -> EnvelopeData:
    return parse_envelope_json(obj, **{**LIMITS, **limits})


def xbus_fragments(*messages: tuple[str, Any]) -> list[Any]:
    return asyncio.run(make_envelope(*messages))


def assemble(
    fragments: list[Any],
) -> tuple[dict[uuid.UUID, EventProgress], dict[uuid.UUID, list[bytes]], list[uuid.UUID] | None]:
    """Feed fragments through apply_fragment as the server does, keeping the items."""
    progress: dict[uuid.UUID, EventProgress] = {}
    items: dict[uuid.UUID, list[bytes]] = {}
    declared: list[uuid.UUID] | None = None
    for fragment in fragments:
        result = apply_fragment(progress, fragment, declared=declared)
        if result.event_ids_declared is not None:
            declared = result.event_ids_declared
        for event in result.new_events:
            items[event.event_id] = []
        for event_id, position, data in result.items:
            assert position == len(items[event_id])
            items[event_id].append(data)
    return progress, items, declared


def event_parts(fragments: list[Any]) -> dict[uuid.UUID, list[Any]]:
    parts: dict[uuid.UUID, list[Any]] = {}
    for fragment in fragments:
        for event in fragment.events:
            parts.setdefault(uuid.UUID(bytes=event.id), []).append(event)
    return parts


# --------------------------------------------------------------------------- JSON form


@pytest.mark.parametrize(
    ("encoding", "items", "stored"),
    [
        (
            "text",
            ["item1", "", "héllo ✓ \U0001f600"],
            [b"item1", b"", "héllo ✓ \U0001f600".encode()],
        ),
        (
            "base64",
            ["", "AA==", base64.b64encode(bytes(range(256))).decode()],
            [b"", b"\x00", bytes(range(256))],
        ),
        (
            "json",
            [{"id": 1, "tags": ["a", "é"]}, [1, 2.5, None], "s", 0, True, None],
            [b'{"id":1,"tags":["a","\xc3\xa9"]}', b"[1,2.5,null]", b'"s"', b"0", b"true", b"null"],
        ),
    ],
)
def test_json_encodings_round_trip(encoding: str, items: list[object], stored: list[bytes]) -> None:
    env_id, event_id = uuid.uuid4(), uuid.uuid4()
    doc = {
        "id": str(env_id),
        "events": [{"id": str(event_id), "type": "t", "encoding": encoding, "items": items}],
    }
    env = parse(doc)
    assert env.events[0].items == stored
    assert env.item_count == len(items)
    assert env.byte_size == sum(map(len, stored))
    assert envelope_to_json(env) == doc
    assert json.loads(json.dumps(envelope_to_json(env))) == doc


def test_json_defaults_and_ids() -> None:
    env = parse(
        {"events": [{"type": "msg", "items": ["item1", "item2"]}, {"type": "e", "items": []}]}
    )
    assert env.id is None
    assert env.events == [
        EventData(type="msg", encoding="text", items=[b"item1", b"item2"]),
        EventData(type="e", encoding="text", items=[]),
    ]
    assert envelope_to_json(env) == {
        "events": [
            {"type": "msg", "encoding": "text", "items": ["item1", "item2"]},
            {"type": "e", "encoding": "text", "items": []},
        ]
    }
    event_id = uuid.uuid4()
    event = EventData(type="x", encoding="base64", items=[b"\xff"], id=event_id)
    assert event_to_json(event) == {
        "id": str(event_id),
        "type": "x",
        "encoding": "base64",
        "items": ["/w=="],
    }


def test_json_accepts_upper_case_uuid_and_long_type() -> None:
    event_id = uuid.uuid4()
    env = parse({"events": [{"id": str(event_id).upper(), "type": "t" * 255, "items": []}]})
    assert env.events[0].id == event_id


GOOD_EVENT = {"type": "t", "items": []}


@pytest.mark.parametrize(
    ("doc", "pointer", "words"),
    [
        ([], "", "must be a JSON object"),
        ({"events": [GOOD_EVENT], "foo": 1, "bar": 2}, "/bar", "'bar', 'foo'"),
        ({}, "", "'events' key is required"),
        ({"events": {}}, "/events", "must be an array"),
        ({"events": []}, "/events", "at least one event"),
        ({"id": "nope", "events": [GOOD_EVENT]}, "/id", "UUID"),
        ({"id": str(uuid.uuid4().hex), "events": [GOOD_EVENT]}, "/id", "UUID"),
        ({"id": 5, "events": [GOOD_EVENT]}, "/id", "got a number"),
        ({"events": [GOOD_EVENT, "x"]}, "/events/1", "must be a JSON object"),
        ({"events": [{"type": "t", "items": [], "a/b": 1}]}, "/events/0/a~1b", "'a/b'"),
        ({"events": [{"items": []}]}, "/events/0", "'type' key is required"),
        ({"events": [{"type": 3, "items": []}]}, "/events/0/type", "must be a string"),
        ({"events": [{"type": "", "items": []}]}, "/events/0/type", "must not be empty"),
        ({"events": [{"type": "t" * 256, "items": []}]}, "/events/0/type", "256 characters"),
        ({"events": [{"type": "a\nb", "items": []}]}, "/events/0/type", "U+000A"),
        ({"events": [{"type": "a\x7f", "items": []}]}, "/events/0/type", "U+007F"),
        ({"events": [{"type": "a\x85", "items": []}]}, "/events/0/type", "U+0085"),
        ({"events": [{"type": "a\ud800", "items": []}]}, "/events/0/type", "surrogate"),
        ({"events": [{**GOOD_EVENT, "encoding": "hex"}]}, "/events/0/encoding", "'hex'"),
        ({"events": [{**GOOD_EVENT, "encoding": None}]}, "/events/0/encoding", "got null"),
        ({"events": [GOOD_EVENT, {**GOOD_EVENT, "id": "x"}]}, "/events/1/id", "UUID"),
        ({"events": [{"type": "t"}]}, "/events/0", "'items' key is required"),
        ({"events": [{"type": "t", "items": "abc"}]}, "/events/0/items", "must be an array"),
        ({"events": [{"type": "t", "items": ["a", 5]}]}, "/events/0/items/1", "must be a string"),
        ({"events": [{"type": "t", "items": ["\udc80"]}]}, "/events/0/items/0", "surrogate"),
        (
            {"events": [{"type": "t", "encoding": "base64", "items": [None]}]},
            "/events/0/items/0",
            "must be a string",
        ),
    ],
)
def test_json_rejections(doc: object, pointer: str, words: str) -> None:
    with pytest.raises(EnvelopeFormatError) as info:
        parse(doc)
    assert info.value.pointer == pointer
    assert words in info.value.detail
    assert not isinstance(info.value, EnvelopeTooLargeError)


def test_json_rejects_duplicate_event_ids() -> None:
    event_id = str(uuid.uuid4())
    doc = {"events": [{**GOOD_EVENT, "id": event_id}, GOOD_EVENT, {**GOOD_EVENT, "id": event_id}]}
    with pytest.raises(EnvelopeFormatError) as info:
        parse(doc)
    assert info.value.pointer == "/events/2/id"
    assert "duplicate event id" in info.value.detail
    assert "/events/0" in info.value.detail
    assert str(info.value).endswith("(at /events/2/id)")


@pytest.mark.parametrize(
    "value",
    [
        "YWJj=",
        "YW",
        "YQ=",
        "YQ===",
        "Y===",
        "YQ=A",
        "YW Jj",
        "YWJj\n",
        "-_-_",
        "YW_j",
        "é",
        "YQ==YQ==",
    ],
)
def test_json_rejects_bad_base64(value: str) -> None:
    doc = {"events": [{"type": "t", "encoding": "base64", "items": ["YWJj", value]}]}
    with pytest.raises(EnvelopeFormatError) as info:
        parse(doc)
    assert info.value.pointer == "/events/0/items/1"
    assert "standard base64" in info.value.detail
    assert "URL-safe" in info.value.detail


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"a": [float("-inf")]}, object()])
def test_json_rejects_values_that_are_not_json(value: object) -> None:
    doc = {"events": [{"type": "t", "encoding": "json", "items": [value]}]}
    with pytest.raises(EnvelopeFormatError) as info:
        parse(doc)
    assert info.value.pointer == "/events/0/items/0"


def test_json_item_count_limit() -> None:
    doc = {"events": [{"type": "a", "items": ["x"] * 3}, {"type": "b", "items": ["y"] * 2}]}
    assert parse(doc, max_items=5).item_count == 5
    with pytest.raises(EnvelopeTooLargeError) as info:
        parse(doc, max_items=4)
    assert info.value.pointer == "/events/1/items"
    assert "4 items" in info.value.detail
    assert isinstance(info.value, EnvelopeFormatError)


def test_json_byte_limit_counts_decoded_bytes() -> None:
    doc = {
        "events": [
            {"type": "a", "items": ["abc", "é"]},
            {"type": "b", "encoding": "base64", "items": ["AAAA", "AA=="]},
        ]
    }
    assert parse(doc, max_bytes=9).byte_size == 9
    with pytest.raises(EnvelopeTooLargeError) as info:
        parse(doc, max_bytes=8)
    assert info.value.pointer == "/events/1/items/1"
    assert "8 bytes" in info.value.detail


def test_decode_and_encode_item_directly() -> None:
    assert decode_item({"b": 1, "a": [True]}, "json", "/x") == b'{"b":1,"a":[true]}'
    assert encode_item(b'{"b":1}', "json") == {"b": 1}
    with pytest.raises(EnvelopeFormatError, match="unknown encoding"):
        decode_item("x", "hex", "/x")
    samples = {"text": "1", "base64": "MQ==", "json": "1"}
    assert set(samples) == set(ENCODINGS)
    for encoding, value in samples.items():
        assert decode_item(value, encoding, "/x") == (b'"1"' if encoding == "json" else b"1")
        assert encode_item(decode_item(value, encoding, "/x"), encoding) == value


@pytest.mark.parametrize(
    ("data", "encoding"),
    [(b"\xff", "text"), (b"\xc3", "text"), (b"{", "json"), (b"NaN", "json"), (b"a", "hex")],
)
def test_encode_item_rejects(data: bytes, encoding: str) -> None:
    with pytest.raises(ValueError, match=r"UTF-8|JSON|encoding"):
        encode_item(data, encoding)


def test_choose_encoding() -> None:
    assert choose_encoding([]) == "text"
    assert choose_encoding([b"abc", "é".encode(), b""]) == "text"
    assert choose_encoding([b"abc", b"\x80"]) == "base64"


def test_error_messages() -> None:
    assert str(EnvelopeFormatError("bad", "/events/0")) == "bad (at /events/0)"
    assert "top level" in str(EnvelopeFormatError("bad", ""))
    assert str(EnvelopeFormatError("bad")) == "bad"


# --------------------------------------------------------------------------- checksum


def test_crc32c() -> None:
    assert crc32c_extend(0, b"123456789") == 0xE3069283
    data = random.Random(1).randbytes(10_000)
    reference = checksum.Checksum(data).final()  # python-xbus's own CRC (crccheck)
    assert crc32c_extend(crc32c_extend(0, data[:777]), data[777:]) == reference


MESSAGES: list[tuple[str, Any]] = [
    ("text", b"hello"),
    ("items", [b"one", b"", b"\x00\xff", "é".encode()]),
    ("empty", []),
    ("big", bytes(range(256)) * 1000),
]


def test_event_checksum_matches_python_xbus() -> None:
    fragments = xbus_fragments(*MESSAGES)
    parts = event_parts(fragments)
    assert len(parts) == len(MESSAGES)
    for (msgtype, _), (event_id, pieces) in zip(MESSAGES, parts.items(), strict=True):
        items = [item for piece in pieces for item in piece.items]
        assert pieces[-1].type == msgtype
        assert pieces[-1].checksum == event_checksum(event_id, msgtype, items)


def test_apply_fragment_over_python_xbus_envelope() -> None:
    fragments = xbus_fragments(*MESSAGES)
    progress, items, declared = assemble(fragments)
    assert declared == list(event_parts(fragments))
    assert envelope_complete(progress, declared)
    assert [progress[i].type for i in declared] == [m for m, _ in MESSAGES]
    assert items[declared[0]] == [b"hello"]
    assert items[declared[1]] == MESSAGES[1][1]
    assert items[declared[2]] == []
    assert b"".join(items[declared[3]]) == MESSAGES[3][1]
    for event_id in declared:
        state = progress[event_id]
        assert state.complete
        assert state.item_count == state.items_received == len(items[event_id])
        assert state.crc == state.checksum


def test_multi_fragment_event_of_100k_chunks() -> None:
    data = random.Random(2).randbytes(3 * 1024 * KIB)
    fragments = xbus_fragments(("blob", data), ("tail", b"end"))
    assert len(fragments) > 5
    progress, items, declared = assemble(fragments)
    assert declared is not None
    assert envelope_complete(progress, declared)
    blob = items[declared[0]]
    assert {len(item) for item in blob[:-1]} == {100 * KIB}
    assert b"".join(blob) == data
    assert items[declared[1]] == [b"end"]
    # complete only once the final fragment (the one with eventIDs) is in
    step: dict[uuid.UUID, EventProgress] = {}
    known: list[uuid.UUID] | None = None
    for position, fragment in enumerate(fragments, start=1):
        known = apply_fragment(step, fragment).event_ids_declared or known
        assert envelope_complete(step, known) == (position == len(fragments))


def test_interleaved_events_with_trailing_empty_parts() -> None:
    # python-xbus sends an item-less part of an event after it completed, and
    # itemCount/checksum on every part built after the event was closed.
    chunk = 100 * KIB
    messages = [
        ("a", [bytes([1]) * chunk] * 7),
        ("b", [bytes([2]) * chunk] * 7),
        ("c", [bytes([3]) * chunk] * 3),
        ("d", [bytes([4]) * (chunk - 5)] * 5),
        ("e", [b"x"] * 3),
    ]
    fragments = xbus_fragments(*messages)
    parts = event_parts(fragments)
    assert any(len(p[-1].items) == 0 and len(p) > 1 for p in parts.values())
    progress, items, declared = assemble(fragments)
    assert declared is not None
    assert envelope_complete(progress, declared)
    assert [items[i] for i in declared] == [m[1] for m in messages]


# --------------------------------------------------------------- apply_fragment rejections


# python-xbus checksums with crccheck, in pure Python: build each sample once.
@functools.cache
def _serialized_two_part_envelope() -> tuple[bytes, ...]:
    fragments = xbus_fragments(("a", [bytes([n]) * 100 * KIB for n in range(7)]))
    return tuple(f.SerializeToString() for f in fragments)


@functools.cache
def _serialized_two_closed_events() -> tuple[bytes, ...]:
    fragments = xbus_fragments(
        ("a", [bytes([1]) * 100 * KIB] * 7), ("b", [bytes([2]) * 100 * KIB] * 7)
    )
    return tuple(f.SerializeToString() for f in fragments)


def two_part_envelope() -> list[Any]:
    """One event of 7 items in 2 fragments, the second closing it."""
    fragments = [xbus_pb2.Envelope.FromString(f) for f in _serialized_two_part_envelope()]
    assert len(fragments) == 2
    return fragments


def two_closed_events() -> list[Any]:
    """Event a completes in fragment 2, then gets an item-less part in fragment 3."""
    return [xbus_pb2.Envelope.FromString(f) for f in _serialized_two_closed_events()]


def expect_rejection(
    progress: dict[uuid.UUID, EventProgress],
    fragment: Any,
    match: str,
    declared: list[uuid.UUID] | None = None,
) -> None:
    before = copy.deepcopy(progress)
    with pytest.raises(EnvelopeFormatError, match=match):
        apply_fragment(progress, fragment, declared=declared)
    assert progress == before


def test_apply_fragment_rejects_wrong_index() -> None:
    first, second = two_part_envelope()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first)
    second.events[0].index = 3
    expect_rejection(progress, second, r"event [0-9a-f-]{36}: fragment index 3, expected 2")
    expect_rejection({}, second, "fragment index 3, expected 1")


def test_apply_fragment_rejects_bad_checksum() -> None:
    first, second = two_part_envelope()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first)
    second.events[0].checksum ^= 1
    expect_rejection(progress, second, "checksum mismatch")


def test_apply_fragment_rejects_bad_checksum_on_empty_event() -> None:
    (fragment,) = xbus_fragments(("a", []))
    fragment.events[0].checksum ^= 1
    expect_rejection({}, fragment, "checksum mismatch")


def test_apply_fragment_rejects_wrong_item_count() -> None:
    first, second = two_part_envelope()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first)
    second.events[0].itemCount = 6
    expect_rejection(progress, second, "item count mismatch: itemCount is 6 but 7 items")
    second.events[0].itemCount = 2
    expect_rejection(progress, second, "item count mismatch: itemCount is 2 but 7 items")


def test_apply_fragment_too_high_item_count_waits_unless_last() -> None:
    first, second = two_part_envelope()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first)
    second.events[0].itemCount = 9
    third_progress = copy.deepcopy(progress)
    result = apply_fragment(third_progress, second)
    assert not envelope_complete(third_progress, result.event_ids_declared)
    second.last = True
    expect_rejection(progress, second, "last fragment arrived with 7 of 9 items")


def test_apply_fragment_rejects_changed_item_count() -> None:
    fragments = two_closed_events()
    parts = event_parts(fragments)
    a_parts = next(iter(parts.values()))
    assert len(a_parts) == 3
    assert a_parts[1].itemCount == a_parts[2].itemCount == 7
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, fragments[0])
    apply_fragment(progress, fragments[1])
    fragments[2].events[0].itemCount = 8
    expect_rejection(progress, fragments[2], "itemCount/checksum changed")


def test_apply_fragment_rejects_type_change() -> None:
    first, second = two_part_envelope()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first)
    second.events[0].type = "b"
    expect_rejection(progress, second, "type changed from 'a' to 'b'")
    second.events[0].type = ""  # later parts may leave the type out
    apply_fragment(progress, second)


def test_apply_fragment_rejects_items_after_completion() -> None:
    fragments = two_closed_events()
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, fragments[0])
    apply_fragment(progress, fragments[1])
    a_id = uuid.UUID(bytes=fragments[0].events[0].id)
    assert progress[a_id].complete
    late = fragments[2]
    assert late.events[0].id == a_id.bytes
    assert len(late.events[0].items) == 0
    late.events[0].items.append(b"late")
    expect_rejection(progress, late, "1 item\\(s\\) after the event was complete")


def test_apply_fragment_rejects_malformed_fragments() -> None:
    (fragment,) = xbus_fragments(("a", b"x"), ("b", b"y"))
    bad = copy.deepcopy(fragment)
    bad.events[0].type = ""
    expect_rejection({}, bad, "first fragment of an event must carry its type")
    bad = copy.deepcopy(fragment)
    bad.events[0].type = "a\x00"
    expect_rejection({}, bad, "control character")
    bad = copy.deepcopy(fragment)
    bad.events[1].id = b"short"
    expect_rejection({}, bad, "an event id must be 16 bytes")
    bad = copy.deepcopy(fragment)
    bad.id = b""
    expect_rejection({}, bad, "envelope id must be 16 bytes")
    bad = copy.deepcopy(fragment)
    bad.eventIDs.append(bad.eventIDs[0])
    expect_rejection({}, bad, "lists event .* twice")
    bad = copy.deepcopy(fragment)
    del bad.eventIDs[1]
    expect_rejection({}, bad, "not listed in the envelope's eventIDs")
    bad = copy.deepcopy(fragment)
    expect_rejection({}, bad, "differs from the list", declared=[uuid.uuid4()])


def test_apply_fragment_checks_declared_list_of_earlier_fragment() -> None:
    first, second = two_part_envelope()
    event_id = uuid.UUID(bytes=first.events[0].id)
    progress: dict[uuid.UUID, EventProgress] = {}
    apply_fragment(progress, first, declared=[event_id])
    second.ClearField("eventIDs")
    intruder = second.events.add(id=uuid.uuid4().bytes, type="x", index=1)
    expect_rejection(progress, second, "not listed", declared=[event_id])
    second.events.remove(intruder)
    result = apply_fragment(progress, second, declared=[event_id])
    assert result.event_ids_declared is None
    assert envelope_complete(progress, [event_id])


def test_apply_fragment_last_without_event_list() -> None:
    first, _ = two_part_envelope()
    first.last = True
    expect_rejection({}, first, "no fragment listed the envelope's events")


def test_forward_fragment_is_accepted() -> None:
    result = apply_fragment({}, xbus_pb2.Envelope(id=uuid.uuid4().bytes, last=True))
    assert result.last
    assert result.items == []
    assert result.new_events == []
    assert result.event_ids_declared is None


def test_envelope_complete() -> None:
    event_id = uuid.uuid4()
    progress = {event_id: EventProgress(event_id=event_id, type="t", complete=True)}
    assert not envelope_complete(progress, None)
    assert not envelope_complete(progress, [])
    assert envelope_complete(progress, [event_id])
    assert not envelope_complete(progress, [event_id, uuid.uuid4()])
    assert progress[event_id].crc == event_checksum(event_id, "t", [])


# --------------------------------------------------------------------------- envelope_to_fragments


def sample_envelope(seed: int, *, with_empty: bool = True) -> EnvelopeData:
    rng = random.Random(seed)
    events = [
        EventData(
            type=f"type.{n}",
            encoding="base64",
            items=[
                rng.randbytes(rng.choice([0, 10, 5 * KIB, 60 * KIB, 100 * KIB])) for _ in range(k)
            ],
            id=uuid.uuid4(),
        )
        for n, k in enumerate([1, 40, 3, 25])
    ]
    if with_empty:
        events.insert(2, EventData(type="empty", encoding="text", items=[], id=uuid.uuid4()))
    return EnvelopeData(events=events, id=uuid.uuid4())


def check_fragments(env: EnvelopeData, fragments: list[Any], max_size: int) -> None:
    assert env.id is not None
    assert all(f.id == env.id.bytes for f in fragments)
    assert [f.last for f in fragments] == [False] * (len(fragments) - 1) + [True]
    assert list(fragments[0].eventIDs) == [e.id.bytes for e in env.events if e.id]
    assert all(len(f.eventIDs) == 0 for f in fragments[1:])
    for fragment in fragments:
        # only a lone event part with at most one item may exceed the limit
        alone = len(fragment.events) == 1 and len(fragment.events[0].items) <= 1
        assert fragment.ByteSize() <= max_size or alone
    parts = event_parts(fragments)
    for event in env.events:
        assert event.id is not None
        pieces = parts[event.id]
        assert [p.index for p in pieces] == list(range(1, len(pieces) + 1))
        assert all(p.itemCount == 0 and p.checksum == 0 for p in pieces[:-1])
        assert pieces[-1].itemCount == len(event.items)
        assert pieces[-1].checksum == event_checksum(event.id, event.type, event.items)
    progress, items, declared = assemble(fragments)
    assert declared == [e.id for e in env.events]
    assert envelope_complete(progress, declared)
    assert [items[e.id] for e in env.events if e.id] == [e.items for e in env.events]


@pytest.mark.parametrize("max_size", [500 * KIB, 200 * KIB, 120 * KIB])
def test_envelope_to_fragments_bounded_and_reassembles(max_size: int) -> None:
    env = sample_envelope(3)
    fragments = envelope_to_fragments(env, max_fragment_size=max_size)
    assert len(fragments) > 1
    check_fragments(env, fragments, max_size)
    assert max(f.ByteSize() for f in fragments) > max_size * 0.8  # fragments are well filled


def test_envelope_to_fragments_oversized_items_travel_alone() -> None:
    env = sample_envelope(4)
    fragments = envelope_to_fragments(env, max_fragment_size=50 * KIB)
    check_fragments(env, fragments, 50 * KIB)
    oversized = [f for f in fragments if f.ByteSize() > 50 * KIB]
    assert oversized
    assert all(len(f.events) == 1 and len(f.events[0].items) == 1 for f in oversized)


def test_envelope_to_fragments_tiny_limit() -> None:
    env = EnvelopeData(
        events=[
            EventData(type="a", encoding="text", items=[b"x", b"yy", b""], id=uuid.uuid4()),
            EventData(type="b", encoding="text", items=[], id=uuid.uuid4()),
        ],
        id=uuid.uuid4(),
    )
    fragments = envelope_to_fragments(env, max_fragment_size=1)
    check_fragments(env, fragments, 1)
    assert len(fragments) == 4


def test_envelope_to_fragments_single_fragment() -> None:
    env = parse(
        {
            "id": str(uuid.uuid4()),
            "events": [
                {"id": str(uuid.uuid4()), "type": "a", "items": ["1", "2"]},
                {"id": str(uuid.uuid4()), "type": "b", "encoding": "base64", "items": ["/w=="]},
            ],
        }
    )
    (fragment,) = envelope_to_fragments(env)
    check_fragments(env, [fragment], 500 * KIB)
    back = envelope_from_complete_fragment(fragment)
    assert back == EnvelopeData(
        events=[
            EventData(type="a", encoding="text", items=[b"1", b"2"], id=env.events[0].id),
            EventData(type="b", encoding="base64", items=[b"\xff"], id=env.events[1].id),
        ],
        id=env.id,
    )


def test_envelope_to_fragments_requires_ids() -> None:
    event = EventData(type="a", encoding="text", items=[], id=uuid.uuid4())
    with pytest.raises(ValueError, match="envelope needs an id"):
        envelope_to_fragments(EnvelopeData(events=[event]))
    with pytest.raises(ValueError, match="event 1 needs an id"):
        envelope_to_fragments(
            EnvelopeData(events=[event, EventData("b", "text", [])], id=uuid.uuid4())
        )
    with pytest.raises(ValueError, match="repeats an event id"):
        envelope_to_fragments(EnvelopeData(events=[event, event], id=uuid.uuid4()))


async def read_with_python_xbus(fragments: list[Any]) -> Any:
    receiver = EnvelopeReceiver("default", fragments[0])
    for fragment in fragments[1:]:
        await receiver.receive(fragment)
    assert receiver.reception_status == xbus_pb2.EnvelopeAck.ACCEPTED
    return await receiver.complete(timeout=5)


def test_python_xbus_receiver_reads_our_fragments() -> None:
    # python-xbus never completes an event with no items (it waits for a
    # non-zero itemCount), so the envelope read by it has none.
    env = sample_envelope(5, with_empty=False)
    fragments = envelope_to_fragments(env)
    assert len(fragments) > 2
    received = asyncio.run(read_with_python_xbus(fragments))
    assert received.id == env.id.bytes if env.id else False
    assert [uuid.UUID(bytes=e.id) for e in received.events] == [e.id for e in env.events]
    assert [e.type for e in received.events] == [e.type for e in env.events]
    assert [list(e.items) for e in received.events] == [e.items for e in env.events]


# --------------------------------------------------------------------------- OutputRequest


def test_parse_output_request() -> None:
    (fragment,) = xbus_fragments(("text", [b"a", b"b"]), ("bin", [b"\xfe"]))
    context = xbus_pb2.ProcessingContext(processID=uuid.uuid4().bytes, nodeID="n1")
    body = xbus_pb2.OutputRequest(context=context, envelope=fragment).SerializeToString()
    output, envelope = parse_output_request(body)
    assert output == "default"
    assert envelope == fragment
    named = xbus_pb2.OutputRequest(output="errors", envelope=fragment).SerializeToString()
    assert parse_output_request(named)[0] == "errors"

    env = envelope_from_complete_fragment(envelope)
    assert env.id == uuid.UUID(bytes=fragment.id)
    assert [(e.type, e.encoding, e.items) for e in env.events] == [
        ("text", "text", [b"a", b"b"]),
        ("bin", "base64", [b"\xfe"]),
    ]
    assert [e.id for e in env.events] == [uuid.UUID(bytes=i) for i in fragment.eventIDs]


@pytest.mark.parametrize("body", [b"\xff\xff\xff", b"garbage!", b"\x22\x05abc"])
def test_parse_output_request_rejects_garbage(body: bytes) -> None:
    with pytest.raises(EnvelopeFormatError, match="not a valid OutputRequest"):
        parse_output_request(body)


def test_envelope_from_incomplete_fragment() -> None:
    first, second = two_part_envelope()
    with pytest.raises(EnvelopeFormatError, match="does not list the envelope's events"):
        envelope_from_complete_fragment(first)
    first.eventIDs.extend(second.eventIDs)
    with pytest.raises(EnvelopeFormatError, match="not complete in this fragment"):
        envelope_from_complete_fragment(first)
