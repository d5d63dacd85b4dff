"""`demo.print-to-console`: a consumer that reads each input envelope whole and prints its
events, one line per item (text when it is UTF-8, else its length and base64).

Settings: `timeout` (60, seconds to receive a whole envelope)."""

from __future__ import annotations

import base64
import uuid
from typing import Any


def render_item(item: bytes) -> str:
    try:
        return item.decode("utf-8")
    except UnicodeDecodeError:
        return f"<{len(item)} bytes> {base64.b64encode(item).decode()}"


class PrintToConsole:
    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.timeout = float(actor.settings.get("timeout", 60))

    async def process(self, apc: Any) -> None:
        for request_input in apc.request.inputs:
            envelope = await apc.read_envelope_complete(request_input.name, self.timeout)
            envelope_id = uuid.UUID(bytes=envelope.id) if envelope.id else None
            for event in envelope.events:
                for item in event.items:
                    print(
                        f"print-to-console: {self.actor.name} {request_input.name} "
                        f"{envelope_id} {event.type}: {render_item(item)}",
                        flush=True,
                    )
