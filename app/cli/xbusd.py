"""`xbusd`: the bus server."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.config import ConfigFileError, Settings, load_settings
from app.logs import setup_logging_for, stop_logging
from app.version import full_version, version

if TYPE_CHECKING:
    from app.runtime.embedded import EmbeddedRuntime

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


def _listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP socket, bound before anything else starts: a port in use fails at once, and
    the embedded nats-server, choosing a free port of its own, cannot take this one (uvicorn
    would bind only after the application's start-up). uvicorn listens on it once the
    application is ready; until then connections are refused. One address, as uvicorn's
    workers always had: a host name is resolved to its first IPv4 address, `::` listens on
    IPv6 and IPv4. (With SO_REUSEADDR, set for restarts over connections in TIME_WAIT,
    another process that sets it too could still bind the port until the listen.)"""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise RuntimeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # the workers' processes share it
    bound = sock.getsockname()[1]
    log.info("HTTP on http://%s:%d (served once the bus is ready)", _url_host(host), bound)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _exit_if_failed(runtime: EmbeddedRuntime) -> None:
    """Stopped because an embedded server could not be restarted: exit non-zero, for the
    service manager (systemd, Kubernetes) to restart the whole node."""
    if runtime.failure is not None:
        log.error("stopped: %s", runtime.failure)
        raise typer.Exit(3)


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
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="HTTP worker processes, each a full replica [default: the number of CPUs]; "
            "1 serves in this process.",
        ),
    ] = None,
) -> None:
    """Run the bus: HTTP API, background duties, and the embedded PostgreSQL and nats-server
    when no external ones are configured. With several workers, this process supervises
    them over the one embedded runtime."""
    import uvicorn

    from app.cli.http_protocol import HttpProtocol
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
        workers=workers,
    )
    setup_logging_for(settings)
    _Server = _server_class()
    sock: socket.socket | None = None
    try:
        sock = _listening_socket(settings.host, settings.port)
        runtime = EmbeddedRuntime(settings, watch=True)
        with runtime as effective:
            if effective.serve_workers > 1:
                from app.cli.workers import serve_workers

                try:
                    started = serve_workers(effective, sock)
                finally:
                    sock.close()  # no connection queued while the embedded servers stop
                if not started:
                    log.error("a worker failed to start; stopped")
                    raise typer.Exit(1)
                _exit_if_failed(runtime)
                return
            app = create_app(effective, serving=True)
            server = _Server(
                uvicorn.Config(
                    app,
                    host=effective.host,
                    port=effective.port,
                    log_config=None,
                    timeout_graceful_shutdown=effective.http_shutdown_grace,
                    server_header=False,
                    proxy_headers=True,
                    http=HttpProtocol,
                )
            )
            server.run(sockets=[sock])
            sock.close()
            if not server.started:
                raise typer.Exit(1)
            _exit_if_failed(runtime)
    except typer.Exit:
        raise  # a RuntimeError too, but already said
    except DataDirBusyError as exc:
        log.error("%s", exc)
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        log.error("cannot start: %s", exc)
        raise typer.Exit(1) from None
    finally:
        if sock is not None:
            sock.close()
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


cert_cli = typer.Typer(
    help="The bus's certificate authority and the embedded nats-server's certificate.",
    no_args_is_help=True,
)
cli.add_typer(cert_cli, name="cert")


def _host_defs(values: list[str]) -> list[str]:
    return [host.strip() for value in values for host in value.split(",") if host.strip()]


def _reload_nats(settings: Settings) -> bool:
    """SIGHUP the embedded nats-server of this data directory, if it runs, so that it loads
    the new certificate."""
    import psutil

    from app.runtime import children

    pid = children.read_pid(settings.data_dir / "nats" / "nats-server.pid")
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        if "nats-server" not in proc.name():
            return False
        proc.send_signal(signal.SIGHUP)
    except psutil.Error:
        return False
    return True


@cert_cli.command("generate")
def cert_generate(
    host_defs: Annotated[
        list[str] | None,
        typer.Option(
            "--host-defs",
            help="Host names or IP addresses the nats-server certificate is valid for, "
            "comma-separated or repeated; added to localhost, 127.0.0.1, XBUS_NATS_HOST and "
            "XBUS_NATS_CERT_HOSTS.",
        ),
    ] = None,
    expire: Annotated[
        int, typer.Option("--expire", min=1, help="Lifetime of the certificate in days.")
    ] = 825,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Issue the embedded nats-server's certificate for these host names (creating the CA at
    first use). A running embedded nats-server of the data directory reloads it at once;
    later starts keep its names while the settings' ones are among them."""
    from app.certs.pki import (
        CertificateAuthority,
        CertificateError,
        certificate_hosts,
        generate_server_certificate,
    )

    settings = _settings(config, data_dir=data_dir)
    hosts = sorted({*settings.nats_server_hosts, *_host_defs(host_defs or [])})
    ca = CertificateAuthority.load_or_create(settings.pki_path)
    try:
        cert = generate_server_certificate(ca, settings.pki_path, hosts, expire)
    except CertificateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"certificate: {settings.pki_path / 'nats-server.crt'}")
    typer.echo(f"hosts: {', '.join(certificate_hosts(cert))}")
    typer.echo(f"expires: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if _reload_nats(settings):
        typer.echo("the running embedded nats-server reloaded it")


@cert_cli.command("show")
def cert_show(config: ConfigOpt = None, data_dir: DataDirOpt = None) -> None:
    """The CA and the nats-server certificate: names, expiry, fingerprints (JSON)."""
    from cryptography import x509

    from app.certs.pki import certificate_hosts, fingerprint

    settings = _settings(config, data_dir=data_dir)
    shown: dict[str, Any] = {"pki_dir": str(settings.pki_path)}
    for label, name in (("ca", "ca.crt"), ("nats_server", "nats-server.crt")):
        path = settings.pki_path / name
        if not path.exists():
            shown[label] = None
            continue
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        shown[label] = {
            "file": str(path),
            "subject": cert.subject.rfc4514_string(),
            "hosts": certificate_hosts(cert),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "fingerprint": fingerprint(cert),
        }
    if shown["ca"] is None:
        typer.echo(f"error: no CA in {settings.pki_path} (created at first start)", err=True)
        raise typer.Exit(1)
    typer.echo(json.dumps(shown, indent=2))


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
