"""`demo.helloworld`: an emitter that sends a message every `interval` seconds.

Settings: `message` ("Hello world"), `interval` (1, seconds), `count` (0: no end),
`event-type` ("demo.simplemessage"), `output` ("default")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)


class HelloWorld:
    def __init__(self, actor: Any) -> None:
        self.actor = actor
        settings = actor.settings
        self.message = str(settings.get("message", "Hello world"))
        self.interval = float(settings.get("interval", 1))
        self.count = int(settings.get("count", 0))
        self.event_type = str(settings.get("event-type", "demo.simplemessage"))
        self.output = str(settings.get("output", "default"))
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def emit_once(self) -> None:
        writer = self.actor.open_output(output=self.output, eventtypes=[self.event_type])
        await writer.add_items(self.event_type, self.message.encode("utf-8"))
        await writer.close()
        self.sent += 1

    async def run(self) -> None:
        while not self.count or self.sent < self.count:
            try:
                await self.emit_once()
                log.info("%s: sent %r (%d)", self.actor.name, self.message, self.sent)
            except asyncio.CancelledError:
                raise
            except Exception:
                # One failed emission (the bus restarting, say) does not end the emitter.
                log.exception("%s: emission failed", self.actor.name)
            await asyncio.sleep(self.interval)

    async def startup(self) -> None:
        self.task = asyncio.create_task(self.run(), name=f"helloworld:{self.actor.name}")

    async def shutdown(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
