"""`xbus-client`: what an Xbus actor's operator runs beside a python-xbus client
configuration: `register` (key, CSR, registration, certificate file), `renew-cert`, `emit`
and `serve`. The configuration file is never rewritten: certificates go to
`<account-name>.certs` beside it, where python-xbus reads them."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from app.certs.pki import key_pem, make_csr, new_key
from app.cli.client_files import (
    BUS_URL,
    CERTIFICATE,
    CSR,
    PRIVATE_KEY,
    REGISTRATION_ID,
    ROOTCA,
    ClientConfig,
    ClientFileError,
    read_certs,
    sign_text,
    write_certs,
)
from app.cli.client_http import DEFAULT_URL, BusError, BusHttp
from app.version import version

log = logging.getLogger("xbus-client")

EXIT_PENDING = 3  # `register --wait N` ran out of time; the registration stays pending


class RegisterType(StrEnum):
    ACTOR = "actor"
    GATEWAY = "gateway"


cli = typer.Typer(
    name="xbus-client",
    help="Xbus actor tooling: register an account and its actors, renew its certificate, "
    "emit an envelope, serve actors (python-xbus client configuration).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[
    Path,
    typer.Option("--config", "-c", help="python-xbus client configuration (YAML).", dir_okay=False),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="XBUS_URL",
        help=f"The bus's HTTP URL (default: the one registered with, else {DEFAULT_URL}).",
    ),
]


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"xbus-client {version()}")
        raise typer.Exit


@cli.callback()
def main_options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Xbus client tooling."""


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _config(path: Path) -> ClientConfig:
    try:
        return ClientConfig.load(path)
    except ClientFileError as exc:
        raise _fail(str(exc), 2) from None


def _certs(config: ClientConfig) -> tuple[Path, dict[str, str]]:
    try:
        path = config.certs_path()
        return path, read_certs(path)
    except ClientFileError as exc:
        raise _fail(str(exc), 2) from None


def _bus_url(url: str | None, certs: dict[str, str]) -> str:
    return url or certs.get(BUS_URL) or DEFAULT_URL


