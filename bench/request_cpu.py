"""xbusd's CPU per request, endpoint by endpoint, on a real server.

    uv run python -m bench.request_cpu [--repeat R] [--workers W] [--against REV] [--profile DIR]

Starts PostgreSQL and nats-server from the embedded packages and `xbusd serve` (one worker
unless --workers), sets up an emitter and a consumer, then sends R requests of each kind
one after the other with the raw HTTP/1.1 client (no concurrency: no queueing, no lock
waits) and reads xbusd's CPU time (all its processes) before and after each block:

- `GET /healthz`: the floor (uvicorn, FastAPI, the middlewares, no database);
- `GET /api/v1/whoami`: + the API key (cached);
- `POST .../output`: an emission (stored and routed, one statement);
- `GET .../requests` (a request is due): a lease, with its envelope inline;
- `POST /requests/{id}/state`: success, which ends the process;
- `GET .../requests` (nothing due, no wait): a poll that finds nothing;
- `POST .../output` from 16 clients at once: emissions under concurrency (group commit),
  per envelope.

PostgreSQL's CPU (all its processes) is read around each block too and printed per request
of each kind below xbusd's: what each request costs the database server. The background
duties run meanwhile: an idle phase of the same length first gives their share (xbusd's and
PostgreSQL's), which every figure has taken off.

`--against REV` compares this tree with git revision REV (checked out in a temporary
worktree): a second xbusd from REV runs beside this one, on the same PostgreSQL (a database
of its own) and nats-server, set up the same way, and each kind of request goes to the two
servers in alternating blocks of 50. CPU time per request on a shared or throttled
machine drifts by ±30% from one minute to the next; alternating blocks puts both servers
under the same drift, so their difference is the code's. Everything on 127.0.0.1; servers
stopped by pid.

`--profile DIR` samples this tree's xbusd with py-spy (`pip install py-spy`; it must be on
the PATH) during each kind, one file of collapsed stacks per kind in DIR: where one kind of
request spends its CPU, without the others mixed in. With `--native`, the C frames too
(uvloop, asyncpg's protocol, libc): slower (py-spy pauses xbusd at each sample), but it
shows what the Python frames hide.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.http_bus import (
    ROOT,
    Xbusd,
    activate_hop,
    bench_emitter,
    cpu_seconds,
    embedded_xbusd,
    make_body,
    new_client,
    post_json,
)
from bench.rawhttp import RawClient

BLOCK = 50  # requests sent to one server before switching to the other
CONCURRENT = 16  # emitters of the concurrent kind
CONCURRENT_KIND = f"POST .../output x{CONCURRENT} at once"
PG_LABEL = "PostgreSQL: "  # the figures of PostgreSQL's CPU, kind by kind
KINDS = [
    "GET /healthz",
    "GET /api/v1/whoami",
    "POST .../output",
    "GET .../requests (leased)",
    "POST /requests/{id}/state",
    "GET .../requests (nothing due)",
    CONCURRENT_KIND,
]

Send = Callable[[int], Awaitable[Any]]


@dataclass
class Server:
    """One xbusd under measure: its pid, its client and the requests of each kind."""

    pid: int
    exclude: frozenset[int]
    http: RawClient
    sends: dict[str, Send] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per kind
    wall: dict[str, float] = field(default_factory=dict)
    postgres: dict[str, float] = field(default_factory=dict)  # its CPU seconds per kind
    emitters: list[RawClient] = field(default_factory=list)

    async def hang_up(self) -> None:
        """Close the keep-alive connections (uvicorn closes one idle for 5 s: a server's
        connections wait while the other server takes its block, longer than that on a busy
        machine); the next request opens anew."""
        for client in (self.http, *self.emitters):
            await client.close()


async def setup(xbusd: Xbusd, exclude: frozenset[int], stack: contextlib.AsyncExitStack) -> Server:
    async with new_client(xbusd.base_url, {"Authorization": f"Bearer {xbusd.admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, "cpu")
        consumer = "bench-cpu-consumer"
        body = {"name": consumer, "kind": "consumer", "account_id": account["id"]}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, "cpu", emitter, {"actors": [consumer]})
    headers = {"authorization": f"Bearer {account['api_key']}"}
    http = await stack.enter_async_context(RawClient(xbusd.base_url, headers))
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
    ids: list[str] = []

    async def idle(_: int) -> None:
        await asyncio.sleep(0.002)

    async def healthz(_: int) -> None:
        await http.get("/healthz")

    async def whoami(_: int) -> None:
        await http.get("/api/v1/whoami")

    async def emit(n: int) -> None:
        r = await http.post(output, make_body(n), json_type)
        assert r.status == 202, r.text

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

    emitters = [
        await stack.enter_async_context(RawClient(xbusd.base_url, headers))
        for _ in range(CONCURRENT)
    ]

    async def emit_at_once(n: int) -> None:
        """CONCURRENT envelopes at once (one "request" of this kind: divided below)."""
        answers = await asyncio.gather(
            *(client.post(output, make_body(n), json_type) for client in emitters)
        )
        assert all(r.status == 202 for r in answers), [r.text for r in answers]

    sends = [idle, healthz, whoami, emit, lease, state, empty_poll, emit_at_once]
    kinds: dict[str, Send] = dict(zip(["idle", *KINDS], sends, strict=True))
    return Server(xbusd.proc.pid, exclude, http, kinds, emitters=emitters)


async def measure(servers: list[Server], kind: str, repeat: int, postgres: int | None) -> None:
    """`repeat` requests of `kind` to each server, in alternating blocks."""
    for server in servers:
        server.cpu[kind] = server.wall[kind] = server.postgres[kind] = 0.0
    for start in range(0, repeat, BLOCK):
        for server in servers:
            send = server.sends[kind]
            await server.hang_up()
            before = cpu_seconds(server.pid, server.exclude)
            pg_before = cpu_seconds(postgres)
            began = time.perf_counter()
            for n in range(start, min(start + BLOCK, repeat)):
                await send(n)
            server.wall[kind] += time.perf_counter() - began
            server.cpu[kind] += cpu_seconds(server.pid, server.exclude) - before
            server.postgres[kind] += cpu_seconds(postgres) - pg_before


def per_request(server: Server, repeat: int) -> dict[str, float]:
    """CPU ms per request (per envelope for the concurrent kind) of each kind, xbusd's then
    PostgreSQL's, the duties' idle rates taken off; and the concurrent kind's envelopes/s."""
    figures: dict[str, float] = {}
    for label, seconds in (("", server.cpu), (PG_LABEL, server.postgres)):
        idle_rate = seconds["idle"] / server.wall["idle"]  # CPU s of the duties per wall s
        for kind in KINDS:
            spent = max(0.0, seconds[kind] - idle_rate * server.wall[kind]) / repeat
            per = CONCURRENT if kind == CONCURRENT_KIND else 1
            figures[label + kind] = round(1000 * spent / per, 3)
        if not label:
            envelopes = repeat * CONCURRENT
            figures["  envelopes/s at once"] = round(envelopes / server.wall[CONCURRENT_KIND], 1)
    return figures


