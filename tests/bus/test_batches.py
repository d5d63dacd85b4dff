"""Batches: many envelopes in one POST, many requests leased at once, many states in one
POST. Each entry is taken or refused on its own; a refused one stores nothing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests.bus.conftest import ENVELOPE, Account, Bus, chain
from tests.conftest import row_counts


def envelope(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "events": [{"type": "order.created", "encoding": "json", "items": [{"n": n}]}],
        **extra,
    }


async def test_batch_emission_json_and_ndjson(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    url = f"/api/v1/actors/{em['name']}/outputs"

    bad_type = {"events": [{"type": "other.type", "items": ["x"]}]}
    r = await acct.http.post(url, json=[envelope(0), bad_type, {"events": []}, envelope(3)])
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert [x["status"] for x in results] == [202, 422, 422, 202]
    assert "no active pipeline takes event types [other.type]" in results[1]["problem"]["detail"]
    assert results[2]["problem"]["pointer"] == "/events"
    accepted = [x["emission"] for x in results if x["status"] == 202]
    stored = await db.fetch(
        "SELECT trigger_envelope_id FROM processes WHERE emitter_id = $1", em["id"]
    )
    assert {str(r["trigger_envelope_id"]) for r in stored} == {a["envelope_id"] for a in accepted}

    lines = "\n".join([json.dumps(envelope(10)), "{not json", "", json.dumps(envelope(11))])
    r = await acct.http.post(
        url, content=lines.encode(), headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == [202, 422, 202]

    # Every accepted envelope reaches the consumer, oldest first, in one batch lease.
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 10})
    assert r.status_code == 200, r.text
    leased = r.json()["requests"]
    assert len(leased) == 4
    items = [x["inputs"][0]["envelope"]["events"][0]["items"][0]["n"] for x in leased]
    assert items == [0, 3, 10, 11]


async def test_batch_emission_refuses_whole_bodies_it_cannot_read(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    url = f"/api/v1/actors/{em['name']}/outputs"
    r = await acct.http.post(url, json=ENVELOPE)  # an object, not an array
    assert r.status_code == 422
    assert r.headers["content-type"].startswith("application/problem+json")
    r = await acct.http.post(url, content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    r = await acct.http.post("/api/v1/actors/nobody-at-all/outputs", json=[ENVELOPE])
    assert r.status_code == 404


async def test_batch_emission_idempotency_per_envelope(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    url = f"/api/v1/actors/{em['name']}/outputs"
    refused = {"events": [{"type": "other.type", "items": ["x"]}], "idempotency_key": "k-bad"}
    r = await acct.http.post(url, json=[envelope(1, idempotency_key="k1"), refused])
    first = r.json()["results"]
    assert [x["status"] for x in first] == [202, 422]

    before = await row_counts(db)
    r = await acct.http.post(
        url,
        json=[
            envelope(1, idempotency_key="k1"),  # the same: answered as before
            envelope(2, idempotency_key="k1"),  # another body with that key: 409
        ],
    )
    again = r.json()["results"]
    assert again[0]["status"] == 202
    assert again[0]["replayed"] is True
    assert again[0]["emission"] == first[0]["emission"]
    assert again[1]["status"] == 409
    assert await row_counts(db) == before

    # The refused envelope's key was released: it can be used for a good one.
    good = envelope(3, idempotency_key="k-bad")
    r = await acct.http.post(url, json=[good])
    assert r.json()["results"][0]["status"] == 202


async def test_batch_states(bus: Bus) -> None:
    acct = await bus.account()
    other = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emissions = []
    for _ in range(3):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        emissions.append(r.json())
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 3})
    ids = [x["request_id"] for x in r.json()["requests"]]
    assert len(ids) == 3

    # Another account cannot report them (404 each, nothing changes).
    r = await other.http.post(
        "/api/v1/requests/states",
        json={"states": [{"request_id": i, "status": "success"} for i in ids]},
    )
    assert [x["status"] for x in r.json()["results"]] == [404, 404, 404]

    states = [
        {"request_id": ids[0], "status": "success"},
        {"request_id": ids[1], "status": "error", "messages": [{"level": "error", "text": "no"}]},
        {"request_id": ids[0], "status": "success"},  # already ended above: 409
        {"request_id": ids[2], "status": "running"},
    ]
    r = await acct.http.post("/api/v1/requests/states", json={"states": states})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 409, 200]
    assert results[0]["state"]["status"] == "success"
    assert results[2]["problem"]["status"] == 409
    assert results[3]["state"]["lease_expires_at"] is not None

    statuses = []
    for emission in emissions:
        r = await acct.http.get(f"/api/v1/processes/{emission['process_id']}")
        statuses.append(r.json()["status"])
    assert statuses == ["done", "error", "running"]


async def test_batch_emission_with_a_large_envelope(bus: Bus, db: asyncpg.Connection) -> None:
    """An envelope of many items in a batch: its items go in by COPY, in the batch's
    transaction."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    large = {"events": [{"type": "order.created", "items": [f"line {n}" for n in range(500)]}]}
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/outputs", json=[large, envelope(1)])
    results = r.json()["results"]
    assert [x["status"] for x in results] == [202, 202]
    large_id = results[0]["emission"]["envelope_id"]
    r = await acct.http.get(f"/api/v1/envelopes/{large_id}")
    assert r.json()["item_count"] == 500
    assert r.json()["process_id"] == results[0]["emission"]["process_id"]
    stored = await db.fetchval(
        "SELECT count(*) FROM items i JOIN events e ON e.id = i.event_id WHERE e.envelope_id = $1",
        uuid.UUID(large_id),
    )
    assert stored == 500


