"""The statements of webhook delivery's units of work (claiming, recording an attempt's
outcome, suspension), plain SQL on the unit's asyncpg connection: the dispatcher runs them
on a `Work`, without an ORM session; they run on a session alike (`driver_connection`).
Those that change an actor row leave it to the caller to drop the caches (`CONFIG`), as
the ORM's UPDATEs of an actor did."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.models import ActorRequest
from app.models.enums import AttemptOutcome, LogLevel
from app.store.connection import Unit, driver_connection
from app.store.processes import Joined, clean_text, handed, handed_rows


@dataclass(frozen=True, slots=True)
class Quota:
    actor_id: uuid.UUID
    count: int
    max_attempts: int
    lease: float  # seconds


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    actor_id: uuid.UUID
    process_id: uuid.UUID
    node_id: str
    attempt: int
    created_at: datetime
    inputs: list[Any]
    lease_expires_at: datetime

    def as_request(self) -> ActorRequest:
        """The leased request as the payload builder reads it (not attached to a session)."""
        return ActorRequest(
            id=self.id,
            process_id=self.process_id,
            node_id=self.node_id,
            actor_id=self.actor_id,
            inputs=self.inputs,
            attempts=self.attempt,
            lease_expires_at=self.lease_expires_at,
        )


# Namespace of the per-actor advisory locks taken while claiming (the second key is a hash
# of the actor id): claims for one actor serialise across replicas, so its concurrency holds.
_CLAIM_LOCK = 727300402


async def try_lock_actors(unit: Unit, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The actors whose claim lock this transaction got (others are being claimed by another
    replica right now: skip them this round)."""
    if not ids:
        return []
    conn = await driver_connection(unit)
    rows = await conn.fetch(
        "SELECT id FROM unnest($1::uuid[]) AS t(id) "
        "WHERE pg_try_advisory_xact_lock($2, hashtext(id::text))",
        list(ids),
        _CLAIM_LOCK,
    )
    return [row[0] for row in rows]


# Webhook requests in flight, by actor: read from the partial index of leases (the webhook
# requests in flight, bounded by the work under way), whatever the statistics say. Asked by
# actor directly, the planner, told by stale statistics that an actor has few requests,
# joined the actor's index to it and read every request the actor ever had: 0.87 ms a round
# with 43,000 of them, against 0.06 ms (OFFSET 0 keeps the actor out of the subquery).
# The attempts named (request id and attempt number) are left out: leased until their
# outcomes are written, but their exchanges are over. By attempt: a request handed back
# meanwhile (its lease ended) and claimed again is in flight again.
IN_FLIGHT = """
SELECT actor_id, count(*) FROM (
    SELECT r.actor_id FROM requests r
    WHERE r.status = 'leased' AND r.channel = 'webhook' AND NOT EXISTS (
        SELECT FROM unnest($2::uuid[], $3::int[]) AS d(id, attempt)
        WHERE d.id = r.id AND d.attempt = r.attempts
    )
    OFFSET 0
) l
WHERE actor_id = ANY($1::uuid[])
GROUP BY actor_id"""


async def in_flight(
    unit: Unit,
    ids: Sequence[uuid.UUID],
    delivered: tuple[Sequence[uuid.UUID], Sequence[int]] = ((), ()),
) -> dict[uuid.UUID, int]:
    """Webhook requests being sent to these actors now, by any replica, but for the attempts
    of `delivered` (this replica's, whose exchanges are over: `Recorder.delivered`, request
    ids and attempt numbers). Another replica's delivered requests count until their
    outcomes are written."""
    if not ids:
        return {}
    conn = await driver_connection(unit)
    rows = await conn.fetch(IN_FLIGHT, list(ids), list(delivered[0]), list(delivered[1]))
    return {row[0]: int(row[1]) for row in rows}


# What a claim returns of each request (Claimed's fields, then available_at for the order of
# `handed`), each followed by the rows of its input envelopes: the body is built from them.
_CLAIMED = """RETURNING r.id, r.actor_id, r.process_id, r.node_id, r.attempts, r.created_at,
    r.inputs, r.lease_expires_at, r.available_at"""
