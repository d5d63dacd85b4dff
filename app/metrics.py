"""The bus's own Prometheus metrics (`xbus_*`). Counters and histograms are updated where
things happen; gauges that describe stored state are read from the database at scrape time
(see app/metrics_collector.py)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
