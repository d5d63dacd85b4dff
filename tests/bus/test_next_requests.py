"""`POST /requests/{id}/state?next=N`: a consumer's answer and its next requests in one round
trip. The state is taken exactly as without `next`; then up to N due requests of the same
actor are leased, as `GET .../requests?max=N` leases them."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from tests.bus.conftest import Account, Bus, chain
from tests.conftest import assert_problem, row_counts


def envelope(n: int) -> dict[str, Any]:
    return {"events": [{"type": "order.created", "encoding": "json", "items": [{"n": n}]}]}


async def _topology(bus: Bus, emitted: int) -> tuple[Account, dict[str, Any], dict[str, Any]]:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    for n in range(emitted):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=envelope(n))
        assert r.status_code == 202, r.text
    return acct, em, co


def _item(request: dict[str, Any]) -> Any:
    return request["inputs"][0]["envelope"]["events"][0]["items"][0]["n"]


async def test_a_state_with_next_leases_the_actors_next_requests(
    bus: Bus, db: asyncpg.Connection
) -> None:
    acct, _, co = await _topology(bus, 4)
    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    assert _item(first) == 0

    r = await acct.http.post(
        f"/api/v1/requests/{first['request_id']}/state",
        params={"next": 2},
        json={"status": "success"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success"
    assert body["request_id"] == first["request_id"]
    following = body["next"]
    assert [_item(x) for x in following] == [1, 2]  # oldest first, envelopes inline
    ids = [uuid.UUID(x["request_id"]) for x in following]
    rows = await db.fetch(
        "SELECT status, attempts, leased_by, lease_expires_at FROM requests "
        "WHERE id = ANY($1::uuid[])",
        ids,
    )
    assert [(x["status"], x["attempts"]) for x in rows] == [("leased", 1)] * 2
    assert {x["leased_by"] for x in rows} == {f"http:{acct.name}"}
    assert all(x["attempt"] == 1 and x["lease_expires_at"] for x in following)
    process = await db.fetchval(
        "SELECT p.status FROM processes p JOIN requests r ON r.process_id = p.id WHERE r.id = $1",
        uuid.UUID(first["request_id"]),
    )
    assert process == "done"

    # An error answer takes its next one too; the last request is then leased, none is left.
    r = await acct.http.post(
        f"/api/v1/requests/{following[0]['request_id']}/state",
        params={"next": 5},
        json={"status": "error", "messages": [{"level": "error", "text": "no"}]},
    )
    assert r.status_code == 200, r.text
    assert [_item(x) for x in r.json()["next"]] == [3]
    r = await acct.http.post(
        f"/api/v1/requests/{following[1]['request_id']}/state",
        params={"next": 5},
        json={"status": "success"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["next"] == []  # the last one was leased by the answer before
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests")
    assert r.status_code == 204, r.text


async def test_next_leases_only_the_answered_actors_requests_and_not_when_disabled(
    bus: Bus, admin: Any, db: asyncpg.Connection
) -> None:
    acct, em, co = await _topology(bus, 2)
    other = await bus.actor(acct, "consumer")
    await bus.pipeline(
        chain(em["name"], ("consumer", other["name"]), eventtypes=("order.shipped",))
    )
    shipped = {"events": [{"type": "order.shipped", "encoding": "json", "items": [1]}]}
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=shipped)
    assert r.status_code == 202, r.text

    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    r = await acct.http.post(
        f"/api/v1/requests/{first['request_id']}/state",
        params={"next": 10},
        json={"status": "running"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    assert [_item(x) for x in r.json()["next"]] == [1]  # not the other actor's request
    r = await acct.http.get(f"/api/v1/actors/{other['name']}/requests")
    assert r.status_code == 200, r.text  # still due for its own actor

    # A disabled actor's state is taken; it leases nothing more: its request due stays due.
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=envelope(9))
    assert r.status_code == 202, r.text
    waiting = uuid.UUID(r.json()["process_id"])
    r = await admin.patch(f"/api/v1/actors/{co['id']}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    r = await acct.http.post(
        f"/api/v1/requests/{first['request_id']}/state",
        params={"next": 10},
        json={"status": "success"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "success"
    assert r.json()["next"] == []
    status = await db.fetchval("SELECT status FROM requests WHERE process_id = $1", waiting)
    assert status == "pending"


async def test_a_state_without_next_has_none(bus: Bus) -> None:
    acct, _, co = await _topology(bus, 2)
    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    r = await acct.http.post(
        f"/api/v1/requests/{first['request_id']}/state", json={"status": "success"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["next"] is None
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests")
    assert r.status_code == 200  # the second one is still due: nothing was leased
    # A batch's states have no `next` at all.
    states = {"states": [{"request_id": r.json()["request_id"], "status": "success"}]}
    r = await acct.http.post("/api/v1/requests/states", json=states)
    assert r.status_code == 200, r.text
    [result] = r.json()["results"]
    assert result["status"] == 200
    assert "next" not in result["state"]


async def test_next_through_fastapis_own_handler(bus: Bus) -> None:
    """A request id in another form than the canonical one goes to FastAPI's handler (not
    the direct one, `app.core.direct`): `next` is taken the same."""
    acct, _, co = await _topology(bus, 2)
    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    r = await acct.http.post(
        f"/api/v1/requests/{uuid.UUID(first['request_id']).hex.upper()}/state",
        params={"next": 1},
        json={"status": "success"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "success"
    assert [_item(x) for x in r.json()["next"]] == [1]


@pytest.mark.parametrize("value", ["0", "1001", "x", "1.5", "-1"])
async def test_a_bad_next_is_refused_and_changes_nothing(
    bus: Bus, db: asyncpg.Connection, value: str
) -> None:
    acct, _, co = await _topology(bus, 2)
    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    before = await row_counts(db)
    r = await acct.http.post(
        f"/api/v1/requests/{first['request_id']}/state",
        params={"next": value},
        json={"status": "success"},
    )
    assert_problem(r, 422)
    assert await row_counts(db) == before
    status = await db.fetchval(
        "SELECT status FROM requests WHERE id = $1", uuid.UUID(first["request_id"])
    )
    assert status == "leased"


async def test_next_not_leased_when_the_database_drops_it_the_state_stays(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The lease of `next` loses its connection (its backend terminated while it waits for a
    lock of the items it hands out): the state, recorded before, is answered as such,
    with no next request; the request that was due stays due for the next poll."""
    acct, _, co = await _topology(bus, 2)
    first = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    await db.execute("BEGIN")
    try:
        await db.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        answering = asyncio.create_task(
            acct.http.post(
                f"/api/v1/requests/{first['request_id']}/state",
                params={"next": 1},
                json={"status": "success"},
            )
        )
        # Every reader of items that waits meanwhile is cut off (a duty's too: it
        # reconnects), until the answer comes: it cannot come before its lease is cut off,
        # the lock being held until the end. (Being prepared, the lease's statement waits
        # before pg_stat_activity shows its text: the waiters are found in pg_locks.)
        cut = 0
        for _ in range(600):
            if answering.done():
                break
            cut += await db.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_locks "
                "WHERE NOT granted AND relation = 'items'::regclass"
            )
            await asyncio.sleep(0.05)
        assert cut, "the lease of next never waited for the lock"
        r = await asyncio.wait_for(answering, 10)
    finally:
        await db.execute("ROLLBACK")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "success"
    assert r.json()["next"] == []
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests")
    assert r.status_code == 200, r.text
    assert _item(r.json()) == 1
