"""The NATS front end of the bus: serves the Xbus protocol services (in the queue group
`xbusd`, so replicas share them), dispatches requests to NATS actors, keeps the nats-server
authorization in step with the accounts, and publishes process states."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
from typing import Any

from nats.aio.client import Client
from xbus import xbus_nrpc, xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app import nats_auth as auth
from app.models.enums import ProcessStatus
from app.nats_api import services
from app.nats_api.convert import process_pb
from app.nats_api.dispatcher import NatsDispatcher
from app.nats_api.liveness import Liveness
from app.nats_api.nrpc_server import Service
from app.nats_api.registration import RegistrationServer
from app.state import AppState
from app.store.processes import ProcessRow
from app.version import PROTOCOL_VERSION

log = logging.getLogger(__name__)
pb: Any = xbus_pb2
QUEUE = "xbusd"
_MAX_HANDLERS = 500
_AUTH_REFRESH = 5.0


class ProtocolMismatchError(Exception):
    pass


class NatsApi:
    def __init__(self, state: AppState, client: Client) -> None:
        self.state = state
        self.client = client
        self.liveness = Liveness(state)
        self.dispatcher = NatsDispatcher(state, client, self.liveness)
        self.subscriptions: list[Any] = []
        self.handlers: set[asyncio.Task[None]] = set()
        self.slots = asyncio.Semaphore(_MAX_HANDLERS)
        self._auth_lock = asyncio.Lock()
        settings = state.settings
        self.auth_file = (
            auth.AuthFile(settings.nats_auth_file, settings.nats_pid_file)
            if settings.nats_auth_file
            else None
        )

    # ------------------------------------------------------------------ services
    async def start(self) -> None:
        state = self.state
        nc = self.client

        async def first_is_actor(args: list[Any]) -> None:
            await self.liveness.seen(args[0])

        async def storage_client(args: list[Any]) -> None:
            if args[0] == "actor":  # (clientKind, clientID, request)
                await self.liveness.seen(args[1])

        handlers = [
            Service(nc, xbus_nrpc.WhoAmIHandler, services.WhoAmIServer(state, self.check_protocol)),
            Service(nc, xbus_nrpc.ClientAPIHandler, services.ClientAPIServer(state)),
            Service(nc, xbus_nrpc.SentinelHandler, services.SentinelServer(state)),
            Service(
                nc, xbus_nrpc.BrokerHandler, services.BrokerServer(state), on_call=first_is_actor
            ),
            Service(
                nc,
                xbus_nrpc.EnvelopeStorageHandler,
                services.EnvelopeStorageServer(state),
                on_call=storage_client,
            ),
            Service(
                nc,
                xbus_nrpc.DirectorHandler,
                services.DirectorServer(state),
                on_call=first_is_actor,
            ),
            Service(
                nc,
                xbus_nrpc.ProcessStateHandler,
                services.ProcessStateServer(state),
                on_call=first_is_actor,
            ),
            Service(nc, xbus_nrpc.SvcRegistrationHandler, RegistrationServer(state)),
        ]
        for handler in handlers:
            # One queue group per service, one subject per method: the services' own
            # wildcards overlap (client.> would swallow client.<account>.getactors).
            for subject in handler.subjects():
                subscription = await self.client.subscribe(
                    subject, queue=f"{QUEUE}.{handler.name.lower()}", cb=self._spawner(handler)
                )
                self.subscriptions.append(subscription)
        state.director.process_end_listeners.append(self._process_ended)
        state.accounts_changed_hooks.append(self.refresh_auth)
        log.info("Xbus NATS services ready (protocol %s)", PROTOCOL_VERSION)

    def _spawner(self, handler: Any) -> Any:
        async def spawn(msg: Any) -> None:
            # Each message in its own task: a streamed reply must not hold up the others.
            await self.slots.acquire()
            task = asyncio.create_task(handler.handle(msg))
            self.handlers.add(task)
            task.add_done_callback(self._handler_done)

        return spawn

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self.handlers.discard(task)
        self.slots.release()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.state.director.process_end_listeners.remove(self._process_ended)
        with contextlib.suppress(ValueError):
            self.state.accounts_changed_hooks.remove(self.refresh_auth)
        for subscription in self.subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        await self.dispatcher.stop()
        for task in list(self.handlers):
            task.cancel()

    # ------------------------------------------------------------------ published states
    def _process_ended(self, process: ProcessRow) -> None:
        asyncio.get_running_loop().create_task(self._publish_end(process))

    async def _publish_end(self, process: ProcessRow) -> None:
        """ProcessState.EnvelopeStates for the emitter and the CoreEvent, from the process as
        the director left it: only a process in error reads its error lines back."""
        try:
            errors = []
            if process.status == ProcessStatus.ERROR:
                async with self.state.db.working() as work:
                    errors = await services.error_lines(work, process.id)
            state = services.envelope_state_of(process, errors)
            event = pb.CoreEvent(name="process.ended", process=process_pb(process))
            if process.emitter_id and process.trigger_envelope_id:
                subject = ".".join(
                    [
                        "xbus.default.processstate.envelopestates",
                        str(process.emitter_id),
                        str(process.trigger_envelope_id),
                    ]
                )
                await self.client.publish(subject, state.SerializeToString())
            await self.client.publish("xbus.default.core.events.process", event.SerializeToString())
        except Exception:
            log.exception("publishing the end of process %s failed", process.id)

    # ------------------------------------------------------------------ survey
    async def survey_loop(self) -> None:
        """The Sentinel's periodic survey: actors that listen answer with ActorReady (online
        status itself follows ActorReady/ActorLeaving and delivery failures)."""
        while True:
            await asyncio.sleep(self.state.settings.nats_survey_interval)
            try:
                survey = pb.SurveyRequest(onlineStatus=True).SerializeToString()
                await self.client.publish("xbus.default.sentinel.survey", survey)
            except Exception as exc:
                log.debug("survey not published: %s", exc)

    # ------------------------------------------------------------------ authorization
    async def refresh_auth(self) -> None:
        if self.auth_file is None:
            return
        # One refresh at a time: a periodic refresh that read the accounts before an accept
        # committed must not write after the accept's own refresh.
        async with self._auth_lock:
            async with self.state.db.session() as session:
                grants = await auth.load_grants(session)
            if self.auth_file.write(auth.render(grants)):
                await asyncio.sleep(0.2)  # let nats-server apply the reload

    async def auth_loop(self) -> None:
        while True:
            try:
                await self.refresh_auth()
            except Exception:
                log.exception("refreshing the NATS authorization failed")
            await asyncio.sleep(_AUTH_REFRESH)

    # ------------------------------------------------------------------ protocol version
    async def check_protocol(self, account_name: str) -> None:
        """Refuse clients that do not announce a compatible protocol version (their NATS
        connection name, "@3.0" for python-xbus) — checked on WhoAmI, every client's first
        call, through the nats-server monitoring endpoint when one is known."""
        url = self.state.settings.nats_monitor_url
        if not url:
            return
        names = await asyncio.to_thread(_connection_names, url, f"CN={account_name},O=xbus")
        if names is None or not names:
            return
        major = PROTOCOL_VERSION.split(".")[0]
        if not any(n.startswith(f"@{major}.") or n == f"@{major}" for n in names):
            raise services.client_error(
                f"protocol version not compatible: the client announced {sorted(names)!r} as its "
                f"connection name, this bus speaks @{PROTOCOL_VERSION}"
            )


def _connection_names(monitor_url: str, user: str) -> set[str] | None:
    if not monitor_url.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(  # noqa: S310 - http(s) only, checked above
            f"{monitor_url}/connz?auth=true&limit=10000", timeout=2
        ) as response:
            data = json.load(response)
    except (OSError, ValueError):
        return None
    return {
        c.get("name", "") for c in data.get("connections", []) if c.get("authorized_user") == user
    }


async def run_nats_api(state: AppState) -> None:
    """The lifespan duty: wait for NATS, serve until cancelled."""
    if state.nats is None:
        return
    await state.nats.connected_event.wait()
    client = state.nats.client
    assert client is not None
    api = NatsApi(state, client)
    await api.start()
    await api.refresh_auth()
    state.nats_api_ready.set()
    tasks = [
        asyncio.create_task(api.dispatcher.run(), name="nats-dispatcher"),
        asyncio.create_task(api.dispatcher.probe_loop(), name="nats-probe"),
        asyncio.create_task(api.auth_loop(), name="nats-auth"),
        asyncio.create_task(api.survey_loop(), name="nats-survey"),
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await api.stop()
