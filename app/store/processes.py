"""The statements of a process's life: load and lock it, write what the director decided,
lease due requests, read the envelopes a request hands out.

Each is one fixed SQL text run on asyncpg (prepared once per connection by its statement
cache), with arrays for the rows of a batch, so a state change of a process costs two
round trips (read under lock, write) whatever it touches: nodes, new requests, the
request it ends, the open ones it cancels, its log lines. An answer is read without a lock
(`PEEK_FOR_ANSWER`), then written only if neither its process nor its request changed
meanwhile (SAVE's guard): outside any transaction, two statements and no BEGIN or COMMIT."""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models.enums import (
    LogLevel,
    NodeStatus,
    PostmortemStatus,
    ProcessStatus,
    RequestChannel,
    RequestStatus,
)

OPEN_REQUEST = (RequestStatus.PENDING, RequestStatus.LEASED, RequestStatus.RUNNING)
_OPEN_SQL = "('pending', 'leased', 'running')"


@dataclass(slots=True)
class ProcessRow:
    id: uuid.UUID
    pipeline_id: uuid.UUID | None
    trigger_envelope_id: uuid.UUID | None
    emitter_id: uuid.UUID | None
    status: ProcessStatus
    created_at: datetime
    group_id: uuid.UUID | None = None
    replay_of: uuid.UUID | None = None
    status_reason: str | None = None
    status_changed_at: datetime | None = None
    nodes_state_changed_at: datetime | None = None
    ended_at: datetime | None = None
    pm_level: LogLevel | None = None
    pm_status: PostmortemStatus | None = None
    pm_changed_at: datetime | None = None
    # Warnings logged for the process so far (a process done with warnings has a postmortem).
    warnings: int = 0
    # The pipeline's last change, to find its graph in the cache.
    pipeline_updated_at: datetime | None = None


@dataclass(slots=True)
class NodeRow:
    node_id: str
    status: NodeStatus
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass(slots=True)
class RequestRow:
    id: uuid.UUID
    process_id: uuid.UUID
    node_id: str
    actor_id: uuid.UUID | None
    channel: RequestChannel
    status: RequestStatus
    inputs: list[Any]
    outputs: dict[str, Any]
    attempts: int
    max_attempts: int
    available_at: datetime
    lease_expires_at: datetime | None
    leased_by: str | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True, slots=True)
class LogRow:
    time: datetime
    level: LogLevel
    text: str
    process_id: uuid.UUID | None
    node_id: str | None = None
    actor_id: uuid.UUID | None = None
    envelope_id: uuid.UUID | None = None
    request_id: uuid.UUID | None = None
    processing_error: bool = False


@dataclass(frozen=True, slots=True)
class NewRequest:
    id: uuid.UUID
    node_id: str
    actor_id: uuid.UUID
    channel: RequestChannel
    inputs: list[dict[str, str]]


@dataclass(slots=True)
class Changes:
    """What one decision writes, in one statement."""

    new_process: bool = False
    process: bool = False
    nodes: set[str] = field(default_factory=set)
    requests: list[NewRequest] = field(default_factory=list)
    # The request this change moves (reported, expired), written as it stands.
    request: RequestRow | None = None
    cancel_open: bool = False
    logs: list[LogRow] = field(default_factory=list)
    # The trigger envelope joins the new process.
    envelope: tuple[uuid.UUID, str] | None = None


def clean_text(text: str) -> str:
    # Log text is stored as valid UTF-8 whatever the actor sent (the original crashed on it).
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


_PROCESS_COLUMNS = """p.id, p.pipeline_id, p.trigger_envelope_id, p.emitter_id, p.status,
    p.created_at, p.group_id, p.replay_of, p.status_reason, p.status_changed_at,
    p.nodes_state_changed_at, p.ended_at, p.pm_level, p.pm_status, p.pm_changed_at"""

_NODES_AND_WARNINGS = """
    (SELECT coalesce(json_agg(json_build_array(n.node_id, n.status, n.inputs, n.outputs,
                                               n.started_at, n.ended_at)), '[]')
       FROM process_nodes n WHERE n.process_id = p.id) AS nodes,
    (SELECT count(*) FROM log_entries l
      WHERE l.process_id = p.id AND l.level = 'warning') AS warnings,
    pl.updated_at AS pipeline_updated_at"""

# Locks. Every change of a process is made under the lock on its row (process first, then
# its requests). Each lock is taken by a statement of its own: in READ COMMITTED a statement
# reads as of its start, and a lock it waited for refreshes only the locked row, not the rest
# of what it reads (the nodes, the other requests). The reads come in the next statement, which
# sees what the previous holder of the lock committed.
#
# Every write of a decision (SAVE) also updates its process's row, whatever changed: the row's
# version (`xmin`, the transaction that wrote it last) then tells whether anything of the
# process changed since it was read, which is what SAVE's guard checks for a decision taken
# without the lock (an answer: `PEEK_FOR_ANSWER`).
LOCK_PROCESS = "SELECT id FROM processes WHERE id = $1 FOR UPDATE"
LOCK_PROCESS_SKIP = LOCK_PROCESS + " SKIP LOCKED"
LOCK_PROCESS_OF_REQUEST = """
SELECT p.id FROM processes p
WHERE p.id = (SELECT r.process_id FROM requests r WHERE r.id = $1)
FOR UPDATE OF p"""

