"""Wake-ups across replicas over NATS: a replica that commits new work rings, every other
replica wakes its local long-polls for those keys. Lives outside the bus core (which knows
nothing of NATS): it is the glue between the notifier and the NATS connection, started by
the lifespan.

A ring costs a NATS publish after each commit (a task, a TLS write, the echo read back):
about a fifth of a lone emission's CPU here. So a replica rings only while another one
listens: each doorbell says "here" on a presence subject when it starts, answers a
newcomer's "here" once, repeats it every `PRESENCE_EVERY` seconds and says "bye" when it
stops; a replica not heard for `PRESENCE_TIMEOUT` is gone. A ring missed while two replicas
learn of each other costs what any lost ring costs: waiters re-read the database at their
next recheck (1 s), caches expire within their bound."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from app.bus.notify import Notifier
from app.nats import NatsConnection

log = logging.getLogger(__name__)

SUBJECT = "xbus.internal.wake"
PRESENCE = "xbus.internal.presence"
PRESENCE_EVERY = 5.0
PRESENCE_TIMEOUT = 3 * PRESENCE_EVERY


class Peers:
    """The other replicas heard on the presence subject, and when."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._seen: dict[str, float] = {}

    def heard(self, message: bytes) -> bool:
        """Take a presence message; True when it comes from a replica not known yet (it
        learns of this one by an answer)."""
        word, _, sender = message.decode().partition(" ")
        if sender == self.origin or not sender:
            return False
        if word == "bye":
            self._seen.pop(sender, None)
            return False
        new = sender not in self._seen
        self._seen[sender] = time.monotonic()
        return new and word == "here"

    def any(self) -> bool:
        cutoff = time.monotonic() - PRESENCE_TIMEOUT
        for sender, seen in list(self._seen.items()):
            if seen < cutoff:
                del self._seen[sender]
        return bool(self._seen)


async def doorbell(nats: NatsConnection, notifier: Notifier) -> None:
    await nats.connected_event.wait()
    client = nats.client
    assert client is not None

    # Each message names its replica: a ring's sender woke its own waiters already and
    # skips its own ring (a commit wakes each waiter once).
    origin = uuid.uuid4().hex
    peers = Peers(origin)

    async def say(word: str) -> None:
        if client.is_connected:
            await client.publish(PRESENCE, f"{word} {origin}".encode())

    async def ring(keys: list[str]) -> None:
        if client.is_connected and peers.any():
            await client.publish(SUBJECT, "\n".join([origin, *keys]).encode())

    async def on_ring(msg: Any) -> None:
        sender, *keys = msg.data.decode().split("\n")
        if sender != origin:
            notifier.wake_local(keys)

    async def on_presence(msg: Any) -> None:
        if peers.heard(msg.data):
            await say("seen")  # the newcomer learns of this replica at once

    subscriptions = [
        await client.subscribe(SUBJECT, cb=on_ring),
        await client.subscribe(PRESENCE, cb=on_presence),
    ]
    notifier.remote = ring
    try:
        while True:
            with contextlib.suppress(Exception):
                await say("here")
            await asyncio.sleep(PRESENCE_EVERY)
    finally:
        notifier.remote = None
        with contextlib.suppress(Exception):
            await say("bye")
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