_ENVELOPE_AT = 9

# Each actor's due requests, read from its own end of the webhook due index whatever the
# statistics say (as `app.store.processes` leases; an index of its own, as statistics taken
# while no webhook request existed made the planner read all of an actor's due requests
# from the shared one and sort them): a process's status is checked per candidate, not
# joined. Joined, statistics that believed few processes running (taken while most of the
# history was done) drove the claim from the running processes through each one's requests.
CLAIM = """
WITH quota AS (
    SELECT * FROM unnest($1::uuid[], $2::int[], $3::int[], $4::float8[])
        AS q(actor_id, k, max_attempts, lease)
), picked AS (
    SELECT c.id, q.max_attempts, q.lease FROM quota q
    -- the dispatcher's view of the actors may be a poll interval old: a webhook suspended
    -- or disabled meanwhile gets nothing
    JOIN actors a ON a.id = q.actor_id AND a.webhook_suspended_at IS NULL
    CROSS JOIN LATERAL (
        SELECT r.id FROM requests r
        WHERE r.actor_id = q.actor_id AND r.status = 'pending' AND r.channel = 'webhook'
          AND r.available_at <= $5
          AND (SELECT p.status FROM processes p WHERE p.id = r.process_id) = 'running'
        ORDER BY r.available_at, r.created_at, r.id
        LIMIT q.k
        FOR UPDATE OF r SKIP LOCKED
    ) c
)""" + handed(
    f"""
UPDATE requests r SET
    status = 'leased', attempts = r.attempts + 1, max_attempts = picked.max_attempts,
    lease_expires_at = $5::timestamptz + make_interval(secs => picked.lease),
    leased_by = $6, updated_at = $5, leased_at = $5
FROM picked WHERE r.id = picked.id
{_CLAIMED}""",
    7,
)

_CLAIM_PROBE = """
WITH probe AS (
    SELECT r2.id FROM requests r2 JOIN processes p ON p.id = r2.process_id
    WHERE r2.actor_id = $1 AND r2.channel = 'webhook' AND r2.status = 'pending'
      AND p.status = 'running'
    ORDER BY r2.created_at
    LIMIT 1
    FOR UPDATE OF r2 SKIP LOCKED
)""" + handed(
    f"""
UPDATE requests r SET
    status = 'leased', attempts = r.attempts + 1, max_attempts = $2,
    lease_expires_at = $4::timestamptz + make_interval(secs => $3::float8),
    leased_by = $5, updated_at = $4, leased_at = $4
FROM probe WHERE r.id = probe.id
{_CLAIMED}""",
    6,
)


# A claimed request with the rows of its input envelopes (`app.store.processes.handed`).
Handed = tuple[Claimed, list[Any]]


def _handed(rows: Sequence[Any]) -> list[Handed]:
    return [
        (Claimed(*first[: _ENVELOPE_AT - 1]), envelopes)
        for first, envelopes in handed_rows(rows, _ENVELOPE_AT)
    ]


async def claim(
    unit: Unit, quotas: Sequence[Quota], now: datetime, holder: str, inline_max: int
) -> list[Handed]:
    """Lease up to each quota's count of due webhook requests of its actor (oldest due
    first), attempts + 1: rows other replicas hold are skipped. Each with its input
    envelopes, read whole when no larger than `inline_max`, by the same statement."""
    if not quotas:
        return []
    conn = await driver_connection(unit)
    rows = await conn.fetch(
        CLAIM,
        [q.actor_id for q in quotas],
        [q.count for q in quotas],
        [q.max_attempts for q in quotas],
        [q.lease for q in quotas],
        now,
        holder,
        inline_max,
    )
    return _handed(rows)


_MOVE_PROBE = (
    "UPDATE actors SET webhook_probe_at = $3, updated_at = $4 WHERE id = $1 "
    "AND webhook_suspended_at IS NOT NULL AND webhook_probe_at <= $2 RETURNING id"
)


