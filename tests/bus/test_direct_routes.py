"""The hot routes (emission, batch emission, lease, report, batch report) answer plain,
valid requests by their direct handlers (`app.core.direct`), without FastAPI's dependency
solving; anything else goes to FastAPI's own handler, whose answers (422 problem+json with
its errors) stay what they were."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import routing

from tests.bus.conftest import ENVELOPE, Account, Bus, chain
from tests.conftest import assert_problem


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests whose dependencies FastAPI solved."""
    paths: list[str] = []
    solve = routing.solve_dependencies  # type: ignore[attr-defined]

    async def counted(*, request: Any, **kwargs: Any) -> Any:
        paths.append(request.url.path)
        return await solve(request=request, **kwargs)

    monkeypatch.setattr(routing, "solve_dependencies", counted)
    return paths


@pytest.fixture
async def wired(bus: Bus, solved: list[str]) -> tuple[Account, dict[str, Any], dict[str, Any]]:
    """An emitter and a consumer of one account; the set-up's admin routes not counted."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    solved.clear()
    return acct, em, co


async def test_plain_requests_skip_fastapis_machinery(
    wired: tuple[Account, dict[str, Any], dict[str, Any]], solved: list[str]
) -> None:
    acct, em, co = wired
    http = acct.http

    one = await http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert one.status_code == 202, one.text
    assert one.headers["content-type"] == "application/json"
    assert set(one.json()) == {"envelope_id", "process_id", "status"}
    many = await http.post(f"/api/v1/actors/{em['name']}/outputs", json=[ENVELOPE] * 3)
    assert many.status_code == 200, many.text
    assert [r["status"] for r in many.json()["results"]] == [202] * 3

    leased = await http.get(f"/api/v1/actors/{co['name']}/requests", params={"wait": "0"})
    assert leased.status_code == 200, leased.text
    assert leased.json()["process_id"] == one.json()["process_id"]
    batch = await http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": "2"})
    assert batch.status_code == 200, batch.text
    assert len(batch.json()["requests"]) == 2
    none_left = await http.get(f"/api/v1/actors/{co['name']}/requests?wait=0&max=5")
    assert none_left.status_code == 200, none_left.text
    assert len(none_left.json()["requests"]) == 1

    request_id = leased.json()["request_id"]
    state = await http.post(f"/api/v1/requests/{request_id}/state", json={"status": "success"})
    assert state.status_code == 200, state.text
    assert state.json()["status"] == "success"
    states = await http.post(
        "/api/v1/requests/states",
        json={
            "states": [
                {"request_id": r["request_id"], "status": "success"}
                for r in [*batch.json()["requests"], *none_left.json()["requests"]]
            ]
        },
    )
    assert states.status_code == 200, states.text
    assert [r["status"] for r in states.json()["results"]] == [200] * 3
    assert solved == []


async def test_odd_input_gets_fastapis_answer(
    wired: tuple[Account, dict[str, Any], dict[str, Any]], solved: list[str]
) -> None:
    acct, em, co = wired
    http = acct.http
    requests = f"/api/v1/actors/{co['name']}/requests"

    for query, field in (("wait=soon", "wait"), ("wait=-1", "wait"), ("max=0", "max")):
        r = await http.get(f"{requests}?{query}")
        body = assert_problem(r, 422)
        assert [e["loc"] for e in body["errors"]] == [["query", field]], body
    # A form the direct handler leaves to FastAPI, which takes it: the same answer.
    assert (await http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).is_success
    plus = await http.get(f"{requests}?wait=%2B0")
    assert plus.status_code == 200, plus.text
    request_id = plus.json()["request_id"]
    assert len(solved) == 4

    state = f"/api/v1/requests/{request_id}/state"
    cases: list[tuple[dict[str, Any], list[list[Any]]]] = [
        ({"json": {"status": "finished"}}, [["body", "status"]]),
        ({"json": {"status": "success", "extra": 1}}, [["body", "extra"]]),
        ({"json": ["success"]}, [["body"]]),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            [["body", "1"]],
        ),
    ]
    for kwargs, locs in cases:
        body = assert_problem(await http.post(state, **kwargs), 422)
        assert [e["loc"] for e in body["errors"]] == locs, body
    assert_problem(
        await http.post("/api/v1/requests/states", json={"states": [{"status": "success"}]}), 422
    )
    # The request's id in another form pydantic reads: FastAPI's handler records the answer.
    other_form = await http.post(
        f"/api/v1/requests/{request_id.replace('-', '').upper()}/state", json={"status": "success"}
    )
    assert other_form.status_code == 200, other_form.text
    assert other_form.json() == {**other_form.json(), "request_id": request_id, "status": "success"}
    # All but the JSON that does not parse (FastAPI refuses it before solving anything).
    assert len(solved) == 4 + len(cases) - 1 + 2, " ".join(p.rsplit("/", 1)[-1] for p in solved)
    # Still a key first: a bad key with a bad body is a 401, as FastAPI answers it.
    anonymous = await http.post(
        state, json={"status": "x"}, headers={"authorization": "Bearer nope"}
    )
    assert_problem(anonymous, 401)
    # And on the direct path: a good body with a bad key.
    bad_key = {"authorization": "Bearer nope"}
    assert_problem(await http.post(state, json={"status": "success"}, headers=bad_key), 401)
    assert_problem(await http.get(requests, headers=bad_key), 401)
