"""Seed the bus database with many processes, by SQL, for `bench.http_bus --history/--backlog`.

Rows are copied from a template process the bus itself wrote (one of the bench's own, done or
waiting), so they are exactly what the bus writes: its process, trigger envelope, events,
items, process nodes, requests and log entries, each copy with new ids, the envelope and
request ids rewritten where JSON columns mention them, and every timestamp moved back by
`spacing` per copy (the newest copy just before the template, the oldest N x spacing earlier).
Each batch is one `INSERT ... SELECT` per table over `generate_series`, one transaction.
Column lists come from `information_schema`, so a column added later is copied as well.

For speed, the seeding session commits with `synchronous_commit = off`, skips the per-row
foreign-key triggers (`session_replication_role = replica`: the copies are consistent by
construction; the process counts, kept by triggers too, are added by hand), and from 100,000
copies drops the seeded tables' secondary indexes and builds them again at the end (so they
are freshly built, denser than a live bus's would be).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

BATCH = 50_000
# The key of the process counts kept beside the rows (migration 0008), where they are.
_COUNT_KEY = "pipeline_id, emitter_id, status, result_acked, pm_level, pm_status"

# Tables in insertion order (foreign keys), with the template rows each takes.
# $1: the template process id, $2: its trigger envelope id.
_TEMPLATE_ROWS = {
    "processes": "t.id = $1",
    "envelopes": "t.id = $2 OR t.process_id = $1",
    "events": "t.envelope_id IN (SELECT id FROM envelopes WHERE id = $2 OR process_id = $1)",
    "items": "t.event_id IN (SELECT old FROM seed_events)",
    "process_nodes": "t.process_id = $1",
    "requests": "t.process_id = $1",
    "log_entries": "t.process_id = $1",
}


async def _columns(conn: Any, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = $1 "
        "AND is_identity = 'NO' AND is_generated = 'NEVER' "
        "AND coalesce(column_default, '') NOT LIKE 'nextval(%' ORDER BY ordinal_position",
        table,
    )
    return [(r["column_name"], r["data_type"]) for r in rows]


def _expressions(table: str, columns: list[tuple[str, str]], rewrite: str) -> list[str]:
    """What each column of a copy holds. In scope: t (the template row), s (the copy's ids:
    g, process, delta), env (old -> new envelope ids of copy g), ev (events), rq (requests)."""
    ids = {
        "processes": {"id": "s.process", "trigger_envelope_id": "env_t.new"},
        "envelopes": {
            "id": "env.new",
            "process_id": "CASE WHEN t.process_id = $1 THEN s.process ELSE t.process_id END",
        },
        "events": {"id": "ev.new", "envelope_id": "env.new"},
        "items": {"event_id": "ev.new"},
        "process_nodes": {"process_id": "s.process"},
        "requests": {"id": "rq.new", "process_id": "s.process"},
        "log_entries": {
            "process_id": "s.process",
            "envelope_id": "coalesce(env_l.new, t.envelope_id)",
            "request_id": "coalesce(rq_l.new, t.request_id)",
        },
    }[table]
    out = []
    for name, data_type in columns:
        if name in ids:
            out.append(ids[name])
        elif data_type == "timestamp with time zone":
            out.append(f"t.{name} - s.delta")
        elif data_type == "jsonb":
            # Envelope ids appear in node inputs/outputs and request inputs.
            out.append(rewrite.format(column=f"t.{name}"))
        else:
            out.append(f"t.{name}")
    return out


def _joins(table: str) -> str:
    return {
        "processes": "CROSS JOIN seed_ids s "
        "LEFT JOIN seed_envelopes env_t ON env_t.g = s.g AND env_t.old = t.trigger_envelope_id",
        "envelopes": "CROSS JOIN seed_ids s JOIN seed_envelopes env ON env.g = s.g "
        "AND env.old = t.id",
        "events": "JOIN seed_events ev ON ev.old = t.id JOIN seed_ids s ON s.g = ev.g "
        "JOIN seed_envelopes env ON env.g = s.g AND env.old = t.envelope_id",
        "items": "JOIN seed_events ev ON ev.old = t.event_id JOIN seed_ids s ON s.g = ev.g",
        "process_nodes": "CROSS JOIN seed_ids s",
        "requests": "CROSS JOIN seed_ids s JOIN seed_requests rq ON rq.g = s.g AND rq.old = t.id",
        "log_entries": "CROSS JOIN seed_ids s "
        "LEFT JOIN seed_envelopes env_l ON env_l.g = s.g AND env_l.old = t.envelope_id "
        "LEFT JOIN seed_requests rq_l ON rq_l.g = s.g AND rq_l.old = t.request_id",
    }[table]


async def clone_process(
    conn: Any,
    template: uuid.UUID,
    count: int,
    spacing_s: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """`count` copies of process `template` and everything of it (see the module doc);
    returns the seconds spent inserting into each table."""
    trigger = await conn.fetchval(
        "SELECT trigger_envelope_id FROM processes WHERE id = $1", template
    )
    if trigger is None:
        raise RuntimeError(f"process {template} not found or without a trigger envelope")
    envelopes = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM envelopes WHERE id = $2 OR process_id = $1 ORDER BY id",
            template,
            trigger,
        )
    ]
    requests = [
        r["id"]
        for r in await conn.fetch(
            "SELECT id FROM requests WHERE process_id = $1 ORDER BY id", template
        )
    ]
    # Each copy's new ids: columns env_0.., req_0.. of seed_ids; the template's ids in JSON
    # values are replaced by plain replace() calls, one per id.
    rewrite = "{column}::text"
    for i, old in enumerate(envelopes):
        rewrite = f"replace({rewrite}, '{old}', s.env_{i}::text)"
    for i, old in enumerate(requests):
        rewrite = f"replace({rewrite}, '{old}', s.req_{i}::text)"
    rewrite = f"({rewrite})::jsonb"
    new_ids = "".join(
        [f", gen_random_uuid() AS env_{i}" for i in range(len(envelopes))]
        + [f", gen_random_uuid() AS req_{i}" for i in range(len(requests))]
    )

    def unpivot(prefix: str, count: int) -> str:
        array = ", ".join(f"s.{prefix}_{i}" for i in range(count)) or "NULL::uuid"
        return (
            f"SELECT s.g, o.old, (ARRAY[{array}])[o.i] AS new FROM seed_ids s "
            "CROSS JOIN unnest($1::uuid[]) WITH ORDINALITY o(old, i)"
        )

    statements = {}
    for table in _TEMPLATE_ROWS:
        columns = await _columns(conn, table)
        names = ", ".join(name for name, _ in columns)
        exprs = ", ".join(_expressions(table, columns, rewrite))
        statements[table] = (
            f"INSERT INTO {table} ({names}) SELECT {exprs} FROM {table} t {_joins(table)} "
            f"WHERE {_TEMPLATE_ROWS[table]}"
        )
    timings: dict[str, float] = {}
    # Where the database keeps process counts and this session skips the triggers.
    counted = await conn.fetchval(
        "SELECT to_regclass('process_count_deltas') IS NOT NULL "
        "AND current_setting('session_replication_role') = 'replica'"
    )
    done = 0
    while done < count:
        n = min(BATCH, count - done)
        async with conn.transaction():
            await conn.execute(
                f"CREATE TEMP TABLE seed_ids ON COMMIT DROP AS SELECT g, gen_random_uuid() AS "
                f"process{new_ids}, make_interval(secs => ($3::bigint - g + 1) * $4::float8) "
                "AS delta FROM generate_series($1::bigint + 1, $1::bigint + $2::bigint) g",
                done,
                n,
                count,
                spacing_s,
            )
            await conn.execute("CREATE UNIQUE INDEX ON seed_ids (g)")
            await conn.execute(
                "CREATE TEMP TABLE seed_envelopes ON COMMIT DROP AS "
                + unpivot("env", len(envelopes)),
                envelopes,
            )
            await conn.execute(
                "CREATE TEMP TABLE seed_requests ON COMMIT DROP AS "
                + unpivot("req", len(requests)),
                requests,
            )
            await conn.execute(
                "CREATE TEMP TABLE seed_events ON COMMIT DROP AS SELECT s.g, v.id AS old, "
                "gen_random_uuid() AS new FROM seed_ids s CROSS JOIN events v "
                "WHERE v.envelope_id = ANY($1::uuid[])",
                envelopes,
            )
            for name in ("seed_envelopes", "seed_events", "seed_requests"):
                await conn.execute(f"CREATE INDEX ON {name} (g, old)")
                await conn.execute(f"ANALYZE {name}")
            await conn.execute("ANALYZE seed_ids")
            for table, sql in statements.items():
                args = [template, trigger][: 2 if "$2" in sql else 1 if "$1" in sql else 0]
                t0 = time.perf_counter()
                await conn.execute(sql, *args)
                timings[table] = timings.get(table, 0.0) + time.perf_counter() - t0
            if counted:
                # The triggers that keep the process counts do not fire in the replica
                # role (see `seed`): the copies are counted here, in their transaction.
                await conn.execute(
                    f"INSERT INTO process_count_deltas ({_COUNT_KEY}, n) "
                    f"SELECT {_COUNT_KEY}, $2 FROM processes WHERE id = $1",
                    template,
                    n,
                )
        done += n
        if progress is not None:
            progress(done)
    return {table: round(seconds, 1) for table, seconds in timings.items()}


# Above this many copies, the tables' secondary indexes are dropped first and built again
# after (one sort per index instead of a million insertions into each).
REBUILD_INDEXES_FROM = 100_000


async def _secondary_indexes(conn: Any) -> list[tuple[str, str]]:
    """(name, definition) of the seeded tables' indexes that back no constraint."""
    rows = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i "
        "JOIN pg_class c ON c.relname = i.indexname "
        "JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = i.schemaname "
        "WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[]) "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid)",
        list(_TEMPLATE_ROWS),
    )
    return [(r["indexname"], r["indexdef"]) for r in rows]


