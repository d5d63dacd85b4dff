"""Logging: JSON or console lines, levels per logger, and an output that never blocks or
crashes the bus (the original crashed when it could not write its logs): records that do
not fit are dropped and counted."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app import logs
from app.config import Settings
from tests.production.conftest import Scrape
from tests.production.servers import ADMIN, Cluster


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """setup_logging() takes over the root logger: give pytest's handlers back after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        logs.stop_logging()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name in ("app.bus", "app.other", "uvicorn.access", "asyncio", "xbus.test"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def _read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_json_lines_and_levels_per_logger(root_handlers: None) -> None:
    read, write = os.pipe()
    try:
        settings = Settings(
            database_url="postgresql://unused/x",
            log_level="info",
            log_format="json",
            log_levels="app.bus=debug, uvicorn.access=warning",
        )
        logs.setup_logging(
            settings.log_level, settings.log_format, settings.logger_levels, fd=write
        )
        logging.getLogger("app.bus.director").debug("dispatching %s", "node1", extra={"pid": 7})
        logging.getLogger("app.other").debug("hidden: other modules stay at info")
        logging.getLogger("app.other").info("shown")
        logging.getLogger("uvicorn.access").info("hidden: access lines at warning")
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("app.other").exception("with a traceback")
        logs.stop_logging()
        lines = [json.loads(line) for line in _read_all(read).decode().splitlines()]
    finally:
        os.close(read)
        os.close(write)
    assert [(line["logger"], line["level"], line["message"]) for line in lines] == [
        ("app.bus.director", "debug", "dispatching node1"),
        ("app.other", "info", "shown"),
        ("app.other", "error", "with a traceback"),
    ]
    assert lines[0]["pid"] == 7
    assert "ValueError: bad" in lines[2]["exception"]
    assert lines[0]["time"].endswith("+00:00")


def test_console_lines(root_handlers: None) -> None:
    read, write = os.pipe()
    try:
        logs.setup_logging("warning", "console", fd=write)
        logging.getLogger("xbus.test").info("not at warning")
        logging.getLogger("xbus.test").warning("careful")
        logs.stop_logging()
        text = _read_all(read).decode()
    finally:
        os.close(read)
        os.close(write)
    assert "WARNING xbus.test: careful" in text
    assert "not at warning" not in text


def test_a_stuck_output_never_blocks_the_caller(root_handlers: None) -> None:
    read, write = os.pipe()  # nobody reads: the pipe fills after ~64 KiB
    try:
        before = logs.dropped_records()
        logs.setup_logging("info", "json", queue_size=100, fd=write)
        log = logging.getLogger("xbus.test")
        started = time.monotonic()
        for n in range(20_000):
            log.info("record %d %s", n, "x" * 100)
        took = time.monotonic() - started
        assert took < 5, took  # formatting only: never waits for the output
        assert logs.dropped_records() - before > 10_000
        started = time.monotonic()
        logs.stop_logging(timeout=0.5)
        assert time.monotonic() - started < 3
        log.info("after the stop: dropped, not written")
    finally:
        os.close(read)
        os.close(write)


def test_a_closed_output_is_counted_not_raised(root_handlers: None) -> None:
    read, write = os.pipe()
    os.close(read)  # EPIPE on every write
    try:
        before = logs.dropped_records()
        output = logs.setup_logging("info", "console", fd=write)
        for n in range(50):
            logging.getLogger("xbus.test").info("record %d", n)
        # Wait for this output's own writer: a writer a test before abandoned may add to the
        # (global) count of dropped records when its pipe goes away.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
            output.closed and logs.dropped_records() - before >= 50
        ):
            time.sleep(0.01)
        assert output.closed
        logs.stop_logging()  # joins this writer: every record of it handled
        assert logs.dropped_records() - before >= 50
    finally:
        os.close(write)


def _metrics(url: str) -> Scrape:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    return Scrape(r.text)


async def _load(url: str, requests: int, concurrency: int = 16) -> list[float]:
    """`requests` authenticated API calls (each logs its SQL and access line)."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, headers=ADMIN, timeout=30) as client:

        async def one() -> None:
            async with gate:
                started = time.monotonic()
                r = await client.get("/api/v1/accounts")
                latencies.append(time.monotonic() - started)
                assert r.status_code == 200, r.text

        await asyncio.gather(*(one() for _ in range(requests)))
    return latencies


NOISY = {
    # Every SQL statement and every request is logged: far more than the output takes.
    "XBUS_LOG_LEVELS": "sqlalchemy.engine=info,uvicorn.access=info,app=debug",
    "XBUS_LOG_FORMAT": "json",
    "XBUS_LOG_QUEUE_SIZE": "200",
}


async def test_xbusd_with_a_stderr_nobody_reads(cluster: Cluster) -> None:
    read, write = os.pipe()
    try:
        server = cluster.server("stuck", env=NOISY, stderr=write).start()
        os.close(write)
        await asyncio.to_thread(server.wait_ready)
        latencies = await _load(server.url, 1000)
        latencies.sort()
        slowest = latencies[-1]
        assert latencies[int(len(latencies) * 0.99)] < 2.0, latencies[-20:]
        assert slowest < 5.0, slowest
        scraped = _metrics(server.url)
        assert scraped.value("xbus_log_records_dropped_total") > 1000
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert await server.wait_async(30) == 0
        assert time.monotonic() - started < 20
    finally:
        os.close(read)


async def test_xbusd_with_a_closed_stderr(cluster: Cluster, tmp_path: Path) -> None:
    read, write = os.pipe()
    server = cluster.server("closed", env=NOISY, stderr=write).start()
    os.close(write)
    os.close(read)  # the reader is gone: every write fails with EPIPE
    await asyncio.to_thread(server.wait_ready)
    await _load(server.url, 300)
    assert _metrics(server.url).value("xbus_log_records_dropped_total") > 100
    server.signal(signal.SIGTERM)
    assert await server.wait_async(30) == 0


def test_xbusd_log_flags_are_checked(tmp_path: Path) -> None:
    from tests.production.servers import XBUSD, _clean_env

    out = subprocess.run(
        [XBUSD, "serve", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**_clean_env(), "XBUS_LOG_LEVELS": "app.bus=chatty"},
    )
    assert out.returncode == 2
    assert "app.bus=chatty" in out.stderr
