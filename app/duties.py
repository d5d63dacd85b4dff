"""Background duties the lifespan runs (and cancels, in reverse order, at shutdown). Each is
a coroutine factory taking the app state; add a duty here, not in main.py."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from app import metrics
from app.bus.singleton import run_periodically
from app.bus.supervisor import supervise
from app.ops import supervision
from app.state import AppState
from app.webhooks.dispatcher import Dispatcher

Duty = Callable[[AppState], Coroutine[Any, Any, None]]


def _counter(duty: str) -> Callable[[str], object]:
    """Counts the passes of a periodic duty (xbus_duty_passes_total)."""
    return lambda outcome: metrics.DUTY_PASSES.labels(duty, outcome).inc()


async def _supervisor(state: AppState) -> None:
    await supervise(state.db, state.director, state.settings.envelope_stall_timeout)


async def _nats_api(state: AppState) -> None:
    from app.nats_api.server import run_nats_api

    await run_nats_api(state)


async def _stalled_emissions(state: AppState) -> None:
    settings = state.settings
    await run_periodically(
        state.db.engine,
        "stalled-emissions",
        settings.supervision_interval,
        lambda: supervision.cancel_stalled_emissions(
            state.db, state.director, settings.envelope_stall_timeout
        ),
        counted=_counter("stalled-emissions"),
    )


async def _unresponsive_actors(state: AppState) -> None:
    settings = state.settings
    await run_periodically(
        state.db.engine,
        "unresponsive-actors",
        settings.supervision_interval,
        lambda: supervision.mark_unresponsive_actors(state.db, settings.actor_unresponsive_after),
        counted=_counter("unresponsive-actors"),
    )


async def _storage_stats(state: AppState) -> None:
    await run_periodically(
        state.db.engine,
        "storage-stats",
        state.settings.stats_interval,
        lambda: supervision.refresh_storage_stats(state.db),
        counted=_counter("storage-stats"),
    )


async def _process_counts(state: AppState) -> None:
    await run_periodically(
        state.db.engine,
        "process-counts",
        state.settings.process_counts_fold_interval,
        lambda: supervision.fold_process_counts(state.db),
        counted=_counter("process-counts"),
    )


async def _webhooks(state: AppState) -> None:
    await Dispatcher(state.db, state.director, state.settings, state.notifier).run()


async def _sentry_reports(state: AppState) -> None:
    from app.sentry import report_failed_processes

    await report_failed_processes(state.db, state.settings)


DUTIES: list[tuple[str, Duty]] = [
    ("supervisor", _supervisor),
    ("nats-api", _nats_api),
    ("stalled-emissions", _stalled_emissions),
    ("unresponsive-actors", _unresponsive_actors),
    ("storage-stats", _storage_stats),
    ("process-counts", _process_counts),
    ("webhooks", _webhooks),
    ("sentry-reports", _sentry_reports),
]