async def claim_probe(
    unit: Unit,
    quota: Quota,
    now: datetime,
    next_probe: datetime,
    idle_probe: datetime,
    holder: str,
    inline_max: int,
) -> Handed | None:
    """If the actor's probe is due, move its schedule on and lease its oldest pending
    request (due or not): one replica wins the probe. The schedule moves to `next_probe`
    (beyond the probe's lease) when a request goes out, to `idle_probe` when none is pending:
    a request that arrives just after an empty probe waits one probe interval, not a lease."""
    conn = await driver_connection(unit)
    won = await conn.fetchval(_MOVE_PROBE, quota.actor_id, now, next_probe, datetime.now(UTC))
    if won is None:
        return None
    rows = await conn.fetch(
        _CLAIM_PROBE, quota.actor_id, quota.max_attempts, quota.lease, now, holder, inline_max
    )
    if not rows:
        await conn.execute(
            "UPDATE actors SET webhook_probe_at = $2 WHERE id = $1", quota.actor_id, idle_probe
        )
        return None
    [handed] = _handed(rows)
    return handed


@dataclass(frozen=True, slots=True)
class Attempt:
    """An attempt's row (delivery_attempts)."""

    request_id: uuid.UUID
    actor_id: uuid.UUID
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    outcome: AttemptOutcome
    error: str | None
    response_excerpt: str | None

    def parameters(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.actor_id,
            self.attempt,
            self.started_at,
            self.duration_ms,
            self.status_code,
            self.outcome.value,
            self.error,
            self.response_excerpt,
        )


_INSERT_ATTEMPT = """INSERT INTO delivery_attempts (request_id, actor_id, attempt, started_at,
        duration_ms, status_code, outcome, error, response_excerpt)
    SELECT $1::uuid, $2::uuid, $3::int, $4::timestamptz, $5::float8, $6::int, $7::text,
        $8::text, $9::text"""
# Whether the actor's webhook is suspended or disabled now (False: no such actor).
_SUSPENDED = "coalesce((SELECT webhook_suspended_at IS NOT NULL FROM actors WHERE id = $2), false)"
# The attempt's row and the flag, in one round trip.
_ADD_ATTEMPT = f"WITH attempt AS ({_INSERT_ATTEMPT}) SELECT {_SUSPENDED}"


async def add_attempt(unit: Unit, attempt: Attempt) -> bool:
    """Write an attempt's row; returns whether the actor's webhook is suspended or disabled
    now."""
    conn = await driver_connection(unit)
    return bool(await conn.fetchval(_ADD_ATTEMPT, *attempt.parameters()))


def attempt_joined(attempt: Attempt) -> Joined:
    """The attempt's row written by the statement of the request's answer (`Director.report`
    with `joined`), the flag as its `result` once written: the attempt and what it ended are
    one write."""
    return Joined(
        f"attempt AS ({_INSERT_ATTEMPT} WHERE (SELECT go FROM ok))",
        attempt.parameters(),
        _SUSPENDED,
    )


async def reschedule(
    unit: Unit,
    process_id: uuid.UUID,
    request_id: uuid.UUID,
    attempt: int,
    available_at: datetime,
    error: str,
    now: datetime,
) -> bool:
    """Back to pending, due at `available_at`, if this attempt still holds the request. Its
    process is key-share-locked first, the lock order of every writer of a process (the
    process, then its requests): the log line the caller writes next key-share-locks the
    process through its foreign key anyway, and taken after the request's update, that
    deadlocked with an operator's cancel (the process locked, then its requests)."""
    conn = await driver_connection(unit)
    await conn.execute("SELECT 1 FROM processes WHERE id = $1 FOR KEY SHARE", process_id)
    held = await conn.fetchval(
        "UPDATE requests SET status = 'pending', available_at = $3, lease_expires_at = NULL, "
        "leased_by = NULL, last_error = $4, updated_at = $5 "
        "WHERE id = $1 AND status = 'leased' AND attempts = $2 RETURNING id",
        request_id,
        attempt,
        available_at,
        error,
        now,
    )
    return held is not None


