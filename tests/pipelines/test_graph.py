"""Pipeline graph parsing and validation (pure functions, no database)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from app.pipelines.graph import (
    ActorResolver,
    Edge,
    Graph,
    Node,
    ValidationMessage,
    check_graph,
    parse_graph,
    validate_graph,
)

VALID_YAML = """
nodes:
  - id: source
    type: emitter
    actors: [demo.emitter]
    sourcematch:
      eventtypes: [demo.hello, demo.bye]
  - id: relay
    type: worker
    roles: [relayer]
    inputs: [default]
    outputs: [default, errors]
  - id: sink
    type: consumer
    roles: [printer]
    rolebroadcast: true
edges:
  - source->relay
  - relay.errors->sink
  - relay->sink.default
"""


def valid_dict() -> dict[str, Any]:
    return {
        "nodes": [
            {
                "id": "source",
                "type": "emitter",
                "actors": ["demo.emitter"],
                "sourcematch": {"eventtypes": ["demo.hello", "demo.bye"]},
            },
            {
                "id": "relay",
                "type": "worker",
                "roles": ["relayer"],
                "inputs": ["default"],
                "outputs": ["default", "errors"],
            },
            {"id": "sink", "type": "consumer", "roles": ["printer"], "rolebroadcast": True},
        ],
        "edges": ["source->relay", "relay.errors->sink", "relay->sink.default"],
    }


def node_dict(data: dict[str, Any], node_id: str) -> dict[str, Any]:
    for node in data["nodes"]:
        if node["id"] == node_id:
            return node  # type: ignore[no-any-return]
    raise KeyError(node_id)


def checked(
    source: dict[str, Any] | str, resolver: ActorResolver | None = None
) -> list[ValidationMessage]:
    graph, messages = check_graph(source, resolver)
    assert graph is not None, messages
    return messages


def texts(messages: list[ValidationMessage], level: str | None = None) -> list[str]:
    return [m.text for m in messages if level is None or m.level == level]


def one(messages: list[ValidationMessage], fragment: str) -> ValidationMessage:
    found = [m for m in messages if fragment in m.text]
    assert len(found) == 1, f"{fragment!r} in {texts(messages)}"
    return found[0]


def errors_with(data: dict[str, Any], fragment: str) -> list[str]:
    return [t for t in texts(checked(data), "error") if fragment in t]


def simple_graph(edges: list[str], **extra_nodes: dict[str, Any]) -> dict[str, Any]:
    """emitter "e" -> worker "w" -> consumer "c", plus extra nodes, with the given edges."""
    nodes: list[dict[str, Any]] = [
        {"id": "e", "type": "emitter", "actors": ["em"], "sourcematch": {"eventtypes": ["t"]}},
        {"id": "w", "type": "worker", "actors": ["wk"]},
        {"id": "c", "type": "consumer", "actors": ["co"]},
    ]
    for node_id, node in extra_nodes.items():
        nodes.append({"id": node_id, **node})
    return {"nodes": nodes, "edges": edges}


# --------------------------------------------------------------------------- valid graphs


def test_valid_yaml_graph() -> None:
    graph, messages = check_graph(VALID_YAML)
    assert messages == []
    assert graph is not None
    assert list(graph.nodes) == ["source", "relay", "sink"]
    assert graph.nodes["source"] == Node(
        id="source",
        type="emitter",
        actors=("demo.emitter",),
        roles=(),
        rolebroadcast=False,
        inputs=(),
        outputs=("default",),
        eventtypes=("demo.hello", "demo.bye"),
    )
    assert graph.nodes["relay"].outputs == ("default", "errors")
    assert graph.nodes["sink"].inputs == ("default",)
    assert graph.nodes["sink"].outputs == ()
    assert graph.nodes["sink"].rolebroadcast is True
    assert graph.edges == (
        Edge("source", "default", "relay", "default"),
        Edge("relay", "errors", "sink", "default"),
        Edge("relay", "default", "sink", "default"),
    )
    assert [n.id for n in graph.emitters()] == ["source"]


def test_same_graph_as_dict_and_as_json_string() -> None:
    from_yaml, _ = parse_graph(VALID_YAML)
    from_dict, dict_messages = check_graph(valid_dict())
    from_json, json_messages = check_graph(json.dumps(valid_dict()))
    assert dict_messages == []
    assert json_messages == []
    assert from_yaml == from_dict == from_json


def test_default_ports_per_node_type() -> None:
    graph, _ = parse_graph(simple_graph([]))
    assert graph is not None
    assert (graph.nodes["e"].inputs, graph.nodes["e"].outputs) == ((), ("default",))
    assert (graph.nodes["w"].inputs, graph.nodes["w"].outputs) == (("default",), ("default",))
    assert (graph.nodes["c"].inputs, graph.nodes["c"].outputs) == (("default",), ())


def test_null_optional_fields_mean_default() -> None:
    graph, messages = check_graph(
        "nodes:\n"
        "  - {id: e, type: emitter, actors: [a], sourcematch: {eventtypes: [t]}, inputs:}\n"
        "  - {id: c, type: consumer, actors: [b], outputs: , roles: }\n"
        "edges: [e->c]\n"
    )
    assert messages == []
    assert graph is not None
    assert graph.nodes["e"].inputs == ()
    assert graph.nodes["c"].outputs == ()


def test_to_dict_is_canonical_and_round_trips() -> None:
    graph, _ = parse_graph(VALID_YAML)
    assert graph is not None
    data = graph.to_dict()
    assert data["edges"] == [
        "source.default->relay.default",
        "relay.errors->sink.default",
        "relay.default->sink.default",
    ]
    assert data["nodes"][2] == {
        "id": "sink",
        "type": "consumer",
        "actors": [],
        "roles": ["printer"],
        "rolebroadcast": True,
        "inputs": ["default"],
        "outputs": [],
        "sourcematch": {"eventtypes": []},
    }
    again, messages = check_graph(data)
    assert messages == []
    assert again == graph
    # the canonical form survives JSON too
    assert parse_graph(json.dumps(data))[0] == graph


def test_to_dict_round_trips_an_invalid_graph() -> None:
    data = simple_graph(
        ["w->e"], x={"type": "worker", "inputs": [], "sourcematch": {"eventtypes": ["t"]}}
    )
    graph, _ = parse_graph(data)
    assert graph is not None
    assert parse_graph(graph.to_dict()) == (graph, [])


def test_edge_str_and_label() -> None:
    edge = Edge("a", "default", "b", "in")
    assert str(edge) == "a.default->b.in"
    assert edge.label == "a->b.in"
    assert Edge("a", "out", "b", "default").label == "a.out->b"


def test_validation_message_to_dict() -> None:
    message = ValidationMessage("warning", "careful", "relay")
    assert message.to_dict() == {"level": "warning", "text": "careful", "node_id": "relay"}
    assert ValidationMessage("error", "bad").to_dict() == {
        "level": "error",
        "text": "bad",
        "node_id": None,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a->b", Edge("a", "default", "b", "default")),
        ("a.out->b.in", Edge("a", "out", "b", "in")),
        (" a.out -> b ", Edge("a", "out", "b", "default")),
        ("a->b.in", Edge("a", "default", "b", "in")),
        ("ns:a-1->b_2", Edge("ns:a-1", "default", "b_2", "default")),
    ],
)
def test_edge_syntax(text: str, expected: Edge) -> None:
    graph, messages = parse_graph({"nodes": [], "edges": [text]})
    assert messages == []
    assert graph is not None
    assert graph.edges == (expected,)


# --------------------------------------------------------------------------- graph queries


def test_outgoing_incoming_connected_inputs() -> None:
    data = simple_graph(
        ["e->w", "w->c", "w.errors->c.failures", "e->c"],
    )
    node_dict(data, "w")["outputs"] = ["default", "errors"]
    node_dict(data, "c")["inputs"] = ["default", "failures", "spare"]
    graph, _ = parse_graph(data)
    assert graph is not None
    assert [str(e) for e in graph.outgoing("w")] == [
        "w.default->c.default",
        "w.errors->c.failures",
    ]
    assert [str(e) for e in graph.outgoing("w", "errors")] == ["w.errors->c.failures"]
    assert graph.outgoing("w", "nope") == []
    assert graph.outgoing("c") == []
    assert [e.source for e in graph.incoming("c")] == ["w", "w", "e"]
    assert graph.incoming("e") == []
    assert graph.connected_inputs("c") == {"default", "failures"}
    assert graph.connected_inputs("e") == set()
    assert graph.connected_inputs("unknown") == set()


def test_matches() -> None:
    graph, _ = parse_graph(VALID_YAML)
    assert graph is not None
    assert graph.matches("source", ["demo.hello"])
    assert graph.matches("source", ("demo.hello", "demo.bye"))
    assert graph.matches("source", iter(["demo.bye", "demo.bye"]))
    assert not graph.matches("source", ["demo.hello", "demo.other"])
    assert not graph.matches("source", ["demo.other"])
    assert not graph.matches("source", [])
    assert not graph.matches("relay", ["demo.hello"])  # not an emitter
    assert not graph.matches("ghost", ["demo.hello"])


# --------------------------------------------------------------------------- parse errors


def test_yaml_syntax_error() -> None:
    graph, messages = check_graph("nodes:\n  - id: a\n    type: [emitter\nedges: []\n")
    assert graph is None
    assert len(messages) == 1
    assert messages[0].level == "error"
    assert messages[0].text.startswith("invalid YAML at line ")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "the graph is empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("just text", "not a string"),
        ("42", "not a number"),
    ],
)
def test_unreadable_documents(source: str, fragment: str) -> None:
    graph, messages = parse_graph(source)
    assert graph is None
    assert len(messages) == 1
    assert fragment in messages[0].text


def test_top_level_not_a_mapping_given_as_python_list() -> None:
    graph, messages = parse_graph([1, 2])  # type: ignore[arg-type]
    assert graph is None
    assert "not a list" in messages[0].text


PARSE_CASES: list[tuple[str, Any, str]] = [
    ("unknown top key", {"nodes": [], "edges": [], "name": "x"}, 'unknown top-level key "name"'),
    ("nodes not a list", {"nodes": {"a": {}}}, '"nodes" must be a list of nodes, not a mapping'),
    ("node not a mapping", {"nodes": ["source"]}, "node #1 must be a mapping, not a string"),
    ("node without id", {"nodes": [{"type": "worker"}]}, 'node #1 has no "id"'),
    ("id not a string", {"nodes": [{"id": 7, "type": "worker"}]}, '"id" must be a string'),
    (
        "unknown node key",
        {"nodes": [{"id": "a", "type": "worker", "colour": 1}]},
        'node "a": unknown key "colour"',
    ),
    ("no type", {"nodes": [{"id": "a"}]}, 'node "a" has no "type"'),
    ("unknown type", {"nodes": [{"id": "a", "type": "emiter"}]}, 'node "a": unknown type "emiter"'),
    (
        "actors not a list",
        {"nodes": [{"id": "a", "type": "worker", "actors": "x"}]},
        'node "a": "actors" must be a list of strings, not a string',
    ),
    (
        "role not a string",
        {"nodes": [{"id": "a", "type": "worker", "roles": ["r", 3]}]},
        'node "a": "roles" item #2 must be a string',
    ),
    (
        "inputs not a list",
        {"nodes": [{"id": "a", "type": "worker", "inputs": {"x": 1}}]},
        'node "a": "inputs" must be a list',
    ),
    (
        "outputs item",
        {"nodes": [{"id": "a", "type": "worker", "outputs": [None]}]},
        'node "a": "outputs" item #1 must be a string, not null',
    ),
    (
        "rolebroadcast",
        {"nodes": [{"id": "a", "type": "worker", "rolebroadcast": "yes"}]},
        'node "a": "rolebroadcast" must be true or false',
    ),
    (
        "sourcematch not a mapping",
        {"nodes": [{"id": "a", "type": "emitter", "sourcematch": ["t"]}]},
        'node "a": "sourcematch" must be a mapping',
    ),
    (
        "sourcematch key",
        {"nodes": [{"id": "a", "type": "emitter", "sourcematch": {"eventtype": ["t"]}}]},
        'node "a": unknown key "eventtype" in "sourcematch"',
    ),
    (
        "eventtypes not a list",
        {"nodes": [{"id": "a", "type": "emitter", "sourcematch": {"eventtypes": "t"}}]},
        'node "a": "sourcematch.eventtypes" must be a list of strings',
    ),
    (
        "eventtype not a string",
        {"nodes": [{"id": "a", "type": "emitter", "sourcematch": {"eventtypes": [1]}}]},
        'node "a": "sourcematch.eventtypes" item #1 must be a string',
    ),
    (
        "duplicate id",
        {"nodes": [{"id": "a", "type": "worker"}, {"id": "a", "type": "consumer"}]},
        'duplicate node id "a" (nodes #1 and #2)',
    ),
    ("edges not a list", {"nodes": [], "edges": "a->b"}, '"edges" must be a list of strings'),
    (
        "edge not a string",
        {"nodes": [], "edges": [{"from": "a", "to": "b"}]},
        "edge #1 must be a string",
    ),
    ("edge without arrow", {"nodes": [], "edges": ["a-b"]}, 'edge #1 "a-b" is malformed'),
    ("edge two arrows", {"nodes": [], "edges": ["a->b->c"]}, 'edge #1 "a->b->c" is malformed'),
    ("edge empty side", {"nodes": [], "edges": ["->b"]}, 'edge #1 "->b" is malformed'),
    ("edge empty port", {"nodes": [], "edges": ["a.->b"]}, 'edge #1 "a.->b" is malformed'),
    ("edge two dots", {"nodes": [], "edges": ["a.b.c->d"]}, 'edge #1 "a.b.c->d" is malformed'),
    ("edge inner space", {"nodes": [], "edges": ["a b->c"]}, 'edge #1 "a b->c" is malformed'),
]


@pytest.mark.parametrize(
    ("source", "fragment"), [case[1:] for case in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_errors(source: dict[str, Any], fragment: str) -> None:
    graph, messages = parse_graph(source)
    assert graph is not None  # a readable document always gives a graph
    assert any(m.level == "error" and fragment in m.text for m in messages), texts(messages)


def test_parse_errors_carry_the_node_id() -> None:
    _, messages = parse_graph({"nodes": [{"id": "a", "type": "bogus"}]})
    assert messages[0].node_id == "a"


def test_yaml_values_that_are_not_strings() -> None:
    # YAML 1.1 reads a bare `yes` as a boolean: the message says so instead of crashing.
    _, messages = parse_graph("nodes:\n  - {id: yes, type: worker}\n")
    assert texts(messages) == ['node #1: "id" must be a string, not a boolean']


@pytest.mark.parametrize(
    "source",
    [
        "nodes: [[]]",
        "nodes: [{id: a, type: [x]}]",
        "nodes: [{id: a, type: {x: 1}}]",
        "{nodes: [{id: a, type: worker, actors: [[1]]}], edges: [[a, b]]}",
        "nodes: [{? [a]\n : 1}]",
        "edges: [1, null, true]",
        "nodes: 3\nedges: {}",
        "nodes: [{id: a, type: emitter, sourcematch: {eventtypes: [{}]}}]",
    ],
)
def test_junk_never_raises(source: str) -> None:
    graph, messages = check_graph(source)
    assert messages
    assert all(m.level in ("error", "warning") for m in messages)
    if graph is not None:
        validate_graph(graph)


def test_parse_reports_every_problem_and_keeps_the_rest() -> None:
    data = {
        "nodes": [
            {"id": "e", "type": "emitter", "actors": ["em"], "sourcematch": {"eventtypes": [1]}},
            "junk",
            {"id": "w", "type": "worker", "actors": "wk", "extra": True},
            {"id": "c", "type": "consumer", "actors": ["co"], "rolebroadcast": 1},
        ],
        "edges": ["e->w", 5, "w=>c", "w->c"],
        "other": 1,
    }
    graph, messages = parse_graph(data)
    assert graph is not None
    assert texts(messages) == [
        'unknown top-level key "other" (expected "nodes" and "edges")',
        'node "e": "sourcematch.eventtypes" item #1 must be a string, not a number (1)',
        "node #2 must be a mapping, not a string",
        'node "w": unknown key "extra" (expected one of "id", "type", "actors", "roles", '
        '"rolebroadcast", "inputs", "outputs", "sourcematch")',
        'node "w": "actors" must be a list of strings, not a string',
        'node "c": "rolebroadcast" must be true or false, not a number',
        'edge #2 must be a string like "a->b" or "a.out->b.in", not a number',
        'edge #3 "w=>c" is malformed: expected "a->b" or "a.out->b.in"',
    ]
    assert list(graph.nodes) == ["e", "w", "c"]
    assert [str(e) for e in graph.edges] == ["e.default->w.default", "w.default->c.default"]


def test_parse_errors_do_not_cascade_into_validation() -> None:
    # "w" has an unknown type, so it is dropped; the edges through it are not
    # reported again as unknown nodes, and nothing is "unreachable" because of it.
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["type"] = "wrker"
    node_dict(data, "c")["actors"] = "co"  # unreadable: no "neither actors nor roles" either
    _, messages = check_graph(data)
    assert texts(messages) == [
        'node "w": unknown type "wrker" (expected emitter, worker or consumer)',
        'node "c": "actors" must be a list of strings, not a string',
    ]


def test_duplicate_node_id_keeps_the_first() -> None:
    data = simple_graph(["e->w", "w->c"], w={"type": "consumer", "actors": ["x"]})
    graph, messages = check_graph(data)
    assert graph is not None
    assert graph.nodes["w"].type == "worker"
    assert texts(messages) == ['duplicate node id "w" (nodes #2 and #4); node ids must be unique']


# --------------------------------------------------------------------------- validation rules


def test_no_nodes() -> None:
    messages = checked({"nodes": [], "edges": []})
    assert texts(messages) == ["the graph has no nodes"]
    assert texts(checked({})) == ["the graph has no nodes"]


def test_no_emitter_and_no_consumer() -> None:
    messages = checked({"nodes": [{"id": "w", "type": "worker", "roles": ["r"]}]})
    assert texts(messages)[:2] == [
        "the graph has no emitter node",
        "the graph has no consumer node",
    ]
    assert [m.node_id for m in messages[:2]] == [None, None]


@pytest.mark.parametrize("bad_id", ["a.b", "-a", ":a", "a b", "a/b", "é", "x" * 129, ""])
def test_invalid_node_id(bad_id: str) -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["id"] = bad_id
    messages = checked(data)
    message = one(messages, "invalid node id")
    assert message.text.startswith(f"node {json.dumps(bad_id, ensure_ascii=False)}: ")
    assert message.node_id == bad_id


@pytest.mark.parametrize("good_id", ["a", "_a", "0", "ns:relay-1_b", "A" * 128])
def test_valid_node_ids(good_id: str) -> None:
    data = simple_graph([f"e->{good_id}", f"{good_id}->c"])
    node_dict(data, "w")["id"] = good_id
    assert checked(data) == []


def test_dotted_node_id_gets_a_hint_in_edges() -> None:
    data = simple_graph(
        ["e->w", "w->c", "e->a.b", "a.b->c"], **{"a.b": {"type": "worker", "roles": ["r"]}}
    )
    messages = checked(data)
    assert 'node "a.b": invalid node id' in texts(messages)[0]
    hint = one(messages, 'edge "e->a.b": unknown target node "a"')
    assert 'node "a.b" cannot be named in an edge' in hint.text


def test_invalid_port_names() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["inputs"] = ["default", "bad port"]
    node_dict(data, "w")["outputs"] = ["default", "x" * 65, "a.b"]
    messages = checked(data)
    assert 'node "w": invalid input name "bad port"' in texts(messages)[0]
    assert one(messages, f'invalid output name "{"x" * 65}"').node_id == "w"
    one(messages, 'invalid output name "a.b"')


def test_duplicate_ports() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["inputs"] = ["default", "default"]
    node_dict(data, "w")["outputs"] = ["default", "x", "x"]
    errors = texts(checked(data), "error")
    assert 'node "w": duplicate input "default"' in errors
    assert 'node "w": duplicate output "x"' in errors


def test_node_without_actors_or_roles() -> None:
    data = simple_graph(["e->w", "w->c"])
    del node_dict(data, "w")["actors"]
    assert errors_with(data, "neither") == [
        'node "w" has neither actors nor roles; give one of them'
    ]
    node_dict(data, "w")["actors"] = []
    node_dict(data, "w")["roles"] = []
    assert len(errors_with(data, 'node "w" has neither actors nor roles')) == 1


def test_node_with_actors_and_roles() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["roles"] = ["r"]
    assert errors_with(data, "both") == [
        'node "w" has both actors and roles; give only one of them'
    ]


def test_empty_and_repeated_actor_and_role_names() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["actors"] = ["wk", "", "wk"]
    node_dict(data, "c")["roles"] = [" "]
    del node_dict(data, "c")["actors"]
    messages = checked(data)
    assert one(messages, 'node "w": empty actor name').level == "error"
    assert one(messages, 'node "w": actor "wk" is listed more than once').level == "warning"
    assert one(messages, 'node "c": empty role name').level == "error"


def test_rolebroadcast_without_roles() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "c")["rolebroadcast"] = True
    assert errors_with(data, "rolebroadcast") == [
        'node "c": rolebroadcast is set but the node has no roles'
    ]


def test_emitter_with_inputs() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "e")["inputs"] = ["default"]
    assert errors_with(data, "inputs") == [
        'node "e": an emitter cannot have inputs (found "default")'
    ]


@pytest.mark.parametrize("sourcematch", [None, {}, {"eventtypes": []}])
def test_emitter_without_eventtypes(sourcematch: dict[str, Any] | None) -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "e")["sourcematch"] = sourcematch
    assert errors_with(data, "sourcematch") == [
        'node "e": an emitter needs a sourcematch with a non-empty eventtypes list'
    ]


def test_emitter_with_empty_or_repeated_event_type() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "e")["sourcematch"] = {"eventtypes": ["t", "", "t"]}
    messages = checked(data)
    assert one(messages, 'node "e": empty event type').level == "error"
    assert one(messages, 'event type "t" is listed more than once').level == "warning"


def test_sourcematch_on_a_non_emitter() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["sourcematch"] = {"eventtypes": ["t"]}
    node_dict(data, "c")["sourcematch"] = {"eventtypes": []}  # empty is harmless
    assert errors_with(data, "sourcematch") == [
        'node "w": only emitters have a sourcematch, but this node is a worker'
    ]


def test_consumer_with_outputs() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "c")["outputs"] = ["default", "more"]
    assert errors_with(data, "outputs") == [
        'node "c": a consumer cannot have outputs (found "default", "more")'
    ]


def test_worker_without_inputs_or_outputs() -> None:
    data = simple_graph(["e->c"], x={"type": "worker", "roles": ["r"], "inputs": [], "outputs": []})
    errors = texts(checked(data), "error")
    assert 'node "x": a worker needs at least one input' in errors
    assert 'node "x": a worker needs at least one output' in errors


def test_edges_to_and_from_unknown_nodes() -> None:
    data = simple_graph(["e->w", "w->c", "ghost->c", "w.default->nowhere.in"])
    messages = checked(data)
    assert one(messages, 'edge "ghost->c": unknown source node "ghost"').node_id is None
    one(messages, 'edge "w->nowhere.in": unknown target node "nowhere"')


def test_edge_from_unknown_output_port() -> None:
    data = simple_graph(["e->w", "w->c", "w.out->c"])
    message = one(checked(data), 'node "w" has no output "out"')
    assert message.text == 'edge "w.out->c": node "w" has no output "out"'
    assert message.node_id == "w"


def test_edge_to_unknown_input_port() -> None:
    data = simple_graph(["e->w", "w->c", "e->c.side"])
    message = one(checked(data), 'has no input "side"')
    assert message.text == 'edge "e->c.side": node "c" has no input "side"'
    assert message.node_id == "c"


def test_duplicate_edges() -> None:
    data = simple_graph(["e->w", "w->c", "w.default->c.default", "e->w"])
    assert errors_with(data, "more than once") == [
        'edge "w->c" is declared more than once',
        'edge "e->w" is declared more than once',
    ]


def test_edge_into_an_emitter() -> None:
    data = simple_graph(["e->w", "w->c", "w->e"])
    errors = texts(checked(data), "error")
    assert 'edge "w->e": node "e" is an emitter, and an edge cannot lead into an emitter' in errors
    assert not [t for t in errors if "has no input" in t]  # no second message for the same edge


def test_edge_out_of_a_consumer() -> None:
    data = simple_graph(["e->w", "w->c", "c->w"])
    errors = texts(checked(data), "error")
    assert 'edge "c->w": node "c" is a consumer, and an edge cannot start from a consumer' in errors
    assert not [t for t in errors if "has no output" in t]


def test_cycle_names_its_nodes() -> None:
    data = simple_graph(
        ["e->w", "w->x", "x->y", "y->w", "w->c"],
        x={"type": "worker", "roles": ["r"]},
        y={"type": "worker", "roles": ["r"]},
    )
    node_dict(data, "w")["inputs"] = ["default", "back"]
    data["edges"][3] = "y->w.back"
    message = one(checked(data), "cycle")
    assert message.text == 'the graph has a cycle: "w" -> "x" -> "y" -> "w"'
    assert message.node_id == "w"


def test_self_loop_and_two_separate_cycles() -> None:
    data = simple_graph(
        ["e->w", "w->c", "w->w", "e->x", "x->y", "y->x", "y->c"],
        x={"type": "worker", "roles": ["r"]},
        y={"type": "worker", "roles": ["r"]},
    )
    assert errors_with(data, "cycle") == [
        'the graph has a cycle: "w" -> "w"',
        'the graph has a cycle: "x" -> "y" -> "x"',
    ]


def test_node_no_emitter_reaches() -> None:
    data = simple_graph(
        ["e->w", "w->c", "x->c", "y->x"],
        x={"type": "worker", "roles": ["r"]},
        y={"type": "worker", "roles": ["r"]},
    )
    errors = texts(checked(data), "error")
    assert 'node "x" is not reachable from any emitter' in errors
    # "y" has no incoming edge at all: one message, not one per input port as well
    assert 'node "y" is not reachable from any emitter (it has no incoming edge)' in errors
    assert not [t for t in errors if t.startswith('node "y": input')]


def test_worker_with_no_path_to_a_consumer() -> None:
    data = simple_graph(
        ["e->w", "w->c", "w.errors->x", "x->y"],
        x={"type": "worker", "roles": ["r"]},
        y={"type": "worker", "roles": ["r"]},
    )
    node_dict(data, "w")["outputs"] = ["default", "errors"]
    messages = checked(data)
    assert errors_with(data, "consumer") == [
        'node "x": no path leads from this node to a consumer',
        'node "y": no path leads from this node to a consumer (it has no outgoing edge)',
    ]
    assert not [m for m in messages if m.node_id == "y" and m.level == "warning"]


def test_emitter_with_no_path_to_a_consumer() -> None:
    data = simple_graph(
        ["e->w", "w->c", "e2->x"],
        e2={"type": "emitter", "actors": ["em2"], "sourcematch": {"eventtypes": ["t"]}},
        x={"type": "worker", "roles": ["r"]},
    )
    assert errors_with(data, "no path") == [
        'node "e2": no path leads from this node to a consumer',
        'node "x": no path leads from this node to a consumer (it has no outgoing edge)',
    ]


def test_unconnected_output_is_a_warning() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "w")["outputs"] = ["default", "errors"]
    messages = checked(data)
    assert [m.to_dict() for m in messages] == [
        {"level": "warning", "text": 'node "w": output "errors" is not connected', "node_id": "w"}
    ]
    graph, _ = check_graph(data)
    assert graph is not None


def test_unconnected_input_is_an_error() -> None:
    data = simple_graph(["e->w", "w->c"])
    node_dict(data, "c")["inputs"] = ["default", "audit"]
    node_dict(data, "w")["inputs"] = ["default", "side"]
    assert errors_with(data, "incoming") == [
        'node "w": input "side" has no incoming edge',
        'node "c": input "audit" has no incoming edge',
    ]


def test_flow_rules_are_skipped_without_emitter_or_consumer() -> None:
    data = {"nodes": [{"id": "w", "type": "worker", "roles": ["r"]}], "edges": []}
    messages = checked(data)
    assert not [t for t in texts(messages) if "reachable" in t or "no path" in t]


def test_many_problems_are_all_reported_in_order() -> None:
    source = """
