"""xbusd's CPU per request, endpoint by endpoint, on a real server.

    uv run python -m bench.request_cpu [--repeat R] [--workers W]

Starts PostgreSQL and nats-server from the embedded packages and `xbusd serve` (one worker
unless --workers), sets up an emitter and a consumer, then sends R requests of each kind
one after the other with the raw HTTP/1.1 client (no concurrency: no queueing, no lock
waits) and reads xbusd's CPU time (all its processes) before and after each kind:

- `GET /healthz`: the floor (uvicorn, FastAPI, the middlewares, no database);
- `GET /api/v1/whoami`: + the API key (cached);
- `POST .../output`: an emission (stored and routed, one statement);
- `GET .../requests` (a request is due): a lease, with its envelope inline;
- `POST /requests/{id}/state`: success, which ends the process;
- `GET .../requests` (nothing due, no wait): a poll that finds nothing.

The background duties run meanwhile: an idle phase of the same length first gives their
share, which the "-idle" column takes off. Everything on 127.0.0.1; servers stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.http_bus import (
    activate_hop,
    bench_emitter,
    cpu_seconds,
    embedded_xbusd,
    make_body,
    new_client,
    post_json,
)
from bench.rawhttp import RawClient


async def measure(
    pid: int,
    exclude: frozenset[int],
    repeat: int,
    send: Callable[[int], Awaitable[Any]],
) -> tuple[float, float]:
    """(CPU ms of xbusd per request, wall ms per request) for `repeat` calls of `send`."""
    before = cpu_seconds(pid, exclude)
    started = time.perf_counter()
    for n in range(repeat):
        await send(n)
    wall = time.perf_counter() - started
    used = cpu_seconds(pid, exclude) - before
    return 1000 * used / repeat, 1000 * wall / repeat


async def run(
    base_url: str, admin_key: str, pid: int, exclude: frozenset[int], repeat: int
) -> list[tuple[str, float, float]]:
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, "cpu")
        consumer = "bench-cpu-consumer"
        body = {"name": consumer, "kind": "consumer", "account_id": account["id"]}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, "cpu", emitter, {"actors": [consumer]})
    key = account["api_key"]
    rows: list[tuple[str, float, float]] = []
    async with RawClient(base_url, {"authorization": f"Bearer {key}"}) as http:
        json_type = {"content-type": "application/json"}
        output = f"/api/v1/actors/{emitter}/output"
        poll = f"/api/v1/actors/{consumer}/requests"
        # Warm up every path (connections, prepared statements, caches).
        for n in range(20):
            await http.post(output, make_body(n), json_type)
            leased = (await http.get(poll)).json()
            await http.post_json(
                f"/api/v1/requests/{leased['request_id']}/state", {"status": "success"}
            )

        async def idle(_: int) -> None:
            await asyncio.sleep(0.002)

        async def healthz(_: int) -> None:
            await http.get("/healthz")

        async def whoami(_: int) -> None:
            await http.get("/api/v1/whoami")

        async def emit(n: int) -> None:
            r = await http.post(output, make_body(n), json_type)
            assert r.status == 202, r.text

        ids: list[str] = []

        async def lease(_: int) -> None:
            r = await http.get(poll)
            assert r.status == 200, r.text
            ids.append(r.json()["request_id"])

        async def state(n: int) -> None:
            r = await http.post_json(f"/api/v1/requests/{ids[n]}/state", {"status": "success"})
            assert r.status == 200, r.text

        async def empty_poll(_: int) -> None:
            r = await http.get(poll)
            assert r.status == 204, r.text

        idle_cpu, idle_wall = await measure(pid, exclude, repeat, idle)
        idle_rate = idle_cpu / idle_wall  # CPU ms of the duties per ms of wall time
        for name, send in [
            ("GET /healthz", healthz),
            ("GET /api/v1/whoami", whoami),
            ("POST .../output", emit),
            ("GET .../requests (leased)", lease),
            ("POST /requests/{id}/state", state),
            ("GET .../requests (nothing due)", empty_poll),
        ]:
            cpu, wall = await measure(pid, exclude, repeat, send)
            rows.append((name, cpu, max(0.0, cpu - idle_rate * wall)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    parser.add_argument("--repeat", "-r", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    with embedded_xbusd(args.workers) as (xbusd, pids):
        exclude = frozenset(pid for pid in pids.values() if pid is not None)
        rows = asyncio.run(
            run(xbusd.base_url, xbusd.admin_key, xbusd.proc.pid, exclude, args.repeat)
        )
    print(
        f"bench.request_cpu: {args.repeat} sequential requests of each kind, workers={args.workers}"
    )
    print(f"{'request':34} {'xbusd CPU ms':>13} {'-idle':>8}")
    for name, cpu, net in rows:
        print(f"{name:34} {cpu:13.3f} {net:8.3f}")
    print(json.dumps({name: round(net, 3) for name, _, net in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
