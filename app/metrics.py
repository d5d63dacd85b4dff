"""The bus's own Prometheus metrics (`xbus_*`). Counters and histograms are updated where
things happen, after the commit that makes them true; gauges that describe stored state are
read from the database at scrape time (see app/metrics_collector.py). docs/operations.md
lists every series."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncSession

from app.commit_hooks import HasInfo, on_commit
from app.logs import dropped_records

ENVELOPES_RECEIVED = Counter(
    "xbus_envelopes_received_total", "Envelopes received from emitters", ["transport"]
)
ENVELOPES_ACCEPTED = Counter(
    "xbus_envelopes_accepted_total", "Envelopes stored and dispatched", ["transport"]
)
ENVELOPES_REJECTED = Counter(
    "xbus_envelopes_rejected_total",
    "Envelopes refused (bad input, no pipeline)",
    ["transport", "reason"],
)
EMISSION_GROUP_SIZE = Histogram(
    "xbus_emission_group_size",
    "Envelopes written together by one transaction of the emission group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
PROCESSES_ENDED = Counter("xbus_processes_ended_total", "Processes that ended", ["status"])
PROCESS_DURATION = Histogram(
    "xbus_process_duration_seconds",
    "Time from process start to its end",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
REQUESTS_ENDED = Counter(
    "xbus_requests_ended_total", "Actor requests that ended", ["channel", "status"]
)
WEBHOOK_ATTEMPTS = Counter("xbus_webhook_attempts_total", "Webhook delivery attempts", ["outcome"])
WEBHOOK_LATENCY = Histogram(
    "xbus_webhook_latency_seconds",
    "Webhook response time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DUTY_PASSES = Counter(
    "xbus_duty_passes_total",
    "Passes of the periodic background duties on this replica: done (this replica held the "
    "duty's lock and did the work), skipped (another replica held it), failed",
    ["duty", "outcome"],
)
SENTRY_REPORTS = Counter(
    "xbus_sentry_reports_total", "Processes in error reported to Sentry", ["outcome"]
)


def requests_ended(session: AsyncSession | HasInfo, ended: Iterable[tuple[str, str]]) -> None:
    """Count requests that ended, as (channel, status) pairs, once the unit commits."""
    pairs = [(str(channel), str(status)) for channel, status in ended]
    if pairs:
        on_commit(session, lambda: _count_requests(Tally(pairs)))


def _count_requests(tally: Tally[tuple[str, str]]) -> None:
    for (channel, status), n in tally.items():
        REQUESTS_ENDED.labels(channel, status).inc(n)


class LogDropsCollector(Collector):
    """xbus_log_records_dropped_total, read from the logging pipeline (app/logs.py)."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "xbus_log_records_dropped",
            "Log records dropped because the log output was slow or closed",
        )
        family.add_metric([], dropped_records())
        yield family
