"""Streaming export of processes as NDJSON, in constant memory.

One REPEATABLE READ transaction gives a consistent snapshot: the `header` line counts what
the stream will hold. Processes are read newest first in keyset batches; for each batch the
stream holds the `envelope` lines its processes refer to (when asked for; envelopes larger
than the size limit as metadata only), then one `process` line per process with its nodes,
logs, requests and their delivery attempts. An `end` line closes a complete stream.

Memory follows one batch of processes and one chunk of envelope items (a few MiB, or one
envelope up to the size limit), never the whole selection."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.core.exceptions import Unprocessable
from app.db import Database
from app.envelopes.codec import encode_item
from app.ops import repository, selection
from app.ops.schemas import ExportRequest

AnyRow = sa.Row[*tuple[Any, ...]]
FORMAT = "xbus-export"
VERSION = 1
# Items of small envelopes are read a chunk of envelopes at a time, up to this many bytes.
ENVELOPE_CHUNK_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ExportOptions:
    envelopes: bool
    envelope_size_limit: int
    batch_size: int


def _default(value: object) -> object:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot export {type(value).__name__}")


def line(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, default=_default, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8") + b"\n"


def _grouped(rows: Iterable[AnyRow], key: str) -> dict[Any, list[AnyRow]]:
    groups: dict[Any, list[AnyRow]] = defaultdict(list)
    for row in rows:
        groups[getattr(row, key)].append(row)
    return groups


async def prepare(
    session: AsyncSession, db: Database, settings: Settings, body: ExportRequest
) -> AsyncIterator[bytes]:
    """Check the request (with the caller's session) and return the stream to send."""
    if body.envelope_size_limit > settings.export_envelope_max_bytes:
        raise Unprocessable(
            f"envelope_size_limit: at most {settings.export_envelope_max_bytes} bytes"
        )
    conds = await selection.conditions(session, body)
    if body.partition_index is not None and body.partition_count is not None:
        conds.append(repository.partition(body.partition_index, body.partition_count))
    options = ExportOptions(
        envelopes=body.envelopes,
        envelope_size_limit=body.envelope_size_limit,
        batch_size=settings.export_batch_size,
    )
    header = {"selection": body.model_dump(mode="json", exclude_none=True, exclude={"gzip"})}
    return _buffered(export(db, conds, options, header))


async def _buffered(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Lines gathered into chunks of some size: one write per line costs more than the line."""
    buffer = bytearray()
    async for chunk in lines:
        buffer += chunk
        if len(buffer) >= CHUNK_BYTES:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


async def export(
    db: Database,
    conds: Sequence[sa.ColumnElement[bool]],
    options: ExportOptions,
    header: dict[str, Any],
) -> AsyncIterator[bytes]:
    async with db.sessionmaker() as session:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        total = await repository.count_processes(session, conds)
        yield line(
            {
                "kind": "header",
                "format": FORMAT,
                "version": VERSION,
                "exported_at": datetime.now(UTC),
                "total": total,
                **header,
            }
        )
        count = 0
        position = None
        # Nodes are listed in their pipeline's graph order (as the process detail lists them).
        node_order: dict[Any, dict[str, int]] = {}
        while True:
            rows = await repository.export_processes(session, conds, position, options.batch_size)
            if not rows:
                break
            ids = [row.id for row in rows]
            if options.envelopes:
                triggers = [row.trigger_envelope_id for row in rows if row.trigger_envelope_id]
                async for chunk in _envelopes(session, ids, triggers, options.envelope_size_limit):
                    yield chunk
            nodes = _grouped(await repository.export_nodes(session, ids), "process_id")
            unknown = {row.pipeline_id for row in rows} - set(node_order)
            node_order.update({pipeline_id: {} for pipeline_id in unknown})
            for pipeline_id, graph in await repository.pipeline_graphs(session, unknown):
                names = [n.get("id") for n in (graph or {}).get("nodes", [])]
                node_order[pipeline_id] = {name: i for i, name in enumerate(names)}
            for row in rows:
                order = node_order.get(row.pipeline_id, {})
                nodes.get(row.id, []).sort(key=lambda n: order.get(n.node_id, len(order)))
            logs = _grouped(await repository.export_logs(session, ids), "process_id")
            requests = _grouped(await repository.export_requests(session, ids), "process_id")
            attempts = _grouped(await repository.export_attempts(session, ids), "request_id")
            for row in rows:
                yield line(
                    _process(
                        row,
                        nodes.get(row.id, []),
                        logs.get(row.id, []),
                        requests.get(row.id, []),
                        attempts,
                    )
                )
            count += len(rows)
            position = (rows[-1].created_at, rows[-1].id)
        yield line({"kind": "end", "count": count})


def _process(
    row: AnyRow,
    nodes: list[AnyRow],
    logs: list[AnyRow],
    requests: list[AnyRow],
    attempts: dict[Any, list[AnyRow]],
) -> dict[str, Any]:
    postmortem = None
    if row.pm_level is not None:
        postmortem = {
            "level": row.pm_level,
            "status": row.pm_status,
            "comment": row.pm_comment,
            "changed_at": row.pm_changed_at,
        }
    return {
        "kind": "process",
        "id": row.id,
        "status": row.status,
        "status_reason": row.status_reason,
        "pipeline_id": row.pipeline_id,
        "pipeline_name": row.pipeline_name,
        "pipeline_version": row.pipeline_version,
        "trigger_envelope_id": row.trigger_envelope_id,
        "emitter_id": row.emitter_id,
        "emitter_name": row.emitter_name,
        "group_id": row.group_id,
        "replay_of": row.replay_of,
        "created_at": row.created_at,
        "status_changed_at": row.status_changed_at,
        "nodes_state_changed_at": row.nodes_state_changed_at,
        "ended_at": row.ended_at,
        "result_acked": row.result_acked,
        "postmortem": postmortem,
        "nodes": [
            {
                "node_id": n.node_id,
                "status": n.status,
                "inputs": n.inputs,
                "outputs": n.outputs,
                "started_at": n.started_at,
                "ended_at": n.ended_at,
            }
            for n in nodes
        ],
        "logs": [
            {
                "id": e.id,
                "time": e.time,
                "level": e.level,
                "text": e.text,
                "node_id": e.node_id,
                "actor_id": e.actor_id,
                "envelope_id": e.envelope_id,
                "request_id": e.request_id,
                "processing_error": e.processing_error,
            }
            for e in logs
        ],
        "requests": [
            {
                "id": r.id,
                "node_id": r.node_id,
                "actor_id": r.actor_id,
                "actor_name": r.actor_name,
                "channel": r.channel,
                "status": r.status,
                "inputs": r.inputs,
                "attempts": r.attempts,
                "max_attempts": r.max_attempts,
                "created_at": r.created_at,
                "ended_at": r.ended_at,
                "last_error": r.last_error,
                "delivery_attempts": [
                    {
                        "attempt": a.attempt,
                        "started_at": a.started_at,
                        "duration_ms": a.duration_ms,
                        "status_code": a.status_code,
                        "outcome": a.outcome,
                        "error": a.error,
                    }
                    for a in attempts.get(r.id, [])
                ],
            }
            for r in requests
        ],
    }


async def _envelopes(
    session: AsyncSession,
    process_ids: list[uuid.UUID],
    trigger_ids: list[uuid.UUID],
    size_limit: int,
) -> AsyncIterator[bytes]:
    envelopes = await repository.export_envelopes(session, process_ids, trigger_ids)
    if not envelopes:
        return
    events = _grouped(
        await repository.export_events(session, [e.id for e in envelopes]), "envelope_id"
    )
    small = [e for e in envelopes if e.size_bytes <= size_limit]
    for envelope in envelopes:
        if envelope.size_bytes > size_limit:
            yield line(_envelope(envelope, events.get(envelope.id, []), None))
    for chunk in _chunks(small, max(size_limit, ENVELOPE_CHUNK_BYTES)):
        event_ids = [ev.id for e in chunk for ev in events.get(e.id, [])]
        items = _grouped(await repository.export_items(session, event_ids), "event_id")
        for e in chunk:
            yield line(_envelope(e, events.get(e.id, []), items))
        del items


def _chunks(envelopes: list[AnyRow], budget: int) -> Iterator[list[AnyRow]]:
    """Consecutive envelopes whose items together stay within `budget` bytes (one envelope
    alone may reach the size limit)."""
    chunk: list[AnyRow] = []
    size = 0
    for envelope in envelopes:
        if chunk and size + envelope.size_bytes > budget:
            yield chunk
            chunk, size = [], 0
        chunk.append(envelope)
        size += envelope.size_bytes
    if chunk:
        yield chunk


def _envelope(
    envelope: AnyRow,
    events: list[AnyRow],
    items: dict[Any, list[AnyRow]] | None,
) -> dict[str, Any]:
    return {
        "kind": "envelope",
        "id": envelope.id,
        "status": envelope.status,
        "status_reason": envelope.status_reason,
        "emitter_id": envelope.emitter_id,
        "process_id": envelope.process_id,
        "node_id": envelope.node_id,
        "output": envelope.output,
        "event_count": envelope.event_count,
        "item_count": envelope.item_count,
        "size_bytes": envelope.size_bytes,
        "created_at": envelope.created_at,
        "completed_at": envelope.completed_at,
        "items_included": items is not None,
        "events": [_event(ev, None if items is None else items.get(ev.id, [])) for ev in events],
    }


def _event(event: AnyRow, items: list[AnyRow] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": event.id,
        "position": event.position,
        "type": event.type,
        "encoding": event.encoding,
        "item_count": event.items_received,
        "size_bytes": event.size_bytes,
        "complete": event.complete,
    }
    if items is not None:
        data = [item.data for item in items]
        try:
            body["items"] = [encode_item(d, event.encoding) for d in data]
        except ValueError:
            # Bytes the declared encoding cannot carry (say, not UTF-8 for "text").
            body["encoding"] = "base64"
            body["items"] = [encode_item(d, "base64") for d in data]
    return body