@dataclass(frozen=True, slots=True)
class AttemptLine:
    """One attempt of a request, as the give-up log line lists it."""

    id: int
    attempt: int
    started_at: datetime
    duration_ms: float | None
    status_code: int | None
    outcome: AttemptOutcome
    error: str | None


async def request_attempts(unit: Unit, request_id: uuid.UUID) -> list[AttemptLine]:
    conn = await driver_connection(unit)
    rows = await conn.fetch(
        "SELECT id, attempt, started_at, duration_ms, status_code, outcome, error "
        "FROM delivery_attempts WHERE request_id = $1 ORDER BY id",
        request_id,
    )
    return [
        AttemptLine(row[0], row[1], row[2], row[3], row[4], AttemptOutcome(row[5]), row[6])
        for row in rows
    ]


async def delivered_since(unit: Unit, actor_id: uuid.UUID, after_id: int) -> bool:
    """Did an attempt to this actor get a success answer after attempt `after_id`?"""
    conn = await driver_connection(unit)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM delivery_attempts WHERE actor_id = $1 AND id > $2 "
            "AND outcome = ANY($3::text[]))",
            actor_id,
            after_id,
            [AttemptOutcome.SUCCESS.value, AttemptOutcome.RUNNING.value],
        )
    )


async def make_due(unit: Unit, actor_id: uuid.UUID, now: datetime) -> int:
    """Every pending webhook request of the actor due now (its webhook came back)."""
    conn = await driver_connection(unit)
    status = await conn.execute(
        "UPDATE requests SET available_at = $2, updated_at = $3 WHERE actor_id = $1 "
        "AND channel = 'webhook' AND status = 'pending' AND available_at > $2",
        actor_id,
        now,
        datetime.now(UTC),
    )
    return int(status.split()[-1])


async def suspend_by_failures(
    unit: Unit, actor_id: uuid.UUID, reason: str, now: datetime, probe_at: datetime
) -> bool:
    """Suspend an active webhook (a suspended or disabled one stays as it is)."""
    conn = await driver_connection(unit)
    changed = await conn.fetchval(
        "UPDATE actors SET webhook_suspended_at = $2, webhook_suspended_reason = $3, "
        "webhook_probe_at = $4, updated_at = $5 "
        "WHERE id = $1 AND webhook_suspended_at IS NULL RETURNING id",
        actor_id,
        now,
        reason,
        probe_at,
        datetime.now(UTC),
    )
    return changed is not None


async def resume_after_failures(unit: Unit, actor_id: uuid.UUID) -> bool:
    """Lift a suspension by failures (an operator's disable stays)."""
    conn = await driver_connection(unit)
    changed = await conn.fetchval(
        "UPDATE actors SET webhook_suspended_at = NULL, webhook_suspended_reason = NULL, "
        "webhook_probe_at = NULL, updated_at = $2 "
        "WHERE id = $1 AND webhook_probe_at IS NOT NULL RETURNING id",
        actor_id,
        datetime.now(UTC),
    )
    return changed is not None


async def add_log(
    unit: Unit,
    level: LogLevel,
    text: str,
    *,
    process_id: uuid.UUID | None = None,
    node_id: str | None = None,
    actor_id: uuid.UUID | None = None,
    request_id: uuid.UUID | None = None,
) -> None:
    """A log line in the unit's transaction (as `app.bus.director.add_log` with a session)."""
    conn = await driver_connection(unit)
    await conn.execute(
        "INSERT INTO log_entries (time, level, text, process_id, node_id, actor_id, "
        "request_id, processing_error) VALUES ($1, $2, $3, $4, $5, $6, $7, false)",
        datetime.now(UTC),
        level.value,
        clean_text(text),
        process_id,
        node_id,
        actor_id,
        request_id,
    )
