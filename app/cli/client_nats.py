"""`xbus-client emit` and `serve`: python-xbus's own `Client` over NATS (mutual TLS with the
certificate `register` wrote), used unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xbus import envelope_writer, xbus_nrpc, xbus_pb2
from xbus.client import Client

from app.cli.client_files import ClientConfig, ClientFileError
from app.envelopes.codec import EnvelopeData

log = logging.getLogger("xbus-client")


class EmitError(Exception):
    """The bus refused the envelope (an `EnvelopeAck` with status ERROR), or the emitter is
    not one of the account's actors."""


@dataclass(frozen=True)
class EmitResult:
    envelope_id: uuid.UUID
    status: str
    reason: str
    process_id: uuid.UUID | None = None
    process_status: str | None = None

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"envelope_id": str(self.envelope_id), "status": self.status}
        if self.reason:
            result["reason"] = self.reason
        if self.process_id is not None:
            result["process_id"] = str(self.process_id)
            result["process_status"] = self.process_status
        return result


def client_confdict(
    config: ClientConfig, *, nats_url: str | None, keep_services: bool
) -> dict[str, Any]:
    """A copy of the configuration for python-xbus's Client: `nats-url` filled when the file
    has none, services dropped when only emitting. The file itself is never rewritten."""
    confdict = copy.deepcopy(config.data)
    if nats_url and not config.nats_url:
        confdict["nats-url"] = nats_url
    if not isinstance(confdict.get("actors"), dict):
        confdict["actors"] = {}
    if not keep_services:
        for conf in confdict["actors"].values():
            if isinstance(conf, dict):
                conf.pop("service", None)
    if not config.get("tls.certfile"):
        # What python-xbus forges from the directory it is given, made explicit.
        confdict["tls.certfile"] = str(config.certs_path())
    return confdict


def make_client(confdict: dict[str, Any], confdir: Path, no_reconnect: bool) -> Any:
    try:
        return Client(confdict, str(confdir), no_reconnect=no_reconnect)
    except ValueError as exc:  # python-xbus: "Cannot load: tls.certificate"
        raise ClientFileError(
            f"{exc}: no certificate yet; run `xbus-client register --config FILE` first"
        ) from None


async def _envelope_state(client: Any, actor: Any, envelope_id: bytes) -> Any:
    states = xbus_nrpc.ProcessStateClient(client.clientconn())
    request = xbus_pb2.GetEnvelopeStateRequest(id=envelope_id)
    return await states.GetEnvelopeState(str(actor.id), request)


async def emit(
    config: ClientConfig,
    emitter: str,
    output: str,
    envelope: EnvelopeData,
    *,
    nats_url: str | None = None,
) -> EmitResult:
    """Send the envelope as `emitter` through Broker.Output, fragment by fragment, with
    python-xbus's EnvelopeWriter; then ask ProcessState which process it started."""
    confdict = client_confdict(config, nats_url=nats_url, keep_services=False)
    confdict["actors"].setdefault(emitter, {"kind": "emitter"})
    client = make_client(confdict, config.confdir, no_reconnect=True)
    await client.connect()
    try:
        actor = client.get_actor(emitter)
        if actor is None or actor.id is None:
            raise EmitError(
                f"{emitter!r} is not an actor of account {config.account_name!r} (or it is "
                "not enabled)"
            )
        acks: list[Any] = []

        async def send(fragment: Any) -> None:
            request = xbus_pb2.OutputRequest(output=output, envelope=fragment)
            ack = await actor.broker.Output(request)
            acks.append(ack)
            if ack.status == xbus_pb2.EnvelopeAck.ERROR:
                raise EmitError(f"the bus refused the envelope: {ack.reason or 'no reason'}")

        writer = envelope_writer.EnvelopeWriter(send)
        for event in envelope.events:
            message = writer.open_message(event.type)
            for index, item in enumerate(event.items):
                if len(item) > message.MAX_CHUNK_SIZE:
                    raise EmitError(
                        f"event {event.type!r}, item {index}: {len(item)} bytes, more than "
                        f"the {message.MAX_CHUNK_SIZE} bytes of a python-xbus item"
                    )
                await message.write_chunk(item)
            await message.close()
        await writer.last_message()

        envelope_id = writer.envelope.id
        last = acks[-1] if acks else None
        status = (
            xbus_pb2.EnvelopeAck.ReceptionStatus.Name(last.status).lower() if last else "nostatus"
        )
        result = EmitResult(uuid.UUID(bytes=envelope_id), status, last.reason if last else "")
        try:
            state = await _envelope_state(client, actor, envelope_id)
        except Exception as exc:  # the envelope is sent; only the process lookup failed
            log.warning("process of envelope %s unknown: %s", result.envelope_id, exc)
            return result
        if state.processID:
            return EmitResult(
                result.envelope_id,
                result.status,
                result.reason,
                uuid.UUID(bytes=state.processID),
                xbus_pb2.Process.Status.Name(state.status).lower(),
            )
        return result
    finally:
        await client.close()


async def serve(
    config: ClientConfig,
    *,
    nats_url: str | None = None,
    no_reconnect: bool = False,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the configured actors until SIGINT or SIGTERM: connect, start every actor's
    service (python-xbus subscribes those with a `process` method), then shut down."""
    from app.clientdemo import register_services

    register_services()
    confdict = client_confdict(config, nats_url=nats_url, keep_services=True)
    client = make_client(confdict, config.confdir, no_reconnect=no_reconnect)
    stop = asyncio.Event()

    async def on_stop() -> None:
        stop.set()

    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await client.connect(stop=on_stop)
        try:
            await client.startup()
            names = ", ".join(a.name for a in client.actors if a.service) or "none"
            log.info("account %s connected; actors running: %s", config.account_name, names)
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("stopping")
        finally:
            try:
                await client.shutdown()
            finally:
                await client.close()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