# The processes of many requests, locked in the order of their ids (a batch of answers):
# the requests whose processes are locked (those found). Each process is reached from its
# request by its key (LATERAL), whatever the statistics say: the plan prepared for any list
# of requests (a generic plan, guessing 10) joined a scan of every process to them while the
# table was small (0.5 ms a batch with 2,000 processes, against 0.05).
LOCK_PROCESSES_OF_REQUESTS = """
SELECT r.id FROM (
    SELECT id, process_id FROM requests WHERE id = ANY($1::uuid[]) ORDER BY process_id
) r
CROSS JOIN LATERAL (SELECT p.id FROM processes p WHERE p.id = r.process_id FOR UPDATE) p"""

# A process (locked already) with its nodes and its warning count.
READ_PROCESS = f"""
SELECT {_PROCESS_COLUMNS}, {_NODES_AND_WARNINGS}
FROM processes p LEFT JOIN pipelines pl ON pl.id = p.pipeline_id
WHERE p.id = $1"""

_REQUEST_COLUMNS = """r.id, r.process_id, r.node_id, r.actor_id, r.channel, r.status, r.inputs,
    r.outputs, r.attempts, r.max_attempts, r.available_at, r.lease_expires_at, r.leased_by,
    r.last_error, r.created_at, r.updated_at, r.ended_at"""

# A request, locked, with the open requests of its process by node (itself left out).
LOCK_REQUEST = f"""
SELECT {_REQUEST_COLUMNS},
    (SELECT coalesce(json_object_agg(o.node_id, o.n), '{{}}') FROM (
        SELECT node_id, count(*) AS n FROM requests
        WHERE process_id = r.process_id AND status IN {_OPEN_SQL} AND id <> r.id
        GROUP BY node_id) o) AS open_left
FROM requests r WHERE r.id = $1
FOR UPDATE OF r"""

LOCK_REQUEST_SKIP = LOCK_REQUEST + " SKIP LOCKED"

# Where the request's columns start in a READ_FOR_ANSWER row: after the process's 15, its
# nodes, warnings and pipeline_updated_at, and the actor's account and name.
ANSWER_REQUEST_AT = 20

# A request to answer, its process locked already: the process, who owns the request's actor
# (an account answers only for its own actors), the request (locked), the open requests of
# the process by node (the request left out), and the versions of the process's row and the
# request's (for SAVE's guard).
READ_FOR_ANSWER = f"""
SELECT {_PROCESS_COLUMNS}, {_NODES_AND_WARNINGS}, a.account_id, a.name AS actor_name,
    {_REQUEST_COLUMNS.replace("r.id,", "r.id AS request_id,", 1)},
    (SELECT coalesce(json_object_agg(o.node_id, o.n), '{{}}') FROM (
        SELECT node_id, count(*) AS n FROM requests
        WHERE process_id = r.process_id AND status IN {_OPEN_SQL} AND id <> r.id
        GROUP BY node_id) o) AS open_left,
    p.xmin AS process_version, r.xmin AS request_version
FROM requests r
JOIN processes p ON p.id = r.process_id
LEFT JOIN pipelines pl ON pl.id = p.pipeline_id
LEFT JOIN actors a ON a.id = r.actor_id
WHERE r.id = $1
FOR UPDATE OF r"""

# READ_FOR_ANSWER without any lock, for a decision SAVE writes only if the versions it read
# are still those of the process and the request (its guard): one statement, no transaction.
PEEK_FOR_ANSWER = READ_FOR_ANSWER.removesuffix("\nFOR UPDATE OF r")
assert PEEK_FOR_ANSWER != READ_FOR_ANSWER

# READ_FOR_ANSWER for many requests (their processes locked already), each read by its keys
# as READ_FOR_ANSWER reads one (as LOCK_PROCESSES_OF_REQUESTS, whatever the statistics say).
READ_FOR_ANSWERS = f"""
SELECT one.* FROM unnest($1::uuid[]) AS t(id)
CROSS JOIN LATERAL ({READ_FOR_ANSWER.replace("WHERE r.id = $1", "WHERE r.id = t.id")}) one"""
assert "t.id" in READ_FOR_ANSWERS

# PEEK_FOR_ANSWER for many requests (a batch decided without the locks, written by guarded
# statements).
PEEK_FOR_ANSWERS = READ_FOR_ANSWERS.replace("\nFOR UPDATE OF r", "")
assert PEEK_FOR_ANSWERS != READ_FOR_ANSWERS

