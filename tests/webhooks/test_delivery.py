"""Webhook delivery against a real receiver on 127.0.0.1: success, retries, Retry-After, 410,
exhaustion, timeouts, signatures, worker outputs, protobuf."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import asyncpg
import pytest
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.requests.schemas import ActorRequestRead
from app.webhooks.verify import WebhookVerificationError, verify
from tests.bus.conftest import Bus
from tests.webhooks.conftest import (
    FAST,
    Received,
    Receiver,
    Reply,
    emit,
    eventually,
    finished,
    logs,
    webhook_chain,
)


def secret(seed: int) -> str:
    return "whsec_" + base64.b64encode(bytes([seed]) * 32).decode()


async def deliveries(client: Any, path: str) -> list[dict[str, Any]]:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_success_delivers_the_polling_body(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", [Reply(200, delay=0.12)])  # the attempt's duration shows it
    acct = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    emission = await emit(acct, em["name"])

    [got] = await receiver.wait_for("/hook")
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "done"
    assert process["postmortem"] is None
    [request] = next(n for n in process["nodes"] if n["node_id"] == "consumer0")["requests"]
    assert request["leased_at"] is not None  # the claim that sent it
    assert got.headers["content-type"] == "application/json"
    assert "webhook-signature" not in got.headers  # no secret, no signature
    body = json.loads(got.body)
    ActorRequestRead.model_validate(body)  # the body the document's webhook declares
    assert set(body) == {
        "request_id",
        "process_id",
        "node_id",
        "actor_id",
        "attempt",
        "lease_expires_at",
        "inputs",
    }
    assert body["process_id"] == emission["process_id"]
    assert body["node_id"] == "consumer0"
    assert body["actor_id"] == co["id"]
    assert body["attempt"] == 1
    [inp] = body["inputs"]
    assert inp["name"] == "default"
    assert inp["envelope"]["id"] == emission["envelope_id"]
    assert inp["envelope"]["events"][0]["items"] == [{"id": 1}, {"id": 2}]

    [attempt] = await deliveries(acct.http, f"/api/v1/actors/{co['name']}/deliveries")
    assert attempt["request_id"] == body["request_id"]
    assert attempt["process_id"] == emission["process_id"]
    assert attempt["status_code"] == 200
    assert attempt["outcome"] == "success"
    assert attempt["attempt"] == 1
    assert attempt["error"] is None
    assert 120 <= attempt["duration_ms"] < 5000
    same = await deliveries(acct.http, f"/api/v1/requests/{body['request_id']}/deliveries")
    assert same == [attempt]
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/webhook")
    assert r.json()["state"] == "active"
    assert r.json()["pending"] == 0


async def test_retry_then_success_keeps_the_webhook_id(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", [Reply(503, b"busy, come back"), Reply(200)])
    acct = await bus.account()
    em, _ = await webhook_chain(
        bus, acct, receiver.url("/hook"), secret=secret(1), backoff_initial="0.05"
    )
    emission = await emit(acct, em["name"])

    first, second = await receiver.wait_for("/hook", 2)
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "done"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert json.loads(first.body)["request_id"] == first.headers["webhook-id"]
    assert [json.loads(r.body)["attempt"] for r in (first, second)] == [1, 2]
    text = "\n".join(await logs(acct.http, emission["process_id"]))
    assert "webhook attempt 1 of 10" in text
    assert "503 Service Unavailable: busy, come back; next attempt in" in text
    attempts = await deliveries(
        acct.http, f"/api/v1/requests/{first.headers['webhook-id']}/deliveries"
    )
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 503, "retry"),
        (2, 200, "success"),
    ]
    assert attempts[0]["response_excerpt"] == "busy, come back"
    assert attempts[0]["error"] == "503 Service Unavailable"


async def test_retry_after_is_honoured(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", [Reply(429, headers={"retry-after": "1"}), Reply(200)])
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/hook"), backoff_initial="0.01")
    emission = await emit(acct, em["name"])
    first, second = await receiver.wait_for("/hook", 2)
    assert second.at - first.at >= 0.95
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
    assert any("(Retry-After)" in t for t in await logs(acct.http, emission["process_id"]))


async def test_other_codes_fail_at_once_and_redirects_are_not_followed(
    bus: Bus, receiver: Receiver
) -> None:
    receiver.script("/bad", Reply(400, b'{"detail": "order 2 has no customer"}'))
    receiver.script("/moved", Reply(301, headers={"location": receiver.url("/elsewhere")}))
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/bad"))
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "400 Bad Request" in process["status_reason"]
    assert "order 2 has no customer" in process["status_reason"]
    assert len(receiver.at("/bad")) == 1

    em2, _ = await webhook_chain(bus, acct, receiver.url("/moved"))
    emission = await emit(acct, em2["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "301 Moved Permanently" in process["status_reason"]
    assert "not followed" in process["status_reason"]
    assert receiver.at("/elsewhere") == []


async def test_gone_suspends_then_a_probe_brings_it_back(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(410, b"no such hook"))
    acct = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    first = await emit(acct, em["name"])
    process = await finished(acct.http, first["process_id"])
    assert process["status"] == "error"
    assert "410 Gone" in process["status_reason"]
    state = (await acct.http.get(f"/api/v1/actors/{co['name']}/webhook")).json()
    assert state["state"] == "suspended"
    assert "410" in state["reason"]
    assert state["next_probe_at"] is not None

    # Suspended: new requests wait instead of failing; failed probes change nothing.
    second = await emit(acct, em["name"])
    await receiver.wait_for("/hook", 2)  # the first probe, answered 410 again
    r = await acct.http.get(f"/api/v1/processes/{second['process_id']}")
    assert r.json()["status"] == "running"
    # The endpoint is back: the next probe succeeds and delivery resumes by itself.
    receiver.script("/hook", Reply(204))
    process = await finished(acct.http, second["process_id"])
    assert process["status"] == "done"
    state = (await acct.http.get(f"/api/v1/actors/{co['name']}/webhook")).json()
    assert state["state"] == "active"
    third = await emit(acct, em["name"])
    assert (await finished(acct.http, third["process_id"]))["status"] == "done"


async def test_a_probe_with_nothing_to_send_waits_one_interval_not_a_lease(
    bus: Bus, receiver: Receiver
) -> None:
    """A suspended webhook whose probe falls due while nothing is pending probes the next
    request one probe interval later (0.5 s here), not after a probe's lease (timeout 10 s +
    margin 1 s): the race of an emission arriving just after an empty probe."""
    receiver.script("/hook", Reply(410, b"no such hook"))
    acct = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    first = await emit(acct, em["name"])
    assert (await finished(acct.http, first["process_id"]))["status"] == "error"
    path = f"/api/v1/actors/{co['name']}/webhook"
    suspended = (await acct.http.get(path)).json()["next_probe_at"]
    generation = bus.app.state.xbus.notifier.generation
    deadline = time.monotonic() + 10
    while (await acct.http.get(path)).json()["next_probe_at"] == suspended:
        assert time.monotonic() < deadline, "the due probe was never taken"
        await asyncio.sleep(0.05)
    # The probe moved the actor's probe schedule only: no cache was dropped for it.
    assert bus.app.state.xbus.notifier.generation == generation
    # The probe was due with nothing pending; the next request is probed within ~0.5 s.
    receiver.script("/hook", Reply(204))
    second = await emit(acct, em["name"])
    process = await finished(acct.http, second["process_id"], timeout=5)
    assert process["status"] == "done"
    assert (await acct.http.get(path)).json()["state"] == "active"


async def test_exhaustion_fails_with_a_postmortem_listing_every_attempt(
    bus: Bus, receiver: Receiver
) -> None:
    receiver.script("/hook", Reply(500, b"database down"))
    acct = await bus.account()
    em, co = await webhook_chain(
        bus, acct, receiver.url("/hook"), max_attempts="3", backoff_initial="0.01"
    )
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert process["postmortem"]["level"] == "error"
    assert len(receiver.at("/hook")) == 3
    node = next(n for n in process["nodes"] if n["node_id"] == "consumer0")
    assert node["status"] == "error"
    assert node["requests"][0]["attempts"] == 3
    assert "gave up after 3 attempt(s) (max-attempts 3)" in process["status_reason"]
    [listing] = [t for t in await logs(acct.http, emission["process_id"]) if "#1 " in t]
    for n in (1, 2, 3):
        assert f"#{n} " in listing
    assert listing.count(": 500 Internal Server Error (") == 3
    attempts = await deliveries(acct.http, f"/api/v1/actors/{co['name']}/deliveries")
    assert [a["attempt"] for a in attempts] == [3, 2, 1]  # newest first
    assert {a["outcome"] for a in attempts} == {"retry"}
    # Nothing got through meanwhile: the webhook is suspended and will be probed.
    state = (await acct.http.get(f"/api/v1/actors/{co['name']}/webhook")).json()
    assert state["state"] == "suspended"


async def test_max_age_ends_retries(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(503))
    acct = await bus.account()
    em, _ = await webhook_chain(
        bus, acct, receiver.url("/hook"), max_age="1", backoff_initial="2", backoff_jitter="0"
    )
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "(max-age 1 s)" in process["status_reason"]
    assert len(receiver.at("/hook")) == 1


async def test_timeout_is_a_reattempt(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", Reply(hang=True))
    acct = await bus.account()
    em, co = await webhook_chain(
        bus, acct, receiver.url("/hook"), timeout="0.3", max_attempts="2", backoff_initial="0.01"
    )
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "timeout" in process["status_reason"]
    attempts = await deliveries(acct.http, f"/api/v1/actors/{co['name']}/deliveries")
    assert len(attempts) == 2
    for a in attempts:
        assert a["status_code"] is None
        assert a["error"] == "no answer within 0.3 s (timeout)"
        assert 250 <= a["duration_ms"] < 2000


async def test_signatures_verify_with_either_secret_while_rotating(
    bus: Bus, receiver: Receiver
) -> None:
    old, new = secret(7), secret(8)
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/hook"), secret=f"{new} {old}")
    emission = await emit(acct, em["name"])
    [got] = await receiver.wait_for("/hook")
    await finished(acct.http, emission["process_id"])

    assert got.headers["webhook-id"] == json.loads(got.body)["request_id"]
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30
    assert len(got.headers["webhook-signature"].split()) == 2
    verify(old, got.headers, got.body)
    verify(new, got.headers, got.body)
    with pytest.raises(WebhookVerificationError):
        verify(secret(9), got.headers, got.body)
    with pytest.raises(WebhookVerificationError):
        verify(new, got.headers, got.body + b" ")
    with pytest.raises(WebhookVerificationError):
        verify(new, got.headers, got.body, now=time.time() + 3600)


async def test_worker_outputs_continue_the_pipeline(bus: Bus, receiver: Receiver) -> None:
    out = {
        "events": [{"type": "order.enriched", "encoding": "json", "items": [{"id": 1, "ok": 1}]}]
    }
    receiver.script(
        "/worker",
        Reply(
            200,
            json.dumps(
                {
                    "status": "success",
                    "messages": [{"level": "notice", "text": "enriched 1 order"}],
                    "outputs": {"default": out},
                }
            ).encode(),
            {"content-type": "application/json"},
        ),
    )
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker", config={"http.webhook.url": receiver.url("/worker")})
    co = await bus.actor(acct, "consumer", config={"http.webhook.url": receiver.url("/sink")})
    from tests.bus.conftest import chain

    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))
    emission = await emit(acct, em["name"])
    [got] = await receiver.wait_for("/sink")
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "done"
    event = json.loads(got.body)["inputs"][0]["envelope"]["events"][0]
    assert event["type"] == "order.enriched"
    assert event["items"] == [{"id": 1, "ok": 1}]
    assert "enriched 1 order" in await logs(acct.http, emission["process_id"])


async def test_state_error_and_running_answers(bus: Bus, receiver: Receiver) -> None:
    receiver.script(
        "/err",
        Reply(200, b'{"status": "error", "messages": [{"level": "error", "text": "no stock"}]}'),
    )
    receiver.script("/later", Reply(202, b'{"status": "running"}'))
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/err"))
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "no stock" in process["status_reason"]

    em2, co2 = await webhook_chain(bus, acct, receiver.url("/later"))
    emission = await emit(acct, em2["name"])
    [got] = await receiver.wait_for("/later")
    request_id = json.loads(got.body)["request_id"]
    await eventually(lambda: _request_status(acct, emission["process_id"], "running"), timeout=10)
    r = await acct.http.post(f"/api/v1/requests/{request_id}/state", json={"status": "success"})
    assert r.status_code == 200, r.text
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
    [attempt] = await deliveries(acct.http, f"/api/v1/actors/{co2['name']}/deliveries")
    assert attempt["outcome"] == "running"


async def _request_status(acct: Any, process_id: str, status: str) -> bool:
    process = (await acct.http.get(f"/api/v1/processes/{process_id}")).json()
    return any(r["status"] == status for n in process["nodes"] for r in n["requests"])


async def test_protobuf_both_ways(bus: Bus, receiver: Receiver) -> None:
    seen: list[Any] = []

    def answer(got: Received) -> Reply:
        request = xbus_pb2.ActorProcessRequest.FromString(got.body)
        seen.append(request)
        state = xbus_pb2.ActorProcessingState(status=xbus_pb2.ActorProcessingState.ERROR)
        state.messages.add(level=xbus_pb2.ERROR, Text="cannot print order 2")
        return Reply(200, state.SerializeToString(), {"content-type": "application/x-protobuf"})

    receiver.script("/pb", answer)
    receiver.script(
        "/pb-ok",
        Reply(
            200,
            xbus_pb2.ActorProcessingState(
                status=xbus_pb2.ActorProcessingState.SUCCESS
            ).SerializeToString(),
            {"content-type": "application/x-protobuf"},
        ),
    )
    acct = await bus.account()
    em, _ = await webhook_chain(
        bus, acct, receiver.url("/pb"), content_type="application/x-protobuf"
    )
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "cannot print order 2" in process["status_reason"]
    [got] = receiver.at("/pb")
    assert got.headers["content-type"] == "application/x-protobuf"
    [request] = seen
    assert uuid.UUID(bytes=request.context.processID) == uuid.UUID(emission["process_id"])
    assert request.context.nodeID == "consumer0"
    [inp] = request.inputs
    assert inp.name == "default"
    assert uuid.UUID(bytes=inp.envelope.id) == uuid.UUID(emission["envelope_id"])
    assert inp.envelope.last
    [event] = inp.envelope.events
    assert event.type == "order.created"
    assert [json.loads(i) for i in event.items] == [{"id": 1}, {"id": 2}]
    assert event.itemCount == 2

    em2, _ = await webhook_chain(
        bus, acct, receiver.url("/pb-ok"), content_type="application/x-protobuf"
    )
    emission = await emit(acct, em2["name"])
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"


async def test_an_output_whose_ids_are_taken_fails_the_node(
    bus: Bus, receiver: Receiver, db: asyncpg.Connection
) -> None:
    """A pass-through worker that answers with its input's envelope id: the output cannot be
    stored, so the node ends in error with the reason (it does not stay running forever with
    its request marked a success), and nothing of the output is left behind."""
    taken = str(uuid.uuid4())
    event_id = str(uuid.uuid4())
    envelope = {"id": taken, "events": [{"id": event_id, "type": "order.created", "items": ["a"]}]}
    for path, out in (
        ("/same-envelope", {"id": taken, "events": [{"type": "order.enriched", "items": ["b"]}]}),
        ("/same-event", {"events": [{"id": event_id, "type": "order.enriched", "items": ["b"]}]}),
    ):
        answer = {"status": "success", "outputs": {"default": out}}
        receiver.script(path, Reply(200, json.dumps(answer).encode()))
        acct = await bus.account()
        em = await bus.actor(acct, "emitter")
        wk = await bus.actor(acct, "worker", config={"http.webhook.url": receiver.url(path)})
        co = await bus.actor(acct, "consumer")
        from tests.bus.conftest import chain

        await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))
        envelopes_before = await db.fetchval("SELECT count(*) FROM envelopes")
        if path == "/same-event":
            envelope = {"events": [{"type": "order.created", "items": ["a"]}]}
        emission = await emit(acct, em["name"], envelope)
        process = await finished(acct.http, emission["process_id"])
        assert process["status"] == "error", process
        assert "refused" in process["status_reason"]
        assert "already exists" in process["status_reason"]
        node = {n["node_id"]: n["status"] for n in process["nodes"]}
        assert node["worker0"] == "error"
        status = await db.fetchval(
            "SELECT status FROM requests WHERE process_id = $1 AND node_id = 'worker0'",
            uuid.UUID(emission["process_id"]),
        )
        assert status == "error"
        # Only the emitted envelope was stored: nothing of the refused output.
        assert await db.fetchval("SELECT count(*) FROM envelopes") == envelopes_before + 1


@pytest.mark.parametrize("settings_overrides", [{**FAST, "inline_envelope_max_bytes": 200}])
@pytest.mark.parametrize("content_type", ["application/json", "application/x-protobuf"])
async def test_a_claim_hands_out_small_envelopes_whole_and_links_large_ones(
    bus: Bus, receiver: Receiver, content_type: str
) -> None:
    """The claim reads each request's input envelopes in its own statement: one within
    `inline_envelope_max_bytes` goes whole in the body (every event and item, in order), a
    larger one only by its id (JSON: with its size, item count and URL)."""
    receiver.script("/hook", Reply(200))
    acct = await bus.account()
    em, _ = await webhook_chain(bus, acct, receiver.url("/hook"), content_type=content_type)
    small = {
        "events": [
            {"type": "order.created", "encoding": "json", "items": [{"n": 1}, {"n": 2}]},
            {"type": "order.created", "encoding": "json", "items": [{"n": 3}]},
        ]
    }
    large = {
        "events": [{"type": "order.created", "encoding": "json", "items": [{"n": "x" * 40}] * 10}]
    }
    emissions = [await emit(acct, em["name"], envelope) for envelope in (small, large)]
    for emission in emissions:
        assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
    got = {}
    for request in receiver.at("/hook"):
        if content_type == "application/json":
            [inp] = json.loads(request.body)["inputs"]
            got[inp["envelope_id"]] = inp
        else:
            [inp] = xbus_pb2.ActorProcessRequest.FromString(request.body).inputs
            got[str(uuid.UUID(bytes=inp.envelope.id))] = inp
    whole, linked = (got[emission["envelope_id"]] for emission in emissions)
    if content_type == "application/json":
        assert whole["inline"]
        assert whole["item_count"] == 3
        assert whole["size_bytes"] <= 200
        assert [event["items"] for event in whole["envelope"]["events"]] == [
            [{"n": 1}, {"n": 2}],
            [{"n": 3}],
        ]
        assert not linked["inline"]
        assert linked["envelope"] is None
        assert linked["item_count"] == 10
        assert linked["size_bytes"] > 200
        assert linked["envelope_url"] == f"/api/v1/envelopes/{linked['envelope_id']}"
    else:
        items = [[json.loads(i) for i in event.items] for event in whole.envelope.events]
        assert items == [[{"n": 1}, {"n": 2}], [{"n": 3}]]
        assert whole.envelope.last
        assert not linked.envelope.events
        assert not linked.envelope.last
