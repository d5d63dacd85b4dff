"""An account sees and acts on its own actors, envelopes and processes only."""

from __future__ import annotations

import asyncpg

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import assert_problem, row_counts


async def test_other_accounts_cannot_touch_my_bus(bus: Bus, db: asyncpg.Connection) -> None:
    mine = await bus.account()
    theirs = await bus.account()
    em = await bus.actor(mine, "emitter")
    co = await bus.actor(mine, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await mine.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    before = await row_counts(db)

    other = theirs.http
    assert_problem(await other.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE), 404)
    assert_problem(await other.get(f"/api/v1/actors/{co['name']}/requests"), 404)
    assert_problem(await other.get(f"/api/v1/processes/{emission['process_id']}"), 404)
    assert_problem(await other.get(f"/api/v1/processes/{emission['process_id']}/logs"), 404)
    assert_problem(await other.post(f"/api/v1/processes/{emission['process_id']}/ack"), 404)
    assert_problem(await other.get(f"/api/v1/envelopes/{emission['envelope_id']}"), 404)
    assert (await other.get("/api/v1/processes")).json() == {"items": [], "next_cursor": None}
    assert await row_counts(db) == before

    job = (await mine.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    before = await row_counts(db)
    assert_problem(
        await other.post(f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"}),
        404,
    )
    assert await row_counts(db) == before

    # The consumer's account may read the envelope it was handed; the emitter's too.
    assert (await mine.http.get(f"/api/v1/envelopes/{emission['envelope_id']}")).status_code == 200
    # Admin sees everything.
    assert (await bus.admin.get(f"/api/v1/processes/{emission['process_id']}")).status_code == 200
    assert len((await bus.admin.get("/api/v1/processes")).json()["items"]) == 1


async def test_consumer_account_reads_envelope_it_was_handed(bus: Bus) -> None:
    producer = await bus.account()
    receiver = await bus.account()
    em = await bus.actor(producer, "emitter")
    co = await bus.actor(receiver, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    bystander = await bus.account()
    emission = (
        await producer.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    ).json()
    assert_problem(await bystander.http.get(f"/api/v1/envelopes/{emission['envelope_id']}"), 404)
    job = (await receiver.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    assert job["inputs"][0]["envelope_id"] == emission["envelope_id"]
    r = await receiver.http.get(f"/api/v1/envelopes/{emission['envelope_id']}")
    assert r.status_code == 200
    # ... but not the process, which belongs to the emitter's account.
    assert_problem(await receiver.http.get(f"/api/v1/processes/{emission['process_id']}"), 404)