OPEN_BY_NODE = f"""
SELECT coalesce(json_object_agg(o.node_id, o.n), '{{}}') FROM (
    SELECT node_id, count(*) AS n FROM requests
    WHERE process_id = $1 AND status IN {_OPEN_SQL} GROUP BY node_id) o"""

# Everything a decision writes, in one statement. The parts run on one snapshot and the
# foreign keys are checked at its end, so a new process, its nodes, requests and log lines
# go in together; a part with nothing to do is left out (`_save`).
#
# The guard: given the versions ($51, $52) of the process's row and of the request's as the
# decision read them (without a lock), the two rows are locked first and each part writes
# only if both are still those versions; otherwise nothing is written and the statement says
# so (`go` false). A row changed by a transaction that commits while the guard waits for it
# is read again at its new version (READ COMMITTED), which fails the guard too. Without
# versions (the decision was taken under the locks) there is no guard: every part writes.
# A guard that skips locked rows does not wait: a row another transaction holds fails it.
_GUARD = """
guard AS (
    SELECT p.id FROM processes p JOIN requests r ON r.id = $31
    WHERE p.id = $1 AND p.xmin = $51::xid AND r.xmin = $52::xid
    FOR UPDATE OF p, r{skip}
),
ok AS (SELECT EXISTS (SELECT FROM guard) AS go)"""
_GUARDS = {False: _GUARD.format(skip=""), True: _GUARD.format(skip=" SKIP LOCKED")}
# A decision taken under the locks: every part writes.
_UNGUARDED = "\nok AS (SELECT true AS go)"
_NODES = """
nodes AS (
    INSERT INTO process_nodes AS n (process_id, node_id, status, inputs, outputs, created_at,
        started_at, ended_at)
    SELECT $1, u.node_id, u.status, u.inputs::jsonb, u.outputs::jsonb, $18::timestamptz,
        u.started_at,
        u.ended_at
    FROM unnest($19::text[], $20::text[], $21::text[], $22::text[], $23::timestamptz[],
                $24::timestamptz[]) AS u(node_id, status, inputs, outputs, started_at, ended_at)
    WHERE (SELECT go FROM ok)
    ON CONFLICT (process_id, node_id) DO UPDATE SET status = excluded.status,
        inputs = excluded.inputs, outputs = excluded.outputs,
        started_at = excluded.started_at, ended_at = excluded.ended_at
)"""
_NEW_REQUESTS = """
new_requests AS (
    INSERT INTO requests (id, process_id, node_id, actor_id, channel, status, inputs, outputs,
        attempts, max_attempts, available_at, created_at, updated_at, ended_at)
    SELECT u.id, $1, u.node_id, u.actor_id, u.channel,
        -- dispatched by a decision that then failed the process: withdrawn at once
        CASE WHEN $39::bool THEN 'canceled' ELSE 'pending' END, u.inputs::jsonb, '{}',
        0, $25::int, $18, $18, $18, CASE WHEN $39::bool THEN $18 END
    FROM unnest($26::uuid[], $27::text[], $28::uuid[], $29::text[], $30::text[])
        AS u(id, node_id, actor_id, channel, inputs)
    WHERE (SELECT go FROM ok)
)"""
_REQUEST_CHANGED = """
request_changed AS (
    UPDATE requests SET status = $32, attempts = $33, available_at = $34,
        lease_expires_at = $35, leased_by = $36, last_error = $37, ended_at = $38,
        updated_at = $18
    WHERE id = $31 AND (SELECT go FROM ok)
)"""
_CANCELED = f"""
canceled AS (
    UPDATE requests SET status = 'canceled', ended_at = $18, lease_expires_at = NULL,
        updated_at = $18
    WHERE $39::bool AND process_id = $1 AND status IN {_OPEN_SQL}
        AND id IS DISTINCT FROM $31 AND (SELECT go FROM ok)
    RETURNING channel
)"""
_LOGS = """
logs AS (
    INSERT INTO log_entries (time, level, text, process_id, node_id, actor_id, envelope_id,
        request_id, processing_error)
    SELECT * FROM unnest($40::timestamptz[], $41::text[], $42::text[], $43::uuid[],
        $44::text[], $45::uuid[], $46::uuid[], $47::uuid[], $48::bool[])
    WHERE (SELECT go FROM ok)
)"""
_ENVELOPE = """
envelope AS (
    UPDATE envelopes SET process_id = $1, node_id = $50
    WHERE id = $49 AND process_id IS NULL AND (SELECT go FROM ok)
)"""

