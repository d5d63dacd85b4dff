"""Group commit of single emissions: envelopes POSTed while a group is written are written
together by the next one (one transaction), each answered 202 only once its group has
committed; envelopes that could conflict (own ids, an idempotency key) are written alone."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from app.actors.access import _info
from app.envelopes.codec import parse_envelope_json
from app.envelopes.repository import envelope_rows
from tests.bus.conftest import ENVELOPE, Bus, chain


def group_sizes() -> tuple[float, float]:
    """(groups written, envelopes in them) so far, in this process."""
    count = REGISTRY.get_sample_value("xbus_emission_group_size_count") or 0.0
    total = REGISTRY.get_sample_value("xbus_emission_group_size_sum") or 0.0
    return count, total


async def topology(bus: Bus) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    return acct, em, co


async def test_concurrent_emissions_share_transactions(bus: Bus, db: asyncpg.Connection) -> None:
    acct, em, co = await topology(bus)
    url = f"/api/v1/actors/{em['name']}/output"
    groups_before, envelopes_before = group_sizes()
    answers = await asyncio.gather(*(acct.http.post(url, json=ENVELOPE) for _ in range(40)))
    assert [r.status_code for r in answers] == [202] * 40
    groups, envelopes = group_sizes()
    assert envelopes - envelopes_before == 40
    assert groups - groups_before < 40  # some were written together

    # Each answer names its own envelope and process, stored and routed.
    processes = {r.json()["process_id"] for r in answers}
    envelope_ids = {r.json()["envelope_id"] for r in answers}
    assert len(processes) == len(envelope_ids) == 40
    rows = await db.fetch(
        "SELECT id, trigger_envelope_id, status FROM processes WHERE emitter_id = $1", em["id"]
    )
    assert {str(r["id"]) for r in rows} == processes
    assert {str(r["trigger_envelope_id"]) for r in rows} == envelope_ids
    assert {r["status"] for r in rows} == {"running"}
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 100})
    leased = r.json()["requests"]
    assert len(leased) == 40
    assert {req["process_id"] for req in leased} == processes


async def test_emissions_that_may_conflict_are_written_alone(
    bus: Bus, db: asyncpg.Connection
) -> None:
    acct, em, _ = await topology(bus)
    url = f"/api/v1/actors/{em['name']}/output"
    own_id = str(uuid.uuid4())
    _, envelopes_before = group_sizes()
    answers = await asyncio.gather(
        acct.http.post(url, json={**ENVELOPE, "id": own_id}),
        acct.http.post(url, json={**ENVELOPE, "id": own_id}),  # the same id: one wins
        acct.http.post(url, json=ENVELOPE, headers={"Idempotency-Key": "k1"}),
        acct.http.post(url, json=ENVELOPE, headers={"Idempotency-Key": "k1"}),
        *(acct.http.post(url, json=ENVELOPE) for _ in range(6)),
    )
    statuses = [r.status_code for r in answers]
    assert sorted(statuses[:2]) == [202, 409], statuses
    assert statuses[2:] == [202] * 8
    assert answers[2].json() == answers[3].json()  # the key's one emission, replayed
    _, envelopes = group_sizes()
    assert envelopes - envelopes_before == 6  # only the plain ones were grouped
    stored = await db.fetchval("SELECT count(*) FROM processes WHERE emitter_id = $1", em["id"])
    assert stored == 1 + 1 + 6


@pytest.mark.parametrize("settings_overrides", [{"emission_group_max": 0}])
async def test_group_commit_can_be_turned_off(bus: Bus, db: asyncpg.Connection) -> None:
    acct, em, _ = await topology(bus)
    url = f"/api/v1/actors/{em['name']}/output"
    before = group_sizes()
    answers = await asyncio.gather(*(acct.http.post(url, json=ENVELOPE) for _ in range(10)))
    assert [r.status_code for r in answers] == [202] * 10
    assert group_sizes() == before
    stored = await db.fetchval("SELECT count(*) FROM processes WHERE emitter_id = $1", em["id"])
    assert stored == 10


async def test_a_group_that_fails_stores_none_of_its_envelopes(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The connections killed under concurrent emissions: every answer is 202 or 503, and
    exactly the envelopes answered 202 are stored (a failed group fails all its waiters).
    Whether a group meets a dead connection depends on whether asyncpg has already seen it
    close (then the pool replaces it at checkout, for free): 503s may or may not come."""
    acct, em, co = await topology(bus)
    url = f"/api/v1/actors/{em['name']}/output"
    await asyncio.gather(*(acct.http.post(url, json=ENVELOPE) for _ in range(10)))  # warm pool
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'xbusd' AND pid <> pg_backend_pid()"
    )
    assert killed > 0
    statuses: list[int] = []
    ids: set[str] = set()
    for _ in range(3):
        answers = await asyncio.gather(*(acct.http.post(url, json=ENVELOPE) for _ in range(20)))
        for r in answers:
            statuses.append(r.status_code)
            if r.status_code == 202:
                ids.add(r.json()["envelope_id"])
            else:
                assert r.headers["retry-after"] == "1"
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[-20:] == [202] * 20, statuses  # healed
    stored = await db.fetch(
        "SELECT trigger_envelope_id FROM processes WHERE emitter_id = $1", em["id"]
    )
    assert len(stored) == 10 + len(ids)
    assert ids <= {str(r["trigger_envelope_id"]) for r in stored}
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 1000})
    assert len(r.json()["requests"]) == len(stored)


async def test_a_failing_group_fails_every_waiter_and_stores_nothing(
    bus: Bus, app: FastAPI, db: asyncpg.Connection
) -> None:
    """One envelope of a group breaks its statement (an emitter that does not exist: a
    foreign key): the group's transaction fails as a whole, every waiter gets the error, none
    of the group's envelopes is stored, and the next group is written."""
    _, em, _ = await topology(bus)
    state = app.state.xbus
    groups = state.emissions
    assert groups is not None
    async with state.db.session() as session:
        emitter = await _info(session, em["name"])
        assert emitter is not None
        route = await state.director.route(session, emitter, ["order.created"])
    envelope = parse_envelope_json(ENVELOPE, max_items=10, max_bytes=10_000)

    def planned(emitter_id: uuid.UUID) -> Any:
        return (envelope_rows(envelope, emitter_id=emitter_id), ["order.created"], route)

    ghost = dataclasses.replace(emitter, id=uuid.uuid4())
    outcomes: tuple[Any, ...] = await asyncio.gather(
        groups.start(emitter, planned(emitter.id)),
        groups.start(ghost, planned(ghost.id)),
        groups.start(emitter, planned(emitter.id)),
        return_exceptions=True,
    )
    first, bad, other = outcomes
    assert isinstance(first, asyncpg.ForeignKeyViolationError), first
    assert bad is first
    assert other is first
    stored = await db.fetchval("SELECT count(*) FROM processes WHERE emitter_id = $1", em["id"])
    assert stored == 0
    # The groups go on.
    process = await groups.start(emitter, planned(emitter.id))
    assert await db.fetchval("SELECT status FROM processes WHERE id = $1", process.id) == "running"
