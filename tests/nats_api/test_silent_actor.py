"""A NATS actor that takes a request and never answers (no state, no keep-alive): each
delivery counts an attempt, the actor is marked offline until its next sign of life (its
ActorReady, or any call it makes), and past the request's attempt limit the node ends in
error with the reason in the process log and its postmortem (before, the attempt was given
back and the process ran for ever)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from xbus import client as xbus_client
from xbus import xbus_nrpc, xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.models import LogEntry
from app.nats_api import dispatcher, liveness
from tests.bus.conftest import ENVELOPE, chain
from tests.nats_api.conftest import NatsBus


@pytest.fixture(autouse=True)
def no_probes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests watch what a silence does; the probe of offline actors (every 2 s) would
    deliver again on its own schedule. The test of the probe keeps it."""
    if "probe" not in request.node.name:
        monkeypatch.setattr(dispatcher, "PROBE_EVERY", 3600.0)


@pytest.fixture
def settings_overrides(
    request: pytest.FixtureRequest, settings_overrides: dict[str, Any]
) -> dict[str, Any]:
    """Silences of half a second. Not for the probe's test, which tells nobody listening
    (the server's immediate "no responders") from a silence: its event loop, which serves
    the whole app, held up half a second on a loaded CI machine before it read the server's
    answer let the timeout fire first (seen in CI: an attempt used, the actor marked offline
    for a silence)."""
    timeout = 10.0 if "probe" in request.node.name else 0.5
    return {**settings_overrides, "nats_actor_timeout": timeout, "request_max_attempts": 2}