def _expiry(certificate_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(certificate_pem.encode())
    return cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")


def _nats_guidance(config: ClientConfig, bus: BusHttp) -> None:
    """Where NATS is, as the bus says; the configuration is the operator's to edit."""
    try:
        nats_url = bus.info().get("nats_url")
    except BusError:
        return
    if not nats_url:
        return
    if config.nats_url is None:
        typer.echo(
            f"The bus's NATS is at {nats_url}: add `nats-url: {nats_url}` to {config.path} "
            "(xbus-client never rewrites it; `serve` and `emit` use it meanwhile)."
        )
    elif config.nats_url != nats_url:
        typer.echo(
            f"Note: {config.path} has nats-url {config.nats_url}, the bus announces {nats_url}."
        )


# --- register -------------------------------------------------------------------------------


def _accept_instructions(name: str, registration_id: str, url: str) -> None:
    typer.echo("An administrator must accept it:")
    typer.echo(f"    xbusctl account accept {name}")
    typer.echo(
        f"(or: curl -X POST {url}/api/v1/accounts/{registration_id}/accept "
        '-H "Authorization: Bearer $XBUS_ADMIN_API_KEY")'
    )


def _poll(bus: BusHttp, registration_id: str, wait: float | None, interval: float) -> Any:
    """The registration once decided, or None when `wait` seconds passed first."""
    deadline = None if wait is None else time.monotonic() + wait
    unreachable = False
    while True:
        try:
            answer = bus.registration(registration_id)
            unreachable = False
        except BusError as exc:
            if exc.status is not None:
                raise
            if not unreachable:
                typer.echo(f"warning: {exc}; retrying", err=True)
            unreachable = True
            answer = {"status": "pending"}
        if answer.get("status") != "pending":
            return answer
        if deadline is not None and time.monotonic() >= deadline:
            return None
        pause = interval if deadline is None else min(interval, deadline - time.monotonic())
        time.sleep(max(pause, 0))


@cli.command()
def register(
    config_file: ConfigOpt,
    url: UrlOpt = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            min=0,
            help="Seconds to wait for the decision (default: no limit); 0 sends and returns.",
        ),
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between two status checks.")
    ] = 2.0,
    account_type: Annotated[
        RegisterType, typer.Option("--type", help="Account type.")
    ] = RegisterType.ACTOR,
    force: Annotated[
        bool, typer.Option(help="Register anew even if the .certs file holds a certificate.")
    ] = False,
) -> None:
    """Register the account and actors of a configuration, and get their certificate.

    Generates a key and a CSR, sends the registration, prints the command an administrator
    runs to accept it, waits for the decision, then writes the certificate to
    <account-name>.certs beside the configuration (which is left as it is). Re-running it
    while the registration is pending resumes waiting."""
    config = _config(config_file)
    certs_path, certs = _certs(config)
    name = config.account_name
    for entry in config.inline_tls_entries():
        typer.echo(
            f"warning: {config.path} sets {entry}; python-xbus uses it instead of {certs_path}",
            err=True,
        )
    if certs.get(CERTIFICATE) and not force:
        raise _fail(
            f"{certs_path} already holds a certificate for {name!r}; renew it with "
            "`xbus-client renew-cert`, or register anew with --force"
        )
    resume = bool(certs.get(REGISTRATION_ID) and certs.get(PRIVATE_KEY)) and not force
    bus_url = _bus_url(url, certs if resume else {})

    with BusHttp(bus_url) as bus:
        if resume:
            registration_id = certs[REGISTRATION_ID]
            typer.echo(f"Resuming registration {registration_id} of account {name!r}.")
        else:
            try:
                bus.info()  # reachable, before a key is made
                key = key_pem(new_key()).decode()
                csr = make_csr(name, _load_key(key)).decode()
                actors: list[dict[str, Any]] = [
                    {"name": a.name, "kind": a.kind, "roles": a.roles} for a in config.actors()
                ]
                created = bus.register(name, account_type.value, csr, actors)
            except (BusError, ClientFileError) as exc:
                raise _fail(f"registration refused: {exc}") from None
            registration_id = str(created["id"])
            certs = {PRIVATE_KEY: key, CSR: csr, REGISTRATION_ID: registration_id, BUS_URL: bus_url}
            write_certs(certs_path, certs)
            names = ", ".join(a["name"] for a in actors) or "none"
            typer.echo(
                f"Registration {registration_id} sent for account {name!r} (actors: {names}); "
                "it is pending."
            )
        _accept_instructions(name, registration_id, bus_url)
        if wait == 0:
            typer.echo("Not waiting: run the same command again to collect the certificate.")
            return
        typer.echo("Waiting for the decision (Ctrl-C stops waiting; the registration stays).")
        try:
            answer = _poll(bus, registration_id, wait, poll_interval)
        except BusError as exc:
            if exc.status == 404:
                certs_path.unlink(missing_ok=True)
                raise _fail(
                    f"registration {registration_id} no longer exists (the account was "
                    "deleted); register again"
                ) from None
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted; run the same command again to keep waiting", 130) from None
        if answer is None:
            typer.echo(
                f"Still pending after {wait:g} s: run the same command again to keep waiting.",
                err=True,
            )
            raise typer.Exit(EXIT_PENDING)
        if answer["status"] == "rejected":
            certs_path.unlink(missing_ok=True)
            raise _fail(
                f"registration of {name!r} rejected by an administrator; the name stays taken "
                "until they delete the account"
            )
        certs.update({CERTIFICATE: answer["certificate"], ROOTCA: answer["ca"]})
        write_certs(certs_path, certs)
        typer.echo(
            f"Accepted. Certificate written to {certs_path} "
            f"(expires {_expiry(answer['certificate'])})."
        )
        _nats_guidance(config, bus)


def _load_key(pem: str) -> Any:
    return serialization.load_pem_private_key(pem.encode(), password=None)


# --- renew-cert -----------------------------------------------------------------------------


@cli.command("renew-cert")
def renew_cert(
    config_file: ConfigOpt,
    url: UrlOpt = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="XBUS_API_KEY",
            help="An API key (the account's or the admin's). Without one, the request is "
            "signed with the current certificate's key.",
        ),
    ] = None,
    cert_expire_days: Annotated[
        int | None, typer.Option(min=1, help="Lifetime of the new certificate (default: 365 days).")
    ] = None,
) -> None:
    """Renew the account's certificate with a new key (after an admin's reset-cert).

    Without --api-key the request is signed with the current certificate's key."""
    config = _config(config_file)
    certs_path, certs = _certs(config)
    if not (certs.get(PRIVATE_KEY) and certs.get(CERTIFICATE)):
        raise _fail(
            f"{certs_path} holds no certificate: register first "
            f"(`xbus-client register --config {config.path}`)"
        )
    name = config.account_name
    try:
        key = key_pem(new_key()).decode()
        csr = make_csr(name, _load_key(key)).decode()
        signature = sign_text(certs[PRIVATE_KEY], csr)
    except ClientFileError as exc:
        raise _fail(str(exc)) from None
    bus_url = _bus_url(url, certs)
    with BusHttp(bus_url, api_key) as bus:
        try:
            renewed = bus.renew_cert(name, csr, signature, cert_expire_days)
        except BusError as exc:
            raise _fail(f"renew-cert: {exc}") from None
    certs.update(
        {
            PRIVATE_KEY: key,
            CSR: csr,
            CERTIFICATE: renewed["certificate"],
            ROOTCA: renewed["ca"],
            BUS_URL: bus_url,
        }
    )
    write_certs(certs_path, certs)
    expires = datetime.fromisoformat(renewed["expires_at"]).strftime("%Y-%m-%d %H:%M UTC")
    typer.echo(f"Certificate renewed: written to {certs_path} (expires {expires}).")


