"""What the lifespan owns, reachable from requests as `request.app.state.xbus`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from app.bus.director import Director
from app.bus.notify import Notifier
from app.certs.pki import CertificateAuthority
from app.config import Settings
from app.db import Database
from app.envelopes.group import EmissionGroups
from app.nats import NatsConnection
from app.store.cache import Cache

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    db: Database
    nats: NatsConnection | None
    director: Director
    notifier: Notifier
    # Principals, actors, routes: dropped on any change of them (app/store/cache.py).
    cache: Cache
    ca: CertificateAuthority | None = None
    # Group commit of single emissions (None: each its own transaction).
    emissions: EmissionGroups | None = None
    migrated: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Called after a change to accounts' certificates or status (accept, reject, renew,
    # reset): the NATS layer refreshes who may connect.
    accounts_changed_hooks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Set once the Xbus NATS services are subscribed.
    nats_api_ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def accounts_changed(self) -> None:
        for hook in self.accounts_changed_hooks:
            await hook()

    async def commit_and_announce(self, session: AsyncSession) -> None:
        """Commit now, then tell the NATS layer who may connect: it must see the change."""
        await session.commit()
        try:
            await self.accounts_changed()
        except Exception:
            # The change is stored; the NATS layer also refreshes on its own.
            log.exception("accounts_changed hook failed")
