"""A python-xbus 0.4.0 consumer, unchanged, in a process of its own, with python-xbus's own
reconnection on (`no-reconnect: false`): prints one JSON line per envelope it consumes
({"items": [...]}) and serves until its standard input closes.

    python -m tests.nats_api.consumer_actor SPEC.json

SPEC: {"conf": <python-xbus configuration>, "workdir": ..., "consumer": <actor name>}."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from xbus import client as xbus_client


async def main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    client = xbus_client.Client(dict(spec["conf"]), spec["workdir"])
    await client.connect()

    async def consume(apc: Any) -> None:
        envelope = await apc.read_envelope_complete("default", 30)
        items = [i.decode() for e in envelope.events for i in e.items]
        print(json.dumps({"items": items}), flush=True)

    await client.get_actor(spec["consumer"]).subscribe(consume)
    print(json.dumps({"ready": True}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await client.shutdown()
    await client.close()


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