# The process's own row: a new one inserted ($16 true), or one that exists updated, with
# what changed ($17) or as it is (its version changes with the rest of the process). Apart
# rather than flags in one: a statement holding an INSERT INTO processes fires its statement
# trigger (the counts) even when it inserts nothing, ~0.09 ms an answer.
_PROCESS_NEW = """
process_new AS (
    INSERT INTO processes (id, pipeline_id, trigger_envelope_id, emitter_id, group_id,
        replay_of, status, status_reason, created_at, status_changed_at,
        nodes_state_changed_at, ended_at, result_acked, pm_level, pm_status, pm_changed_at)
    SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::uuid, $6::uuid, $7::text, $8::text,
        $9::timestamptz, $10::timestamptz, $11::timestamptz, $12::timestamptz, false,
        $13::text, $14::text, $15::timestamptz
    WHERE $16::bool AND (SELECT go FROM ok)
)"""
_PROCESS_CHANGED = """
process_changed AS (
    UPDATE processes SET status = $7, status_reason = $8, status_changed_at = $10,
        nodes_state_changed_at = $11, ended_at = $12, pm_level = $13, pm_status = $14,
        pm_changed_at = $15
    WHERE id = $1 AND $17::bool AND NOT $16::bool AND (SELECT go FROM ok)
)"""
_PROCESS_TOUCHED = """
process_touched AS (
    UPDATE processes SET status = status
    WHERE id = $1 AND NOT $17::bool AND NOT $16::bool AND (SELECT go FROM ok)
)"""

# Every parameter's type, declared by a part that never runs (a plain SELECT nobody reads):
# a statement left without the parts that have nothing to do still types all of them.
_SAVE_TYPES = (
    *("uuid",) * 6,  # the process: id, pipeline, trigger envelope, emitter, group, replay_of
    *("text",) * 2,  # status, reason
    *("timestamptz",) * 4,  # created, status changed, nodes changed, ended
    "text", "text", "timestamptz",  # postmortem level, status, changed
    "bool", "bool", "timestamptz",  # new process, process changed, now
    *("text[]",) * 4, "timestamptz[]", "timestamptz[]",  # nodes
    "int",  # max attempts
    "uuid[]", "text[]", "uuid[]", "text[]", "text[]",  # new requests
    "uuid", "text", "int", "timestamptz", "timestamptz", "text", "text", "timestamptz",
    "bool",  # cancel the open requests
    "timestamptz[]", "text[]", "text[]", "uuid[]", "text[]", "uuid[]", "uuid[]", "uuid[]",
    "bool[]",  # log lines
    "uuid", "text",  # the envelope given its process
    "xid", "xid",  # the versions read (the guard)
)  # fmt: skip
_SAVE_PARAMETERS = 52
assert len(_SAVE_TYPES) == _SAVE_PARAMETERS
_DECLARED = (
    "\ndeclared AS (SELECT "
    + ", ".join(f"${n}::{kind}" for n, kind in enumerate(_SAVE_TYPES, 1))
    + ")"
)


@functools.cache
def _save(
    *,
    new: bool,
    changed: bool,
    guarded: bool,
    skip_locked: bool,
    nodes: bool,
    requests: bool,
    request: bool,
    cancel: bool,
    logs: bool,
    envelope: bool,
    parts: str = "",
    answer: str = "NULL",
) -> str:
    """Everything a decision writes, in one statement, without the parts that have nothing
    to do (each an executor node PostgreSQL sets up and runs at every call even when its
    rows are none: 0.30 → 0.26 ms for an answer that ends its process); `parts` and `answer`
    are a `Joined`'s, their parameters renumbered after SAVE's own."""

    def shifted(sql: str) -> str:
        return re.sub(r"\$(\d+)", lambda m: f"${int(m.group(1)) + _SAVE_PARAMETERS}", sql)

    process = _PROCESS_NEW if new else _PROCESS_CHANGED if changed else _PROCESS_TOUCHED
    chosen = [
        _GUARDS[skip_locked] if guarded else _UNGUARDED,
        _DECLARED,
        process,
        *((_NODES,) if nodes else ()),
        *((_NEW_REQUESTS,) if requests else ()),
        *((_REQUEST_CHANGED,) if request else ()),
        *((_CANCELED,) if cancel else ()),
        *((_LOGS,) if logs else ()),
        *((_ENVELOPE,) if envelope else ()),
        *((shifted(parts),) if parts else ()),
    ]
    # (written, the channels of the requests canceled, the answer): read by `saved`
    answered = shifted(answer)
    if cancel:
        channels = "coalesce(array_agg(channel), '{}')"
        result = f"SELECT (SELECT go FROM ok), {channels}, {answered} FROM canceled"
    else:
        result = f"SELECT (SELECT go FROM ok), '{{}}'::text[], {answered}"
    return "WITH" + ",".join(chosen) + "\n" + result


@dataclass(slots=True)
class Joined:
    """Rows written with a decision, by the same statement: a new envelope with the process
    it starts, a webhook attempt with its answer. `parts` are CTEs whose parameters start at
    $1; with a decision taken without the locks (SAVE's guard) each must write only `WHERE
    (SELECT go FROM ok)`. `answer`, an expression over the same parameters, is what the
    statement gives back in `result` once written."""

    parts: str
    parameters: tuple[Any, ...]
    answer: str = "NULL"
    result: Any = None


