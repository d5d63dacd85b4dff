"""`xbusd serve --workers 2` over its embedded PostgreSQL and nats-server: requests are served
by both workers, a long-poll on one worker wakes when an envelope is emitted on the other
(the NATS doorbell), a process completes across them, SIGTERM stops everything, and a
`kill -9` of the supervisor leaves no process behind."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.runtime.test_serve import READY_CHECKS, Server, _gone

pytestmark = pytest.mark.timeout(180)

ENVELOPE = {"events": [{"type": "order.created", "encoding": "json", "items": [{"n": 1}]}]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", "--workers", "2")
    yield srv
    srv.close()


def _workers(server: Server) -> list[psutil.Process]:
    assert server.proc is not None
    return [
        p
        for p in psutil.Process(server.proc.pid).children()
        if any("multiprocessing.spawn" in part for part in p.cmdline())
    ]


def _served_by(response: httpx.Response, server: Server, workers: list[psutil.Process]) -> int:
    """The worker holding the server end of the (kept-alive) connection of `response`."""
    client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    for worker in workers:
        for conn in worker.net_connections(kind="tcp"):
            ours = conn.laddr and conn.laddr.port == server.port
            if ours and conn.raddr and conn.raddr.port == client_port:
                return worker.pid
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def _client(server: Server, key: str) -> httpx.Client:
    """One kept-alive connection, hence one worker, for all its requests."""
    return httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {key}"},
        limits=httpx.Limits(max_connections=1),
        timeout=30,
    )


def _one_client_per_worker(
    server: Server, key: str, workers: list[psutil.Process]
) -> dict[int, httpx.Client]:
    found: dict[int, httpx.Client] = {}
    for _ in range(100):
        client = _client(server, key)
        pid = _served_by(client.get("/healthz"), server, workers)
        if pid in found:
            client.close()
            continue
        found[pid] = client
        if len(found) == len(workers):
            return found
    raise AssertionError(f"every connection went to the same worker: {list(found)}")


def _post(client: httpx.Client, url: str, body: dict[str, Any], status: int) -> Any:
    r = client.post(url, json=body)
    assert r.status_code == status, r.text
    return r.json()


def _setup(admin: httpx.Client) -> tuple[str, str, str]:
    """An account with emitter -> consumer, active: (account key, emitter, consumer)."""
    account = _post(admin, "/api/v1/accounts", {"name": "shop", "type": "gateway"}, 201)
    for name, kind in (("shop.orders", "emitter"), ("shop.invoicing", "consumer")):
        body = {"name": name, "kind": kind, "account_id": account["id"]}
        _post(admin, "/api/v1/actors", body, 201)
    graph = {
        "nodes": [
            {
                "id": "orders",
                "type": "emitter",
                "actors": ["shop.orders"],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "invoicing", "type": "consumer", "actors": ["shop.invoicing"]},
        ],
        "edges": ["orders->invoicing"],
    }
    pipeline = _post(
        admin, "/api/v1/pipelines", {"name": "orders", "version": "1", "graph": graph}, 201
    )
    _post(admin, f"/api/v1/pipelines/{pipeline['id']}/status", {"status": "active"}, 200)
    return account["api_key"], "shop.orders", "shop.invoicing"


def test_two_workers_serve_wake_each_other_and_stop(server: Server) -> None:
    server.start(timeout=120)
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["checks"] == READY_CHECKS
    workers = _workers(server)
    assert len(workers) == 2, [p.cmdline() for p in _workers(server)]
    everything = server.children()
    assert {"postgres", "nats-server"} <= {p.name() for p in everything}

    admin = _one_client_per_worker(server, server.admin_key(), workers)
    # Each worker, serving, has settled its heap (app.heap); the supervisor serves no app.
    assert server.log.read_text().count("heap settled: ") == 2
    key, emitter, consumer = _setup(next(iter(admin.values())))
    for client in admin.values():
        client.close()
    # The consumer long-polls on worker A; the emitter posts on worker B.
    (a, poller), (b, emitting) = _one_client_per_worker(server, key, workers).items()

    latencies = []
    for _ in range(3):
        answer: dict[str, Any] = {}

        def poll(answer: dict[str, Any] = answer) -> None:
            r = poller.get(f"/api/v1/actors/{consumer}/requests", params={"wait": 20})
            answer["at"] = time.monotonic()
            answer["response"] = r

        polling = threading.Thread(target=poll)
        polling.start()
        time.sleep(0.2)  # the long-poll is waiting, its next recheck is ~0.8 s away
        emitted_at = time.monotonic()
        r = emitting.post(f"/api/v1/actors/{emitter}/output", json=ENVELOPE)
        assert r.status_code == 202, r.text
        assert _served_by(r, server, workers) == b
        process_id = r.json()["process_id"]
        polling.join(30)
        leased: httpx.Response = answer["response"]
        assert leased.status_code == 200, leased.text
        assert _served_by(leased, server, workers) == a
        latencies.append(answer["at"] - emitted_at)
        job = leased.json()
        assert job["process_id"] == process_id

        # Reported on B, the process seen done on A: the state is in the database only.
        state = {"status": "success", "messages": [{"text": "invoiced"}]}
        _post(emitting, f"/api/v1/requests/{job['request_id']}/state", state, 200)
        done = poller.get(f"/api/v1/processes/{process_id}", params={"wait": 10})
        assert done.json()["status"] == "done", done.text
    # Without the doorbell the long-poll would only see the request at its next recheck
    # (1 s after it started waiting: ~0.8 s after the emission).
    print(f"cross-worker wake-up latencies: {[round(x, 3) for x in latencies]}")
    assert statistics.median(latencies) < 0.6, latencies
    poller.close()
    emitting.close()

    output = server.log.read_text()
    # The supervisor migrated before it started the workers, which did not.
    assert output.count("Will assume transactional DDL") == 1
    assert output.index("-> 0001, initial schema") < output.index("Started parent process")
    assert output.count("generated the admin API key") == 1
    for pid in (a, b):  # the workers log through the same set-up as the supervisor
        assert f"INFO    uvicorn.error: Started server process [{pid}]" in output

    assert server.stop(signal.SIGTERM) == 0
    assert _gone(everything), [p for p in everything if p.is_running()]
    assert not (server.data_dir / "xbusd.pid").exists()
    output = server.log.read_text()
    for pid in (a, b):  # drained, and their last words were flushed
        assert f"Finished server process [{pid}]" in output


def _connect(server: Server) -> socket.socket:
    """A connection that got its answer to GET /healthz, kept open."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: xbus\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