async def seed(
    conn: Any, template: uuid.UUID, count: int, label: str, log: Callable[[str], None]
) -> dict[str, Any]:
    """Clone `template` `count` times, then ANALYZE; the time it took and the database size.
    The copies are committed with synchronous_commit off (this session only); with many
    copies, the secondary indexes are dropped and built again once the rows are in."""
    t0 = time.perf_counter()

    def progress(done: int) -> None:
        log(f"  {label}: {done:,}/{count:,} processes, {time.perf_counter() - t0:.0f} s")

    await conn.execute("SET synchronous_commit = off")
    # The copies are consistent by construction (copied from rows that passed the foreign
    # keys): no per-row foreign-key trigger for them (superuser only; the embedded one is).
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("SET maintenance_work_mem = '256MB'")
    indexes = await _secondary_indexes(conn) if count >= REBUILD_INDEXES_FROM else []
    for name, _ in indexes:
        await conn.execute(f'DROP INDEX "{name}"')
    try:
        timings = await clone_process(conn, template, count, progress=progress)
    finally:
        if indexes:
            log(f"  {label}: building {len(indexes)} indexes again ...")
        for _, definition in indexes:
            await conn.execute(definition)
    seeded = time.perf_counter() - t0
    await conn.execute("ANALYZE")
    await conn.execute("RESET synchronous_commit")
    await conn.execute("RESET session_replication_role")
    total = time.perf_counter() - t0
    size = await conn.fetchval("SELECT pg_database_size(current_database())")
    return {
        "processes": count,
        "insert_s": round(seeded, 1),
        "with_analyze_s": round(total, 1),
        "database_bytes": size,
        "indexes_rebuilt": len(indexes),
        "insert_s_by_table": timings,
    }
