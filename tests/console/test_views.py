"""What the console's pages draw, from plain data: graph elements, items, timeline bars."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from app.console.views import graph_elements, item_view, timeline
from app.pipelines.graph import parse_graph


def test_graph_elements_name_types_actors_roles_and_ports() -> None:
    graph, _ = parse_graph(
        {
            "nodes": [
                {
                    "id": "in",
                    "type": "emitter",
                    "actors": ["shop.orders"],
                    "sourcematch": {"eventtypes": ["order.created"]},
                },
                {
                    "id": "enrich",
                    "type": "worker",
                    "roles": ["enricher"],
                    "outputs": ["default", "rejects"],
                },
                {"id": "out", "type": "consumer", "roles": ["archive"], "rolebroadcast": True},
            ],
            "edges": ["in->enrich", "enrich->out", "enrich.rejects->out"],
        }
    )
    assert graph is not None
    elements = graph_elements(graph, states={"in": "done"})
    nodes = {e["data"]["id"]: e["data"] for e in elements if "source" not in e["data"]}
    edges = [e["data"] for e in elements if "source" in e["data"]]
    assert nodes["in"]["type"] == "emitter"
    assert "shop.orders" in nodes["in"]["label"]
    assert "roles: archive (broadcast)" in nodes["out"]["label"]
    assert nodes["in"]["state"] == "done"
    assert nodes["enrich"]["state"] == "none"
    assert [e["label"] for e in edges] == ["", "", "rejects → default"]
    hidden = graph_elements(graph, show_actors=False)
    assert all("shop.orders" not in e["data"].get("label", "") for e in hidden)


def test_items_as_text_json_or_hex() -> None:
    assert item_view(0, b"hello", "text").kind == "text"
    pretty = item_view(1, b'{"a":1}', "json")
    assert pretty.kind == "json"
    assert pretty.text == '{\n  "a": 1\n}'
    binary = item_view(2, bytes(range(100)), "base64")
    assert binary.kind == "binary"
    assert binary.text.startswith("00 01 02")
    assert binary.size == 100
    assert binary.truncated
    assert item_view(3, b"\xff\xfe", "text").kind == "binary"


def test_timeline_bars_span_the_process() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    request = SimpleNamespace(
        id=uuid.uuid4(),
        actor_name="shop.invoicing",
        channel="webhook",
        attempts=2,
        max_attempts=5,
        lease_expires_at=None,
        leased_at=t0 + timedelta(seconds=5),
        status="success",
        last_error=None,
        created_at=t0 + timedelta(seconds=1),
        ended_at=t0 + timedelta(seconds=9),
    )
    node = SimpleNamespace(
        node_id="invoicing",
        type="consumer",
        status="done",
        started_at=t0,
        ended_at=t0 + timedelta(seconds=10),
        requests=[request],
    )
    attempt = SimpleNamespace(
        request_id=request.id,
        attempt=2,
        started_at=t0 + timedelta(seconds=5),
        duration_ms=2000.0,
        status_code=200,
        outcome="success",
        error=None,
    )
    bars = timeline((t0, t0 + timedelta(seconds=10)), [node], [attempt], 60)
    assert [b.kind for b in bars] == ["node", "request", "attempt"]
    assert (bars[0].left, bars[0].width) == (0.0, 100.0)
    assert (bars[1].left, bars[1].width) == (10.0, 80.0)
    assert (bars[2].left, bars[2].width) == (50.0, 20.0)
    assert "attempt 2/5" in bars[1].detail
    assert "leased at 00:00:05, answered in 4.0 s" in bars[1].detail
    assert "HTTP 200 2000 ms" in bars[2].detail
