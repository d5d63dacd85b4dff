"""Process logging: console or JSON lines, levels per logger, and an output that can never
block or crash the bus.

The original Xbus crashed when it could not write its logs (a full pipe, a closed stderr,
a rate-limiting init system). Here a record is formatted where it is logged and put on a
bounded queue without waiting; one daemon thread writes the lines to the output file
descriptor. When the output is slow the queue fills and new records are dropped; when it is
closed, writes fail and their records are dropped; either way they are counted
(`dropped_records()`, exported as `xbus_log_records_dropped_total`) and the bus goes on.
The writer is not a `logging.Handler` and writes with `os.write`, so neither
`logging.shutdown()` nor the interpreter's exit waits on a stuck output."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import sys
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

DEFAULT_QUEUE_SIZE = 10_000
# Quiet by default, each can be changed with `log_levels`.
DEFAULT_LEVELS = {"uvicorn.access": "warning", "asyncio": "error"}
_BATCH = 256
_STOP = object()

# Attributes every LogRecord has: anything else came through `extra=` and goes into JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class _DropCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


_dropped = _DropCounter()


def dropped_records() -> int:
    """Log records dropped since the process started (slow or closed output)."""
    return _dropped.value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def console_formatter() -> logging.Formatter:
    return logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")


class LogOutput:
    """Formatted lines to a file descriptor through a bounded queue and a writer thread."""

    def __init__(
        self, fd: int, formatter: logging.Formatter, queue_size: int = DEFAULT_QUEUE_SIZE
    ) -> None:
        self.fd = fd
        self.queue: queue.Queue[object] = queue.Queue(queue_size)
        self.handler = _EnqueueHandler(self.queue)
        self.handler.setFormatter(formatter)
        self.closed = False  # the output failed for good (EPIPE, EBADF): drop everything
        self._thread = threading.Thread(target=self._run, name="xbus-log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> bool:
        """Write what is queued, within `timeout`; False when the output would not take it
        (the writer is then abandoned: it is a daemon thread)."""
        self.handler.stopped = True
        try:
            self.queue.put(_STOP, timeout=timeout)
        except queue.Full:
            return False
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            lines = [item for item in batch if isinstance(item, str)]
            if lines:
                self._write(lines)
            if stop:
                return

    def _write(self, lines: list[str]) -> None:
        if self.closed:
            _dropped.add(len(lines))
            return
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except InterruptedError:
            _dropped.add(len(lines))
        except OSError as exc:
            _dropped.add(len(lines))
            if exc.errno in (errno.EPIPE, errno.EBADF, errno.EINVAL):
                self.closed = True


class _EnqueueHandler(logging.Handler):
    """Formats in the caller's thread (the record's arguments may change afterwards) and
    enqueues without ever waiting."""

    def __init__(self, q: queue.Queue[object]) -> None:
        super().__init__()
        self.queue = q
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.stopped:
            _dropped.add()
            return
        try:
            line = self.format(record)
        except Exception:
            _dropped.add()
            return
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            _dropped.add()

    def handleError(self, record: logging.LogRecord) -> None:
        _dropped.add()


_output: LogOutput | None = None
_levels_set: list[str] = []


def setup_logging(
    level: str = "info",
    fmt: str = "console",
    levels: dict[str, str] | None = None,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    fd: int | None = None,
) -> LogOutput:
    """Route every record to stderr (or `fd`) as console or JSON lines. `levels` sets levels
    per logger over the root `level`, e.g. {"app.bus": "debug", "uvicorn.access": "info"}."""
    global _output
    stop_logging()
    output = LogOutput(
        sys.stderr.fileno() if fd is None else fd,
        JsonFormatter() if fmt == "json" else console_formatter(),
        queue_size,
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(output.handler)
    root.setLevel(level.upper())
    for name in _levels_set:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _levels_set.clear()
    for name, value in {**DEFAULT_LEVELS, **(levels or {})}.items():
        logging.getLogger(name).setLevel(value.upper())
        _levels_set.append(name)
    # Warnings and uncaught thread exceptions would otherwise write to stderr directly.
    logging.captureWarnings(True)
    threading.excepthook = _log_thread_exception
    output.start()
    _output = output
    return output


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("app.threads").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def stop_logging(timeout: float = 2.0) -> None:
    """Flush what is queued (at most `timeout` s) and stop the writer. Records logged after
    this are dropped and counted: nothing may write to a stuck stderr at exit."""
    global _output
    if _output is None:
        return
    output, _output = _output, None
    if not output.stop(timeout):
        with contextlib.suppress(Exception):
            output.queue.put_nowait(_STOP)
    root = logging.getLogger()
    root.removeHandler(output.handler)
    root.addHandler(_DropHandler())


class _DropHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _dropped.add()


def setup_logging_for(settings: Settings) -> LogOutput:
    return setup_logging(
        settings.log_level,
        settings.log_format,
        settings.logger_levels,
        settings.log_queue_size,
    )
