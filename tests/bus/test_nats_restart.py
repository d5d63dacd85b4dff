"""A whole single-node NATS (a server of its own, as an external one would be) killed under
load and started again: emissions, long-polls and reports go on from the database alone
meanwhile, /readyz names NATS, and afterwards xbusd's connection is back by itself and its
doorbell rings another replica again. Every envelope answered 202 ends done."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest

from app.bus.notify import actor_key
from app.runtime.nats import EmbeddedNats
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.bus.test_doorbell import Replica, until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def settings_overrides(own_nats: EmbeddedNats) -> dict[str, Any]:
    return {"nats_url": own_nats.url()}


async def _readiness(client: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    r = await client.get("/readyz")
    checks: dict[str, Any] = r.json()["checks"]
    return r.status_code, checks


async def _one_process(acct: Any, emitter: str, consumer: str) -> str:
    """Emit, lease (a long-poll started before the emission), report success."""
    poll = asyncio.create_task(
        acct.http.get(f"/api/v1/actors/{consumer}/requests", params={"wait": 10})
    )
    await asyncio.sleep(0.05)  # the long-poll waits first: the emission must wake it
    emitted = await acct.http.post(f"/api/v1/actors/{emitter}/output", json=ENVELOPE)
    assert emitted.status_code == 202, emitted.text
    leased = await asyncio.wait_for(poll, 5)  # woken, not at its 10 s end
    assert leased.status_code == 200, leased.text
    job = leased.json()
    done = await acct.http.post(
        f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"}
    )
    assert done.status_code == 200, done.text
    process_id: str = emitted.json()["process_id"]
    return process_id


async def test_a_single_node_nats_restarted_under_load(
    bus: Bus, own_nats: EmbeddedNats, client: httpx.AsyncClient
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    # The doorbell's probe: envelopes of their own, for a consumer nobody polls.
    probe = await bus.actor(acct, "emitter")
    probed = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(probe["name"], ("consumer", probed["name"])))
    key = actor_key(uuid.UUID(probed["id"]))

    async def ready() -> bool:
        status, checks = await _readiness(client)
        return status == 200 and checks["nats"] == "ok"

    await until(ready)
    # Another replica's doorbell on the same NATS hears this one's commits.
    peer = Replica(own_nats.url())
    await peer.start()

    async def rings_peer() -> bool:
        woken = asyncio.create_task(peer.notifier.wait(key, 0.5))
        emitted = await acct.http.post(f"/api/v1/actors/{probe['name']}/output", json=ENVELOPE)
        assert emitted.status_code == 202
        return await woken

    await until(rings_peer)  # once the two replicas know of each other
    processes: list[str] = []

    assert own_nats.process is not None
    own_nats.process.kill()
    own_nats.process.wait(10)
    for _ in range(10):  # the outage: all from the database
        processes.append(await _one_process(acct, em["name"], co["name"]))
    status, checks = await _readiness(client)
    assert status == 503, checks
    assert checks["nats"] == "unavailable", checks
    assert checks["database"] == "ok"

    own_nats.restart()
    await until(ready, timeout=30)  # xbusd's connection is back by itself
    await until(rings_peer, timeout=30)  # and its doorbell rings again
    for _ in range(5):
        processes.append(await _one_process(acct, em["name"], co["name"]))

    # Every 202 of the outage and after ended done, once.
    for process_id in processes:
        process = (await acct.http.get(f"/api/v1/processes/{process_id}")).json()
        assert process["status"] == "done", process
        [request] = next(n for n in process["nodes"] if n["node_id"] == "consumer0")["requests"]
        assert request["attempts"] == 1
    await peer.stop()
