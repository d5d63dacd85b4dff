"""Background duties of every replica: redeliver requests whose lease expired (or end them
past their attempt limit) and mark stalled envelope uploads. Row locks with SKIP LOCKED make
running them on every replica safe."""

from __future__ import annotations

import asyncio
import logging

from app.bus.director import Director
from app.db import Database
from app.envelopes.service import mark_stalled

log = logging.getLogger(__name__)


async def supervise(
    db: Database, director: Director, stall_timeout: float, interval: float = 1.0
) -> None:
    while True:
        try:
            while True:
                async with db.session() as session:
                    handled = await director.expire_leases(session)
                if handled < 100:
                    break
            async with db.session() as session:
                stalled = await mark_stalled(session, stall_timeout)
            if stalled:
                log.warning("%d envelope upload(s) stalled", stalled)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervisor pass failed; retrying")
        await asyncio.sleep(interval)
