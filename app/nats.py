"""The NATS connection owned by the lifespan: connects in the background, reconnects
forever, drains on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from pathlib import Path

import nats
from nats.aio.client import Client

log = logging.getLogger(__name__)


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


class NatsConnection:
    def __init__(self, url: str, name: str = "xbusd", tls: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.name = name
        self.tls = tls
        self.client: Client | None = None
        self._connecting: asyncio.Task[None] | None = None
        self.connected_event = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect_loop(), name="nats-connect")

    async def _connect_loop(self) -> None:
        delay = 0.2
        while True:
            try:
                self.client = await nats.connect(
                    # Several servers (a cluster), comma-separated: tried in turn, and the
                    # others the cluster announces are learnt at connection.
                    [url.strip() for url in self.url.split(",") if url.strip()],
                    name=self.name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=5,
                    tls=self.tls,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self.connected_event.set()
                log.info("connected to NATS at %s", self.url)
                return
            except Exception as exc:
                log.warning(
                    "NATS at %s not reachable (%s); retrying in %.1f s", self.url, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _on_error(self, exc: Exception) -> None:
        log.warning("NATS error: %s", exc)

    async def _on_disconnected(self) -> None:
        log.warning("disconnected from NATS")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self.client is not None and not self.client.is_closed:
            try:
                await asyncio.wait_for(self.client.drain(), 10)
            except Exception:
                await self.client.close()
