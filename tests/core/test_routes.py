"""The app matches requests against its routes in MATCH_ORDER (hot routers first, app/main.py),
not in the documented order: that is safe only while no two routes of one method can match
the same path, which this checks, and while the document keeps its reading order."""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.main import MATCH_ORDER, ROUTERS, create_app
from app.openapi import generate


def _routes(app: Any) -> list[Any]:
    """Every route of the app, included routers' routes in their place."""
    routes: list[Any] = []
    for route in app.routes:
        router = getattr(route, "original_router", None)
        routes.extend(router.routes if router is not None else [route])
    return routes


def _may_overlap(a: str, b: str) -> bool:
    """Whether two path templates can match one path: segment by segment, two literals
    must be equal (a parameter matches any one segment)."""
    left, right = a.strip("/").split("/"), b.strip("/").split("/")
    if len(left) != len(right):
        return False
    pairs = zip(left, right, strict=True)
    return all(x == y or x.startswith("{") or y.startswith("{") for x, y in pairs)


def test_no_two_routes_of_one_method_match_the_same_path() -> None:
    app = create_app(Settings(database_url="postgresql://unused/unused", nats_url=None))
    routes = [r for r in _routes(app) if getattr(r, "methods", None)]
    assert all(":path}" not in r.path for r in routes), "a {x:path} parameter spans segments"
    clashes = [
        (sorted(a.methods & b.methods), a.path, b.path)
        for i, a in enumerate(routes)
        for b in routes[i + 1 :]
        if a.methods & b.methods and _may_overlap(a.path, b.path)
    ]
    assert clashes == []


def test_the_overlap_check_sees_a_clash() -> None:
    assert _may_overlap("/api/v1/processes/{process_id}", "/api/v1/processes/pause")
    assert not _may_overlap("/api/v1/actors/{actor}/output", "/api/v1/actors/{actor}/requests")
    assert not _may_overlap("/api/v1/actors/{actor}", "/api/v1/actors/{actor}/requests")


def test_hot_routers_are_matched_first_and_documented_in_reading_order() -> None:
    assert sorted(map(id, MATCH_ORDER)) == sorted(map(id, ROUTERS))
    app = create_app(Settings(database_url="postgresql://unused/unused", nats_url=None))
    matched = [getattr(r, "original_router", None) for r in app.routes]
    assert matched.index(MATCH_ORDER[0]) < matched.index(ROUTERS[0])
    documented = [path for path in generate()["paths"] if path.startswith("/api/v1")]
    paths = [[str(getattr(r, "path", "")) for r in router.routes] for router in ROUTERS]
    order = [
        min(documented.index(path) for path in mine if path in documented)
        for mine in paths
        if any(path in documented for path in mine)
    ]
    assert order == sorted(order), "the document lists the routers in ROUTERS order"