# --- emit / serve ---------------------------------------------------------------------------


def _require_certificate(config: ClientConfig, certs: dict[str, str]) -> None:
    if not certs.get(CERTIFICATE) and CERTIFICATE not in config.inline_tls_entries():
        raise _fail(
            f"no certificate for {config.account_name!r} yet: run "
            f"`xbus-client register --config {config.path}` first"
        )


def _nats_url(config: ClientConfig, url: str | None, certs: dict[str, str]) -> str | None:
    """The configuration's nats-url, else the one the bus announces."""
    if config.nats_url:
        return config.nats_url
    with BusHttp(_bus_url(url, certs), timeout=10) as bus:
        try:
            announced = bus.info().get("nats_url")
        except BusError as exc:
            log.warning("%s has no nats-url and the bus did not say: %s", config.path, exc)
            return None
    return str(announced) if announced else None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )


@cli.command()
def emit(
    config_file: ConfigOpt,
    emitter: Annotated[str, typer.Argument(help="The emitter actor's name.")],
    output: Annotated[str, typer.Option(help="The emitter's output.")] = "default",
    input_file: Annotated[
        Path | None,
        typer.Option("--input", "-i", help="Envelope JSON file (default: standard input)."),
    ] = None,
    url: UrlOpt = None,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "warning",
) -> None:
    """Emit one envelope (JSON, on standard input) as an emitter, over NATS.

    The JSON form: {"events": [{"type": "msg", "encoding": "text", "items": ["a", "b"]}]}.
    Prints the bus's answer: envelope id, status, and the process it started."""
    from app.cli import client_nats
    from app.envelopes.codec import EnvelopeFormatError, parse_envelope_json

    _setup_logging(log_level)
    config = _config(config_file)
    _, certs = _certs(config)
    try:
        text = input_file.read_text(encoding="utf-8") if input_file else sys.stdin.read()
        envelope = parse_envelope_json(json.loads(text), max_items=10**9, max_bytes=2**62)
    except OSError as exc:
        raise _fail(f"cannot read the envelope: {exc}", 2) from None
    except ValueError as exc:  # json.JSONDecodeError and EnvelopeFormatError are ValueErrors
        what = "envelope" if isinstance(exc, EnvelopeFormatError) else "envelope JSON"
        raise _fail(f"invalid {what}: {exc}", 2) from None
    _require_certificate(config, certs)
    nats_url = _nats_url(config, url, certs)
    try:
        result = asyncio.run(client_nats.emit(config, emitter, output, envelope, nats_url=nats_url))
    except (client_nats.EmitError, ClientFileError) as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:
        raise _fail(f"emit failed: {type(exc).__name__}: {exc}") from None
    typer.echo(json.dumps(result.as_dict()))
    if result.status != "accepted":
        raise typer.Exit(1)


@cli.command()
def serve(
    config_file: ConfigOpt,
    url: UrlOpt = None,
    no_reconnect: Annotated[
        bool, typer.Option(help="Stop when the NATS connection is lost.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "info",
) -> None:
    """Run the configuration's actors over NATS until Ctrl-C or SIGTERM.

    Services: the demos demo.helloworld, demo.relay, demo.print-to-console, or any
    module:Class."""
    from app.cli import client_nats

    _setup_logging(log_level)
    config = _config(config_file)
    _, certs = _certs(config)
    if not any(a.service_type for a in config.actors()):
        typer.echo(f"warning: no actor of {config.path} has a service to run", err=True)
    _require_certificate(config, certs)
    nats_url = _nats_url(config, url, certs)
    try:
        asyncio.run(client_nats.serve(config, nats_url=nats_url, no_reconnect=no_reconnect))
    except ClientFileError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:
        raise _fail(f"serve failed: {type(exc).__name__}: {exc}") from None


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