@pytest.mark.parametrize("settings_overrides", [{"inline_envelope_max_bytes": 200}])
async def test_a_lease_hands_out_each_envelope_whole(bus: Bus) -> None:
    """The lease and its envelopes are read by one statement: each request gets its inputs
    whole and in order (events by position, items by position), an envelope handed to two
    requests at once is the same in both, one too large is linked, not inlined."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    # Two consumer nodes of one actor: each envelope becomes two requests of that actor.
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [em["name"]],
                "sourcematch": {"eventtypes": ["order.created", "order.updated", "order.noted"]},
            },
            {"id": "left", "type": "consumer", "actors": [co["name"]]},
            {"id": "right", "type": "consumer", "actors": [co["name"]]},
        ],
        "edges": ["emit->left", "emit->right"],
    }
    await bus.pipeline(graph)
    many = {
        "events": [
            {"type": "order.created", "encoding": "json", "items": [{"n": n} for n in range(5)]},
            {"type": "order.updated", "encoding": "json", "items": [{"u": 1}, {"u": 2}]},
            {"type": "order.noted", "encoding": "json", "items": []},
        ]
    }
    large = {"events": [{"type": "order.created", "encoding": "json", "items": ["x" * 400]}]}
    sent = []
    for body in (many, large):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=body)
        assert r.status_code == 202, r.text
        sent.append(r.json()["envelope_id"])

    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 10})
    assert r.status_code == 200, r.text
    leased = r.json()["requests"]
    assert len(leased) == 4
    assert sorted(x["node_id"] for x in leased) == ["left", "left", "right", "right"]
    by_envelope: dict[str, list[dict[str, Any]]] = {}
    for request in leased:
        [given] = request["inputs"]
        by_envelope.setdefault(given["envelope_id"], []).append(given)
    assert set(by_envelope) == set(sent)
    first, second = by_envelope[sent[0]]
    assert first == second
    assert first["inline"] is True
    assert first["item_count"] == 7
    events = first["envelope"]["events"]
    assert [e["type"] for e in events] == ["order.created", "order.updated", "order.noted"]
    assert [e["items"] for e in events] == [[{"n": n} for n in range(5)], [{"u": 1}, {"u": 2}], []]
    for given in by_envelope[sent[1]]:
        assert given["inline"] is False
        assert given["envelope"] is None
        assert given["size_bytes"] > 200
        assert given["envelope_url"] == f"/api/v1/envelopes/{sent[1]}"
    # Leased once each: nothing is left to lease.
    again = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 10})
    assert again.status_code == 204


async def test_batch_answer_with_outputs_sharing_an_id(bus: Bus, db: asyncpg.Connection) -> None:
    """A worker's outputs that share an id are refused before either is stored: in a batch
    of answers (one transaction) the first output's rows would otherwise stay behind the
    refused answer. The batch's other answers are recorded."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    sinks = [await bus.actor(acct, "consumer") for _ in range(2)]
    graph = chain(em["name"], ("worker", wk["name"]))  # emit -> worker0
    graph["nodes"][1]["outputs"] = ["a", "b"]
    graph["nodes"] += [
        {"id": f"sink_{port}", "type": "consumer", "actors": [sink["name"]]}
        for port, sink in zip("ab", sinks, strict=True)
    ]
    graph["edges"] += ["worker0.a->sink_a", "worker0.b->sink_b"]
    await bus.pipeline(graph)
    for n in range(2):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=envelope(n))
        assert r.status_code == 202, r.text
    r = await acct.http.get(f"/api/v1/actors/{wk['name']}/requests", params={"max": 2})
    jobs = r.json()["requests"]
    assert len(jobs) == 2
    shared = str(uuid.uuid4())
    states = [
        {
            "request_id": jobs[0]["request_id"],
            "status": "success",
            "outputs": {"a": envelope(10, id=shared), "b": envelope(11, id=shared)},
        },
        {
            "request_id": jobs[1]["request_id"],
            "status": "success",
            "outputs": {"a": envelope(12), "b": envelope(13)},
        },
    ]
    r = await acct.http.post("/api/v1/requests/states", json={"states": states})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [409, 200]
    assert "used by output a too" in results[0]["problem"]["detail"]
    assert await db.fetchval("SELECT count(*) FROM envelopes WHERE id = $1", uuid.UUID(shared)) == 0
    statuses = dict(
        await db.fetch(
            "SELECT id::text, status FROM requests WHERE id = ANY($1::uuid[])",
            [uuid.UUID(job["request_id"]) for job in jobs],
        )
    )
    assert statuses == {jobs[0]["request_id"]: "leased", jobs[1]["request_id"]: "success"}
    # The first process's worker can still answer, with distinct outputs.
    again = {"status": "success", "outputs": {"a": envelope(10, id=shared), "b": envelope(11)}}
    r = await acct.http.post(f"/api/v1/requests/{jobs[0]['request_id']}/state", json=again)
    assert r.status_code == 200, r.text
    assert await db.fetchval("SELECT count(*) FROM envelopes WHERE id = $1", uuid.UUID(shared)) == 1


