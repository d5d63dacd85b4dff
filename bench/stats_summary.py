"""The process summary, `GET /api/v1/stats/processes`, on a long history.

    uv run python -m bench.stats_summary [--history N] [--repeat R] [--against REV]

Starts PostgreSQL and nats-server from the embedded packages and `xbusd serve` (one worker),
sets up an emitter, a consumer and an active pipeline between them, runs 20 processes to
their end (emit, lease, success), then copies a done one N times by SQL (`bench.seed`, as
`bench.http_bus --history` does: everything of it, 1 s apart, then ANALYZE) and times R
requests of each kind, one after the other (no concurrency):

- the whole summary (no filter);
- `?emitter=<the emitter>` and `?status=done`: filters the summary applies to its counts;
- `?created_after=<1 hour ago>`: a created range, counted from the rows of that range
  (3,600 of the copies and the 20).

Prints each kind's latency as the client sees it (p50 and p95 of the request), and the CPU
of xbusd and of PostgreSQL per request. The answer is checked once (its total is N + 20).

`--against REV` runs a second xbusd from git revision REV (checked out in a temporary
worktree, as `bench.request_cpu --against` does) beside this one, on a database of its own
on the same PostgreSQL, set up and seeded the same way (N more copies: the seeding takes
twice as long), and sends each kind of request to the two in alternating blocks, so that
both see the same drift of a shared machine. Everything on 127.0.0.1; servers stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
from sqlalchemy.engine import make_url

from bench import seed
from bench.http_bus import (
    JSON_HEADERS,
    Xbusd,
    activate_hop,
    asyncpg_dsn,
    bench_emitter,
    cpu_seconds,
    embedded_xbusd,
    make_body,
    new_client,
    post_json,
    say,
)
from bench.rawhttp import RawClient
from bench.request_cpu import worktree

BLOCK = 10  # requests sent to one server before switching to the other
FINISHED = 20  # processes run to their end through the API before the seeding
KINDS = ["whole summary", "?emitter=", "?status=done", "?created_after=1 h ago"]


@dataclass
class Server:
    """One xbusd under measure: its client, the path of each kind, what was measured."""

    xbusd: Xbusd
    exclude: frozenset[int]
    http: RawClient
    paths: dict[str, str]
    seeded: dict[str, Any]
    latency: dict[str, list[float]] = field(default_factory=dict)  # seconds per request
    cpu: dict[str, float] = field(default_factory=dict)  # xbusd CPU seconds per kind
    postgres: dict[str, float] = field(default_factory=dict)  # PostgreSQL CPU seconds


async def prepare(xbusd: Xbusd, exclude: frozenset[int], history: int, label: str) -> Server:
    async with new_client(xbusd.base_url, {"Authorization": f"Bearer {xbusd.admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, "stats")
        consumer = "bench-stats-consumer"
        body = {"name": consumer, "kind": "consumer", "account_id": account["id"]}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, "stats", emitter, {"actors": [consumer]})
    output = f"/api/v1/actors/{emitter}/output"
    poll = f"/api/v1/actors/{consumer}/requests"
    async with RawClient(xbusd.base_url, {"authorization": f"Bearer {account['api_key']}"}) as c:
        for n in range(FINISHED):
            emitted = await c.post(output, make_body(n), JSON_HEADERS)
            assert emitted.status == 202, emitted.text
            leased = (await c.get(poll)).json()
            answer = await c.post_json(
                f"/api/v1/requests/{leased['request_id']}/state", {"status": "success"}
            )
            assert answer.status == 200, answer.text
    template = uuid.UUID(emitted.json()["process_id"])
    conn = await asyncpg.connect(
        asyncpg_dsn(xbusd.database_url, make_url(xbusd.database_url).database or "xbus")
    )
    try:
        say(f"{label}: seeding {history:,} done processes ...")
        seeded = await seed.seed(conn, template, history, label, say) if history else {}
    finally:
        await conn.close()
    since = quote((datetime.now(UTC) - timedelta(hours=1)).isoformat())
    summary = "/api/v1/stats/processes"
    queries = ["", f"?emitter={emitter}", "?status=done", f"?created_after={since}"]
    paths = {kind: summary + query for kind, query in zip(KINDS, queries, strict=True)}
    http = RawClient(xbusd.base_url, {"authorization": f"Bearer {xbusd.admin_key}"}, 300)
    whole = await http.get(summary)
    assert whole.status == 200, whole.text
    assert whole.json()["total"] == history + FINISHED, whole.json()
    return Server(xbusd, exclude, http, paths, seeded)


async def measure(servers: list[Server], kind: str, repeat: int, postgres: int | None) -> None:
    """`repeat` requests of `kind` to each server, in alternating blocks."""
    for server in servers:
        server.latency[kind], server.cpu[kind], server.postgres[kind] = [], 0.0, 0.0
    for start in range(0, repeat, BLOCK):
        for server in servers:
            # A fresh connection, opened by an untimed request (uvicorn closes idle ones).
            await server.http.close()
            assert (await server.http.get(server.paths[kind])).status == 200
            before = cpu_seconds(server.xbusd.proc.pid, server.exclude)
            pg_before = cpu_seconds(postgres)
            for _ in range(start, min(start + BLOCK, repeat)):
                began = time.perf_counter()
                r = await server.http.get(server.paths[kind])
                server.latency[kind].append(time.perf_counter() - began)
                assert r.status == 200, r.text
            server.cpu[kind] += cpu_seconds(server.xbusd.proc.pid, server.exclude) - before
            server.postgres[kind] += cpu_seconds(postgres) - pg_before


def figures(server: Server) -> dict[str, dict[str, float]]:
    out = {}
    for kind in KINDS:
        ms = sorted(1000 * s for s in server.latency[kind])
        out[kind] = {
            "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
            "xbusd_cpu_ms": round(1000 * server.cpu[kind] / len(ms), 2),
            "postgres_cpu_ms": round(1000 * server.postgres[kind] / len(ms), 2),
        }
    return out


async def run(
    xbusds: list[Xbusd],
    exclude: frozenset[int],
    history: int,
    repeat: int,
    postgres: int | None,
    labels: list[str],
) -> tuple[list[dict[str, dict[str, float]]], list[dict[str, Any]]]:
    servers = [
        await prepare(xbusd, exclude, history, label)
        for xbusd, label in zip(xbusds, labels, strict=True)
    ]
    # The seeding's deltas are folded by the duty (every 5 s) before the measure.
    await asyncio.sleep(6)
    try:
        for kind in KINDS:
            await measure(servers, kind, repeat, postgres)
    finally:
        for server in servers:
            await server.http.close()
    return [figures(server) for server in servers], [server.seeded for server in servers]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stats_summary", description=__doc__)
    parser.add_argument("--history", "-n", type=int, default=200_000, help="copies [200000]")
    parser.add_argument("--repeat", "-r", type=int, default=40, help="requests per kind [40]")
    parser.add_argument("--against", metavar="REV", help="compare with this git revision")
    parser.add_argument("--json", type=argparse.FileType("w"), help="also write the figures")
    args = parser.parse_args(argv)
    if args.history < 0 or args.repeat < 1:
        parser.error("--history must not be negative, --repeat must be positive")
    labels = ["this tree", *([args.against[:12]] if args.against else [])]
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(worktree(args.against)) if args.against else None
        xbusds, pids = stack.enter_context(embedded_xbusd(1, other))
        exclude = frozenset(pid for pid in pids.values() if pid is not None)
        rows, seeded = asyncio.run(
            run(xbusds, exclude, args.history, args.repeat, pids["postgres"], labels)
        )
    print(
        f"bench.stats_summary: GET /api/v1/stats/processes over {args.history + FINISHED:,} "
        f"processes, {args.repeat} sequential requests of each kind"
    )
    print(f"{'kind':26} {'tree':>12} {'p50 ms':>9} {'p95 ms':>9} {'xbusd CPU':>10} {'PG CPU':>9}")
    for kind in KINDS:
        for label, row in zip(labels, rows, strict=True):
            f = row[kind]
            print(
                f"{kind:26} {label:>12} {f['p50_ms']:9.2f} {f['p95_ms']:9.2f} "
                f"{f['xbusd_cpu_ms']:10.2f} {f['postgres_cpu_ms']:9.2f}"
            )
    result = {
        "history": args.history,
        "repeat": args.repeat,
        "trees": dict(zip(labels, rows, strict=True)),
        "seeded": dict(zip(labels, seeded, strict=True)),
    }
    print(json.dumps(result))
    if args.json:
        json.dump(result, args.json, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