# Up to $n due requests (pending, available, of a running process) matching the filter,
# oldest first, skipping rows another transaction holds: any number of replicas claim side
# by side and never get the same request. The scan starts from the due requests (the
# partial index of pending ones), whatever the statistics say of running processes: a
# process's status is checked per candidate, not joined from the processes' side.
_DUE = """
due AS (
    SELECT r.id FROM requests r
    WHERE r.status = 'pending' AND r.available_at <= $2 AND {where}
      AND (SELECT p.status FROM processes p WHERE p.id = r.process_id) = 'running'
    ORDER BY r.available_at, r.created_at, r.id
    LIMIT $3
    FOR UPDATE OF r SKIP LOCKED
)"""
_LEASED = f"""
UPDATE requests r SET status = 'leased', attempts = r.attempts + 1, leased_at = $2,
    lease_expires_at = $4, leased_by = $5, updated_at = $2, channel = coalesce($6, r.channel)
FROM due WHERE r.id = due.id
RETURNING {_REQUEST_COLUMNS}"""
_FOR_ACTOR = "r.actor_id = $1 AND r.channel = ANY($7::text[])"

# Requests of the actors connected over NATS (the NATS dispatcher; $1 unused), oldest first:
# each online actor's due requests are read from its own end of the due index, whatever the
# statistics say (starting from all due requests, as the planner did on stale statistics,
# walked every request waiting for an HTTP or webhook actor at each claim). The rows an
# actor's part locks beyond the overall limit are free again when the statement ends.
_DUE_FOR_NATS = """
due AS (
    SELECT r.id FROM actors a
    CROSS JOIN LATERAL (
        SELECT r.id, r.available_at, r.created_at FROM requests r
        WHERE r.actor_id = a.id AND r.status = 'pending' AND r.available_at <= $2
          AND r.channel IN ('nats', 'poll')
          AND (SELECT p.status FROM processes p WHERE p.id = r.process_id) = 'running'
        ORDER BY r.available_at, r.created_at, r.id
        LIMIT $3
        FOR UPDATE OF r SKIP LOCKED
    ) r
    WHERE a.online AND $1::uuid IS NULL
    ORDER BY r.available_at, r.created_at, r.id
    LIMIT $3
)"""

# The events of envelope `e` if it is no larger than the parameter `inline`, looked up in
# the index by its id whatever the statistics say. Joined plainly, the plan depended on them
# (a generic plan expects ten envelopes; on a few hundred events it read them all into a
# hash) and the statement was planned again at many calls: a one-envelope read took 0.59 ms
# a call against 0.45 ms this way, and its execution in bench.webhooks 0.40 -> 0.33 ms.
# (OFFSET 0 keeps the planner from flattening the subquery back into that join.)
_EVENTS = """SELECT ev.id, ev.type, ev.encoding, ev.position FROM events ev
    WHERE ev.envelope_id = e.id AND e.size_bytes <= ${inline} OFFSET 0"""

# What a lease hands out, read by the lease's own statement: each leased request's columns,
# followed on its rows by those of its input envelopes (the envelope's id, size and item
# count; the events, by id, type and encoding, and their items only of the envelopes no
# larger than the parameter `inline`); oldest request first.
_HANDED = """,
leased AS ({leased}
)
SELECT l.*, e.id, e.size_bytes, e.item_count, ev.id, ev.type, ev.encoding, i.data
FROM leased l
LEFT JOIN envelopes e ON e.id = ANY (ARRAY(
    SELECT (x ->> 'envelope_id')::uuid FROM jsonb_array_elements(l.inputs) x))
LEFT JOIN LATERAL ({events}) ev ON true
LEFT JOIN items i ON i.event_id = ev.id
ORDER BY l.available_at, l.created_at, l.id, e.id, ev.position, i.position"""


def handed(leased: str, inline: int) -> str:
    """The end of a WITH list whose last part is `leased` (an UPDATE of requests returning
    at least their id, inputs, available_at and created_at, the id first): its rows, each
    followed by the rows of its input envelopes (`_HANDED`); `inline` the number of the
    parameter that bounds the envelopes read whole. Group them with `handed_rows`."""
    return _HANDED.format(leased=leased, events=_EVENTS.format(inline=inline))


def handed_rows(rows: Sequence[Any], at: int) -> list[tuple[Any, list[Any]]]:
    """The rows of a `handed` statement by request: its first row, and the envelope part
    (from column `at`) of each of its rows."""
    grouped: list[tuple[Any, list[Any]]] = []
    for row in rows:
        if not grouped or grouped[-1][0][0] != row[0]:
            grouped.append((row, []))
        grouped[-1][1].append(row[at:])
    return grouped


