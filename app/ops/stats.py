"""Numbers for dashboards: the process summary (counts by pipeline, emitter, status, acked)
and storage statistics (rows and bytes per kind of stored thing)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Base
from app.ops import repository, selection
from app.ops.schemas import (
    EmitterCount,
    KindStats,
    PipelineCount,
    ProcessSelection,
    ProcessSummary,
    StorageStats,
    TableStats,
)

# Kinds of stored things, each with its main table first.
KINDS: dict[str, tuple[str, ...]] = {
    "processes": ("processes", "process_nodes", "process_counts", "process_count_deltas"),
    "logs": ("log_entries",),
    "requests": ("requests", "delivery_attempts"),
    "envelopes": ("envelopes", "events", "items", "idempotency_keys"),
    "accounts": ("accounts",),
    "actors": ("actors",),
    "pipelines": ("pipelines",),
}


def bus_tables() -> dict[str, sa.Table]:
    return {table.name: table for table in Base.metadata.sorted_tables}


async def process_summary(session: AsyncSession, wanted: ProcessSelection) -> ProcessSummary:
    """Counts of the processes `wanted` selects (its status, pipeline, emitter and created
    range). Without a created range they come from the counts kept beside the rows, at a
    cost that does not grow with the history; a range is counted row by row (through the
    created_at index: as costly as the processes in it)."""
    if wanted.created_after is None and wanted.created_before is None:
        rows = await repository.kept_process_counts(
            session,
            wanted.status or [],
            wanted.pipeline_id,
            await selection.emitter_ids(session, wanted),
        )
    else:
        rows = await repository.counted_processes(
            session, await selection.conditions(session, wanted)
        )
    by_status: Counter[str] = Counter()
    acked = 0
    pipelines: dict[Any, dict[str, Any]] = {}
    emitters: dict[Any, dict[str, Any]] = {}
    postmortem: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        status = str(row.status)
        by_status[status] += row.n
        if row.result_acked:
            acked += row.n
        pipeline = pipelines.setdefault(
            row.pipeline_id,
            {"name": row.pipeline_name, "version": row.pipeline_version, "counts": Counter()},
        )
        pipeline["counts"][status] += row.n
        emitter = emitters.setdefault(
            row.emitter_id, {"name": row.emitter_name, "counts": Counter()}
        )
        emitter["counts"][status] += row.n
        if row.pm_level is not None:
            postmortem[str(row.pm_level)][str(row.pm_status or "none")] += row.n
    total = sum(by_status.values())
    return ProcessSummary(
        total=total,
        by_status=dict(by_status),
        acked=acked,
        not_acked=total - acked,
        by_pipeline=sorted(
            (
                PipelineCount(
                    pipeline_id=pid,
                    name=p["name"],
                    version=p["version"],
                    total=sum(p["counts"].values()),
                    by_status=dict(p["counts"]),
                )
                for pid, p in pipelines.items()
            ),
            key=lambda c: (-c.total, c.name or "", c.version or ""),
        ),
        by_emitter=sorted(
            (
                EmitterCount(
                    emitter_id=eid,
                    name=e["name"],
                    total=sum(e["counts"].values()),
                    by_status=dict(e["counts"]),
                )
                for eid, e in emitters.items()
            ),
            key=lambda c: (-c.total, c.name or ""),
        ),
        postmortem={level: dict(counts) for level, counts in postmortem.items()},
    )


async def storage_stats(session: AsyncSession, exact_max_rows: int) -> StorageStats:
    """Rows per table: counted when PostgreSQL estimates fewer than `exact_max_rows` (cheap),
    else its estimate. Bytes: the table with its indexes and TOAST."""
    tables = bus_tables()
    estimates = {row.name: row for row in await repository.table_estimates(session, sorted(tables))}
    measured: dict[str, TableStats] = {}
    for name, table in tables.items():
        row = estimates.get(name)
        if row is None:
            continue
        estimate = max(int(row.reltuples), int(row.live))
        exact = estimate < exact_max_rows
        rows = await repository.exact_count(session, table) if exact else estimate
        measured[name] = TableStats(table=name, rows=rows, exact=exact, bytes=int(row.bytes))
    grouped = {**KINDS}
    known = {name for names in KINDS.values() for name in names}
    for name in sorted(measured):
        if name not in known:
            grouped[name] = (name,)  # tables other packages add: a kind of their own
    kinds = []
    for kind, names in grouped.items():
        parts = [measured[n] for n in names if n in measured]
        if not parts:
            continue
        kinds.append(
            KindStats(
                kind=kind,
                rows=parts[0].rows,
                exact=parts[0].exact,
                bytes=sum(p.bytes for p in parts),
                tables=parts,
            )
        )
    return StorageStats(
        computed_at=datetime.now(UTC),
        database_bytes=await repository.database_bytes(session),
        kinds=kinds,
    )


async def refresh_estimates(session: AsyncSession) -> list[str]:
    """ANALYZE the tables whose statistics drifted (after purges, bulk loads), so that row
    estimates (of /api/v1/stats and the planner) follow. Returns the tables analyzed."""
    stale = await repository.tables_to_analyze(session, sorted(bus_tables()))
    for name in stale:
        await repository.analyze(session, name)
    return stale
