"""python-xbus 0.4.0 actors, unchanged (its pure-Python CRC-32C included), in a process of
their own, as they run in the field: an emitter, a worker that reads its whole input and
forwards it, and a consumer that reads it and prints what it got.

    python -m tests.nats_api.relay_actors SPEC.json

SPEC: {"conf": <python-xbus configuration>, "workdir": ..., "emitter": ..., "worker": ...,
"consumer": ..., "event_type": ..., "size": bytes, "item": bytes, "read_timeout": s}. Prints
one JSON line per consumed envelope ({"received": bytes, "sha256": hex}); once the consumer
got the envelope, serves on until its standard input closes (its answers still have to reach
the bus), then shuts down. Exits with an error if nothing arrives in `read_timeout` x 3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from typing import Any

from xbus import client as xbus_client


def payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


def note(what: str) -> None:
    """Progress on stderr, for the test's report when something hangs."""
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


async def main(spec: dict[str, Any]) -> None:
    client = xbus_client.Client(dict(spec["conf"]), spec["workdir"])
    await client.connect()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    timeout = spec["read_timeout"]

    async def relay(apc: Any) -> None:
        note("worker: request received")
        await apc.read_envelope_complete("default", timeout)
        note("worker: input read, forwarding")
        await apc.forward("default", input_name="default")
        note("worker: forwarded")

    async def consume(apc: Any) -> None:
        note("consumer: request received")
        envelope = await apc.read_envelope_complete("default", timeout)
        data = b"".join(i for e in envelope.events for i in e.items)
        print(json.dumps({"received": len(data), "sha256": hashlib.sha256(data).hexdigest()}))
        sys.stdout.flush()
        if not done.done():
            done.set_result(None)

    await client.get_actor(spec["worker"]).subscribe(relay)
    await client.get_actor(spec["consumer"]).subscribe(consume)
    note("connected, actors subscribed")
    data = payload(spec["size"])
    writer = client.get_actor(spec["emitter"]).open_output("default", None)
    message = writer.open_message(spec["event_type"])
    for start in range(0, len(data), spec["item"]):
        await message.write(data[start : start + spec["item"]])
    await message.close()
    await writer.last_message()
    note("emitted")
    try:
        await asyncio.wait_for(done, timeout * 3)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await client.shutdown()
        await client.close()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