# One actor's requests of these channels (HTTP polling; a NATS actor probed), $8 `inline`.
LEASE_FOR_ACTOR = "WITH" + _DUE.format(where=_FOR_ACTOR) + handed(_LEASED, 8)
# The requests of every actor online over NATS, $7 `inline`.
LEASE_FOR_NATS = "WITH" + _DUE_FOR_NATS + handed(_LEASED, 7)
# Where the envelope columns start in a leased row.
HANDED_ENVELOPE_AT = 17


def process_of(row: Any) -> tuple[ProcessRow, dict[str, NodeRow]]:
    process = ProcessRow(
        id=row[0],
        pipeline_id=row[1],
        trigger_envelope_id=row[2],
        emitter_id=row[3],
        status=ProcessStatus(row[4]),
        created_at=row[5],
        group_id=row[6],
        replay_of=row[7],
        status_reason=row[8],
        status_changed_at=row[9],
        nodes_state_changed_at=row[10],
        ended_at=row[11],
        pm_level=LogLevel(row[12]) if row[12] else None,
        pm_status=PostmortemStatus(row[13]) if row[13] else None,
        pm_changed_at=row[14],
        warnings=int(row["warnings"]),
        pipeline_updated_at=row["pipeline_updated_at"],
    )
    nodes = {}
    for node_id, status, inputs, outputs, started, ended in _json(row["nodes"]):
        nodes[node_id] = NodeRow(
            node_id,
            NodeStatus(status),
            inputs or {},
            outputs or {},
            datetime.fromisoformat(started) if started else None,
            datetime.fromisoformat(ended) if ended else None,
        )
    return process, nodes


def request_of(row: Any, at: int = 0) -> RequestRow:
    """The request in `row`, its columns from position `at` on."""
    return RequestRow(
        id=row[at],
        process_id=row[at + 1],
        node_id=row[at + 2],
        actor_id=row[at + 3],
        channel=RequestChannel(row[at + 4]),
        status=RequestStatus(row[at + 5]),
        inputs=_json(row[at + 6]),
        outputs=_json(row[at + 7]),
        attempts=row[at + 8],
        max_attempts=row[at + 9],
        available_at=row[at + 10],
        lease_expires_at=row[at + 11],
        leased_by=row[at + 12],
        last_error=row[at + 13],
        created_at=row[at + 14],
        updated_at=row[at + 15],
        ended_at=row[at + 16],
    )


def open_counts(raw: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in (_json(raw) or {}).items()}


def _json_text(value: Any) -> str:
    """A node's inputs or outputs as JSON text; the empty mapping, two of every new
    process's four, without a call to the encoder (~1.4 us each)."""
    return "{}" if value == {} else json.dumps(value)


def _json(value: Any) -> Any:
    # The session's connection decodes JSON itself (SQLAlchemy's codec); a bare one does not.
    return json.loads(value) if isinstance(value, str | bytes) else value


def _log_columns(logs: list[LogRow]) -> list[list[Any]]:
    """Log lines as the arrays that `unnest` turns into rows of log_entries."""
    return [
        [entry.time for entry in logs],
        [entry.level.value for entry in logs],
        [entry.text for entry in logs],
        [entry.process_id for entry in logs],
        [entry.node_id for entry in logs],
        [entry.actor_id for entry in logs],
        [entry.envelope_id for entry in logs],
        [entry.request_id for entry in logs],
        [entry.processing_error for entry in logs],
    ]


