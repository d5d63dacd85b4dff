"""Process logging: console or JSON lines, written by a background thread through a bounded
queue. A slow or closed stderr never blocks or crashes the bus: records that do not fit
are dropped and counted (the original Xbus crashed in that case)."""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import Any

_QUEUE_SIZE = 10_000


class DroppingQueueHandler(logging.handlers.QueueHandler):
    dropped = 0
    _lock = threading.Lock()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._lock:
                DroppingQueueHandler.dropped += 1


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class SafeStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Swallows write errors (closed pipe, full disk): logging must never take the bus down."""

    def handleError(self, record: logging.LogRecord) -> None:
        DroppingQueueHandler.dropped += 1


_listener: logging.handlers.QueueListener | None = None


def setup_logging(level: str = "info", fmt: str = "console") -> None:
    global _listener
    stop_logging()
    stream = SafeStreamHandler(sys.stderr)
    if fmt == "json":
        stream.setFormatter(JsonFormatter())
    else:
        stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    q: queue.Queue[logging.LogRecord] = queue.Queue(_QUEUE_SIZE)
    handler = DroppingQueueHandler(q)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _listener = logging.handlers.QueueListener(q, stream, respect_handler_level=True)
    _listener.start()


def stop_logging() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None