nodes:
  - id: e
    type: emitter
    roles: [sender]
    inputs: [default]
  - id: w
    type: worker
    actors: [wk]
    roles: [r]
    outputs: [default, errors]
  - id: lost
    type: worker
    actors: [lw]
  - id: c
    type: consumer
    rolebroadcast: true
    outputs: [x]
edges:
  - e->w
  - w->c
  - w->w2
  - w.nope->c
  - c.x->w
  - w->c
"""
    graph, messages = check_graph(source)
    assert graph is not None
    assert texts(messages) == [
        'node "e": an emitter cannot have inputs (found "default")',
        'node "e": an emitter needs a sourcematch with a non-empty eventtypes list',
        'node "w" has both actors and roles; give only one of them',
        'node "w": output "errors" is not connected',
        'node "lost" is not reachable from any emitter (it has no incoming edge)',
        'node "lost": no path leads from this node to a consumer (it has no outgoing edge)',
        'node "c" has neither actors nor roles; give one of them',
        'node "c": rolebroadcast is set but the node has no roles',
        'node "c": a consumer cannot have outputs (found "x")',
        'edge "w->w2": unknown target node "w2"',
        'edge "w.nope->c": node "w" has no output "nope"',
        'edge "c.x->w": node "c" is a consumer, and an edge cannot start from a consumer',
        'edge "w->c" is declared more than once',
        'the graph has a cycle: "w" -> "c" -> "w"',
    ]
    assert [m.node_id for m in messages][:4] == ["e", "e", "w", "w"]
    # deterministic
    assert check_graph(source)[1] == messages


def test_validate_graph_on_a_hand_built_graph() -> None:
    node = Node("e", "emitter", ("em",), (), False, (), ("default",), ("t",))
    graph = Graph(nodes={"other": node}, edges=())
    errors = texts(validate_graph(graph), "error")
    assert 'node "e" is registered under another id, "other"' in errors
    assert "the graph has no consumer node" in errors


# --------------------------------------------------------------------------- actor resolver


class FakeResolver:
    """Actors by name or id, with their kind and roles."""

    def __init__(self, actors: dict[str, tuple[str, list[str]]]) -> None:
        self.actors = actors
        self.ids = {f"00000000-0000-0000-0000-00000000000{i}": n for i, n in enumerate(actors)}

    def actor_kind(self, ref: str) -> str | None:
        name = self.ids.get(ref, ref)
        entry = self.actors.get(name)
        return entry[0] if entry else None

    def role_kinds(self, role: str) -> set[str]:
        return {kind for kind, roles in self.actors.values() if role in roles}


RESOLVER = FakeResolver(
    {
        "demo.emitter": ("emitter", []),
        "relay-1": ("worker", ["relayer"]),
        "printer-1": ("consumer", ["printer", "audit"]),
        "printer-w": ("worker", ["audit"]),
    }
)


def test_resolver_accepts_a_valid_graph() -> None:
    assert checked(VALID_YAML, RESOLVER) == []
    data = valid_dict()
    data["nodes"][0]["actors"] = ["00000000-0000-0000-0000-000000000000"]  # by id
    assert checked(data, RESOLVER) == []


def test_resolver_unknown_actor() -> None:
    data = valid_dict()
    data["nodes"][0]["actors"] = ["demo.emitter", "ghost", "ghost"]
    message = one(checked(data, RESOLVER), "unknown actor")
    assert message.text == 'node "source": unknown actor "ghost"'
    assert message.node_id == "source"


def test_resolver_actor_of_the_wrong_kind() -> None:
    data = valid_dict()
    data["nodes"][0]["actors"] = ["relay-1"]
    assert errors_with_resolver(data, "actor") == [
        'node "source": actor "relay-1" is a worker, but this node is an emitter'
    ]


def test_resolver_role_nobody_has() -> None:
    data = valid_dict()
    node_dict(data, "relay")["roles"] = ["relayer", "juggler"]
    assert errors_with_resolver(data, "role") == ['node "relay": no actor has the role "juggler"']


def test_resolver_role_without_actors_of_the_node_kind() -> None:
    data = valid_dict()
    node_dict(data, "relay")["roles"] = ["printer"]
    node_dict(data, "sink")["roles"] = ["audit"]  # a consumer and a worker have it: fine
    assert errors_with_resolver(data, "role") == [
        'node "relay": no worker actor has the role "printer" (only consumer actors do)'
    ]


def test_resolver_is_optional() -> None:
    data = valid_dict()
    data["nodes"][0]["actors"] = ["ghost"]
    assert checked(data) == []


def errors_with_resolver(data: dict[str, Any], fragment: str) -> list[str]:
    return [t for t in texts(checked(copy.deepcopy(data), RESOLVER), "error") if fragment in t]


def test_yaml_alias_bomb_gives_short_messages() -> None:
    # Nested aliases expand to 10**20 leaves: messages must show them abridged.
    lines = ["  a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 20):
        lines.append(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    doc = "\n".join(
        ["defs:", *lines, "nodes:", "  - id: e", "    type: *a19", "    actors: [*a19]"]
    )
    graph, messages = check_graph(doc)
    assert graph is not None
    assert messages
    assert all(len(m.text) < 1000 for m in messages), [len(m.text) for m in messages]


def test_wide_graph_edges_by_node() -> None:
    n = 3000
    data: dict[str, Any] = {
        "nodes": [
            {"id": "e", "type": "emitter", "actors": ["x"], "sourcematch": {"eventtypes": ["t"]}},
            *({"id": f"w{i}", "type": "worker", "actors": ["w"]} for i in range(n)),
            {"id": "c", "type": "consumer", "actors": ["c"]},
        ],
        "edges": [f"e->w{i}" for i in range(n)] + [f"w{i}->c" for i in range(n)],
    }
    graph, messages = check_graph(data)
    assert graph is not None
    assert messages == []
    assert len(graph.outgoing("e")) == n
    assert len(graph.incoming("c")) == n
    assert [str(e) for e in graph.outgoing("w7")] == ["w7.default->c.default"]


def test_deeply_nested_yaml_is_a_message_not_a_crash() -> None:
    depth = 5000
    graph, messages = parse_graph("nodes: " + "[" * depth + "]" * depth)
    assert graph is None
    assert [m.text for m in messages] == ["invalid YAML: the document is nested too deeply"]
