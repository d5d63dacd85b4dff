"""Two `xbusd serve` replicas against one PostgreSQL and one nats-server (the test session's,
a scratch database): every envelope is processed once whichever replica it goes through,
webhooks are sent once (again only after a crash, with the same `webhook-id`), duties meant
to act once do so, and SIGTERM lets in-flight work finish before the replica exits."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _plain
from tests.production.fake_sentry import FakeSentry, fake_sentry
from tests.production.servers import ADMIN, Cluster, Xbusd

pytestmark = pytest.mark.timeout(240)

ENVELOPE = {"events": [{"type": "order.created", "encoding": "json", "items": [{"n": 0}]}]}


def _start_all(*servers: Xbusd) -> None:
    for server in servers:
        server.start()
    for server in servers:
        server.wait_ready()


class Api:
    """Setting up the bus over HTTP, on whichever replica."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(self, url: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        r = await self.client.post(url, json=body)
        assert r.status_code == status, r.text
        answer: dict[str, Any] = r.json()
        return answer

    async def setup(
        self, consumer_config: dict[str, str] | None = None, worker: bool = True
    ) -> tuple[str, dict[str, str]]:
        """An account, emitter -> [worker ->] consumer, active. (account key, actor names)"""
        tag = uuid.uuid4().hex[:6]
        account = await self.post("/api/v1/accounts", {"name": f"acct-{tag}", "type": "gateway"})
        names = {}
        kinds = ["emitter", "worker", "consumer"] if worker else ["emitter", "consumer"]
        for kind in kinds:
            body: dict[str, Any] = {
                "name": f"{kind}-{tag}",
                "kind": kind,
                "account_id": account["id"],
            }
            if kind == "consumer" and consumer_config:
                body["config"] = consumer_config
            names[kind] = (await self.post("/api/v1/actors", body))["name"]
        nodes: list[dict[str, Any]] = [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [names["emitter"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "store", "type": "consumer", "actors": [names["consumer"]]},
        ]
        edges = ["emit->store"]
        if worker:
            nodes.insert(1, {"id": "work", "type": "worker", "actors": [names["worker"]]})
            edges = ["emit->work", "work->store"]
        pipeline = await self.post(
            "/api/v1/pipelines",
            {"name": f"pipe-{tag}", "version": "1", "graph": {"nodes": nodes, "edges": edges}},
        )
        await self.post(
            f"/api/v1/pipelines/{pipeline['id']}/status", {"status": "active"}, status=200
        )
        return account["api_key"], names


def _clients(servers: list[Xbusd], key: str | None = None) -> list[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {key}"} if key else ADMIN
    return [httpx.AsyncClient(base_url=s.url, headers=headers, timeout=30) for s in servers]


async def _emit(clients: list[httpx.AsyncClient], emitter: str, count: int) -> list[str]:
    """`count` envelopes, alternately through each replica; their process ids."""

    async def one(n: int) -> str:
        body = json.loads(json.dumps(ENVELOPE))
        body["events"][0]["items"] = [{"n": n}]
        r = await clients[n % len(clients)].post(f"/api/v1/actors/{emitter}/output", json=body)
        assert r.status_code == 202, r.text
        process_id: str = r.json()["process_id"]
        return process_id

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def _wait_all_ended(db: asyncpg.Connection, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = await db.fetchval("SELECT count(*) FROM processes WHERE status IN ('done','error')")
        if ended >= count:
            return
        await asyncio.sleep(0.1)
    rows = await db.fetch("SELECT status, count(*) FROM processes GROUP BY status")
    raise AssertionError(f"not every process ended: {[tuple(r) for r in rows]}")


async def _duty_passes(client: httpx.AsyncClient, duty: str) -> float:
    """Passes of `duty` that this replica did (xbus_duty_passes_total, outcome done)."""
    text = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "xbus_duty_passes"
        for sample in family.samples
        if sample.name == "xbus_duty_passes_total"
        and sample.labels == {"duty": duty, "outcome": "done"}
    )


async def _more_passes(
    clients: list[httpx.AsyncClient], duty: str, passes: int, *, each: bool
) -> None:
    """Wait until `passes` more passes of `duty` are done: on each replica (a duty every
    replica runs), or in all (one that runs once across replicas). The first may have begun
    before the call; the others began after it: each had its chance to act again."""
    start = [await _duty_passes(c, duty) for c in clients]
    deadline = time.monotonic() + 30
    while True:
        grown = [await _duty_passes(c, duty) - s for c, s in zip(clients, start, strict=True)]
        if (min(grown) if each else sum(grown)) >= passes:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{duty}: {grown} passes in 30 s, waited for {passes}")
        await asyncio.sleep(0.2)


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    with fake_sentry() as server:
        yield server


async def test_every_envelope_processed_once(
    cluster: Cluster, sentry: FakeSentry, scratch_database: str
) -> None:
    env = {
        "XBUS_SENTRY_DSN": sentry.dsn,
        "XBUS_SUPERVISION_INTERVAL": "0.5",
        "XBUS_ACTOR_UNRESPONSIVE_AFTER": "1",
    }
    servers = [cluster.server("a", env=env), cluster.server("b", env=env)]
    await asyncio.to_thread(_start_all, *servers)
    admins = _clients(servers)
    db = await asyncpg.connect(_plain(scratch_database))
    try:
        key, names = await Api(admins[0]).setup()
        actors = _clients(servers, key)
        count = 40
        processes = await _emit(actors, names["emitter"], count)
        assert len(set(processes)) == count

        leased: Counter[str] = Counter()
        failed: set[str] = set()

        async def work(client: httpx.AsyncClient, actor: str, stop: asyncio.Event) -> None:
            while not stop.is_set():
                r = await client.get(f"/api/v1/actors/{actor}/requests", params={"wait": 0.5})
                if r.status_code == 204:
                    continue
                assert r.status_code == 200, r.text
                job = r.json()
                leased[job["request_id"]] += 1
                n = job["inputs"][0]["envelope"]["events"][0]["items"][0]["n"]
                if actor == names["worker"] and n % 10 == 3:
                    state: dict[str, Any] = {
                        "status": "error",
                        "messages": [{"level": "error", "text": f"cannot handle order {n}"}],
                    }
                    failed.add(job["process_id"])
                elif actor == names["worker"]:
                    out = {
                        "events": [{"type": "order.done", "encoding": "json", "items": [{"n": n}]}]
                    }
                    state = {"status": "success", "outputs": {"default": out}}
                else:
                    state = {"status": "success"}
                # Answer through the other replica: state lives in the database only.
                other = actors[(actors.index(client) + 1) % len(actors)]
                r = await other.post(f"/api/v1/requests/{job['request_id']}/state", json=state)
                assert r.status_code == 200, r.text

        stop = asyncio.Event()
        workers = [
            asyncio.create_task(work(client, names[kind], stop))
            for client in actors
            for kind in ("worker", "consumer")
            for _ in range(2)
        ]
        try:
            await _wait_all_ended(db, count)
        finally:
            stop.set()
            await asyncio.gather(*workers)

        # Each request handed out once: no lease twice, none left behind.
        assert leased, "nothing was leased"
        assert max(leased.values()) == 1, [r for r, n in leased.items() if n > 1]
        expected_errors = sum(1 for n in range(count) if n % 10 == 3)
        rows = await db.fetch("SELECT id, status FROM processes")
        statuses = Counter(r["status"] for r in rows)
        assert statuses == {"done": count - expected_errors, "error": expected_errors}
        assert {str(r["id"]) for r in rows if r["status"] == "error"} == failed
        per_node = await db.fetch(
            "SELECT process_id, node_id, count(*) AS n, max(attempts) AS attempts FROM requests"
            " GROUP BY process_id, node_id"
        )
        assert all(r["n"] == 1 and r["attempts"] == 1 for r in per_node)
        assert len(leased) == len(per_node)  # every request was leased by a poller

        # Sentry: each failed process reported once, by one replica or the other.
        events = await sentry.await_for(
            lambda e: e.get("logger") == "xbus.process", count=expected_errors
        )
        # Reported once: two more passes on each replica, and none reported them again.
        await _more_passes(admins, "sentry-reports", 2, each=True)
        events = sentry.events("xbus.process")
        reported = Counter(e["tags"]["process_id"] for e, _ in events)
        assert set(reported) == failed
        assert max(reported.values()) == 1

        # A duty that acts once: a polling actor nobody serves is marked unresponsive once.
        idle = (await admins[1].get(f"/api/v1/actors/{names['consumer']}")).json()
        await admins[0].patch(f"/api/v1/actors/{names['worker']}", json={"status": "disabled"})
        key2, names2 = await Api(admins[1]).setup(worker=False)
        await _emit(_clients(servers, key2), names2["emitter"], 2)
        deadline = time.monotonic() + 20
        marks: list[asyncpg.Record] = []
        while time.monotonic() < deadline and not marks:
            marks = await db.fetch(
                "SELECT text FROM log_entries WHERE text LIKE $1",
                f"actor {names2['consumer']} is unresponsive%",
            )
            await asyncio.sleep(0.2)
        await _more_passes(admins, "unresponsive-actors", 2, each=False)
        marks = await db.fetch(
            "SELECT text FROM log_entries WHERE text LIKE $1",
            f"actor {names2['consumer']} is unresponsive%",
        )
        assert len(marks) == 1, marks
        assert idle["unresponsive"] is False
    finally:
        await db.close()
        for c in admins:
            await c.aclose()


class Receiver:
    """A webhook endpoint on 127.0.0.1 that records each delivery's `webhook-id`; the first
    delivery it is told to hold is kept unanswered until released."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.lock = threading.Lock()
        self.hold_next = False
        self.held = threading.Event()
        self.held_from = 0  # client port of the held delivery
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with outer.lock:
                    outer.ids.append(self.headers.get("webhook-id", ""))
                    hold = outer.hold_next
                    outer.hold_next = False
                if hold:
                    outer.held_from = self.client_address[1]
                    outer.held.set()
                    outer.release.wait(30)
                    return  # the sender is gone: no answer
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _owns_port(server: Xbusd, port: int) -> bool:
    """Whether this replica has a TCP connection from local `port`."""
    assert server.proc is not None
    try:
        conns = psutil.Process(server.proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.laddr and c.laddr.port == port for c in conns)


async def test_webhooks_sent_once_and_again_only_after_a_crash(
    cluster: Cluster, scratch_database: str
) -> None:
    receiver = Receiver()
    env = {"XBUS_WEBHOOK_LEASE_MARGIN": "1", "XBUS_WEBHOOK_POLL_INTERVAL": "0.2"}
    servers = [cluster.server("a", env=env), cluster.server("b", env=env)]
    await asyncio.to_thread(_start_all, *servers)
    admins = _clients(servers)
    db = await asyncpg.connect(_plain(scratch_database))
    try:
        config = {
            "http.webhook.url": receiver.url,
            "http.webhook.secret": "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "http.webhook.timeout": "5",
            "http.webhook.concurrency": "8",
        }
        key, names = await Api(admins[0]).setup(consumer_config=config, worker=False)
        actors = _clients(servers, key)
        count = 30
        await _emit(actors, names["emitter"], count)
        await _wait_all_ended(db, count)
        sent = Counter(receiver.ids)
        assert len(sent) == count
        assert max(sent.values()) == 1, [i for i, n in sent.items() if n > 1]
        # The webhook-id is the request id: the same on every attempt of a request.
        request_ids = {str(r["id"]) for r in await db.fetch("SELECT id FROM requests")}
        assert set(sent) == request_ids

        # A replica dies while its delivery is in flight: after the lease, the other one
        # sends that request again, with the same webhook-id.
        receiver.hold_next = True
        [process_id] = await _emit(actors[:1], names["emitter"], 1)
        assert await asyncio.to_thread(receiver.held.wait, 20)
        [sender] = [s for s in servers if _owns_port(s, receiver.held_from)]
        sender.signal(signal.SIGKILL)
        await sender.wait_async(10)
        receiver.release.set()
        await _wait_all_ended(db, count + 1, timeout=60)
        status = await db.fetchval(
            "SELECT status FROM processes WHERE id = $1", uuid.UUID(process_id)
        )
        assert status == "done"
        sent = Counter(receiver.ids)
        again = [i for i, n in sent.items() if n > 1]
        assert len(again) == 1, sent
        assert sent[again[0]] == 2
        assert len(sent) == count + 1
    finally:
        receiver.close()
        await db.close()
        for c in admins:
            await c.aclose()


async def test_sigterm_drains_in_flight_work(cluster: Cluster) -> None:
    servers = [cluster.server("a"), cluster.server("b")]
    await asyncio.to_thread(_start_all, *servers)
    a = servers[0]
    admins = _clients(servers)
    try:
        key, names = await Api(admins[1]).setup(worker=False)
        on_a, on_b = _clients(servers, key)
        # In flight on A when it is told to stop: a long-poll for work and a wait on a
        # process. Both finish with what B then does.
        [first] = await _emit([on_b], names["emitter"], 1)
        waiting_process = asyncio.create_task(
            on_a.get(f"/api/v1/processes/{first}", params={"wait": 8})
        )
        job = (await on_b.get(f"/api/v1/actors/{names['consumer']}/requests")).json()
        long_poll = asyncio.create_task(
            on_a.get(f"/api/v1/actors/{names['consumer']}/requests", params={"wait": 8})
        )
        await asyncio.sleep(0.5)
        a.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert a.proc is not None
        assert a.proc.poll() is None  # still draining
        # New connections go to B now (A no longer accepts them).
        with pytest.raises(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=a.url, timeout=2) as fresh:
                await fresh.get("/healthz")
        r = await on_b.post(
            f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"}
        )
        assert r.status_code == 200
        [second] = await _emit([on_b], names["emitter"], 1)

        done = await waiting_process
        assert done.status_code == 200
        assert done.json()["status"] == "done"
        polled = await long_poll
        assert polled.status_code == 200, polled.text
        assert polled.json()["process_id"] == second
        assert await a.wait_async(30) == 0
        # B goes on serving, and the request A handed out can be answered through B.
        r = await on_b.post(
            f"/api/v1/requests/{polled.json()['request_id']}/state", json={"status": "success"}
        )
        assert r.status_code == 200
        for c in (on_a, on_b):
            await c.aclose()
    finally:
        for c in admins:
            await c.aclose()
