"""SQL of the operations API: selections by keyset, batched deletes, export reads (plain
rows, no ORM objects, so memory follows the batch and not the session), postmortem,
summaries, storage statistics and the supervision duties' queries."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import (
    Actor,
    ActorRequest,
    DeliveryAttempt,
    Envelope,
    Event,
    Item,
    LogEntry,
    Pipeline,
    Process,
    ProcessNode,
    process_count_deltas,
    process_counts,
)
from app.models.enums import (
    ActorStatus,
    EnvelopeStatus,
    LogLevel,
    ProcessStatus,
    RequestChannel,
    RequestStatus,
)
from app.models.processes import PROCESS_COUNT_KEY
from app.processes.repository import ProcessRow
from app.store.connection import Unit, driver_connection

Conditions = Sequence[sa.ColumnElement[bool]]
Rows = Sequence[sa.Row[*tuple[Any, ...]]]
Position = tuple[datetime, uuid.UUID]

ACTIVE = (ProcessStatus.INITIAL, ProcessStatus.RUNNING, ProcessStatus.PAUSED)
FINAL = (ProcessStatus.DONE, ProcessStatus.ERROR)


def partition(index: int, count: int) -> sa.ColumnElement[bool]:
    """A disjoint share of the processes: the last byte of the (random) UUID, modulo."""
    return sa.func.get_byte(sa.func.uuid_send(Process.id), 15) % count == index


def _before(position: Position | None) -> list[sa.ColumnElement[bool]]:
    if position is None:
        return []
    return [sa.tuple_(Process.created_at, Process.id) < sa.tuple_(*position)]


async def count_processes(session: AsyncSession, conds: Conditions) -> int:
    return int(
        await session.scalar(sa.select(sa.func.count()).select_from(Process).where(*conds)) or 0
    )


async def process_positions(
    session: AsyncSession, conds: Conditions, before: Position | None, limit: int
) -> list[Position]:
    """The next `limit` processes, newest first, after `before`."""
    rows = await session.execute(
        sa.select(Process.created_at, Process.id)
        .where(*conds, *_before(before))
        .order_by(Process.created_at.desc(), Process.id.desc())
        .limit(limit)
    )
    return [(created, ident) for created, ident in rows]


# ---------------------------------------------------------------------------- purge
def ended_process_ids(conds: Conditions) -> sa.Select[uuid.UUID]:
    return sa.select(Process.id).where(*conds, Process.status.in_(FINAL))


def count_of(ids: sa.Select[Any]) -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(ids.subquery())


async def delete_processes(session: AsyncSession, ids: list[uuid.UUID]) -> int:
    """Their nodes, logs, requests and delivery attempts go with them (ON DELETE CASCADE);
    replays of them keep existing (replay_of SET NULL). Only ended ones, checked again."""
    result = await session.execute(
        sa.delete(Process)
        .where(Process.id.in_(ids), Process.status.in_(FINAL))
        .returning(Process.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


def _active_process_needs() -> list[sa.ColumnElement[bool]]:
    produced_for = sa.exists().where(Process.id == Envelope.process_id, Process.status.in_(ACTIVE))
    triggers = sa.exists().where(
        Process.trigger_envelope_id == Envelope.id, Process.status.in_(ACTIVE)
    )
    return [~produced_for, ~triggers, Envelope.status != EnvelopeStatus.RECEIVING]


def envelope_purge_conditions(
    before: datetime | None, unreferenced: bool
) -> list[sa.ColumnElement[bool]]:
    conds = _active_process_needs()
    if before is not None:
        conds.append(Envelope.created_at < before)
    if unreferenced:
        produced_for = sa.exists().where(Process.id == Envelope.process_id)
        triggers = sa.exists().where(Process.trigger_envelope_id == Envelope.id)
        conds += [~produced_for, ~triggers]
    return conds


def envelope_ids(conds: Conditions) -> sa.Select[uuid.UUID]:
    return sa.select(Envelope.id).where(*conds)


async def delete_envelopes(session: AsyncSession, ids: list[uuid.UUID], conds: Conditions) -> int:
    """Events and items go with them (CASCADE); logs and processes name envelopes by plain
    id, so nothing blocks. The conditions are checked again at delete time."""
    result = await session.execute(
        sa.delete(Envelope)
        .where(Envelope.id.in_(ids), *conds)
        .returning(Envelope.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


def log_purge_conditions(
    before: datetime, levels: Sequence[LogLevel] | None
) -> list[sa.ColumnElement[bool]]:
    conds: list[sa.ColumnElement[bool]] = [LogEntry.time < before]
    if levels:
        conds.append(LogEntry.level.in_(levels))
    return conds


def log_ids(conds: Conditions) -> sa.Select[int]:
    return sa.select(LogEntry.id).where(*conds)


async def delete_logs(session: AsyncSession, ids: list[int], conds: Conditions) -> int:
    result = await session.execute(
        sa.delete(LogEntry)
        .where(LogEntry.id.in_(ids), *conds)
        .returning(LogEntry.id)
        .execution_options(synchronize_session=False)
    )
    return len(result.all())


# ---------------------------------------------------------------------------- export
async def export_processes(
    session: AsyncSession, conds: Conditions, before: Position | None, limit: int
) -> Rows:
    rows = await session.execute(
        sa.select(
            *Process.__table__.c,
            Pipeline.name.label("pipeline_name"),
            Pipeline.version.label("pipeline_version"),
            Actor.name.label("emitter_name"),
        )
        .outerjoin(Pipeline, Pipeline.id == Process.pipeline_id)
        .outerjoin(Actor, Actor.id == Process.emitter_id)
        .where(*conds, *_before(before))
        .order_by(Process.created_at.desc(), Process.id.desc())
        .limit(limit)
    )
    return rows.all()


async def export_nodes(session: AsyncSession, ids: list[uuid.UUID]) -> Rows:
    rows = await session.execute(
        sa.select(*ProcessNode.__table__.c)
        .where(ProcessNode.process_id.in_(ids))
        .order_by(ProcessNode.process_id, ProcessNode.created_at, ProcessNode.node_id)
    )
    return rows.all()


async def pipeline_graphs(session: AsyncSession, ids: set[uuid.UUID | None]) -> Rows:
    """(id, canonical graph) of these pipelines."""
    wanted = [i for i in ids if i is not None]
    if not wanted:
        return []
    rows = await session.execute(
        sa.select(Pipeline.id, Pipeline.graph).where(Pipeline.id.in_(wanted))
    )
    return rows.all()


async def export_logs(session: AsyncSession, ids: list[uuid.UUID]) -> Rows:
    rows = await session.execute(
        sa.select(*LogEntry.__table__.c)
        .where(LogEntry.process_id.in_(ids))
        .order_by(LogEntry.process_id, LogEntry.id)
    )
    return rows.all()


async def export_requests(session: AsyncSession, ids: list[uuid.UUID]) -> Rows:
    rows = await session.execute(
        sa.select(*ActorRequest.__table__.c, Actor.name.label("actor_name"))
        .outerjoin(Actor, Actor.id == ActorRequest.actor_id)
        .where(ActorRequest.process_id.in_(ids))
        .order_by(ActorRequest.process_id, ActorRequest.created_at)
    )
    return rows.all()


async def export_attempts(session: AsyncSession, ids: list[uuid.UUID]) -> Rows:
    requests = sa.select(ActorRequest.id).where(ActorRequest.process_id.in_(ids))
    rows = await session.execute(
        sa.select(*DeliveryAttempt.__table__.c)
        .where(DeliveryAttempt.request_id.in_(requests))
        .order_by(DeliveryAttempt.request_id, DeliveryAttempt.id)
    )
    return rows.all()


async def export_envelopes(
    session: AsyncSession, process_ids: list[uuid.UUID], trigger_ids: list[uuid.UUID]
) -> Rows:
    rows = await session.execute(
        sa.select(*Envelope.__table__.c)
        .where(sa.or_(Envelope.process_id.in_(process_ids), Envelope.id.in_(trigger_ids)))
        .order_by(Envelope.created_at, Envelope.id)
    )
    return rows.all()


async def export_events(session: AsyncSession, envelope_ids: list[uuid.UUID]) -> Rows:
    rows = await session.execute(
        sa.select(
            Event.id,
            Event.envelope_id,
            Event.position,
            Event.type,
            Event.encoding,
            Event.items_received,
            Event.size_bytes,
            Event.complete,
        )
        .where(Event.envelope_id.in_(envelope_ids))
        .order_by(Event.envelope_id, Event.position)
    )
    return rows.all()


async def export_items(session: AsyncSession, event_ids: list[uuid.UUID]) -> Rows:
    rows = await session.execute(
        sa.select(Item.event_id, Item.position, Item.data)
        .where(Item.event_id.in_(event_ids))
        .order_by(Item.event_id, Item.position)
    )
    return rows.all()


# ---------------------------------------------------------------------------- postmortem
async def postmortem_page(
    session: AsyncSession, conds: Conditions, before: Position | None, limit: int
) -> list[ProcessRow]:
    rows = await session.execute(
        sa.select(Process, Pipeline.name, Pipeline.version, Actor.name)
        .outerjoin(Pipeline, Pipeline.id == Process.pipeline_id)
        .outerjoin(Actor, Actor.id == Process.emitter_id)
        .where(Process.pm_level.is_not(None), *conds, *_before(before))
        .order_by(Process.created_at.desc(), Process.id.desc())
        .limit(limit)
    )
    return [ProcessRow(p, pn, pv, en) for p, pn, pv, en in rows]


async def first_logs(
    session: AsyncSession, ids: list[uuid.UUID], per_process: int
) -> Sequence[LogEntry]:
    """The first `per_process` log entries of each process (one query for the page)."""
    numbered = (
        sa.select(
            LogEntry.id,
            sa.func.row_number()
            .over(partition_by=LogEntry.process_id, order_by=LogEntry.id)
            .label("n"),
        )
        .where(LogEntry.process_id.in_(ids))
        .subquery()
    )
    rows = await session.execute(
        sa.select(LogEntry)
        .join(numbered, numbered.c.id == LogEntry.id)
        .where(numbered.c.n <= per_process)
        .order_by(LogEntry.process_id, LogEntry.id)
    )
    return list(rows.scalars())


# ---------------------------------------------------------------------------- summary
def _count_key(columns: sa.ColumnCollection[str, Any]) -> list[sa.ColumnElement[Any]]:
    return [columns[name] for name in PROCESS_COUNT_KEY]


async def _named_counts(session: AsyncSession, grouped: sa.Subquery) -> Rows:
    """(pipeline id, name, version, emitter id, name, status, acked, pm level, pm status,
    count) rows of counts grouped by the key, with the names of their pipeline and emitter."""
    rows = await session.execute(
        sa.select(
            grouped.c.pipeline_id,
            Pipeline.name.label("pipeline_name"),
            Pipeline.version.label("pipeline_version"),
            grouped.c.emitter_id,
            Actor.name.label("emitter_name"),
            *_count_key(grouped.c)[2:],
            grouped.c.n,
        )
        .outerjoin(Pipeline, Pipeline.id == grouped.c.pipeline_id)
        .outerjoin(Actor, Actor.id == grouped.c.emitter_id)
    )
    return rows.all()


async def counted_processes(session: AsyncSession, conds: Conditions) -> Rows:
    """The processes matching `conds`, counted row by row: as costly as the rows they
    select (a range of created_at reads that range through its index)."""
    key = _count_key(Process.__table__.c)
    grouped = sa.select(*key, sa.func.count().label("n")).where(*conds).group_by(*key).subquery()
    return await _named_counts(session, grouped)


def kept_counts() -> sa.Subquery:
    """The process counts kept beside the rows (migration 0008): the folded totals and the
    deltas not folded yet, rows of (key, n) to sum by key, in one snapshot."""
    return sa.union_all(sa.select(process_counts), sa.select(process_count_deltas)).subquery("kept")


async def kept_process_counts(
    session: AsyncSession,
    statuses: Sequence[ProcessStatus],
    pipeline_id: uuid.UUID | None,
    emitter_ids: Sequence[uuid.UUID] | None,
) -> Rows:
    """The same counts from those kept beside the rows (migration 0008): the folded totals
    plus the deltas not folded yet, in one statement (one snapshot, so exact), whatever the
    number of processes stored."""
    kept = kept_counts()
    conds: list[sa.ColumnElement[bool]] = []
    if statuses:
        conds.append(kept.c.status.in_([str(s) for s in statuses]))
    if pipeline_id is not None:
        conds.append(kept.c.pipeline_id == pipeline_id)
    if emitter_ids is not None:
        conds.append(kept.c.emitter_id.in_(emitter_ids))
    key = _count_key(kept.c)
    total = sa.func.sum(kept.c.n)
    grouped = (
        sa.select(*key, sa.cast(total, sa.BigInteger).label("n"))
        .where(*conds)
        .group_by(*key)
        .having(total != 0)
        .subquery()
    )
    return await _named_counts(session, grouped)


_COLUMNS = ", ".join(PROCESS_COUNT_KEY)
_NIL = "'00000000-0000-0000-0000-000000000000'::uuid"


def _same_key(name: str) -> str:
    """Key column `name` of totals row c equals that of m, NULL matching NULL (coalesce is
    hashable, IS NOT DISTINCT FROM is not)."""
    if name in ("pipeline_id", "emitter_id"):
        return f"coalesce(c.{name}, {_NIL}) = coalesce(m.{name}, {_NIL})"
    if name in ("pm_level", "pm_status"):
        return f"coalesce(c.{name}, '') = coalesce(m.{name}, '')"
    return f"c.{name} = m.{name}"


# The deltas visible now move into the totals: the totals of the keys they touch are deleted
# and written again with the deltas added (keys whose count falls to 0 are not). One
# statement: a reader sees the deltas or their sum, never both. Deltas committed meanwhile
# are left for the next fold. Two folds at once (the duty runs on one replica at a time) would
# still count right: a key could then have two total rows, which readers and the next fold
# add up.
FOLD_PROCESS_COUNTS = sa.text(f"""
WITH moved AS (
    DELETE FROM process_count_deltas RETURNING {_COLUMNS}, n
), touched AS (
    DELETE FROM process_counts c USING (SELECT DISTINCT {_COLUMNS} FROM moved) m
    WHERE {" AND ".join(_same_key(name) for name in PROCESS_COUNT_KEY)}
    RETURNING {", ".join(f"c.{name}" for name in PROCESS_COUNT_KEY)}, c.n
), folded AS (
    INSERT INTO process_counts ({_COLUMNS}, n)
    SELECT {_COLUMNS}, sum(n) FROM (SELECT * FROM moved UNION ALL SELECT * FROM touched) d
    GROUP BY {_COLUMNS} HAVING sum(n) <> 0
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS deltas, (SELECT count(*) FROM folded) AS keys""")  # noqa: S608


async def fold_process_counts(session: AsyncSession) -> tuple[int, int]:
    """(deltas folded, keys written)."""
    deltas, keys = (await session.execute(FOLD_PROCESS_COUNTS)).one()
    return int(deltas), int(keys)


# ---------------------------------------------------------------------------- storage
async def table_estimates(session: AsyncSession, tables: list[str]) -> Rows:
    """Per table: PostgreSQL's row estimates (planner and statistics collector) and the
    size on disk with indexes and TOAST. Catalog reads: constant time whatever the size."""
    rows = await session.execute(
        sa.text(
            "SELECT c.relname AS name, c.reltuples::bigint AS reltuples,"
            " coalesce(s.n_live_tup, 0) AS live, pg_total_relation_size(c.oid) AS bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            " AND c.relname = ANY(:tables)"
        ),
        {"tables": tables},
    )
    return rows.all()


async def exact_count(session: AsyncSession, table: sa.Table) -> int:
    return int(await session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


async def database_bytes(session: AsyncSession) -> int:
    return int(await session.scalar(sa.text("SELECT pg_database_size(current_database())")) or 0)


async def tables_to_analyze(session: AsyncSession, tables: list[str]) -> list[str]:
    """Tables changed enough since their last ANALYZE that their estimates drifted."""
    rows = await session.execute(
        sa.text(
            "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(:tables)"
            " AND (coalesce(last_analyze, last_autoanalyze) IS NULL"
            " OR n_mod_since_analyze > greatest(1000, n_live_tup / 20))"
        ),
        {"tables": tables},
    )
    return [str(name) for (name,) in rows]


async def analyze(session: AsyncSession, table: str) -> None:
    # Names come from our own metadata, never from a request.
    quoted = '"' + table.replace('"', '""') + '"'
    await session.execute(sa.text(f"ANALYZE {quoted}"))


# ---------------------------------------------------------------------------- supervision
async def stalled_waits(session: AsyncSession, limit: int) -> Rows:
    """Envelopes whose upload stalled while a running or paused process waits on them."""
    rows = await session.execute(
        sa.select(Envelope.id, Envelope.process_id, Envelope.node_id, Envelope.status_reason)
        .join(Process, Process.id == Envelope.process_id)
        .where(Envelope.status == EnvelopeStatus.STALLED, Process.status.in_(ACTIVE))
        .limit(limit)
    )
    return rows.all()


async def mark_unresponsive(session: AsyncSession, cutoff: datetime) -> Rows:
    """Enabled actors with a polled request of a running process due since before `cutoff`
    and no poll since `cutoff`: marked unresponsive (once)."""
    waiting = (
        sa.select(ActorRequest.id)
        .join(Process, Process.id == ActorRequest.process_id)
        .where(
            ActorRequest.actor_id == Actor.id,
            ActorRequest.status == RequestStatus.PENDING,
            ActorRequest.channel == RequestChannel.POLL,
            ActorRequest.available_at < cutoff,
            Process.status == ProcessStatus.RUNNING,
        )
        .exists()
    )
    rows = await session.execute(
        sa.update(Actor)
        .where(
            Actor.unresponsive.is_(False),
            Actor.status == ActorStatus.ENABLED,
            sa.or_(Actor.last_seen.is_(None), Actor.last_seen < cutoff),
            waiting,
        )
        .values(unresponsive=True, updated_at=Actor.updated_at)
        .returning(Actor.id, Actor.name, Actor.last_seen)
        # The caller drops the caches when an actor was marked, not at every pass.
        .execution_options(synchronize_session=False, xbus_cache_neutral=True)
    )
    return rows.all()


# The actor polled: note when (at most once per interval, a poll is frequent) and clear
# `unresponsive`, with the log line that says so when it was. `updated_at` stays: it tells
# when an operator changed the actor. True when the actor was unresponsive until now.
_RECORD_POLL = """
WITH before AS (SELECT id, unresponsive FROM actors WHERE id = $1 FOR UPDATE),
seen AS (
    UPDATE actors a SET last_seen = $2, unresponsive = false
    FROM before b
    WHERE a.id = b.id AND (a.last_seen IS NULL OR a.last_seen < $3 OR a.unresponsive)
    RETURNING b.unresponsive AS was
),
told AS (
    INSERT INTO log_entries (time, level, text, actor_id, processing_error)
    SELECT $2, 'notice', $4, $1, false FROM seen WHERE was
)
SELECT coalesce((SELECT was FROM seen), false)"""


async def record_poll(
    session: Unit, actor_id: uuid.UUID, now: datetime, stale_before: datetime, back: str
) -> bool:
    """The actor polled (`_RECORD_POLL`); `back` is the log line written when it was
    unresponsive until now (then True)."""
    conn = await driver_connection(session)
    return bool(await conn.fetchval(_RECORD_POLL, actor_id, now, stale_before, back))