def _burst(server: Server, count: int) -> list[socket.socket]:
    """`count` connections opened at once (as a client's pool, or a load generator, does)."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: _connect(server), range(count)))


def _serving(server: Server, workers: list[psutil.Process]) -> dict[int, int]:
    """The connections each worker serves."""
    return {
        worker.pid: sum(
            1
            for conn in worker.net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == server.port and conn.raddr
        )
        for worker in workers
    }


def _close(server: Server, workers: list[psutil.Process], socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    deadline = time.monotonic() + 10
    while any(_serving(server, workers).values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_connections_opened_at_once_are_shared_by_the_workers(server: Server) -> None:
    """A worker used to accept every connection waiting when it woke up: a burst of
    connections all went to one worker (and stayed there). The worker that serves fewer now
    takes the next (app/cli/fair_accept.py); a stopped worker does not stop the others from
    taking every connection, and once it runs again, it takes its share."""
    server.start(timeout=120)
    workers = _workers(server)
    assert len(workers) == 2
    # Both serving (/readyz was answered by one of them).
    for client in _one_client_per_worker(server, server.admin_key(), workers).values():
        client.close()
    _close(server, workers, [])
    spreads = []
    for _ in range(3):
        socks = _burst(server, 10)
        serving = _serving(server, workers)
        assert sum(serving.values()) == 10, serving
        spreads.append(max(serving.values()) - min(serving.values()))
        _close(server, workers, socks)
    # Before: 8 + 2, 9 + 1, 10 + 0 (a worker descheduled for a while under load can still
    # make one burst uneven).
    assert sorted(spreads)[1] <= 2, spreads

    socks = [_connect(server), _connect(server)]
    serving = _serving(server, workers)
    stopped = min(serving, key=lambda pid: serving[pid])
    os.kill(stopped, signal.SIGSTOP)
    try:
        socks += [_connect(server) for _ in range(6)]
        after = _serving(server, workers)
        assert after[stopped] == serving[stopped], (serving, after)
    finally:
        os.kill(stopped, signal.SIGCONT)
    time.sleep(0.3)  # its loop beats again
    for _ in range(5):
        socks.append(_connect(server))
        if _serving(server, workers)[stopped] > serving[stopped]:
            break
    else:
        raise AssertionError(f"the resumed worker took none: {_serving(server, workers)}")
    _close(server, workers, socks)
    assert server.stop(signal.SIGTERM) == 0


def test_kill_9_of_the_supervisor_leaves_no_worker(server: Server) -> None:
    server.start(timeout=120)
    everything = server.children()
    assert len(_workers(server)) == 2
    server.stop(signal.SIGKILL)
    # Workers and embedded servers all have a parent-death signal.
    assert _gone(everything, 30), [p.cmdline() for p in everything if p.is_running()]


def test_workers_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import load_settings
    from app.runtime.embedded import EmbeddedRuntime

    monkeypatch.delenv("XBUS_WORKERS", raising=False)
    assert load_settings(None).serve_workers == len(os.sched_getaffinity(0))
    monkeypatch.setenv("XBUS_WORKERS", "3")
    settings = load_settings(None, db_pool_size=4, db_max_overflow=1, db_hot_pool_size=2)
    assert settings.serve_workers == 3
    # The embedded PostgreSQL has room for every worker's pools and overflow.
    assert EmbeddedRuntime(settings).connections_needed() == 3 * (4 + 1 + 2) + 20
    config = tmp_path / "xbus.yaml"
    config.write_text("workers: 2\n")
    monkeypatch.delenv("XBUS_WORKERS")
    assert load_settings(config).serve_workers == 2
    with pytest.raises(ValueError, match="workers"):
        load_settings(None, workers=0)
