"""Supervision passes, run as background duties once across replicas (app/bus/singleton.py):
processes waiting on a stalled envelope upload are canceled, polling actors that leave their
requests waiting are marked unresponsive (and cleared when they poll again), storage
statistics are kept fresh, and process count deltas are folded into their totals. Lease
expiry stays with the supervisor of every replica (app/bus/supervisor.py): it is safe anywhere
thanks to SKIP LOCKED."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

from app.actors.access import ActorInfo
from app.bus import control
from app.bus.director import Director, add_log, utcnow
from app.bus.notify import CONFIG
from app.commit_hooks import notify_after_commit
from app.db import Database
from app.envelopes.repository import mark_stalled
from app.models import Actor
from app.models.enums import LogLevel
from app.ops import repository, stats
from app.store.connection import Unit
from app.store.processes import clean_text

log = logging.getLogger(__name__)

_BATCH = 100
# A poll refreshes last_seen at most this often: polling is frequent, writes are not free.
_SEEN_RESOLUTION = timedelta(seconds=1)


async def cancel_stalled_emissions(db: Database, director: Director, stall_timeout: float) -> int:
    async with db.session() as session:
        await mark_stalled(session, stall_timeout)
    canceled = 0
    while True:
        async with db.session() as session:
            waits = await repository.stalled_waits(session, _BATCH)
        for envelope_id, process_id, node_id, why in waits:
            where = f" (output of node {node_id})" if node_id else ""
            reason = (
                f"canceled: the upload of envelope {envelope_id}{where} stalled: "
                f"{why or f'no fragment received for {stall_timeout:g} s'}"
            )
            async with db.session() as session:
                if await control.cancel_stalled(session, director, process_id, reason):
                    canceled += 1
                    log.warning("process %s %s", process_id, reason)
        if len(waits) < _BATCH:
            return canceled


async def mark_unresponsive_actors(db: Database, after: float) -> int:
    cutoff = utcnow() - timedelta(seconds=after)
    async with db.session() as session:
        marked = await repository.mark_unresponsive(session, cutoff)
        if marked:
            # The actors as cached are stale; a pass that marks nobody (the usual one, every
            # supervision interval) leaves the caches of every replica alone.
            notify_after_commit(session, CONFIG)
        for actor_id, name, last_seen in marked:
            since = f"since {last_seen.isoformat()}" if last_seen else "ever"
            text = (
                f"actor {name} is unresponsive: its requests have waited more than {after:g} s "
                f"and it has not polled {since}"
            )
            add_log(session, LogLevel.ERROR, text, actor_id=actor_id)
            log.error("%s", text)
    return len(marked)


# When this process last wrote each actor's poll (the actor as cached may be older).
_polls_written: dict[uuid.UUID, float] = {}


async def record_poll(session: Unit, actor: Actor | ActorInfo) -> None:
    """An actor polls for requests: it is alive."""
    now = utcnow()
    if not actor.unresponsive:
        if actor.last_seen is not None and actor.last_seen >= now - _SEEN_RESOLUTION:
            return  # seen within the resolution, as loaded: no write
        written = _polls_written.get(actor.id)
        if written is not None and time.monotonic() - written < _SEEN_RESOLUTION.total_seconds():
            return
    if len(_polls_written) > 100_000:
        _polls_written.clear()
    _polls_written[actor.id] = time.monotonic()
    back = clean_text(f"actor {actor.name} polls again: no longer unresponsive")
    if await repository.record_poll(session, actor.id, now, now - _SEEN_RESOLUTION, back):
        log.info("actor %s polls again: no longer unresponsive", actor.name)
        notify_after_commit(session, CONFIG)  # its cached state is stale


async def refresh_storage_stats(db: Database) -> None:
    async with db.session() as session:
        analyzed = await stats.refresh_estimates(session)
        snapshot = await stats.storage_stats(session, exact_max_rows=0)
    log.info(
        "storage (%s analyzed): %s",
        ", ".join(analyzed) or "none",
        "; ".join(f"{k.kind} ~{k.rows} rows {k.bytes // 1024} KiB" for k in snapshot.kinds),
    )


async def fold_process_counts(db: Database) -> int:
    """Moves the process count deltas written since the last pass into their totals (they
    are exact either way: this keeps the summary's read short). Returns the deltas moved."""
    async with db.session() as session:
        deltas, keys = await repository.fold_process_counts(session)
    if deltas:
        log.debug("process counts: %d deltas folded into %d totals", deltas, keys)
    return deltas