async def run(
    xbusds: list[Xbusd],
    exclude: frozenset[int],
    repeat: int,
    postgres: int | None,
    profile: Path | None = None,
    native: bool = False,
) -> list[dict[str, float]]:
    async with contextlib.AsyncExitStack() as stack:
        servers = [await setup(xbusd, exclude, stack) for xbusd in xbusds]
        await measure(servers, "idle", repeat, postgres)
        for kind in KINDS:
            with profiled(servers[0].pid, kind, profile, native):
                await measure(servers, kind, repeat, postgres)
        return [per_request(server, repeat) for server in servers]


@contextlib.contextmanager
def profiled(pid: int, kind: str, directory: Path | None, native: bool) -> Iterator[None]:
    """With `directory`, py-spy samples `pid` while the block runs, into one file per kind
    (py-spy's raw format: collapsed stacks, one per line, for flame graphs or grep); with
    `native`, the C frames too (uvloop, asyncpg's protocol, httptools, ssl), which py-spy
    otherwise folds into the Python frame that called them."""
    if directory is None:
        yield
        return
    name = "".join(c if c.isalnum() else "-" for c in kind).strip("-")
    out = directory / f"{name}.txt"
    spy = subprocess.Popen(
        [
            *("py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw"),
            *("--subprocesses", "--output", str(out)),
            # Native frames need the process paused at each sample (slower, more exact).
            *(["--native"] if native else ["--nonblocking"]),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """Git revision `rev` checked out in a temporary directory (a detached worktree), its
    Python compiled as `scripts/_env.sh` compiles this tree's: with PYTHONDONTWRITEBYTECODE
    set (as here and on CI machines), every process started from the other tree would
    otherwise compile its imports from source (seconds of CPU each on 2 cores), which this
    tree's do not."""
    path = Path(tempfile.mkdtemp(prefix="xbus-against-")) / "tree"
    try:
        subprocess.run(
            ["git", "worktree", "add", "--detach", "--quiet", str(path), rev], cwd=ROOT, check=True
        )
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", "app", "bench"],
            cwd=path,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        yield path
    finally:
        # Whatever failed on the way (a bad revision, a file that does not compile): nothing
        # left in /tmp nor registered in .git/worktrees.
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)],
            cwd=ROOT,
            check=False,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(path.parent, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_cpu", description=__doc__)
    parser.add_argument("--repeat", "-r", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--against", metavar="REV", help="compare with this git revision")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="sample this tree's xbusd with py-spy (on the PATH) during each kind, into DIR",
    )
    parser.add_argument(
        "--native", action="store_true", help="with --profile: the C frames too (py-spy --native)"
    )
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(worktree(args.against)) if args.against else None
        xbusds, pids = stack.enter_context(embedded_xbusd(args.workers, other))
        exclude = frozenset(pid for pid in pids.values() if pid is not None)
        rows = asyncio.run(
            run(xbusds, exclude, args.repeat, pids["postgres"], args.profile, args.native)
        )
    print(
        f"bench.request_cpu: {args.repeat} sequential requests of each kind, "
        f"workers={args.workers}; xbusd's then PostgreSQL's CPU ms per request, the duties' "
        "idle share taken off"
    )
    if args.against:
        print(f"{'request':42} {'this tree':>10} {args.against[:12]:>12} {'change':>8}")
        for kind in rows[0]:
            mine, theirs = rows[0][kind], rows[1][kind]
            change = f"{100 * (mine - theirs) / theirs:+.0f}%" if theirs else "n/a"
            print(f"{kind:42} {mine:10.3f} {theirs:12.3f} {change:>8}")
        print(json.dumps({"this": rows[0], args.against: rows[1]}))
    else:
        print(f"{'request':42} {'xbusd CPU ms':>13}")
        for kind, value in rows[0].items():
            print(f"{kind:42} {value:13.3f}")
        print(json.dumps(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