def save_statement(
    process: ProcessRow,
    nodes: dict[str, NodeRow],
    changes: Changes,
    *,
    now: datetime,
    max_attempts: int,
    joined: Joined | None = None,
    versions: tuple[int, int] | None = None,
    skip_locked: bool = False,
) -> tuple[str, tuple[Any, ...]]:
    """The statement that writes the changes (and `joined`), with its arguments; its one row
    is read by `saved`. With `versions` (of the process's row and of `changes.request`'s, as
    the decision read them without a lock): it writes only if they are still those, and,
    with `skip_locked`, only if no other transaction holds them (else it does not wait)."""
    assert versions is None or changes.request is not None
    assert versions is not None or not skip_locked  # unguarded, the rows are locked already
    # Guarded, each joined part must write only where the guard let it (else a write the
    # guard refused would leave it written, and the answer written again would repeat it).
    assert versions is None or joined is None or "(SELECT go FROM ok)" in joined.parts
    changed_nodes = [nodes[n] for n in sorted(changes.nodes)]
    request = changes.request
    logs = changes.logs
    envelope_id, envelope_node = changes.envelope or (None, None)
    statement = _save(
        new=changes.new_process,
        changed=changes.process,
        guarded=versions is not None,
        skip_locked=skip_locked,
        nodes=bool(changed_nodes),
        requests=bool(changes.requests),
        request=request is not None,
        cancel=changes.cancel_open,
        logs=bool(logs),
        envelope=envelope_id is not None,
        parts=joined.parts if joined is not None else "",
        answer=joined.answer if joined is not None else "NULL",
    )
    more = joined.parameters if joined is not None else ()
    return statement, (
        process.id,
        process.pipeline_id,
        process.trigger_envelope_id,
        process.emitter_id,
        process.group_id,
        process.replay_of,
        process.status.value,
        process.status_reason,
        process.created_at,
        process.status_changed_at or process.created_at,
        process.nodes_state_changed_at,
        process.ended_at,
        process.pm_level.value if process.pm_level else None,
        process.pm_status.value if process.pm_status else None,
        process.pm_changed_at,
        changes.new_process,
        changes.process,
        now,
        [n.node_id for n in changed_nodes],
        [n.status.value for n in changed_nodes],
        [_json_text(n.inputs) for n in changed_nodes],
        [_json_text(n.outputs) for n in changed_nodes],
        [n.started_at for n in changed_nodes],
        [n.ended_at for n in changed_nodes],
        max_attempts,
        [r.id for r in changes.requests],
        [r.node_id for r in changes.requests],
        [r.actor_id for r in changes.requests],
        [r.channel.value for r in changes.requests],
        [json.dumps(r.inputs) for r in changes.requests],
        request.id if request else None,
        request.status.value if request else None,
        request.attempts if request else None,
        request.available_at if request else None,
        request.lease_expires_at if request else None,
        request.leased_by if request else None,
        request.last_error if request else None,
        request.ended_at if request else None,
        changes.cancel_open,
        *_log_columns(logs),
        envelope_id,
        envelope_node,
        *(versions or (None, None)),
        *more,
    )


def saved(result: Any, joined: Joined | None = None) -> list[str] | None:
    """What `save_statement`'s statement answered: the channels of the requests it canceled,
    or None when its guard refused the write (nothing written). `joined.result` is set."""
    written, canceled, answer = result
    if not written:
        return None
    if joined is not None:
        joined.result = answer
    return list(canceled)


# New processes with their envelopes, many at once (a batch of emissions): only inserts.
INSERT_NEW = """
WITH
new_processes AS (
    INSERT INTO processes (id, pipeline_id, trigger_envelope_id, emitter_id, status,
        status_reason, created_at, status_changed_at, nodes_state_changed_at, ended_at,
        result_acked, pm_level, pm_status, pm_changed_at)
    SELECT u.id, u.pipeline_id, u.envelope_id, u.emitter_id, u.status, u.reason, u.created_at,
        u.status_changed_at, u.nodes_changed_at, u.ended_at, false, u.pm_level, u.pm_status,
        u.pm_changed_at
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::text[],
        $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
        $11::text[], $12::text[], $13::timestamptz[])
        AS u(id, pipeline_id, envelope_id, emitter_id, status, reason, created_at,
             status_changed_at, nodes_changed_at, ended_at, pm_level, pm_status, pm_changed_at)
),
new_nodes AS (
    INSERT INTO process_nodes (process_id, node_id, status, inputs, outputs, created_at,
        started_at, ended_at)
    SELECT u.process_id, u.node_id, u.status, u.inputs::jsonb, u.outputs::jsonb,
        $14::timestamptz, u.started_at, u.ended_at
    FROM unnest($15::uuid[], $16::text[], $17::text[], $18::text[], $19::text[],
        $20::timestamptz[], $21::timestamptz[])
        AS u(process_id, node_id, status, inputs, outputs, started_at, ended_at)
),
new_requests AS (
    INSERT INTO requests (id, process_id, node_id, actor_id, channel, status, inputs, outputs,
        attempts, max_attempts, available_at, created_at, updated_at, ended_at)
    SELECT u.id, u.process_id, u.node_id, u.actor_id, u.channel, u.status, u.inputs::jsonb,
        '{}', 0, $22::int, $14, $14, $14, CASE WHEN u.status = 'canceled' THEN $14 END
    FROM unnest($23::uuid[], $24::uuid[], $25::text[], $26::uuid[], $27::text[], $28::text[],
        $56::text[])
        AS u(id, process_id, node_id, actor_id, channel, inputs, status)
),
new_logs AS (
    INSERT INTO log_entries (time, level, text, process_id, node_id, actor_id, envelope_id,
        request_id, processing_error)
    SELECT * FROM unnest($29::timestamptz[], $30::text[], $31::text[], $32::uuid[],
        $33::text[], $34::uuid[], $35::uuid[], $36::uuid[], $37::bool[])
),
new_envelopes AS (
    INSERT INTO envelopes (id, emitter_id, process_id, node_id, status, event_count,
        item_count, size_bytes, created_at, last_fragment_at, completed_at)
    SELECT u.id, u.emitter_id, u.process_id, u.node_id, 'complete', u.events, u.items, u.size,
        u.created_at, u.created_at, u.created_at
    FROM unnest($38::uuid[], $39::uuid[], $40::uuid[], $41::text[], $42::int[], $43::bigint[],
        $44::bigint[], $45::timestamptz[])
        AS u(id, emitter_id, process_id, node_id, events, items, size, created_at)
),
new_events AS (
    INSERT INTO events (id, envelope_id, position, type, encoding, next_index, items_received,
        item_count, complete, size_bytes)
    SELECT u.id, u.envelope_id, u.position, u.type, u.encoding, 2, u.n, u.n, true, u.size
    FROM unnest($46::uuid[], $47::uuid[], $48::int[], $49::text[], $50::text[], $51::bigint[],
        $52::bigint[]) AS u(id, envelope_id, position, type, encoding, n, size)
),
new_items AS (
    INSERT INTO items (event_id, position, data)
    SELECT * FROM unnest($53::uuid[], $54::bigint[], $55::bytea[])
)
SELECT 1"""


