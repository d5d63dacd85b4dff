"""Pipeline graphs: parsing, canonical form and validation.

A pipeline graph says where the envelopes of an emitter go. It is written as a
mapping (JSON) or a YAML document::

    nodes:
      - id: source
        type: emitter
        actors: [demo.emitter]          # actor names or ids
        sourcematch:
          eventtypes: [demo.hello]
      - id: relay
        type: worker
        roles: [relayer]
        outputs: [default, errors]
      - id: sink
        type: consumer
        roles: [printer]
        rolebroadcast: true
    edges:
      - source->relay                   # source.default -> relay.default
      - relay.errors->sink              # either side may omit its port

This module is pure: no database, no I/O. ``parse_graph`` turns the source into
a :class:`Graph` and reports what it cannot read; ``validate_graph`` reports
what is wrong with a graph that could be read (with an optional
:class:`ActorResolver` to check actor and role references); ``check_graph``
does both. None of them raises on bad input: every problem becomes a
:class:`ValidationMessage`, and all problems are reported at once.

Naming rules:

* node ids match ``^[A-Za-z0-9_][A-Za-z0-9_:-]{0,127}$``: 1 to 128 letters,
  digits, ``_``, ``-`` or ``:``, not starting with ``-`` or ``:``. A dot is not
  allowed, because ``.`` separates the node from the port in an edge
  (``a.out->b.in``), so ``a.b->c`` must have exactly one reading.
* port names match ``^[A-Za-z0-9_-]{1,64}$``.

Order of messages: parse messages come first, in document order. Validation
messages then come as: graph-wide problems (no nodes, no emitter, no consumer),
then every node in declaration order with its rules in a fixed order
(structure, actor/role references, connectivity), then every edge in
declaration order, then cycles.

When parsing had to drop a node or an edge (say a node with an unknown type),
the connectivity rules (reachability, unconnected ports) are not run, because
they would report false problems about the missing pieces; they run once the
parse errors are fixed.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, cast, get_args

import yaml

__all__ = [
    "DEFAULT_PORT",
    "NODE_ID_PATTERN",
    "NODE_TYPES",
    "PORT_PATTERN",
    "ActorResolver",
    "Edge",
    "Graph",
    "Node",
    "NodeType",
    "ValidationMessage",
    "check_graph",
    "parse_graph",
    "validate_graph",
]

NodeType = Literal["emitter", "worker", "consumer"]
NODE_TYPES: tuple[NodeType, ...] = get_args(NodeType)
MessageLevel = Literal["error", "warning"]

DEFAULT_PORT = "default"
NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:-]{0,127}$")
PORT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_TOP_KEYS = ("nodes", "edges")
_NODE_KEYS = (
    "id",
    "type",
    "actors",
    "roles",
    "rolebroadcast",
    "inputs",
    "outputs",
    "sourcematch",
)
_SOURCEMATCH_KEYS = ("eventtypes",)
_EDGE_HINT = '"a->b" or "a.out->b.in"'


@dataclass(frozen=True, slots=True)
class Node:
    """One node of a pipeline graph, with every field explicit."""

    id: str
    type: NodeType
    actors: tuple[str, ...]
    roles: tuple[str, ...]
    rolebroadcast: bool
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    eventtypes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "actors": list(self.actors),
            "roles": list(self.roles),
            "rolebroadcast": self.rolebroadcast,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "sourcematch": {"eventtypes": list(self.eventtypes)},
        }


@dataclass(frozen=True, slots=True)
class Edge:
    """A link from an output port of one node to an input port of another."""

    source: str
    source_port: str
    target: str
    target_port: str

    def __str__(self) -> str:
        return f"{self.source}.{self.source_port}->{self.target}.{self.target_port}"

    @property
    def label(self) -> str:
        """The short form used in messages: ``default`` ports are left out."""
        source = self.source
        if self.source_port != DEFAULT_PORT:
            source += f".{self.source_port}"
        target = self.target
        if self.target_port != DEFAULT_PORT:
            target += f".{self.target_port}"
        return f"{source}->{target}"


@dataclass(frozen=True, slots=True)
class ValidationMessage:
    level: MessageLevel
    text: str
    node_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"level": self.level, "text": self.text, "node_id": self.node_id}


@dataclass(frozen=True)
class Graph:
    nodes: dict[str, Node]  # by id, in declaration order
    edges: tuple[Edge, ...]

    def emitters(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.type == "emitter"]

    # Edges by node, built once: the validator and the director ask for every node's
    # edges, and scanning all edges each time is quadratic in the graph size.
    @cached_property
    def _edges_out(self) -> dict[str, list[Edge]]:
        index: dict[str, list[Edge]] = {}
        for edge in self.edges:
            index.setdefault(edge.source, []).append(edge)
        return index

    @cached_property
    def _edges_in(self) -> dict[str, list[Edge]]:
        index: dict[str, list[Edge]] = {}
        for edge in self.edges:
            index.setdefault(edge.target, []).append(edge)
        return index

    def outgoing(self, node_id: str, port: str | None = None) -> list[Edge]:
        """Edges leaving ``node_id`` (only from ``port`` if given), in declaration order."""
        return [
            edge
            for edge in self._edges_out.get(node_id, ())
            if port is None or edge.source_port == port
        ]

    def incoming(self, node_id: str) -> list[Edge]:
        """Edges entering ``node_id``, in declaration order."""
        return list(self._edges_in.get(node_id, ()))

    def connected_inputs(self, node_id: str) -> set[str]:
        """The input ports of ``node_id`` that have at least one incoming edge."""
        return {edge.target_port for edge in self.incoming(node_id)}

    def matches(self, node_id: str, event_types: Iterable[str]) -> bool:
        """Whether the emitter node's sourcematch accepts an envelope with these event types.

        Every event type of the envelope must be listed in the node's
        ``sourcematch.eventtypes``. An envelope without event types matches
        nothing, and only emitter nodes match at all.
        """
        node = self.nodes.get(node_id)
        if node is None or node.type != "emitter":
            return False
        wanted = set(event_types)
        return bool(wanted) and wanted <= set(node.eventtypes)

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form; ``parse_graph(graph.to_dict())`` gives back an equal graph."""
        return {
            "nodes": [node.to_dict() for node in self.nodes.values()],
            "edges": [str(edge) for edge in self.edges],
        }


