"""Wake-ups across replicas over NATS: a replica that commits new work rings, every replica
wakes its local long-polls for those keys. Lives outside the bus core (which knows nothing of
NATS): it is the glue between the notifier and the NATS connection, started by the
lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from app.bus.notify import Notifier
from app.nats import NatsConnection

log = logging.getLogger(__name__)

SUBJECT = "xbus.internal.wake"


async def doorbell(nats: NatsConnection, notifier: Notifier) -> None:
    await nats.connected_event.wait()
    client = nats.client
    assert client is not None

    # The first line names the ringing replica: it woke its own waiters already, so it skips
    # its own ring (no echo: a commit wakes each waiter once).
    origin = uuid.uuid4().hex

    async def ring(keys: list[str]) -> None:
        if client.is_connected:
            await client.publish(SUBJECT, "\n".join([origin, *keys]).encode())

    async def on_ring(msg: object) -> None:
        data: bytes = msg.data  # type: ignore[attr-defined]
        sender, *keys = data.decode().split("\n")
        if sender != origin:
            notifier.wake_local(keys)

    subscription = await client.subscribe(SUBJECT, cb=on_ring)
    notifier.remote = ring
    try:
        await asyncio.Event().wait()
    finally:
        notifier.remote = None
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
