"""Isolation: a hanging endpoint does not slow a healthy one; per-actor concurrency and rate
limits hold."""

from __future__ import annotations

import asyncio
import statistics
import time

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