class ActorResolver(Protocol):
    """Looks actors and roles up, for ``validate_graph``."""

    def actor_kind(self, ref: str) -> str | None:
        """The kind (emitter, worker, consumer) of the actor with this name or id, or None."""
        ...

    def role_kinds(self, role: str) -> set[str]:
        """The kinds of the actors that have this role (empty if none)."""
        ...


# --------------------------------------------------------------------------- parsing


@dataclass
class _ParseNotes:
    """What parsing could not read, so that validation does not pile false problems on it."""

    nodes_lossy: bool = False  # the node list or a node could not be read
    edges_lossy: bool = False  # the edge list or an edge could not be read
    unsure_ids: set[str] = field(default_factory=set)  # ids of dropped or duplicated nodes
    broken: set[tuple[str, str]] = field(default_factory=set)  # (node id, field) unreadable

    @property
    def lossy(self) -> bool:
        return self.nodes_lossy or self.edges_lossy

    def is_broken(self, node_id: str, name: str) -> bool:
        return (node_id, name) in self.broken


# Values that are not names are shown abridged: a YAML document can nest aliases
# ("billion laughs") so that a full repr would be exponentially long.
_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxstring = _SHORT.maxother = 80


def _short(value: object) -> str:
    return _SHORT.repr(value)


def _q(value: object) -> str:
    """Quote a name for a message."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return _short(value)


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _plural(items: Iterable[str]) -> str:
    return ", ".join(_q(item) for item in items)


class _Parser:
    def __init__(self) -> None:
        self.messages: list[ValidationMessage] = []
        self.notes = _ParseNotes()

    def error(self, text: str, node_id: str | None = None) -> None:
        self.messages.append(ValidationMessage("error", text, node_id))

    def parse(self, source: object) -> Graph | None:
        data: object = source
        if isinstance(source, str):
            try:
                data = yaml.safe_load(source)
            except yaml.MarkedYAMLError as exc:
                where = ""
                if exc.problem_mark is not None:
                    mark = exc.problem_mark
                    where = f" at line {mark.line + 1}, column {mark.column + 1}"
                problem = exc.problem or exc.context or "syntax error"
                self.error(f"invalid YAML{where}: {problem}")
                return None
            except yaml.YAMLError as exc:
                self.error(f"invalid YAML: {exc}")
                return None
            except RecursionError:
                # PyYAML recurses once per nesting level of the document.
                self.error("invalid YAML: the document is nested too deeply")
                return None
        if data is None:
            self.error('the graph is empty: expected a mapping with "nodes" and "edges"')
            return None
        if not isinstance(data, Mapping):
            self.error(
                f'the graph must be a mapping with "nodes" and "edges", not {_kind_of(data)}'
            )
            return None

        for key in data:
            if key not in _TOP_KEYS:
                self.error(f'unknown top-level key {_q(key)} (expected "nodes" and "edges")')

        nodes = self.parse_nodes(data.get("nodes"))
        edges = self.parse_edges(data.get("edges"))
        return Graph(nodes=nodes, edges=edges)

    def parse_nodes(self, raw: object) -> dict[str, Node]:
        nodes: dict[str, Node] = {}
        if raw is None:
            return nodes
        if not isinstance(raw, list):
            self.error(f'"nodes" must be a list of nodes, not {_kind_of(raw)}')
            self.notes.nodes_lossy = True
            return nodes
        positions: dict[str, int] = {}
        for position, item in enumerate(raw, start=1):
            node = self.parse_node(position, item)
            if node is None:
                self.notes.nodes_lossy = True
                continue
            if node.id in nodes:
                self.error(
                    f"duplicate node id {_q(node.id)} (nodes #{positions[node.id]} and "
                    f"#{position}); node ids must be unique",
                    node.id,
                )
                self.notes.nodes_lossy = True
                self.notes.unsure_ids.add(node.id)
                continue
            positions[node.id] = position
            nodes[node.id] = node
        return nodes

    def parse_node(self, position: int, raw: object) -> Node | None:
        if not isinstance(raw, Mapping):
            self.error(f"node #{position} must be a mapping, not {_kind_of(raw)}")
            return None
        node_id = raw.get("id")
        if node_id is None:
            self.error(f'node #{position} has no "id"')
            return None
        if not isinstance(node_id, str):
            self.error(f'node #{position}: "id" must be a string, not {_kind_of(node_id)}')
            return None
        name = f"node {_q(node_id)}"

        for key in raw:
            if key not in _NODE_KEYS:
                self.error(
                    f"{name}: unknown key {_q(key)} (expected one of {_plural(_NODE_KEYS)})",
                    node_id,
                )

        raw_type = raw.get("type")
        node_type: NodeType | None = None
        expected_types = "expected emitter, worker or consumer"
        if raw_type is None:
            self.error(f'{name} has no "type" ({expected_types})', node_id)
        elif raw_type not in NODE_TYPES:
            self.error(f"{name}: unknown type {_q(raw_type)} ({expected_types})", node_id)
        else:
            node_type = cast(NodeType, raw_type)

        actors = self.string_list(raw, "actors", name, node_id)
        roles = self.string_list(raw, "roles", name, node_id)
        inputs = self.string_list(raw, "inputs", name, node_id)
        outputs = self.string_list(raw, "outputs", name, node_id)

        rolebroadcast = False
        raw_broadcast = raw.get("rolebroadcast")
        if isinstance(raw_broadcast, bool):
            rolebroadcast = raw_broadcast
        elif raw_broadcast is not None:
            self.error(
                f'{name}: "rolebroadcast" must be true or false, not {_kind_of(raw_broadcast)}',
                node_id,
            )
            self.notes.broken.add((node_id, "rolebroadcast"))

        eventtypes: tuple[str, ...] = ()
        sourcematch = raw.get("sourcematch")
        if isinstance(sourcematch, Mapping):
            for key in sourcematch:
                if key not in _SOURCEMATCH_KEYS:
                    self.error(
                        f'{name}: unknown key {_q(key)} in "sourcematch" (expected "eventtypes")',
                        node_id,
                    )
            found = self.string_list(sourcematch, "eventtypes", name, node_id, "sourcematch.")
            eventtypes = found or ()
        elif sourcematch is not None:
            self.error(
                f'{name}: "sourcematch" must be a mapping like {{eventtypes: [...]}}, '
                f"not {_kind_of(sourcematch)}",
                node_id,
            )
            self.notes.broken.add((node_id, "sourcematch.eventtypes"))

        if node_type is None:
            self.notes.unsure_ids.add(node_id)
            return None
        return Node(
            id=node_id,
            type=node_type,
            actors=actors or (),
            roles=roles or (),
            rolebroadcast=rolebroadcast,
            inputs=inputs if inputs is not None else _default_inputs(node_type),
            outputs=outputs if outputs is not None else _default_outputs(node_type),
            eventtypes=eventtypes,
        )

    def string_list(
        self,
        raw: Mapping[Any, Any],
        key: str,
        name: str,
        node_id: str,
        prefix: str = "",
    ) -> tuple[str, ...] | None:
        """A list of strings under ``key``; None when absent or unreadable."""
        value = raw.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            self.error(
                f'{name}: "{prefix}{key}" must be a list of strings, not {_kind_of(value)}',
                node_id,
            )
            self.notes.broken.add((node_id, prefix + key))
            return None
        items: list[str] = []
        for index, item in enumerate(value, start=1):
            if isinstance(item, str):
                items.append(item)
            else:
                self.error(
                    f'{name}: "{prefix}{key}" item #{index} must be a string, '
                    f"not {_kind_of(item)} ({_short(item)})",
                    node_id,
                )
                self.notes.broken.add((node_id, prefix + key))
        return tuple(items)

    def parse_edges(self, raw: object) -> tuple[Edge, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            self.error(f'"edges" must be a list of strings like {_EDGE_HINT}, not {_kind_of(raw)}')
            self.notes.edges_lossy = True
            return ()
        edges: list[Edge] = []
        for position, item in enumerate(raw, start=1):
            if not isinstance(item, str):
                self.error(
                    f"edge #{position} must be a string like {_EDGE_HINT}, not {_kind_of(item)}"
                )
                self.notes.edges_lossy = True
                continue
            edge = _parse_edge(item)
            if edge is None:
                self.error(f"edge #{position} {_q(item)} is malformed: expected {_EDGE_HINT}")
                self.notes.edges_lossy = True
                continue
            edges.append(edge)
        return tuple(edges)


def _default_inputs(node_type: NodeType) -> tuple[str, ...]:
    return () if node_type == "emitter" else (DEFAULT_PORT,)


def _default_outputs(node_type: NodeType) -> tuple[str, ...]:
    return () if node_type == "consumer" else (DEFAULT_PORT,)


def _parse_endpoint(text: str) -> tuple[str, str] | None:
    parts = [part.strip() for part in text.strip().split(".")]
    if len(parts) == 1:
        parts.append(DEFAULT_PORT)
    if len(parts) != 2 or not all(parts) or any(any(c.isspace() for c in p) for p in parts):
        return None
    return parts[0], parts[1]


def _parse_edge(text: str) -> Edge | None:
    sides = text.split("->")
    if len(sides) != 2:
        return None
    source = _parse_endpoint(sides[0])
    target = _parse_endpoint(sides[1])
    if source is None or target is None:
        return None
    return Edge(source[0], source[1], target[0], target[1])


# --------------------------------------------------------------------------- validation


class _Validator:
    def __init__(self, graph: Graph, resolver: ActorResolver | None, notes: _ParseNotes) -> None:
        self.graph = graph
        self.resolver = resolver
        self.notes = notes
        self.messages: list[ValidationMessage] = []
        # Edges between known nodes, whatever their ports: a wrong port is reported
        # on the edge itself and should not also make its target look unreachable.
        self.links = [e for e in graph.edges if e.source in graph.nodes and e.target in graph.nodes]
        self.links_in: dict[str, list[Edge]] = {}
        self.links_out: dict[str, list[Edge]] = {}
        for edge in self.links:
            self.links_in.setdefault(edge.target, []).append(edge)
            self.links_out.setdefault(edge.source, []).append(edge)

    def error(self, text: str, node_id: str | None = None) -> None:
        self.messages.append(ValidationMessage("error", text, node_id))

    def warning(self, text: str, node_id: str | None = None) -> None:
        self.messages.append(ValidationMessage("warning", text, node_id))

    def run(self) -> list[ValidationMessage]:
        nodes = list(self.graph.nodes.values())
        has_emitter = any(n.type == "emitter" for n in nodes)
        has_consumer = any(n.type == "consumer" for n in nodes)
        if not self.notes.nodes_lossy:
            if not nodes:
                self.error("the graph has no nodes")
            else:
                if not has_emitter:
                    self.error("the graph has no emitter node")
                if not has_consumer:
                    self.error("the graph has no consumer node")

        check_flow = not self.notes.lossy
        reached = self.reach(forward=True) if check_flow and has_emitter else None
        reaching = self.reach(forward=False) if check_flow and has_consumer else None

        for key, node in self.graph.nodes.items():
            self.check_node(key, node)
            if self.resolver is not None:
                self.check_references(node, self.resolver)
            if check_flow:
                self.check_flow(node, reached, reaching)
        self.check_edges()
        self.check_cycles()
        return self.messages

    # -- nodes

    def check_node(self, key: str, node: Node) -> None:
        name = f"node {_q(node.id)}"
        nid = node.id
        if key != node.id:
            self.error(f"{name} is registered under another id, {_q(key)}", nid)
        if not NODE_ID_PATTERN.match(node.id):
            self.error(
                f"{name}: invalid node id: use 1 to 128 letters, digits, "
                '"_", "-" or ":", not starting with "-" or ":" (no ".", which '
                "separates node and port in edges)",
                nid,
            )

        for kind, ports in (("input", node.inputs), ("output", node.outputs)):
            seen: set[str] = set()
            for port in ports:
                if not PORT_PATTERN.match(port):
                    self.error(
                        f"{name}: invalid {kind} name {_q(port)}: use 1 to 64 letters, "
                        'digits, "_" or "-"',
                        nid,
                    )
                if port in seen:
                    self.error(f"{name}: duplicate {kind} {_q(port)}", nid)
                seen.add(port)

        refs_unsure = self.notes.is_broken(nid, "actors") or self.notes.is_broken(nid, "roles")
        if not refs_unsure:
            if not node.actors and not node.roles:
                self.error(f"{name} has neither actors nor roles; give one of them", nid)
            elif node.actors and node.roles:
                self.error(f"{name} has both actors and roles; give only one of them", nid)
        for what, values in (("actor", node.actors), ("role", node.roles)):
            seen = set()
            for value in values:
                if not value.strip():
                    self.error(f"{name}: empty {what} name", nid)
                elif value in seen:
                    self.warning(f"{name}: {what} {_q(value)} is listed more than once", nid)
                seen.add(value)
        if node.rolebroadcast and not node.roles:
            self.error(f"{name}: rolebroadcast is set but the node has no roles", nid)

        if node.type == "emitter":
            if node.inputs:
                self.error(
                    f"{name}: an emitter cannot have inputs (found {_plural(node.inputs)})", nid
                )
            if not node.eventtypes and not self.notes.is_broken(nid, "sourcematch.eventtypes"):
                self.error(
                    f"{name}: an emitter needs a sourcematch with a non-empty eventtypes list",
                    nid,
                )
            seen = set()
            for eventtype in node.eventtypes:
                if not eventtype.strip():
                    self.error(f"{name}: empty event type in sourcematch.eventtypes", nid)
                elif eventtype in seen:
                    self.warning(
                        f"{name}: event type {_q(eventtype)} is listed more than once", nid
                    )
                seen.add(eventtype)
        elif node.eventtypes:
            self.error(
                f"{name}: only emitters have a sourcematch, but this node is a {node.type}", nid
            )
        if node.type == "consumer" and node.outputs:
            self.error(
                f"{name}: a consumer cannot have outputs (found {_plural(node.outputs)})", nid
            )
        if node.type == "worker":
            if not node.inputs and not self.notes.is_broken(nid, "inputs"):
                self.error(f"{name}: a worker needs at least one input", nid)
            if not node.outputs and not self.notes.is_broken(nid, "outputs"):
                self.error(f"{name}: a worker needs at least one output", nid)

    def check_references(self, node: Node, resolver: ActorResolver) -> None:
        name = f"node {_q(node.id)}"
        for ref in dict.fromkeys(node.actors):
            if not ref.strip():
                continue
            kind = resolver.actor_kind(ref)
            if kind is None:
                self.error(f"{name}: unknown actor {_q(ref)}", node.id)
            elif kind != node.type:
                self.error(
                    f"{name}: actor {_q(ref)} is {_article(kind)}, "
                    f"but this node is {_article(node.type)}",
                    node.id,
                )
        for role in dict.fromkeys(node.roles):
            if not role.strip():
                continue
            kinds = resolver.role_kinds(role)
            if not kinds:
                self.error(f"{name}: no actor has the role {_q(role)}", node.id)
            elif node.type not in kinds:
                self.error(
                    f"{name}: no {node.type} actor has the role {_q(role)} "
                    f"(only {', '.join(sorted(kinds))} actors do)",
                    node.id,
                )

    def check_flow(self, node: Node, reached: set[str] | None, reaching: set[str] | None) -> None:
        name = f"node {_q(node.id)}"
        nid = node.id
        incoming = self.links_in.get(nid, [])
        outgoing = self.links_out.get(nid, [])

        unreachable = reached is not None and node.type != "emitter" and nid not in reached
        if unreachable:
            why = " (it has no incoming edge)" if not incoming else ""
            self.error(f"{name} is not reachable from any emitter{why}", nid)
        dead_end = reaching is not None and node.type != "consumer" and nid not in reaching
        if dead_end:
            why = " (it has no outgoing edge)" if not outgoing else ""
            self.error(f"{name}: no path leads from this node to a consumer{why}", nid)

        # A node with no incoming edge at all is already reported as unreachable,
        # and one with no outgoing edge at all as a dead end: no need to list its ports.
        check_inputs = node.type != "emitter" and (incoming or not unreachable)
        if check_inputs and not self.notes.is_broken(nid, "inputs"):
            connected = self.graph.connected_inputs(nid)
            for port in dict.fromkeys(node.inputs):
                if port not in connected:
                    self.error(f"{name}: input {_q(port)} has no incoming edge", nid)
        check_outputs = node.type != "consumer" and (outgoing or not dead_end)
        if check_outputs and not self.notes.is_broken(nid, "outputs"):
            used = {e.source_port for e in self.graph.outgoing(nid)}
            for port in dict.fromkeys(node.outputs):
                if port not in used:
                    self.warning(f"{name}: output {_q(port)} is not connected", nid)

    def reach(self, *, forward: bool) -> set[str]:
        """Nodes reachable from the emitters (forward) or that reach a consumer (backward)."""
        start_type = "emitter" if forward else "consumer"
        adjacency: dict[str, list[str]] = {}
        for edge in self.links:
            a, b = (edge.source, edge.target) if forward else (edge.target, edge.source)
            adjacency.setdefault(a, []).append(b)
        seen = {nid for nid, node in self.graph.nodes.items() if node.type == start_type}
        stack = list(seen)
        while stack:
            for nxt in adjacency.get(stack.pop(), []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen

    # -- edges

    def check_edges(self) -> None:
        nodes = self.graph.nodes
        unsure = self.notes.unsure_ids
        seen: set[Edge] = set()
        reported: set[Edge] = set()
        for edge in self.graph.edges:
            name = f"edge {_q(edge.label)}"
            source = nodes.get(edge.source)
            target = nodes.get(edge.target)
            if source is None and edge.source not in unsure:
                hint = self.dotted_hint(edge.source, edge.source_port)
                self.error(f"{name}: unknown source node {_q(edge.source)}{hint}")
            if target is None and edge.target not in unsure:
                hint = self.dotted_hint(edge.target, edge.target_port)
                self.error(f"{name}: unknown target node {_q(edge.target)}{hint}")
            if source is not None and edge.source not in unsure:
                if source.type == "consumer":
                    self.error(
                        f"{name}: node {_q(source.id)} is a consumer, and an edge cannot "
                        "start from a consumer",
                        source.id,
                    )
                elif edge.source_port not in source.outputs and not self.notes.is_broken(
                    source.id, "outputs"
                ):
                    self.error(
                        f"{name}: node {_q(source.id)} has no output {_q(edge.source_port)}",
                        source.id,
                    )
            if target is not None and edge.target not in unsure:
                if target.type == "emitter":
                    self.error(
                        f"{name}: node {_q(target.id)} is an emitter, and an edge cannot "
                        "lead into an emitter",
                        target.id,
                    )
                elif edge.target_port not in target.inputs and not self.notes.is_broken(
                    target.id, "inputs"
                ):
                    self.error(
                        f"{name}: node {_q(target.id)} has no input {_q(edge.target_port)}",
                        target.id,
                    )
            if edge in seen and edge not in reported:
                self.error(f"{name} is declared more than once", edge.source)
                reported.add(edge)
            seen.add(edge)

    def dotted_hint(self, node_id: str, port: str) -> str:
        dotted = f"{node_id}.{port}"
        if dotted in self.graph.nodes or dotted in self.notes.unsure_ids:
            return f' (node {_q(dotted)} cannot be named in an edge: "." separates the port)'
        return ""

    # -- cycles

    def check_cycles(self) -> None:
        order = {nid: index for index, nid in enumerate(self.graph.nodes)}
        # dict keys: unique successors in declaration order, with O(1) membership.
        successors: dict[str, dict[str, None]] = {nid: {} for nid in self.graph.nodes}
        for edge in self.links:
            successors[edge.source][edge.target] = None
        adjacency = {nid: list(targets) for nid, targets in successors.items()}
        for component in _strongly_connected(adjacency):
            first = min(component, key=order.__getitem__)
            if len(component) == 1 and first not in adjacency[first]:
                continue
            cycle = _cycle_through(first, component, adjacency)
            path = " -> ".join(_q(nid) for nid in cycle)
            self.error(f"the graph has a cycle: {path}", first)


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "aeiou" else f"a {kind}"


def _strongly_connected(adjacency: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components come in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in adjacency:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            nid, child = work.pop()
            if child == 0:
                index[nid] = low[nid] = counter
                counter += 1
                stack.append(nid)
                on_stack.add(nid)
            successors = adjacency[nid]
            if child < len(successors):
                work.append((nid, child + 1))
                nxt = successors[child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[nid] = min(low[nid], index[nxt])
                continue
            if low[nid] == index[nid]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == nid:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[nid])
    order = {nid: position for position, nid in enumerate(adjacency)}
    components.sort(key=lambda c: min(order[n] for n in c))
    return components


def _cycle_through(start: str, component: list[str], adjacency: dict[str, list[str]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself, inside one strongly connected component."""
    members = set(component)
    parents: dict[str, str] = {}
    queue = [start]
    for current in queue:
        for nxt in adjacency[current]:
            if nxt not in members:
                continue
            if nxt == start:
                path = [current]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if nxt not in parents:
                parents[nxt] = current
                queue.append(nxt)
    return [start, start]  # unreachable for a real component


