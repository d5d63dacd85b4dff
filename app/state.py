"""What the lifespan owns, reachable from requests as `request.app.state.xbus`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from app.bus.director import Director
from app.bus.notify import Notifier
from app.config import Settings
from app.db import Database
from app.nats import NatsConnection


@dataclass
class AppState:
    settings: Settings
    db: Database
    nats: NatsConnection | None
    director: Director
    notifier: Notifier
    migrated: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
