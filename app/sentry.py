"""Sentry, optional: with no `sentry_dsn` nothing of it is imported or initialised.

With a DSN, xbusd's own errors (logged errors, unhandled exceptions) go to Sentry through
the SDK's default integrations, and every process that ends in error is reported once, as
the original Xbus did: the event title names the pipeline, the emitter and the first error
message of the actor that failed (so Sentry groups alike failures together), and the
process's whole log is attached, notices and warnings included.

Reporting is a duty of every replica: it claims unreported processes with
`FOR UPDATE SKIP LOCKED` and marks them reported in the same transaction, so a process is
reported once across replicas (twice only if a replica dies between sending and commit)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app import metrics
from app.config import Settings
from app.db import Database
from app.models import Actor, LogEntry, Pipeline, Process
from app.models.enums import LogLevel, ProcessStatus
from app.version import version

if TYPE_CHECKING:
    from sentry_sdk._types import Event

log = logging.getLogger(__name__)

BATCH = 50
TITLE_MESSAGE_MAX = 200
LOG_LINES_MAX = 20_000
BREADCRUMBS_MAX = 100
_BREADCRUMB_LEVEL = {LogLevel.NOTICE: "info", LogLevel.WARNING: "warning", LogLevel.ERROR: "error"}


def sentry_enabled(settings: Settings) -> bool:
    return settings.sentry_dsn is not None and bool(settings.sentry_dsn.get_secret_value())


def init_sentry(settings: Settings) -> bool:
    """Initialise the SDK when a DSN is configured; True when it was."""
    if settings.sentry_dsn is None or not sentry_enabled(settings):
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        release=f"xbus-server@{version()}",
        max_breadcrumbs=BREADCRUMBS_MAX,
    )
    log.info("Sentry reporting enabled (environment %s)", settings.sentry_environment or "-")
    return True


def close_sentry(timeout: float = 2.0) -> None:
    """Send what is queued (at most `timeout` s) and stop reporting."""
    import sentry_sdk

    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)


@dataclass
class ProcessReport:
    """What Sentry receives for one process in error."""

    process_id: uuid.UUID
    title: str
    tags: dict[str, str]
    context: dict[str, Any]
    log_lines: list[str]
    breadcrumbs: list[dict[str, Any]] = field(default_factory=list)

    def event(self) -> Event:
        return {
            "message": self.title,
            "level": "error",
            "logger": "xbus.process",
            "tags": self.tags,
            "contexts": {"process": self.context},
        }

    def attachment(self) -> bytes:
        return ("\n".join(self.log_lines) + "\n").encode("utf-8", "replace")


def _shorten(text: str, limit: int = TITLE_MESSAGE_MAX) -> str:
    first_line = text.strip().splitlines()[0] if text.strip() else ""
    return first_line if len(first_line) <= limit else first_line[: limit - 1] + "…"


async def build_report(session: AsyncSession, process: Process) -> ProcessReport:
    pipeline = await session.get(Pipeline, process.pipeline_id) if process.pipeline_id else None
    emitter = await session.get(Actor, process.emitter_id) if process.emitter_id else None
    entries = (
        (
            await session.execute(
                sa.select(LogEntry)
                .where(LogEntry.process_id == process.id)
                .order_by(LogEntry.id)
                .limit(LOG_LINES_MAX)
            )
        )
        .scalars()
        .all()
    )
    # The first error of the actor that failed; else the reason the process ended.
    failing = next(
        (e for e in entries if e.level == LogLevel.ERROR and e.actor_id is not None), None
    )
    actor = await session.get(Actor, failing.actor_id) if failing and failing.actor_id else None
    message = failing.text if failing else (process.status_reason or "process failed")
    pipeline_name = pipeline.name if pipeline else "(deleted pipeline)"
    emitter_name = emitter.name if emitter else "(deleted emitter)"
    title = f"{pipeline_name} / {emitter_name}: {_shorten(message)}"

    names: dict[uuid.UUID, str] = {}
    for entry in entries:
        if entry.actor_id is not None and entry.actor_id not in names:
            known = await session.get(Actor, entry.actor_id)
            names[entry.actor_id] = known.name if known else str(entry.actor_id)
    lines = []
    breadcrumbs = []
    for entry in entries:
        who = f" {names[entry.actor_id]}" if entry.actor_id else ""
        where = f" [{entry.node_id}{who}]" if entry.node_id or who else ""
        lines.append(f"{entry.time.isoformat()} {entry.level.value:<7}{where} {entry.text}")
        breadcrumbs.append(
            {
                "type": "default",
                "category": f"xbus.process.{entry.node_id or 'process'}",
                "level": _BREADCRUMB_LEVEL.get(entry.level, "info"),
                "message": entry.text,
                "timestamp": entry.time,
            }
        )
    tags = {
        "pipeline": pipeline_name,
        "emitter": emitter_name,
        "process_id": str(process.id),
    }
    if pipeline:
        tags["pipeline_version"] = pipeline.version
    if failing and failing.node_id:
        tags["node"] = failing.node_id
    if actor:
        tags["actor"] = actor.name
    context = {
        "id": str(process.id),
        "status": process.status.value,
        "status_reason": process.status_reason,
        "pipeline_id": str(process.pipeline_id) if process.pipeline_id else None,
        "trigger_envelope_id": str(process.trigger_envelope_id),
        "replay_of": str(process.replay_of) if process.replay_of else None,
        "created_at": process.created_at.isoformat(),
        "ended_at": process.ended_at.isoformat() if process.ended_at else None,
        "log_entries": len(entries),
    }
    return ProcessReport(process.id, title, tags, context, lines, breadcrumbs[-BREADCRUMBS_MAX:])


def send_report(report: ProcessReport) -> str | None:
    """Hand the report to the SDK (which sends it from its own thread); the event id."""
    import sentry_sdk

    with sentry_sdk.isolation_scope() as scope:
        scope.clear_breadcrumbs()
        for crumb in report.breadcrumbs:
            scope.add_breadcrumb(crumb)
        scope.add_attachment(
            bytes=report.attachment(),
            filename=f"process-{report.process_id}.log",
            content_type="text/plain",
        )
        return sentry_sdk.capture_event(report.event())


async def report_pass(db: Database, max_age: float) -> int:
    """Report the processes in error not reported yet; how many were."""
    now = datetime.now(UTC)
    async with db.session() as session:
        processes = (
            (
                await session.execute(
                    sa.select(Process)
                    .where(
                        Process.status == ProcessStatus.ERROR,
                        Process.sentry_reported_at.is_(None),
                        Process.ended_at > now - timedelta(seconds=max_age),
                    )
                    .order_by(Process.ended_at)
                    .limit(BATCH)
                    .with_for_update(skip_locked=True)
                )
            )
            .scalars()
            .all()
        )
        for process in processes:
            report = await build_report(session, process)
            event_id = send_report(report)
            outcome = "sent" if event_id else "dropped"
            metrics.SENTRY_REPORTS.labels(outcome).inc()
            log.debug("process %s reported to Sentry: %s", process.id, event_id or outcome)
            process.sentry_reported_at = now
    return len(processes)


async def report_failed_processes(db: Database, settings: Settings, interval: float = 2.0) -> None:
    """The duty: report processes in error as they end (nothing without a DSN)."""
    if not sentry_enabled(settings):
        return
    while True:
        try:
            reported = await report_pass(db, settings.sentry_report_max_age)
            metrics.DUTY_PASSES.labels("sentry-reports", "done").inc()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Sentry report pass failed; retrying")
            metrics.DUTY_PASSES.labels("sentry-reports", "failed").inc()
            reported = 0
        if reported < BATCH:
            await asyncio.sleep(interval)