async def _answer_raced(
    bus: Bus,
    db: asyncpg.Connection,
    database_url: str,
    answer: Callable[[Account, list[str], uuid.UUID], Awaitable[httpx.Response]],
) -> tuple[httpx.Response, list[str]]:
    """Two leased worker requests answered by `answer(account, request ids, taken)`, whose
    first answer has an output of envelope id `taken`: another transaction inserts that id
    at the same moment, uncommitted when the answer checks it (free), committed while the
    answer's write waits on it (two answers racing for one id)."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))
    for n in range(2):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=envelope(n))
        assert r.status_code == 202, r.text
    r = await acct.http.get(f"/api/v1/actors/{wk['name']}/requests", params={"max": 2})
    jobs = [job["request_id"] for job in r.json()["requests"]]
    assert len(jobs) == 2
    taken = uuid.uuid4()
    other = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute(
            "INSERT INTO envelopes (id, status, event_count, item_count, size_bytes, "
            "created_at, last_fragment_at) VALUES ($1, 'complete', 0, 0, 0, now(), now())",
            taken,
        )
        answering = asyncio.ensure_future(answer(acct, jobs, taken))
        try:
            for _ in range(200):  # until the answer's insert waits for the other's row
                await asyncio.sleep(0.02)
                waiting = await db.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                if waiting or answering.done():
                    break
            assert waiting, "the answer never waited on the other transaction's row"
        finally:
            await transaction.commit()
        response = await answering
    finally:
        await other.close()
    return response, jobs


def _success_with_output(taken: uuid.UUID | None) -> dict[str, Any]:
    output = envelope(7) if taken is None else envelope(7, id=str(taken))
    return {"status": "success", "outputs": {"default": output}}


async def test_an_output_id_taken_by_a_racing_answer_is_a_409(
    bus: Bus, db: asyncpg.Connection, database_url: str
) -> None:
    """Two answers with the same output id at the same moment both pass the check; the
    second meets the first's row at its write: 409, nothing of it recorded (not a 500)."""

    async def answer(acct: Account, jobs: list[str], taken: uuid.UUID) -> httpx.Response:
        url = f"/api/v1/requests/{jobs[0]}/state"
        return await acct.http.post(url, json=_success_with_output(taken))

    response, jobs = await _answer_raced(bus, db, database_url, answer)
    assert response.status_code == 409, response.text
    assert "taken meanwhile" in response.json()["detail"]
    assert await db.fetchval("SELECT status FROM requests WHERE id = $1", uuid.UUID(jobs[0])) == (
        "leased"
    )


async def test_an_output_id_taken_by_a_racing_answer_refuses_its_batch(
    bus: Bus, db: asyncpg.Connection, database_url: str
) -> None:
    """In a batch of answers (one transaction), the race spends the transaction: the whole
    batch is refused (409) and nothing of it recorded, the good answer included."""

    async def answer(acct: Account, jobs: list[str], taken: uuid.UUID) -> httpx.Response:
        states = [
            {"request_id": jobs[1], **_success_with_output(None)},
            {"request_id": jobs[0], **_success_with_output(taken)},
        ]
        return await acct.http.post("/api/v1/requests/states", json={"states": states})

    response, jobs = await _answer_raced(bus, db, database_url, answer)
    assert response.status_code == 409, response.text
    statuses = await db.fetch(
        "SELECT status FROM requests WHERE id = ANY($1::uuid[])", [uuid.UUID(j) for j in jobs]
    )
    assert [row["status"] for row in statuses] == ["leased", "leased"]
