"""Wake-ups across replicas: a replica that commits new work rings, every other replica wakes
its local long-polls for those keys. Lives outside the bus core (which knows nothing of
NATS): it is the glue between the notifier and the NATS connection, started by the
lifespan.

A ring over NATS costs a publish after each commit (a task, a TLS write, nats-server's hop,
the other replica's TLS read): about a fifth of a lone emission's CPU here. So a replica
rings only while another one listens: each doorbell says "here" on a presence subject when
it starts, answers a newcomer's "here" once, repeats it every `PRESENCE_EVERY` seconds and
says "bye" when it stops; a replica not heard for `PRESENCE_TIMEOUT` is gone. A ring missed
while two replicas learn of each other costs what any lost ring costs: waiters re-read the
database at their next recheck (1 s), caches expire within their bound.

Replicas on one host (the workers of `xbusd serve --workers N`, the default) ring each other
by a datagram on 127.0.0.1 instead: each names, in its presence, its host (the boot and the
network namespace, where 127.0.0.1 is the same: Linux) and the port it listens on; a ring
goes to the peers of the same host by datagram, and over NATS only when a peer elsewhere
listens (flagged, so that the peers of this host, rung already, skip it). A datagram is
taken only from a peer known by its presence (its name is random, told over NATS only)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from app.bus.notify import Notifier
from app.nats import NatsConnection

log = logging.getLogger(__name__)

SUBJECT = "xbus.internal.wake"
PRESENCE = "xbus.internal.presence"
PRESENCE_EVERY = 5.0
PRESENCE_TIMEOUT = 3 * PRESENCE_EVERY
LOOPBACK = "127.0.0.1"
# A ring larger than this (a batch's many keys) goes over NATS, also to the peers of this host.
DATAGRAM_MAX = 60_000
# The flag of a NATS ring that the peers of its sender's host had by datagram.
_RUNG_LOCALLY = "L"


def host_scope() -> str | None:
    """What two processes share when 127.0.0.1 is the same for both: the boot and the
    network namespace (Linux). None where it cannot be told: rings then go over NATS."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        netns = os.readlink("/proc/self/ns/net")
    except OSError:
        return None
    scope = f"{boot}/{netns}"
    return scope if scope.isprintable() and " " not in scope else None


class Peers:
    """The other replicas heard on the presence subject, and when; those of this host with
    the port they take datagrams on."""

    def __init__(self, origin: str, scope: str | None = None) -> None:
        self.origin = origin
        self.scope = scope
        self._seen: dict[str, float] = {}
        self._ports: dict[str, int] = {}  # peers of this host

    def heard(self, message: bytes) -> bool:
        """Take a presence message ("<word> <sender>[ <scope> <port>]"); True when it comes
        from a replica not known yet (it learns of this one by an answer)."""
        word, _, rest = message.decode(errors="replace").partition(" ")
        sender, *where = rest.split(" ")
        if sender == self.origin or not sender:
            return False
        if word == "bye":
            self._seen.pop(sender, None)
            self._ports.pop(sender, None)
            return False
        new = sender not in self._seen
        self._seen[sender] = time.monotonic()
        if self.scope is not None and len(where) == 2 and where[0] == self.scope:
            with contextlib.suppress(ValueError):
                self._ports[sender] = int(where[1])
        return new and word == "here"

    def targets(self) -> tuple[list[int], bool]:
        """Where a ring goes: the ports of the live peers of this host, and whether a peer
        elsewhere listens (over NATS). Peers not heard for PRESENCE_TIMEOUT are gone."""
        cutoff = time.monotonic() - PRESENCE_TIMEOUT
        for sender, seen in list(self._seen.items()):
            if seen < cutoff:
                del self._seen[sender]
                self._ports.pop(sender, None)
        local = list(self._ports.values())
        return local, len(local) < len(self._seen)

    def is_local(self, sender: str) -> bool:
        return sender in self._ports


class _Datagrams(asyncio.DatagramProtocol):
    """Rings of the peers of this host."""

    def __init__(self, peers: Peers, notifier: Notifier) -> None:
        self.peers = peers
        self.notifier = notifier

    def datagram_received(self, data: bytes, addr: Any) -> None:
        sender, *keys = data.decode(errors="replace").split("\n")
        if self.peers.is_local(sender):
            self.notifier.wake_local(keys)


async def doorbell(nats: NatsConnection, notifier: Notifier, *, local: bool = True) -> None:
    """`local=False`: every ring over NATS (tests of a replica on another host)."""
    await nats.connected_event.wait()
    client = nats.client
    assert client is not None

    # Each message names its replica: a ring's sender woke its own waiters already and
    # skips its own ring (a commit wakes each waiter once).
    origin = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    endpoint: asyncio.DatagramTransport | None = None
    scope = host_scope() if local else None
    peers = Peers(origin, scope)
    where = ""
    if scope is not None:
        try:
            endpoint, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(peers, notifier), local_addr=(LOOPBACK, 0)
            )
            where = f" {scope} {endpoint.get_extra_info('sockname')[1]}"
        except OSError as exc:
            log.warning(
                "doorbell: no datagram endpoint on %s (%s): rings go over NATS", LOOPBACK, exc
            )
            peers.scope = None

    async def say(word: str) -> None:
        if client.is_connected:
            await client.publish(PRESENCE, f"{word} {origin}{where}".encode())

    async def ring(keys: list[str]) -> None:
        ports, elsewhere = peers.targets()
        lines = "".join(f"\n{key}" for key in keys)  # after the sender's line
        data = f"{origin}{lines}".encode()
        sender = origin
        if ports and endpoint is not None and len(data) <= DATAGRAM_MAX:
            for port in ports:
                endpoint.sendto(data, (LOOPBACK, port))
            sender = f"{origin} {_RUNG_LOCALLY}"
        elif ports:
            elsewhere = True  # too large for a datagram: all of them over NATS
        if elsewhere and client.is_connected:
            await client.publish(SUBJECT, f"{sender}{lines}".encode())

    async def on_ring(msg: Any) -> None:
        first, *keys = msg.data.decode().split("\n")
        sender, _, flag = first.partition(" ")
        if sender == origin or (flag == _RUNG_LOCALLY and peers.is_local(sender)):
            return
        notifier.wake_local(keys)

    async def on_presence(msg: Any) -> None:
        if peers.heard(msg.data):
            await say("seen")  # the newcomer learns of this replica at once

    subscriptions = []
    try:
        subscriptions.append(await client.subscribe(SUBJECT, cb=on_ring))
        subscriptions.append(await client.subscribe(PRESENCE, cb=on_presence))
        notifier.remote = ring
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
        if endpoint is not None:
            endpoint.close()
