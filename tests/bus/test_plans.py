"""The lease and claim statements stay on their indexes whatever the statistics say. A plan
that reads a whole table at each lease grows with the history or the backlog: seen, 6-7 ms of
PostgreSQL per HTTP lease with a few thousand envelopes stored (every envelope read to find
the one handed out), and the NATS dispatcher's claim walking every request that waits for
an HTTP actor."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from app.bus.director import utcnow
from app.store import processes as store
from app.webhooks import store as webhooks_store
from tests.bus.conftest import ENVELOPE, Bus, chain

_ARGS = "'{actor}'::uuid, now(), 50, now() + interval '60 s', 'x', NULL, ARRAY['poll', 'nats']"


async def _plans(db: asyncpg.Connection, statement: str, args: str) -> list[str]:
    """The plan of `statement` run with `args` (SQL literals), generic and custom."""
    plans = []
    await db.execute("PREPARE plan_check AS " + statement)
    try:
        for mode in ("force_generic_plan", "force_custom_plan"):
            await db.execute(f"SET plan_cache_mode = {mode}")
            rows = await db.fetch(f"EXPLAIN EXECUTE plan_check({args})")
            plans.append("\n".join(row[0] for row in rows))
    finally:
        await db.execute("DEALLOCATE plan_check")
        await db.execute("RESET plan_cache_mode")
    return plans


async def test_an_http_lease_reads_its_envelopes_by_their_ids(
    bus: Bus, db: asyncpg.Connection
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumer = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", consumer["name"])))
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert r.status_code == 202, r.text
    # A history of envelopes the planner knows of: below some tens of thousands, reading
    # them all looked cheaper to it than the index, for the 100 ids it guessed a request has.
    await db.execute(
        "INSERT INTO envelopes (id, status, event_count, item_count, size_bytes, created_at, "
        "last_fragment_at) SELECT gen_random_uuid(), 'complete', 0, 0, 0, now(), now() "
        "FROM generate_series(1, 5000)"
    )
    await db.execute("ANALYZE envelopes")
    args = _ARGS.format(actor=consumer["id"]) + ", 65536"
    for plan in await _plans(db, store.LEASE_FOR_ACTOR, args):
        assert "Seq Scan on envelopes" not in plan, plan
        assert "Index Scan using pk_envelopes on envelopes" in plan, plan
    r = await acct.http.get(f"/api/v1/actors/{consumer['name']}/requests")
    assert r.status_code == 200, r.text
    assert r.json()["inputs"][0]["envelope"]["events"][0]["items"] == [{"id": 1}, {"id": 2}]


async def test_the_nats_claim_starts_from_the_online_actors(
    bus: Bus, db: asyncpg.Connection
) -> None:
    acct = await bus.account()
    em, other = await bus.actor(acct, "emitter"), await bus.actor(acct, "emitter")
    polling, online = await bus.actor(acct, "consumer"), await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", polling["name"])))
    await bus.pipeline(chain(other["name"], ("consumer", online["name"])))
    for _ in range(20):  # a backlog for the HTTP actor
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        assert r.status_code == 202, r.text
    r = await acct.http.post(f"/api/v1/actors/{other['name']}/output", json=ENVELOPE)
    assert r.status_code == 202, r.text
    # The actor online in this transaction only: xbusd's own dispatcher does not see it.
    await db.execute("BEGIN")
    try:
        await db.execute("UPDATE actors SET online = true WHERE id = $1", online["id"])
        args = "NULL::uuid, now(), 50, now() + interval '60 s', 'x', 'nats', 65536"
        for plan in await _plans(db, store.LEASE_FOR_NATS, args):
            # The requests are read by actor: those of an actor not online are never read.
            assert "actor_id = a.id" in plan, plan
        leased = await db.fetch(
            store.LEASE_FOR_NATS,
            None,
            utcnow(),
            50,
            utcnow() + timedelta(minutes=1),
            "t",
            "nats",
            65536,
        )
        # One request leased, on as many rows as its envelope has items (`handed`).
        assert {(row["id"], row["actor_id"]) for row in leased} == {
            (leased[0]["id"], uuid.UUID(online["id"]))
        }
    finally:
        await db.execute("ROLLBACK")


@pytest.mark.parametrize("analyzed", ["before", "backlogs", "between", "after"])
async def test_a_webhook_round_reads_the_leases_and_the_due_requests_not_the_history(
    bus: Bus, db: asyncpg.Connection, analyzed: str
) -> None:
    """Asked by actor, the count of what is in flight joined the actor's index and read all
    its history at every round; the claim starts from the actor's due requests, in order.
    Whatever the statistics saw (autovacuum analyzes when it likes): no requests of the
    actor (`before`), only other actors' backlogs of polled requests (`backlogs`), all
    3,000 pending and none for a webhook (`between`), or the history as it is (`after`). CI
    runs found the claim reading `requests` whole on one of them and, on stale statistics
    that saw no webhook request, all of the actor's due requests sorted at each round."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    hook = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", hook["name"])))
    if analyzed == "backlogs":
        for _ in range(3):
            other = await bus.actor(acct, "emitter")
            polled = await bus.actor(acct, "consumer")
            await bus.pipeline(chain(other["name"], ("consumer", polled["name"])))
            sent = [ENVELOPE] * 600
            r = await acct.http.post(f"/api/v1/actors/{other['name']}/outputs", json=sent)
            assert r.status_code == 200, r.text
    if analyzed in ("before", "backlogs"):
        await db.execute("ANALYZE requests")
    for _ in range(3):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/outputs", json=[ENVELOPE] * 1000)
        assert r.status_code == 200, r.text
    if analyzed == "between":
        await db.execute("ANALYZE requests")
    # Its requests made webhook ones, most of them done, five in flight.
    await db.execute(
        "UPDATE requests SET channel = 'webhook', status = CASE WHEN n <= 5 THEN 'leased' "
        "WHEN n <= 2990 THEN 'success' ELSE status END, lease_expires_at = CASE WHEN n <= 5 "
        "THEN now() + interval '1 min' END FROM (SELECT id AS rid, row_number() OVER () AS n "
        "FROM requests WHERE actor_id = $1) o WHERE id = o.rid",
        uuid.UUID(hook["id"]),
    )
    if analyzed == "after":
        await db.execute("ANALYZE requests")
    leased = await db.fetch(
        "SELECT id, attempts FROM requests WHERE actor_id = $1 AND status = 'leased' ORDER BY id",
        uuid.UUID(hook["id"]),
    )
    ids = ", ".join(f"'{row['id']}'::uuid" for row in leased[:2])
    attempts = ", ".join(str(row["attempts"]) for row in leased[:2])
    in_flight_args = f"ARRAY['{hook['id']}'::uuid], ARRAY[{ids}], ARRAY[{attempts}]"
    for plan in await _plans(db, webhooks_store.IN_FLIGHT, in_flight_args):
        assert "ix_requests_actor_id" not in plan, plan
        assert "ix_requests_lease" in plan, plan

    async def count(delivered: list[tuple[uuid.UUID, int]]) -> list[tuple[uuid.UUID, int]]:
        ids, attempts = [d[0] for d in delivered], [d[1] for d in delivered]
        rows = await db.fetch(webhooks_store.IN_FLIGHT, [uuid.UUID(hook["id"])], ids, attempts)
        return [tuple(row) for row in rows]

    assert await count([]) == [(uuid.UUID(hook["id"]), 5)]
    # The attempts delivered, whose outcomes are being written, are not in flight; the same
    # requests under another attempt (handed back and claimed again) are.
    delivered = [(row["id"], row["attempts"]) for row in leased[:2]]
    assert await count(delivered) == [(uuid.UUID(hook["id"]), 3)]
    assert await count([(i, a + 1) for i, a in delivered]) == [(uuid.UUID(hook["id"]), 5)]
    args = f"ARRAY['{hook['id']}'::uuid], ARRAY[16], ARRAY[5], ARRAY[11.0], now(), 'x', 65536"
    for plan in await _plans(db, webhooks_store.CLAIM, args):
        assert "ix_requests_actor_id" not in plan, plan
        # The actor's own end of its due webhook requests, in order: not the whole index,
        # nor its history, nor all its due requests sorted.
        assert "Index Scan using ix_requests_webhook_due on requests r" in plan, plan
        assert "Index Cond: ((actor_id = q.actor_id)" in plan, plan


async def test_a_batch_of_answers_reaches_each_process_by_its_key(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The plan prepared for any list of requests (generic: it guesses 10) joined a scan of
    every process to them while the table held some thousands (0.5 ms a batch at 2,000, 0.9
    ms for the lock and the read together under load): each process and request is reached
    by its key."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumer = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", consumer["name"])))
    # A thousand processes: past some thousands, the scan looked dearer than the keys to it.
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/outputs", json=[ENVELOPE] * 1000)
    assert r.status_code == 200, r.text
    await db.execute("ANALYZE processes")
    await db.execute("ANALYZE requests")
    ids = await db.fetch("SELECT id FROM requests WHERE actor_id = $1 LIMIT 2", consumer["id"])
    args = "ARRAY[" + ", ".join(f"'{row[0]}'::uuid" for row in ids) + "]"
    for statement in (store.LOCK_PROCESSES_OF_REQUESTS, store.READ_FOR_ANSWERS):
        for plan in await _plans(db, statement, args):
            assert "Seq Scan on processes" not in plan, plan
            assert "Index Scan using pk_processes on processes" in plan, plan
