"""`xbusd`: the bus server."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from app.config import ConfigFileError, Settings, load_settings
from app.logs import setup_logging_for, stop_logging
from app.version import full_version, version

log = logging.getLogger("xbusd")

cli = typer.Typer(
    name="xbusd",
    help="Xbus server: the HTTP API, webhooks and the Xbus NATS protocol in one process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration file.", dir_okay=False)
]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory [default: ./xbus-data].")
]


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"xbusd {version()}")
        raise typer.Exit


def _full_version_cb(value: bool) -> None:
    if value:
        typer.echo(json.dumps(full_version(), indent=2))
        raise typer.Exit


@cli.callback()
def main_options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    _full_version: Annotated[
        bool,
        typer.Option(
            "--full-version",
            callback=_full_version_cb,
            is_eager=True,
            help="Print version and build details.",
        ),
    ] = False,
) -> None:
    """Xbus server."""


def _settings(config: Path | None, **overrides: Any) -> Settings:
    if config is not None and not config.exists():
        typer.echo(f"error: config file {config} not found", err=True)
        raise typer.Exit(2)
    try:
        return load_settings(config, **overrides)
    except ConfigFileError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGTERM/SIGINT after its shutdown, which would kill xbusd before it
        stops its embedded servers in order; here the signal only asks for a graceful stop."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


@cli.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [default: 8000].")] = None,
    data_dir: DataDirOpt = None,
    log_level: Annotated[
        str | None, typer.Option(help="Root log level (debug, info, warning, error).")
    ] = None,
    log_format: Annotated[str | None, typer.Option(help="Log lines: console or json.")] = None,
) -> None:
    """Run the bus: HTTP API, background duties, and the embedded PostgreSQL and nats-server
    when no external ones are configured."""
    import uvicorn

    from app.main import create_app
    from app.runtime.embedded import EmbeddedRuntime
    from app.runtime.lock import DataDirBusyError

    settings = _settings(
        config,
        host=host,
        port=port,
        data_dir=data_dir,
        log_level=log_level,
        log_format=log_format,
    )
    setup_logging_for(settings)
    _Server = _server_class()
    try:
        with EmbeddedRuntime(settings) as effective:
            app = create_app(effective)
            server = _Server(
                uvicorn.Config(
                    app,
                    host=effective.host,
                    port=effective.port,
                    log_config=None,
                    timeout_graceful_shutdown=effective.http_shutdown_grace,
                    server_header=False,
                    proxy_headers=True,
                )
            )
            server.run()
            if not server.started:
                raise typer.Exit(1)
    except DataDirBusyError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(1) from None
    finally:
        stop_logging()


@cli.command()
def migrate(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """Upgrade the database schema to the latest version."""
    from app.migrations import upgrade
    from app.runtime.embedded import EmbeddedRuntime
    from app.runtime.lock import DataDirBusyError

    settings = _settings(config, data_dir=data_dir)
    setup_logging_for(settings)
    try:
        with EmbeddedRuntime(settings, need_nats=False) as effective:
            assert effective.database_url is not None
            upgrade(effective.database_url)
            log.info("database schema is up to date")
    except DataDirBusyError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    finally:
        stop_logging()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