# --------------------------------------------------------------------------- public entry points


def parse_graph(source: Mapping[str, Any] | str) -> tuple[Graph | None, list[ValidationMessage]]:
    """Read a graph from a mapping or a YAML/JSON string.

    Never raises on bad input. Returns the graph built from everything that
    could be read (None only when the document itself cannot be read: a YAML
    syntax error, or a top level that is not a mapping) and the parse errors.
    """
    graph, messages, _ = _parse(source)
    return graph, messages


def validate_graph(graph: Graph, resolver: ActorResolver | None = None) -> list[ValidationMessage]:
    """Every problem of a parsed graph; with a resolver, also check actor and role references."""
    return _Validator(graph, resolver, _ParseNotes()).run()


def check_graph(
    source: Mapping[str, Any] | str, resolver: ActorResolver | None = None
) -> tuple[Graph | None, list[ValidationMessage]]:
    """Parse and validate. The graph is None only when the document cannot be read at all."""
    graph, messages, notes = _parse(source)
    if graph is None:
        return None, messages
    return graph, messages + _Validator(graph, resolver, notes).run()


def _parse(source: object) -> tuple[Graph | None, list[ValidationMessage], _ParseNotes]:
    parser = _Parser()
    graph = parser.parse(source)
    return graph, parser.messages, parser.notes
