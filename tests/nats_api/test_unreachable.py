"""A NATS delivery that got no answer puts its request back to pending, unless the request
was answered meanwhile: the answer is never overwritten."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from app.nats_api.dispatcher import NatsDispatcher
from app.nats_api.liveness import Liveness
from tests.bus.conftest import one_leased
from tests.nats_api.conftest import NatsBus


async def test_an_answer_that_commits_while_the_actor_is_found_unreachable_stands(
    nats_bus: NatsBus, db: asyncpg.Connection
) -> None:
    leased = await one_leased(nats_bus)
    state = nats_bus.app.state.xbus
    dispatcher = NatsDispatcher(state, None, Liveness(state))  # type: ignore[arg-type]
    await db.execute("BEGIN")
    try:
        # An answer under way holds the request.
        await db.execute(
            "UPDATE requests SET status = 'success', ended_at = now() WHERE id = $1",
            leased.request_id,
        )
        unreachable = asyncio.create_task(
            dispatcher._unreachable(
                leased.request_id, uuid.UUID(leased.consumer["id"]), "timeout", counted=True
            )
        )
        await asyncio.sleep(0.5)
        assert not unreachable.done()  # it waits for the request
    finally:
        await db.execute("COMMIT")
    await asyncio.wait_for(unreachable, 10)
    row = await db.fetchrow(
        "SELECT status, attempts FROM requests WHERE id = $1", leased.request_id
    )
    assert (row["status"], row["attempts"]) == ("success", leased.attempt)
