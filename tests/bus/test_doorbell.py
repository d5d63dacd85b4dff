"""The NATS doorbell between replicas, on the real nats-server: a lone replica rings nobody (no
publish after its commits), two replicas learn of each other at once and wake each other's
waiters, and a replica that leaves is no longer rung."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import nats
import pytest
from nats.aio.msg import Msg

from app.bus.notify import Notifier
from app.doorbell import PRESENCE, SUBJECT, doorbell, host_scope
from app.nats import NatsConnection
from app.runtime.nats import EmbeddedNats

pytestmark = pytest.mark.timeout(60)


class Replica:
    """A replica's doorbell; `local=False` rings over NATS only, as one on another host."""

    def __init__(self, url: str, *, local: bool = True) -> None:
        self.notifier = Notifier()
        self.notifier.bind(asyncio.get_running_loop())
        self.nats = NatsConnection(url)
        self.local = local
        self.task: asyncio.Task[None] | None = None
        self.woken: list[str] = []
        wake = self.notifier.wake_local

        def counted(keys: Iterable[str]) -> None:
            keys = list(keys)
            self.woken.extend(keys)
            wake(keys)

        self.notifier.wake_local = counted  # type: ignore[method-assign]

    async def start(self) -> None:
        self.nats.start()
        self.task = asyncio.create_task(doorbell(self.nats, self.notifier, local=self.local))
        await until(lambda: asyncio.sleep(0, self.notifier.remote is not None))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.nats.close()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


@pytest.fixture
def nats_url(own_nats: EmbeddedNats) -> str:
    """A nats-server of the test's own: no replica of another test (an app still stopping,
    saying "here" on the session's server) may count as a peer."""
    return own_nats.url()


@pytest.fixture
async def rings(nats_url: str) -> AsyncIterator[list[bytes]]:
    """What goes out on the ring subject (a listener that is not a replica)."""
    seen: list[bytes] = []
    client = await nats.connect(nats_url)

    async def take(msg: Msg) -> None:
        seen.append(msg.data)

    await client.subscribe(SUBJECT, cb=take)
    yield seen
    await client.close()


async def _commit(replica: Replica, key: str) -> None:
    replica.notifier.publish([key])
    await asyncio.sleep(0.2)  # a ring, if any, reaches the listener well within this


async def test_a_lone_replica_rings_nobody_two_wake_each_other(
    nats_url: str, rings: list[bytes]
) -> None:
    """Replicas on two hosts (no datagrams): rings over NATS."""
    a = Replica(nats_url, local=False)
    await a.start()
    await _commit(a, "actor.alone")
    assert rings == []  # nobody else listens: no publish after the commit

    b = Replica(nats_url, local=False)
    await b.start()
    woken = asyncio.create_task(b.notifier.wait("actor.x", 10))

    async def rung() -> bool:
        # A learns of B from B's "here" (B from A's answer): A's next commit rings.
        a.notifier.publish(["actor.x"])
        await asyncio.sleep(0.05)
        return woken.done()

    await until(rung, timeout=5)
    assert woken.result() is True
    assert any(ring.endswith(b"\nactor.x") for ring in rings)
    # B learnt of A as well (from A's answer to its "here", not 5 s later).
    back = asyncio.create_task(a.notifier.wait("actor.y", 10))
    b.notifier.publish(["actor.y"])
    assert await asyncio.wait_for(back, 2) is True

    await b.stop()  # it says bye
    rings.clear()
    await _commit(a, "actor.after")
    assert rings == []
    await a.stop()


@pytest.mark.skipif(host_scope() is None, reason="the host cannot be told (not Linux)")
async def test_replicas_of_one_host_ring_by_datagram(nats_url: str, rings: list[bytes]) -> None:
    """Two replicas of this host wake each other by datagram, nothing over NATS; with a
    replica elsewhere too, a ring also goes over NATS, flagged: the local peer, rung
    already, skips it (woken once), the one elsewhere takes it."""
    ports: set[int] = set()
    listener = await nats.connect(nats_url)

    async def presence(msg: Msg) -> None:
        _word, *rest = msg.data.decode().split(" ")
        if len(rest) == 3:  # "<word> <origin> <host> <port>": a replica of this host
            ports.add(int(rest[2]))

    await listener.subscribe(PRESENCE, cb=presence)
    a, b = Replica(nats_url), Replica(nats_url)
    await a.start()
    await b.start()

    async def rung(key: str, by: Replica, to: Replica) -> bool:
        by.notifier.publish([key])
        await asyncio.sleep(0.05)
        return key in to.woken

    await until(lambda: rung("actor.x", a, b), timeout=5)
    await until(lambda: rung("actor.y", b, a), timeout=5)
    await asyncio.sleep(0.2)
    assert rings == []  # all by datagram

    far = Replica(nats_url, local=False)
    await far.start()
    await until(lambda: rung("actor.z", a, far), timeout=5)
    b.woken.clear()
    rings.clear()
    a.notifier.publish(["actor.once"])
    await asyncio.sleep(0.3)
    assert b.woken == ["actor.once"]  # by datagram, the flagged NATS ring skipped
    assert "actor.once" in far.woken
    assert [ring.split(b"\n")[1:] for ring in rings] == [[b"actor.once"]]
    assert rings[0].split(b"\n")[0].endswith(b" L")

    # A datagram from a sender no presence told of is dropped.
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
    )
    a.woken.clear()
    b.woken.clear()
    for port in ports:
        transport.sendto(b"stranger\nactor.forged", ("127.0.0.1", port))
    transport.close()
    await asyncio.sleep(0.2)
    assert len(ports) == 2  # a's and b's
    assert "actor.forged" not in a.woken + b.woken
    for replica in (far, b, a):
        await replica.stop()
    await listener.close()
