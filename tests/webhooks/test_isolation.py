"""Isolation: a hanging endpoint does not slow a healthy one; per-actor concurrency and rate
limits hold, and count the requests in flight to the actor (a delivery whose exchange is over
frees its slot while its outcome is written; a failure holds it until written)."""

from __future__ import annotations

import asyncio
import statistics
import time

import asyncpg

from tests.bus.conftest import Account, Bus
from tests.webhooks.conftest import Receiver, Reply, emit, finished, webhook_chain

SAMPLES = 21


async def healthy_latencies(acct: Account, emitter: str, receiver: Receiver) -> list[float]:
    """POST -> receipt, one envelope at a time."""
    out = []
    for _ in range(SAMPLES):
        count = len(receiver.at("/healthy"))
        start = time.perf_counter()
        await emit(acct, emitter)
        got = await receiver.wait_for("/healthy", count + 1)
        out.append(got[-1].at - start)
    return out


async def test_a_hanging_endpoint_does_not_slow_a_healthy_one(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hang", Reply(hang=True))
    acct = await bus.account()
    healthy_em, _ = await webhook_chain(bus, acct, receiver.url("/healthy"))
    hanging_em, hanging = await webhook_chain(
        bus, acct, receiver.url("/hang"), timeout="30", concurrency="4"
    )
    await healthy_latencies(acct, healthy_em["name"], receiver)  # warm-up
    alone = statistics.median(await healthy_latencies(acct, healthy_em["name"], receiver))

    for _ in range(8):
        await emit(acct, hanging_em["name"])
    await receiver.wait_for("/hang", 4)
    beside = statistics.median(await healthy_latencies(acct, healthy_em["name"], receiver))
    # The hanging actor holds its 4 slots, no more; the healthy one is not held up.
    assert len(receiver.at("/hang")) == 4
    assert receiver.peak["/hang"] == 4
    print(
        f"healthy median: alone {alone * 1000:.1f} ms, beside a hanging actor "
        f"{beside * 1000:.1f} ms"
    )
    assert beside <= 2 * alone, (alone, beside)
    state = (await acct.http.get(f"/api/v1/actors/{hanging['name']}/webhook")).json()
    assert state["in_flight"] == 4
    assert state["pending"] == 4


async def test_concurrency_and_rate_limits(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/slow", Reply(delay=0.2))
    acct = await bus.account()
    slow_em, _ = await webhook_chain(bus, acct, receiver.url("/slow"), concurrency="2")
    limited_em, _ = await webhook_chain(bus, acct, receiver.url("/limited"), rate_limit="10")
    slow = [await emit(acct, slow_em["name"]) for _ in range(6)]
    limited = [await emit(acct, limited_em["name"]) for _ in range(20)]
    await asyncio.gather(*(finished(acct.http, e["process_id"]) for e in slow + limited))
    assert receiver.peak["/slow"] == 2
    arrivals = [r.at for r in receiver.at("/limited")]
    assert len(arrivals) == 20
    # A burst of one second's worth (10), then 10 per second.
    assert arrivals[-1] - arrivals[0] >= 0.85


async def test_a_delivery_frees_its_slot_while_its_outcome_is_written(
    bus: Bus, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.script("/hook", Reply(200, delay=0.3))
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/hook"), concurrency="1")
    await finished(acct.http, (await emit(acct, em["name"]))["process_id"])  # pools warm
    # No attempt's outcome can be written while the table is locked.
    async with db.transaction():
        await db.execute("LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
        # All three due before the first is answered.
        emissions = [await emit(acct, em["name"]) for _ in range(3)]
        # The second sent once the first was answered, without waiting for its outcome,
        # never two at once; the third waits: no more of an actor's deliveries than its
        # concurrency are left out of the count while their outcomes wait.
        await receiver.wait_for("/hook", 3)
        await asyncio.sleep(1.0)  # twenty poll intervals
        assert len(receiver.at("/hook")) == 3
        assert receiver.peak["/hook"] == 1
        running = [
            (await acct.http.get(f"/api/v1/processes/{e['process_id']}")).json()["status"]
            for e in emissions
        ]
        assert running == ["running"] * 3
    for emission in emissions:
        assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
    assert len(receiver.at("/hook")) == 4


async def test_a_failed_attempt_holds_its_slot_until_its_outcome_is_written(
    bus: Bus, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.script("/hook", [Reply(500), Reply(200)])
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/hook"), concurrency="1")
    async with db.transaction():
        await db.execute("LOCK TABLE delivery_attempts IN EXCLUSIVE MODE")
        for _ in range(3):
            await emit(acct, em["name"])
        await receiver.wait_for("/hook", 1)
        await asyncio.sleep(1.0)  # twenty poll intervals: nothing else is sent meanwhile
        assert len(receiver.at("/hook")) == 1
    # Once its failure is written, the others go.
    await receiver.wait_for("/hook", 3)
