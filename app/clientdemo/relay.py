"""`demo.relay`: a worker that forwards its `default` input, unchanged, to its `default`
output once the envelope is complete.

Settings: `processing-duration` (0, seconds to wait before forwarding), `timeout` (60,
seconds to receive the whole input)."""

from __future__ import annotations

import asyncio
from typing import Any


class Relay:
    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.duration = float(actor.settings.get("processing-duration", 0))
        self.timeout = float(actor.settings.get("timeout", 60))

    async def process(self, apc: Any) -> None:
        await apc.read_envelope_complete("default", self.timeout)
        if self.duration:
            await asyncio.sleep(self.duration)
        await apc.forward("default", input_name="default")
