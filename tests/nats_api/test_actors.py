"""python-xbus 0.4.0 actors, unchanged, against this bus."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import nats
import nrpc
import pytest
import sqlalchemy as sa
from xbus import xbus_nrpc, xbus_pb2

from app.certs.pki import CertificateAuthority, cert_pem
from app.models import Envelope
from tests.bus.conftest import chain
from tests.nats_api import relay_actors
from tests.nats_api.conftest import NatsBus


async def emit(client: Any, emitter: str, event_type: str, *items: bytes) -> None:
    writer = client.get_actor(emitter).open_output("default", [event_type])
    await writer.add_items(event_type, *items)
    await writer.close()


async def test_emitter_relay_consumer(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account(
        {
            "n.emitter": {"kind": "emitter"},
            "n.relay": {"kind": "worker"},
            "n.consumer": {"kind": "consumer"},
        }
    )
    await nats_bus.pipeline(
        chain(
            "n.emitter", ("worker", "n.relay"), ("consumer", "n.consumer"), eventtypes=("demo.msg",)
        )
    )
    client = await nats_bus.connect(account)
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def relay(apc: Any) -> None:
        await apc.read_envelope_complete("default", 5)
        await apc.log_notice("relaying")
        await apc.forward("default", input_name="default")

    async def consume(apc: Any) -> None:
        received.put_nowait(await apc.read_envelope_complete("default", 5))

    await client.get_actor("n.relay").subscribe(relay)
    await client.get_actor("n.consumer").subscribe(consume)
    await emit(client, "n.emitter", "demo.msg", b"hello", b"world")
    envelope = await asyncio.wait_for(received.get(), 20)
    assert envelope.events[0].type == "demo.msg"
    assert list(envelope.events[0].items) == [b"hello", b"world"]

    page = (await account.http.get("/api/v1/processes")).json()
    [process] = page["items"]
    detail = (
        await account.http.get(f"/api/v1/processes/{process['id']}", params={"wait": 10})
    ).json()
    assert detail["status"] == "done", detail
    logs = [
        e["text"]
        for e in (await account.http.get(f"/api/v1/processes/{process['id']}/logs")).json()["items"]
    ]
    assert "relaying" in logs


async def test_a_5_mb_relay_chain_with_the_stock_python_xbus(
    nats_bus: NatsBus, tmp_path: Path
) -> None:
    """The field case of a slow actor: python-xbus 0.4.0 unchanged, in a process of its own,
    computes CRC-32C in pure Python (~1.5 s per MiB) on its event loop. An emitter sends 5 MB
    in 50 items of 100 KiB; a worker reads it whole (seconds without a state or keep-alive
    of its own) and forwards it; a consumer reads it. The process ends done, with one
    attempt per request, and the consumer has every byte (before, xbusd gave up on the
    worker after 5 s of silence and the process ran for ever)."""
    account = await nats_bus.nats_account(
        {
            "r.emitter": {"kind": "emitter"},
            "r.worker": {"kind": "worker"},
            "r.consumer": {"kind": "consumer"},
        }
    )
    await nats_bus.pipeline(
        chain("r.emitter", ("worker", "r.worker"), ("consumer", "r.consumer"), eventtypes=("blob",))
    )
    size = 50 * 100 * 1024
    spec = {
        "conf": account.conf,
        "workdir": str(tmp_path),
        "emitter": "r.emitter",
        "worker": "r.worker",
        "consumer": "r.consumer",
        "event_type": "blob",
        "size": size,
        "item": 100 * 1024,
        "read_timeout": 120,
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    log = tmp_path / "actors.log"
    with log.open("wb") as stderr:
        actors = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.nats_api.relay_actors",
            str(tmp_path / "spec.json"),
            cwd=Path(__file__).resolve().parents[2],
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert actors.stdin is not None
    stdout = actors.stdout
    assert stdout is not None

    async def consumed() -> dict[str, Any]:
        while True:  # (python-xbus prints a line of its own on stdout at connect)
            line = await stdout.readline()
            if not line:
                raise AssertionError(f"the actors exited ({await actors.wait()})")
            if line.startswith(b"{"):
                return dict(json.loads(line))

    try:
        got = await asyncio.wait_for(consumed(), 90)
        [process] = (await account.http.get("/api/v1/processes")).json()["items"]
        detail = (
            await account.http.get(f"/api/v1/processes/{process['id']}", params={"wait": 20})
        ).json()
        actors.stdin.close()
        assert await asyncio.wait_for(actors.wait(), 20) == 0
    finally:
        if actors.returncode is None:
            actors.kill()
            await actors.wait()
        print(log.read_text()[-5000:])  # shown when the test fails
    assert got == {
        "received": size,
        "sha256": hashlib.sha256(relay_actors.payload(size)).hexdigest(),
    }
    assert detail["status"] == "done", detail
    attempts = [r["attempts"] for node in detail["nodes"] for r in node["requests"]]
    assert attempts == [1, 1], detail["nodes"]


async def test_processing_error_lands_in_postmortem(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account(
        {"e.emitter": {"kind": "emitter"}, "e.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("e.emitter", ("consumer", "e.consumer"), eventtypes=("boom",)))
    client = await nats_bus.connect(account)

    async def fail(apc: Any) -> None:
        await apc.read_envelope_complete("default", 5)
        # (python-xbus 0.4.0's apc.error() reports the repr of a method instead of the
        # message; an exception is reported with its text.)
        raise RuntimeError("cannot handle boom")

    await client.get_actor("e.consumer").subscribe(fail)
    await emit(client, "e.emitter", "boom", b"x")
    for _ in range(100):
        page = (await account.http.get("/api/v1/processes", params={"status": "error"})).json()
        if page["items"]:
            break
        await asyncio.sleep(0.1)
    [process] = page["items"]
    assert "cannot handle boom" in process["status_reason"]
    assert process["postmortem"]["level"] == "error"


async def test_detached_job_ends_with_processing_end(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account(
        {"d.emitter": {"kind": "emitter"}, "d.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("d.emitter", ("consumer", "d.consumer"), eventtypes=("later",)))
    client = await nats_bus.connect(account)
    contexts: asyncio.Queue[Any] = asyncio.Queue()

    async def detach(apc: Any) -> None:
        await apc.read_envelope_complete("default", 5)
        apc.detach()
        contexts.put_nowait(apc.request.context)

    await client.get_actor("d.consumer").subscribe(detach)
    await emit(client, "d.emitter", "later", b"x")
    context = await asyncio.wait_for(contexts.get(), 20)
    await asyncio.sleep(0.5)
    page = (await account.http.get("/api/v1/processes")).json()
    assert page["items"][0]["status"] == "running"
    await client.get_actor("d.consumer").processing_success(context)
    detail = (
        await account.http.get(f"/api/v1/processes/{page['items'][0]['id']}", params={"wait": 10})
    ).json()
    assert detail["status"] == "done"


async def test_nats_emitter_to_http_consumer_and_back(nats_bus: NatsBus) -> None:
    """NATS and HTTP actors mix in one pipeline: a NATS emitter feeds an HTTP polling worker,
    whose output goes to a NATS consumer."""
    account = await nats_bus.nats_account(
        {"m.emitter": {"kind": "emitter"}, "m.consumer": {"kind": "consumer"}}
    )
    http_account = await nats_bus.account()
    worker = await nats_bus.actor(http_account, "worker")
    await nats_bus.pipeline(
        chain(
            "m.emitter", ("worker", worker["name"]), ("consumer", "m.consumer"), eventtypes=("mix",)
        )
    )
    client = await nats_bus.connect(account)
    received: asyncio.Queue[Any] = asyncio.Queue()

    async def consume(apc: Any) -> None:
        received.put_nowait(await apc.read_envelope_complete("default", 5))

    await client.get_actor("m.consumer").subscribe(consume)
    await emit(client, "m.emitter", "mix", b"from nats")
    job = (
        await http_account.http.get(
            f"/api/v1/actors/{worker['name']}/requests", params={"wait": 10}
        )
    ).json()
    assert job["inputs"][0]["envelope"]["events"][0]["items"] == ["from nats"]
    out = {"events": [{"type": "mix.done", "items": ["from http"]}]}
    r = await http_account.http.post(
        f"/api/v1/requests/{job['request_id']}/state",
        json={"status": "success", "outputs": {"default": out}},
    )
    assert r.status_code == 200, r.text
    envelope = await asyncio.wait_for(received.get(), 20)
    assert list(envelope.events[0].items) == [b"from http"]


async def test_certificate_from_another_ca_is_refused(nats_bus: NatsBus, tmp_path: Any) -> None:
    rogue = CertificateAuthority.load_or_create(tmp_path / "rogue")
    account = await nats_bus.nats_account({"r.emitter": {"kind": "emitter"}}, ca=rogue)
    account.conf["tls"]["rootca"] = cert_pem(nats_bus.tls_nats.ca.cert).decode()
    with pytest.raises(Exception):  # noqa: B017, PT011 - the TLS layer decides the exact error
        await asyncio.wait_for(nats_bus.connect(account), 10)


async def test_one_account_cannot_subscribe_to_anothers_subjects(nats_bus: NatsBus) -> None:
    mine = await nats_bus.nats_account({"p.consumer": {"kind": "consumer"}})
    theirs = await nats_bus.nats_account({"q.consumer": {"kind": "consumer"}})
    their_actor = (await nats_bus.admin.get("/api/v1/actors/q.consumer")).json()["id"]
    client = await nats_bus.connect(mine)
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    client.nc._error_cb = on_error
    await client.nc.subscribe(f"xbus.default.actoragent.{their_actor}.process")
    await client.nc.flush()
    await asyncio.sleep(0.5)
    assert any("permissions violation" in str(e).lower() for e in errors), errors
    del theirs


async def test_whoami_refuses_an_incompatible_protocol_version(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account({"v.emitter": {"kind": "emitter"}})
    import ssl

    from xbus import conn, xbus_nrpc

    tls = account.conf["tls"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=tls["rootca"])
    key_file = nats_bus.tmp / "k.pem"
    cert_file = nats_bus.tmp / "c.pem"
    key_file.write_text(tls["private-key"])
    cert_file.write_text(tls["certificate"])
    ctx.load_cert_chain(str(cert_file), str(key_file))
    nc = await nats.connect(nats_bus.tls_nats.url, tls=ctx, name="@2.0", allow_reconnect=False)
    try:
        whoami = xbus_nrpc.WhoAmIClient(
            conn.FixedInboxConn(nc, f"xbus.default.client.whoami.{account.name}.reply")
        )
        with pytest.raises(Exception, match="protocol version"):
            await whoami.WhoAmI(account.name)
    finally:
        await nc.close()
    assert xbus_pb2.Account  # the message classes come from python-xbus itself


async def test_session_token_acts_for_the_account_over_http(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account({"s.emitter": {"kind": "emitter"}})
    client = await nats_bus.connect(account)
    api = xbus_nrpc.ClientAPIClient(client.clientconn(), account.id)
    token = await api.GetSessionToken(xbus_pb2.GetSessionTokenRequest(expiresIn=60))
    assert token.token
    assert token.validUntil.seconds > 0
    r = await nats_bus.admin.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {token.token}"}
    )
    assert r.status_code == 200
    assert r.json()["account"]["name"] == account.name
    assert r.json()["admin"] is False
    # A new token invalidating the first: the first stops working.
    second = await api.GetSessionToken(xbus_pb2.GetSessionTokenRequest(invalidateToken=token.token))
    r = await nats_bus.admin.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {token.token}"}
    )
    assert r.status_code == 401
    r = await nats_bus.admin.get(
        "/api/v1/whoami", headers={"Authorization": f"Bearer {second.token}"}
    )
    assert r.status_code == 200
    with pytest.raises(nrpc.exc.ClientError, match="at most"):
        await api.GetSessionToken(xbus_pb2.GetSessionTokenRequest(expiresIn=10**6))


async def test_survey_is_published(nats_bus: NatsBus) -> None:
    account = await nats_bus.nats_account({"sv.consumer": {"kind": "consumer"}})
    client = await nats_bus.connect(account)
    surveys: asyncio.Queue[Any] = asyncio.Queue()

    async def on_survey(msg: Any) -> None:
        surveys.put_nowait(xbus_pb2.SurveyRequest.FromString(msg.data))

    await client.nc.subscribe("xbus.default.sentinel.survey", cb=on_survey)
    survey = await asyncio.wait_for(surveys.get(), 10)
    assert survey.onlineStatus is True


async def test_an_emission_no_pipeline_takes_is_refused_before_its_items_are_written(
    nats_bus: NatsBus,
) -> None:
    """Routing is decided at the first fragment: an envelope of a type no active pipeline
    takes from this emitter is refused (EnvelopeAck ERROR with the reason) and none of its
    fragments is written, however many the emitter sends."""
    account = await nats_bus.nats_account(
        {"u.emitter": {"kind": "emitter"}, "u.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("u.emitter", ("consumer", "u.consumer"), eventtypes=("wanted",)))
    client = await nats_bus.connect(account)
    emitter = client.get_actor("u.emitter")

    # python-xbus ignores the acks: it sends every fragment (each answered before the next).
    writer = emitter.open_output("default", None)
    message = writer.open_message("unwanted")
    for n in range(12):
        await message.write(bytes([n]) * 100 * 1024)
    await message.close()
    await writer.last_message()

    # The ack says why.
    event_id = uuid.uuid4()
    fragment = xbus_pb2.Envelope(
        id=uuid.uuid4().bytes,
        eventIDs=[event_id.bytes],
        events=[xbus_pb2.Event(id=event_id.bytes, type="unwanted", index=1, items=[b"x"])],
    )
    ack = await emitter.broker.Output(xbus_pb2.OutputRequest(output="default", envelope=fragment))
    assert ack.status == xbus_pb2.EnvelopeAck.ERROR
    assert "no active pipeline takes event types [unwanted]" in ack.reason

    async with nats_bus.app.state.xbus.db.session() as session:
        emitter_id = (await account.http.get("/api/v1/actors/u.emitter")).json()["id"]
        stored = await session.scalar(
            sa.select(sa.func.count())
            .select_from(Envelope)
            .where(Envelope.emitter_id == uuid.UUID(emitter_id))
        )
    assert stored == 0
