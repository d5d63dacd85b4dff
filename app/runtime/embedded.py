"""Start what the settings leave unconfigured, and hand back settings that point at it."""

from __future__ import annotations

import logging
import os
import signal
from types import TracebackType

from app.certs.pki import CertificateAuthority, ensure_server_tls
from app.config import Settings
from app.runtime.lock import DataDirLock
from app.runtime.nats import EmbeddedNats
from app.runtime.postgres import EmbeddedPostgres
from app.runtime.watchdog import Watchdog

log = logging.getLogger(__name__)

_SPARE_CONNECTIONS = 20


class EmbeddedRuntime:
    """Context manager: on enter, lock the data dir and start the embedded PostgreSQL and/or
    nats-server; on exit, stop them in reverse order. With `watch`, a watchdog restarts a
    server that exits (app/runtime/watchdog.py); when it gives up, `failure` says why and
    this process gets SIGTERM (the serve command then drains and exits non-zero)."""

    def __init__(self, settings: Settings, *, need_nats: bool = True, watch: bool = False) -> None:
        self.settings = settings
        self.need_nats = need_nats
        self.watch = watch
        self.lock = DataDirLock(settings.data_dir)
        self.postgres: EmbeddedPostgres | None = None
        self.nats: EmbeddedNats | None = None
        self.watchdog: Watchdog | None = None
        self.failure: str | None = None

    def connections_needed(self) -> int:
        """Every worker's pool and overflow, and room for psql, the supervisor's bootstrap
        and operators."""
        settings = self.settings
        return settings.serve_workers * settings.db_connections_per_worker + _SPARE_CONNECTIONS

    def __enter__(self) -> Settings:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            updates: dict[str, object] = {}
            if self.settings.database_url is None:
                self.postgres = EmbeddedPostgres(
                    self.settings.data_dir, max_connections=self.connections_needed()
                )
                updates["database_url"] = self.postgres.start()
            if self.settings.nats_url is None and self.need_nats:
                tls = None
                if self.settings.nats_tls:
                    ca = CertificateAuthority.load_or_create(self.settings.pki_path)
                    tls = ensure_server_tls(
                        ca, self.settings.pki_path, self.settings.nats_server_hosts
                    )
                    updates.update(
                        nats_tls_ca=tls.ca_file,
                        nats_tls_cert=tls.client_cert,
                        nats_tls_key=tls.client_key,
                    )
                self.nats = EmbeddedNats(
                    self.settings.data_dir, self.settings.nats_host, self.settings.nats_port, tls
                )
                updates["nats_url"] = self.nats.start()
                updates["nats_monitor_url"] = self.nats.monitor_url
                if tls is not None:
                    updates["nats_auth_file"] = self.nats.auth_file
                    updates["nats_pid_file"] = self.nats.pid_file
            if self.watch and (self.postgres or self.nats):
                self.watchdog = self._watchdog()
                updates["embedded_status_file"] = self.watchdog.status_file
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self.settings.model_copy(update=updates)

    def _watchdog(self) -> Watchdog:
        watchdog = Watchdog(
            self.settings.data_dir.resolve() / "embedded-status.json",
            self.settings.embedded_restart_max,
            self._give_up,
        )
        if self.postgres is not None:
            watchdog.watch("postgres", self.postgres)
        if self.nats is not None:
            watchdog.watch("nats-server", self.nats)
        watchdog.start()
        return watchdog

    def _give_up(self, reason: str) -> None:
        self.failure = reason
        os.kill(os.getpid(), signal.SIGTERM)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.watchdog is not None:
                self.watchdog.stop()
            if self.nats is not None:
                self.nats.stop()
            if self.postgres is not None:
                self.postgres.stop()
        finally:
            self.lock.release()
