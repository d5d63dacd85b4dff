"""What the pages draw, computed from plain data: a pipeline graph as Cytoscape elements,
a process's timeline as bars, an envelope item as text, JSON or hex."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from app.pipelines.graph import DEFAULT_PORT, Graph

HEX_PREVIEW = 64
TEXT_PREVIEW = 4096


def graph_elements(
    graph: Graph, *, states: Mapping[str, str] | None = None, show_actors: bool = True
) -> list[dict[str, Any]]:
    """Nodes (by type, with their actors and roles; coloured by state on a process page)
    and edges labelled with their ports when not `default`."""
    elements: list[dict[str, Any]] = []
    for node in graph.nodes.values():
        lines = [node.id, f"«{node.type}»"]
        if show_actors:
            if node.actors:
                lines.append(", ".join(node.actors))
            if node.roles:
                roles = "roles: " + ", ".join(node.roles)
                lines.append(roles + (" (broadcast)" if node.rolebroadcast else ""))
        if node.eventtypes:
            lines.append("on " + ", ".join(node.eventtypes))
        data: dict[str, Any] = {"id": node.id, "label": "\n".join(lines), "type": node.type}
        if states is not None:
            data["state"] = states.get(node.id, "none")
        elements.append({"data": data, "classes": node.type})
    for position, edge in enumerate(graph.edges):
        label = ""
        if edge.source_port != DEFAULT_PORT or edge.target_port != DEFAULT_PORT:
            label = f"{edge.source_port} → {edge.target_port}"
        elements.append(
            {
                "data": {
                    "id": f"e{position}",
                    "source": edge.source,
                    "target": edge.target,
                    "label": label,
                }
            }
        )
    return elements


@dataclass(frozen=True, slots=True)
class ItemView:
    position: int
    kind: str  # "text", "json" or "binary"
    text: str
    size: int
    truncated: bool


def item_view(position: int, data: bytes, encoding: str) -> ItemView:
    size = len(data)
    if encoding != "base64":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None:
            kind = "text"
            if encoding == "json":
                try:
                    text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
                    kind = "json"
                except ValueError:
                    pass
            return ItemView(position, kind, text[:TEXT_PREVIEW], size, len(text) > TEXT_PREVIEW)
    head = data[:HEX_PREVIEW]
    return ItemView(position, "binary", " ".join(f"{b:02x}" for b in head), size, size > len(head))


@dataclass(frozen=True, slots=True)
class Bar:
    """One row of the timeline: a node, a request, or a webhook attempt under its request."""

    kind: str  # node, request, attempt
    label: str
    detail: str
    state: str
    left: float  # percent of the process's span
    width: float
    start: datetime
    end: datetime | None


def _bar(
    kind: str,
    label: str,
    detail: str,
    state: str,
    start: datetime,
    end: datetime | None,
    span: tuple[datetime, datetime],
) -> Bar:
    t0, t1 = span
    total = max((t1 - t0).total_seconds(), 0.001)
    left = min(max((start - t0).total_seconds() / total, 0.0), 1.0)
    right = min(max(((end or t1) - t0).total_seconds() / total, left), 1.0)
    return Bar(
        kind,
        label,
        detail,
        state,
        round(left * 100, 2),
        round(max(right - left, 0.004) * 100, 2),
        start,
        end,
    )


def timeline(
    span: tuple[datetime, datetime],
    nodes: Iterable[Any],
    attempts: Iterable[Any],
    lease_seconds: float,
) -> list[Bar]:
    """Bars from the process's start to its end (or now): each node from its start to its
    end, each of its requests from creation to end with its attempt count and actor, when
    its last attempt was leased and how long its actor took to answer, each webhook attempt
    with its code and latency."""
    by_request: dict[Any, list[Any]] = {}
    for attempt in attempts:
        by_request.setdefault(attempt.request_id, []).append(attempt)
    bars: list[Bar] = []
    for node in nodes:
        start = node.started_at
        if start is not None:
            bars.append(
                _bar("node", node.node_id, node.type or "", node.status, start, node.ended_at, span)
            )
        for request in node.requests:
            detail = (
                f"{request.actor_name or '?'} · {request.channel} · attempt "
                f"{request.attempts}/{request.max_attempts}"
            )
            if request.leased_at is not None:
                detail += f" · leased at {request.leased_at.astimezone(UTC):%H:%M:%S}"
                if request.ended_at is not None:
                    took = (request.ended_at - request.leased_at).total_seconds()
                    detail += f", answered in {took:.1f} s"
            elif request.lease_expires_at is not None and request.status in ("leased", "running"):
                # Leased before requests recorded when (migration 0009): from its lease's end.
                leased = request.lease_expires_at.timestamp() - lease_seconds
                detail += f" · leased at {datetime.fromtimestamp(leased, UTC).strftime('%H:%M:%S')}"
            if request.last_error:
                detail += f" · {request.last_error[:120]}"
            bars.append(
                _bar(
                    "request",
                    f"request {str(request.id)[:8]}",
                    detail,
                    request.status,
                    request.created_at,
                    request.ended_at,
                    span,
                )
            )
            for attempt in by_request.get(request.id, []):
                end = None
                if attempt.duration_ms is not None:
                    end = attempt.started_at + timedelta(milliseconds=attempt.duration_ms)
                code = attempt.status_code if attempt.status_code is not None else "—"
                latency = f"{attempt.duration_ms:.0f} ms" if attempt.duration_ms else ""
                bars.append(
                    _bar(
                        "attempt",
                        f"attempt {attempt.attempt}",
                        f"HTTP {code} {latency} {attempt.error or ''}".strip(),
                        attempt.outcome,
                        attempt.started_at,
                        end or attempt.started_at,
                        span,
                    )
                )
    return bars