async def test_a_silent_actor_uses_up_its_attempts(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account(
        {"s.emitter": {"kind": "emitter"}, "s.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("s.emitter", ("consumer", "s.consumer")))
    actor = (await account.http.get("/api/v1/actors/s.consumer")).json()
    client = await nats_bus.connect(account)
    taken: asyncio.Queue[bytes] = asyncio.Queue()

    async def silent(msg: Any) -> None:
        taken.put_nowait(msg.data)  # and no answer, ever

    await client.nc.subscribe(f"xbus.default.actoragent.{actor['id']}.process", cb=silent)

    async def ready() -> None:
        """The actor's sign of life (python-xbus sends it when it starts serving)."""
        await client.nc.publish(f"xbus.default.sentinel.actorready.{actor['id']}", b"")
        for _ in range(100):
            if (await account.http.get("/api/v1/actors/s.consumer")).json()["online"]:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the actor did not come online")

    await ready()
    emitted = await account.http.post("/api/v1/actors/s.emitter/output", json=ENVELOPE)
    assert emitted.status_code == 202
    process_id = emitted.json()["process_id"]
    await asyncio.wait_for(taken.get(), 20)  # attempt 1, unanswered

    async def process() -> dict[str, Any]:
        r = await account.http.get(f"/api/v1/processes/{process_id}")
        body: dict[str, Any] = r.json()
        return body

    # Marked offline; the request waits for it, one attempt used.
    for _ in range(100):
        if not (await account.http.get("/api/v1/actors/s.consumer")).json()["online"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the silent actor was not marked offline")
    [request] = (await process())["nodes"][1]["requests"]
    assert request["status"] == "pending"
    assert request["attempts"] == 1
    assert (await process())["status"] == "running"

    # Back online: delivered again (attempt 2 of 2), unanswered again: the node fails.
    await ready()
    await asyncio.wait_for(taken.get(), 20)
    detail = (await account.http.get(f"/api/v1/processes/{process_id}", params={"wait": 20})).json()
    for _ in range(100):
        if detail["status"] != "running":
            break
        await asyncio.sleep(0.1)
        detail = await process()
    assert detail["status"] == "error"
    assert "s.consumer did not answer" in detail["status_reason"]
    assert detail["postmortem"]["level"] == "error"
    [request] = detail["nodes"][1]["requests"]
    assert request["status"] == "error"
    assert request["attempts"] == 2


async def test_an_offline_actor_comes_back_on_any_call(
    nats_bus: NatsBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marked offline for not answering, the actor makes an ordinary call (Director.Log):
    it is online again and its request is delivered again. One that said ActorLeaving stays
    offline whatever it calls."""
    monkeypatch.setattr(liveness, "RECHECK", 0.0)  # every call checked, not one per 2 s
    checked: list[str] = []  # the calls whose sign of life was looked at
    seen = liveness.Liveness.seen

    async def noted(self: liveness.Liveness, raw_id: str) -> None:
        await seen(self, raw_id)
        checked.append(raw_id)

    monkeypatch.setattr(liveness.Liveness, "seen", noted)
    account = await nats_bus.nats_account(
        {"b.emitter": {"kind": "emitter"}, "b.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("b.emitter", ("consumer", "b.consumer")))
    actor = (await account.http.get("/api/v1/actors/b.consumer")).json()
    client = await nats_bus.connect(account)
    taken: asyncio.Queue[bytes] = asyncio.Queue()

    async def silent(msg: Any) -> None:
        taken.put_nowait(msg.data)

    await client.nc.subscribe(f"xbus.default.actoragent.{actor['id']}.process", cb=silent)

    async def online() -> bool:
        body = (await account.http.get("/api/v1/actors/b.consumer")).json()
        return bool(body["online"])

    async def until(expected: bool) -> None:
        for _ in range(100):
            if await online() is expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the actor's online state did not become {expected}")

    async def log_call(text: str) -> None:
        """Director.Log (the bus notes who called once it has answered)."""
        message = xbus_pb2.ActorLogRequest()
        message.messages.add(level=xbus_pb2.LogLevel.Value("NOTICE"), Text=text)
        await xbus_nrpc.DirectorClient(client.clientconn()).Log(actor["id"], message)

    await client.nc.publish(f"xbus.default.sentinel.actorready.{actor['id']}", b"")
    await until(True)
    emitted = await account.http.post("/api/v1/actors/b.emitter/output", json=ENVELOPE)
    assert emitted.status_code == 202
    process_id = emitted.json()["process_id"]
    await asyncio.wait_for(taken.get(), 20)  # attempt 1, unanswered
    await until(False)
    assert (await account.http.get("/api/v1/actors/b.consumer")).json()["unresponsive"]

    await log_call("still here")
    await until(True)  # back with the call itself, no ActorReady
    await asyncio.wait_for(taken.get(), 20)  # attempt 2
    detail = (await account.http.get(f"/api/v1/processes/{process_id}")).json()
    assert detail["nodes"][1]["requests"][0]["attempts"] == 2
    async with nats_bus.app.state.xbus.db.session() as session:
        texts = (
            await session.execute(
                sa.select(LogEntry.text).where(LogEntry.actor_id == uuid.UUID(actor["id"]))
            )
        ).scalars()
        assert "actor b.consumer calls the bus again: back online" in list(texts)

    # Leaving is not undone by a later call.
    await client.nc.publish(f"xbus.default.sentinel.actorleaving.{actor['id']}", b"")
    await until(False)
    before = len(checked)
    await log_call("one last line")
    for _ in range(100):
        if len(checked) > before:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the call's sign of life was not looked at")
    assert not await online()


async def test_a_late_answer_is_taken_while_the_request_waits(nats_bus: NatsBus) -> None:
    """The actor went silent past XBUS_NATS_ACTOR_TIMEOUT (one attempt used, the request
    waits for it), then ends the job it still holds with Director.ProcessingEnd: the answer
    is taken and the process ends done, without another delivery."""
    account = await nats_bus.nats_account(
        {"l.emitter": {"kind": "emitter"}, "l.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("l.emitter", ("consumer", "l.consumer")))
    actor = (await account.http.get("/api/v1/actors/l.consumer")).json()
    client = await nats_bus.connect(account)
    taken: asyncio.Queue[bytes] = asyncio.Queue()

    async def silent(msg: Any) -> None:
        taken.put_nowait(msg.data)

    await client.nc.subscribe(f"xbus.default.actoragent.{actor['id']}.process", cb=silent)
    await client.nc.publish(f"xbus.default.sentinel.actorready.{actor['id']}", b"")
    for _ in range(100):
        if (await account.http.get("/api/v1/actors/l.consumer")).json()["online"]:
            break
        await asyncio.sleep(0.1)
    emitted = await account.http.post("/api/v1/actors/l.emitter/output", json=ENVELOPE)
    process_id = emitted.json()["process_id"]
    request = xbus_pb2.ActorProcessRequest.FromString(await asyncio.wait_for(taken.get(), 20))
    for _ in range(100):  # silent past the timeout: marked offline, the request waits
        if (await account.http.get("/api/v1/actors/l.consumer")).json()["unresponsive"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the silent actor was not marked unresponsive")
    detail = (await account.http.get(f"/api/v1/processes/{process_id}")).json()
    assert detail["nodes"][1]["requests"][0]["status"] == "pending"

    end = xbus_pb2.ActorProcessingState(status=xbus_pb2.ActorProcessingState.SUCCESS)
    end.context.CopyFrom(request.context)
    await xbus_nrpc.DirectorClient(client.clientconn()).ProcessingEnd(actor["id"], end)
    detail = (await account.http.get(f"/api/v1/processes/{process_id}", params={"wait": 10})).json()
    assert detail["status"] == "done", detail
    [done] = detail["nodes"][1]["requests"]
    assert (done["status"], done["attempts"]) == ("success", 1)
    assert taken.empty()  # not delivered again


async def test_an_actor_that_listens_again_without_a_word_is_found_by_the_probe(
    nats_bus: NatsBus,
) -> None:
    """python-xbus's subscription goes (its connection was lost): a request sent meanwhile
    finds no responders and is given back without using an attempt. The subscription comes
    back without ActorReady (python-xbus announces nothing after a reconnection): the
    probe delivers the request, the actor is online again, and the process ends done."""
    account = await nats_bus.nats_account(
        {"p.emitter": {"kind": "emitter"}, "p.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("p.emitter", ("consumer", "p.consumer")))
    client = await nats_bus.connect(account)
    consumer = client.get_actor("p.consumer")
    consumed: asyncio.Queue[int] = asyncio.Queue()

    async def consume(apc: Any) -> None:
        envelope = await apc.read_envelope_complete("default", 10)
        consumed.put_nowait(len(envelope.events))

    subscription = await consumer.subscribe(consume)  # ActorReady: online
    await subscription.sub.unsubscribe()  # gone, without ActorLeaving
    await client.nc.flush()  # the server has the UNSUB before the request goes out

    emitted = await account.http.post("/api/v1/actors/p.emitter/output", json=ENVELOPE)
    process_id = emitted.json()["process_id"]
    for _ in range(100):
        actor = (await account.http.get("/api/v1/actors/p.consumer")).json()
        if actor["unresponsive"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the actor nobody listens for was not marked offline")
    assert not actor["online"]
    detail = (await account.http.get(f"/api/v1/processes/{process_id}")).json()
    [request] = detail["nodes"][1]["requests"]
    assert (request["status"], request["attempts"]) == ("pending", 0)  # nothing delivered

    handler = xbus_nrpc.ActorAgentHandler(
        client.clientconn(), xbus_client.ActorAgentServer(consumer, consume)
    )
    await client.clientconn().subscribe(
        handler.subject(svc_actorID=str(consumer.id)), cb=handler.handler
    )
    assert await asyncio.wait_for(consumed.get(), 20) == 1
    detail = (await account.http.get(f"/api/v1/processes/{process_id}", params={"wait": 10})).json()
    assert detail["status"] == "done", detail
    [request] = detail["nodes"][1]["requests"]
    assert (request["status"], request["attempts"]) == ("success", 1)
    for _ in range(50):
        if (await account.http.get("/api/v1/actors/p.consumer")).json()["online"]:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the actor found by the probe is not online")
