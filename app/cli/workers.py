"""`xbusd serve --workers N`: N uvicorn worker processes over one embedded runtime.

The `xbusd serve` process is their supervisor. It binds the listening socket first of all,
starts the embedded PostgreSQL and nats-server (when no URLs are configured), migrates the
schema, ensures the admin account and the CA once, then runs uvicorn's `Multiprocess`
supervisor: the workers are spawned processes that share the socket; a worker that dies is
replaced; SIGHUP replaces them one by one; SIGTERM or SIGINT drains them (each finishes its
requests in flight and stops its duties) and returns, and only then do the embedded servers
stop.

Each worker is a replica in all but name: its own database pool, NATS connection, doorbell
and duties, which already coordinate across replicas (advisory locks, NATS queue groups,
`SKIP LOCKED`). Workers get the supervisor's effective settings (the embedded servers' URLs,
TLS files, admin key) as the pickled `Settings` that travels with uvicorn's configuration to
each spawned worker: the same object, not a re-parse, and no secret in the environment."""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import signal
import socket
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import uvicorn

from app.cli import fair_accept
from app.cli.http_protocol import HttpProtocol
from app.config import Settings
from app.logs import setup_logging_for, stop_logging
from app.runtime import children

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("xbusd")

# PostgreSQL keeps a few connections for superusers: a pool that would need them fails.
_RESERVED_CONNECTIONS = 3
_HEALTHCHECK_TIMEOUT = 30
_LOAD_SLOTS = 64


def worker_app(settings: Settings) -> FastAPI:
    """The app factory each worker calls: the bus as one replica, the schema and the admin
    account being the supervisor's business."""
    from app.main import create_app

    return create_app(settings, bootstrap_admin=False, serving=True)


def _exit_worker(signum: int, frame: FrameType | None) -> NoReturn:
    # Everything the worker owns (pool, NATS connection, duties) is closed by now: flush the
    # log and go, without the interpreter's finalization (seconds of garbage collection of
    # a large app on a busy machine, for nothing).
    stop_logging()
    os._exit(0)


def _become_worker(settings: Settings, supervisor_pid: int) -> None:
    # Die with the supervisor even on its kill -9 (SIGTERM: drain what can be drained).
    children.die_with_parent(signal.SIGTERM, supervisor_pid)
    setup_logging_for(settings)
    # uvicorn's server handles SIGTERM/SIGINT (graceful drain) while it serves, then
    # re-raises the signal to the handler that was there before: this one, which flushes the
    # log queue that a death by signal would lose. Other exits flush it at exit.
    atexit.register(stop_logging)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_worker)


class WorkerConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the effective settings to the spawned workers."""

    def __init__(self, settings: Settings, workers: int, **kwargs: Any) -> None:
        self.settings = settings
        self.supervisor_pid = os.getpid()
        # The workers' connections, for each to take the shared socket's least-loaded first
        # (room for the workers added by SIGTTIN and for those replaced).
        self.loads = fair_accept.Loads(max(_LOAD_SLOTS, 4 * workers))
        super().__init__(
            functools.partial(worker_app, settings), factory=True, workers=workers, **kwargs
        )

    def configure_logging(self) -> None:
        """uvicorn calls this in the supervisor (from `__init__`) and first thing in each
        worker: the worker's set-up goes here."""
        super().configure_logging()
        if os.getpid() != self.supervisor_pid:
            _become_worker(self.settings, self.supervisor_pid)
            fair_accept.share(self.loads)


def prepare(settings: Settings) -> Settings:
    """What must happen once before the workers start, in the supervisor: migrate, ensure
    the admin account (its key generated once) and the CA. Returns the workers' settings."""
    from app.certs.pki import CertificateAuthority
    from app.migrations import upgrade

    assert settings.database_url is not None
    if settings.migrate_on_start:
        upgrade(settings.database_url)
    asyncio.run(_bootstrap(settings))
    CertificateAuthority.load_or_create(settings.pki_path)
    return settings.model_copy(update={"migrate_on_start": False})


async def _bootstrap(settings: Settings) -> None:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncSession

    from app.accounts.bootstrap import ensure_admin
    from app.db import create_engine

    engine = create_engine(settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            async with session.begin():
                await ensure_admin(session, settings)
            limit = int(await session.scalar(sa.text("SHOW max_connections")) or 0)
    finally:
        await engine.dispose()
    needed = settings.serve_workers * settings.db_connections_per_worker
    if limit and needed > limit - _RESERVED_CONNECTIONS:
        log.warning(
            "%d workers x (XBUS_DB_POOL_SIZE %d + XBUS_DB_MAX_OVERFLOW %d + XBUS_DB_HOT_POOL_SIZE "
            "%d) = %d database connections at most, over the server's max_connections %d: "
            "lower them, or raise it",
            settings.serve_workers,
            settings.db_pool_size,
            settings.db_max_overflow,
            settings.db_hot_pool_size,
            needed,
            limit,
        )


def serve_workers(settings: Settings, sock: socket.socket) -> bool:
    """Run `settings.serve_workers` workers on the bound socket `sock` until SIGTERM/SIGINT;
    False when they could not start (a worker failed its start-up: the others are
    stopped)."""
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    workers = settings.serve_workers
    try:
        worker_settings = prepare(settings)
    except Exception as exc:
        log.debug("preparing the database failed", exc_info=True)
        raise RuntimeError(f"cannot prepare the database for the workers: {exc}") from exc
    config = WorkerConfig(
        worker_settings,
        workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=settings.http_shutdown_grace,
        server_header=False,
        proxy_headers=True,
        http=HttpProtocol,  # a response's head and body in one write
        # The workers take the shared socket's connections least-loaded first.
        loop="app.cli.fair_accept:new_event_loop",
        # A worker answers the supervisor's pings once it has imported enough to start its
        # server: on a busy machine that takes longer than uvicorn's 5 s, and a worker
        # that does not answer in time is killed and started again.
        timeout_worker_healthcheck=_HEALTHCHECK_TIMEOUT,
    )
    log.info(
        "%d workers, up to %d database connections (workers x (pool + overflow + hot pool))",
        workers,
        workers * settings.db_connections_per_worker,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    return not any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes)