async def insert_new(
    conn: Any,
    started: list[tuple[ProcessRow, dict[str, NodeRow], Changes]],
    envelopes: list[tuple[Any, ...]],
    *,
    now: datetime,
    max_attempts: int,
) -> None:
    """Write new processes (their nodes, requests and log lines, as decided) with their
    envelopes, given as the parameters of `app.envelopes.repository.STORE_PARTS`."""
    processes = [process for process, _, _ in started]
    nodes = [
        (process.id, nodes[n]) for process, nodes, changes in started for n in sorted(changes.nodes)
    ]
    requests = [
        (process.id, r, "canceled" if changes.cancel_open else "pending")
        for process, _, changes in started
        for r in changes.requests
    ]
    logs = [entry for _, _, changes in started for entry in changes.logs]
    events = [
        (envelope[0], event_id, position, type_, encoding, n, size)
        for envelope in envelopes
        for event_id, position, type_, encoding, n, size in zip(*envelope[9:15], strict=True)
    ]
    items = [item for envelope in envelopes for item in zip(*envelope[15:18], strict=True)]
    await conn.execute(
        INSERT_NEW,
        [p.id for p in processes],
        [p.pipeline_id for p in processes],
        [p.trigger_envelope_id for p in processes],
        [p.emitter_id for p in processes],
        [p.status.value for p in processes],
        [p.status_reason for p in processes],
        [p.created_at for p in processes],
        [p.status_changed_at or p.created_at for p in processes],
        [p.nodes_state_changed_at for p in processes],
        [p.ended_at for p in processes],
        [p.pm_level.value if p.pm_level else None for p in processes],
        [p.pm_status.value if p.pm_status else None for p in processes],
        [p.pm_changed_at for p in processes],
        now,
        [process_id for process_id, _ in nodes],
        [n.node_id for _, n in nodes],
        [n.status.value for _, n in nodes],
        [_json_text(n.inputs) for _, n in nodes],
        [_json_text(n.outputs) for _, n in nodes],
        [n.started_at for _, n in nodes],
        [n.ended_at for _, n in nodes],
        max_attempts,
        [r.id for _, r, _ in requests],
        [process_id for process_id, _, _ in requests],
        [r.node_id for _, r, _ in requests],
        [r.actor_id for _, r, _ in requests],
        [r.channel.value for _, r, _ in requests],
        [json.dumps(r.inputs) for _, r, _ in requests],
        *_log_columns(logs),
        [e[0] for e in envelopes],
        [e[1] for e in envelopes],
        [e[2] for e in envelopes],
        [e[3] for e in envelopes],
        [e[5] for e in envelopes],
        [e[6] for e in envelopes],
        [e[7] for e in envelopes],
        [e[8] for e in envelopes],
        [e[1] for e in events],
        [e[0] for e in events],
        [e[2] for e in events],
        [e[3] for e in events],
        [e[4] for e in events],
        [e[5] for e in events],
        [e[6] for e in events],
        [i[0] for i in items],
        [i[1] for i in items],
        [i[2] for i in items],
        [status for _, _, status in requests],
    )


# Running processes that nothing will move: no request open (pending, leased, running), and
# no change for `$1` seconds (every decision writes a process's requests in the statement
# that moves it, so a committed running process always has one). A bug, or a hand edit of
# the database: the supervisor reports them (app/bus/supervisor.py), /metrics counts them.
STRANDED = """
SELECT p.id FROM processes p
WHERE p.status = 'running'
  AND COALESCE(p.nodes_state_changed_at, p.created_at) < now() - make_interval(secs => $1)
  AND NOT EXISTS (
    SELECT 1 FROM requests r
    WHERE r.process_id = p.id AND r.status IN ('pending', 'leased', 'running'))
ORDER BY p.created_at, p.id
LIMIT $2"""
STRANDED_COUNT = f"SELECT count(*) FROM ({STRANDED}) s"
