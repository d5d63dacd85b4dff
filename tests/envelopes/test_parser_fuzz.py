"""The body parsers answer any input with their own refusal, never another exception (which
the HTTP layer would answer 500): hypothesis throws arbitrary JSON values, bytes and text at
the envelope JSON reader, the protobuf OutputRequest and fragment readers, the graph reader
and the webhook answer reader."""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xbus import xbus_pb2

from app.envelopes.codec import (
    EnvelopeFormatError,
    apply_fragment,
    envelope_from_complete_fragment,
    parse_envelope_json,
    parse_output_request,
)
from app.pipelines.graph import parse_graph
from app.webhooks.payload import AnswerError, read_json_state

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
# Envelope-shaped values: the keys the reader looks for, with anything in them.
event_values = st.fixed_dictionaries(
    {},
    optional={
        "type": json_values | st.sampled_from(["order.created", "", "x" * 300]),
        "items": st.lists(json_values, max_size=4) | json_values,
        "encoding": st.sampled_from(["json", "base64", "text", "bogus"]) | json_values,
        "id": st.uuids().map(str) | json_values,
    },
)
envelope_values = st.fixed_dictionaries(
    {}, optional={"events": st.lists(event_values, max_size=3) | json_values, "id": json_values}
)


@FUZZ
@given(json_values | envelope_values)
def test_envelope_json_reader(value: Any) -> None:
    with contextlib.suppress(EnvelopeFormatError):
        parse_envelope_json(value, max_items=50, max_bytes=10_000)


@FUZZ
@given(st.binary(max_size=300))
def test_output_request_reader(body: bytes) -> None:
    try:
        _, fragment = parse_output_request(body)
        envelope_from_complete_fragment(fragment)
    except EnvelopeFormatError:
        pass


fragments = st.builds(
    lambda env_id, events, ids: xbus_pb2.Envelope(id=env_id, events=events, eventIDs=ids),
    st.binary(max_size=17) | st.uuids().map(lambda u: u.bytes),
    st.lists(
        st.builds(
            lambda ev_id, type_, items, index, checksum: xbus_pb2.Event(
                id=ev_id, type=type_, items=items, index=index, checksum=checksum
            ),
            st.binary(max_size=17) | st.uuids().map(lambda u: u.bytes),
            st.text(max_size=10),
            st.lists(st.binary(max_size=8), max_size=3),
            st.integers(0, 2**31),
            st.integers(0, 2**32 - 1),
        ),
        max_size=3,
    ),
    st.lists(st.binary(max_size=17) | st.uuids().map(lambda u: u.bytes), max_size=3),
)


@FUZZ
@given(fragments, st.lists(st.uuids(), max_size=2) | st.none())
def test_fragment_reader(fragment: Any, declared: list[uuid.UUID] | None) -> None:
    with contextlib.suppress(EnvelopeFormatError):
        apply_fragment({}, fragment, declared=declared)


@FUZZ
@given(st.text(max_size=300) | json_values.map(json.dumps) | json_values)
def test_graph_reader(source: Any) -> None:
    if not isinstance(source, str | dict):
        source = {"nodes": source}
    parse_graph(source)  # never raises: problems are messages


@FUZZ
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_webhook_answer_reader(body: bytes) -> None:
    with contextlib.suppress(AnswerError):
        read_json_state(body, max_items=50, max_bytes=10_000)
