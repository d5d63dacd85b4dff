"""Background duties of every replica: redeliver requests whose lease expired (or end them
past their attempt limit), mark stalled envelope uploads, and report running processes that
nothing will move (stranded: no request open). Row locks with SKIP LOCKED make running them
on every replica safe; the stranded report is read-only."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from app.bus.director import Director
from app.db import Database
from app.envelopes.repository import mark_stalled
from app.store import processes as store
from app.store.connection import driver_connection

log = logging.getLogger(__name__)


STRANDED_EVERY = 60.0  # seconds between two looks for stranded processes
STRANDED_GRACE = 30.0  # a process unchanged for this long, with no request open, is stranded
STRANDED_LISTED = 20  # most processes named per report


async def stranded(
    db: Database, grace: float = STRANDED_GRACE, most: int = 1000
) -> list[uuid.UUID]:
    """Running processes with no request open and no change for `grace` seconds."""
    async with db.session() as session:
        conn = await driver_connection(session, begin=False)
        return [row[0] for row in await conn.fetch(store.STRANDED, grace, most)]


async def report_stranded(db: Database) -> int:
    """Log the stranded processes (ERROR): nothing will move them; an operator cancels or
    replays them. Returns how many there are (up to 1000)."""
    found = await stranded(db)
    if found:
        named = ", ".join(str(pid) for pid in found[:STRANDED_LISTED])
        more = f" and {len(found) - STRANDED_LISTED} more" if len(found) > STRANDED_LISTED else ""
        log.error(
            "%d running process(es) with no request open: nothing will move them (cancel or "
            "replay them; their log says what they did last): %s%s",
            len(found),
            named,
            more,
        )
    return len(found)


async def supervise(
    db: Database, director: Director, stall_timeout: float, interval: float = 1.0
) -> None:
    next_stranded = time.monotonic() + STRANDED_EVERY
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
            if time.monotonic() >= next_stranded:
                next_stranded = time.monotonic() + STRANDED_EVERY
                await report_stranded(db)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervisor pass failed; retrying")
        await asyncio.sleep(interval)
