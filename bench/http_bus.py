"""End-to-end HTTP throughput of the bus against a bare FastAPI + asyncpg baseline.

    uv run python -m bench.http_bus [--envelopes N] [--concurrency C] [--consumers K]
                                    [--seconds-max S] [--rate R] [--workers X]
                                    [--history H] [--backlog M] [--batch B | --next]
                                    [--json FILE]

One command, everything local (127.0.0.1 and Unix sockets only):

1. starts PostgreSQL and nats-server from the embedded packages in a temporary data dir
   (`app.runtime.EmbeddedRuntime`);
2. baseline: serves `bench.baseline_app` (one uvicorn worker; POST /ingest = one SELECT + one
   INSERT through an asyncpg pool of 10, in a scratch database of the same PostgreSQL) and
   drives it for --baseline-seconds with C raw HTTP/1.1 clients (`bench.rawhttp`) posting
   ~300-byte JSON bodies;
3. bus: runs `xbusd serve` (with `--workers X` when given) against the same PostgreSQL and
   nats-server, creates (httpx, setup only) an account, an emitter, K consumers sharing a
   role and an active pipeline emitter -> consumer (role, spread); with --history/--backlog,
   seeds the database by SQL (`bench.seed`); then C emitter clients POST N envelopes while K
   consumer loops long-poll their actor's requests and report success (with --batch B, up to
   B requests per lease, `?max=B`, answered in one `POST /requests/states`; with --next, each
   success posted with `?next=1` and the request it returns taken at once, a poll only when
   none came back), all on the same raw client as the baseline; the round ends when every
   accepted envelope's process is done, or at --seconds-max;
4. prints requests/s and latencies of both, the ratios bus/baseline, and the CPU used by
   each process (xbusd with all its descendants; PostgreSQL and nats-server apart).

The load generator runs in this process, on the same cores as the servers.
Servers are stopped by pid at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import psutil
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from app.config import Settings, load_settings
from app.runtime import children
from app.runtime.embedded import EmbeddedRuntime
from bench import seed
from bench.rawhttp import TRANSPORT_ERRORS, RawClient

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BODY_BYTES = 300
SCRATCH_DB = "bench_scratch"
EVENT_TYPE = "order.created"
ROLE = "bench-sink"
HTTP_TIMEOUT = 30.0
SUCCESS = b'{"status":"success"}'
JSON_HEADERS = {"content-type": "application/json"}

T = TypeVar("T")


# ---------------------------------------------------------------------------- options


@dataclasses.dataclass(frozen=True)
class Options:
    envelopes: int
    concurrency: int
    consumers: int
    seconds_max: float
    baseline_seconds: float
    warmup: int
    poll_wait: float
    rate: float | None
    json_file: Path | None
    keep: bool
    workers: int | None = None
    history: int = 0
    backlog: int = 0
    batch: int = 1
    next: bool = False


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_bus",
        description="Bus HTTP throughput (emit -> poll -> success) against a FastAPI+asyncpg "
        "baseline, on embedded PostgreSQL and nats-server.",
    )
    p.add_argument(
        "--envelopes",
        "-n",
        type=int,
        default=1000,
        help="envelopes to emit [1000]",
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=int,
        default=16,
        help="concurrent emitter / baseline clients [16]",
    )
    p.add_argument(
        "--consumers", "-k", type=int, default=4, help="consumer actors, one polling loop each [4]"
    )
    p.add_argument(
        "--seconds-max",
        type=float,
        default=120.0,
        help="bound of the measured bus round (emission and drain) in seconds [120]",
    )
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=10.0,
        help="length of each measured baseline run in seconds [10]",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=100,
        help="unmeasured requests/envelopes before each measured run [100]",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="emit at most this many envelopes/s (open loop; latency counted from the "
        "scheduled send time) [no limit: C clients back to back]",
    )
    p.add_argument("--poll-wait", type=float, default=5.0, help="consumers' ?wait= (s) [5]")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="each consumer leases up to this many requests at once (?max=) and reports "
        "them in one POST /requests/states [1: one lease, one POST .../state per request]",
    )
    p.add_argument(
        "--next",
        action="store_true",
        help="each consumer reports with POST .../state?next=1 and takes the request it "
        "returns, polling only when none came back (one at a time only)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run `xbusd serve --workers N` [not passed: xbusd's default]",
    )
    p.add_argument(
        "--history",
        type=int,
        default=0,
        help="seed this many done processes by SQL before the measured round [0]",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="seed this many running processes, each with a request pending on a consumer "
        "nobody polls, before the measured round [0]",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dir and logs")
    a = p.parse_args(argv)
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be at least 1")
    if a.history < 0 or a.backlog < 0:
        p.error("--history and --backlog must not be negative")
    if not 1 <= a.batch <= 1000:
        p.error("--batch must be between 1 and 1000")
    if a.next and a.batch > 1:
        p.error("--next is for consumers one request at a time (--batch 1)")
    for name in ("envelopes", "concurrency", "consumers"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.rate is not None and a.rate <= 0:
        p.error("--rate must be positive")
    if a.seconds_max <= 0 or a.baseline_seconds <= 0 or a.warmup < 0 or a.poll_wait < 0:
        p.error(
            "--seconds-max and --baseline-seconds must be positive, --warmup and "
            "--poll-wait not negative"
        )
    return Options(
        envelopes=a.envelopes,
        concurrency=a.concurrency,
        consumers=a.consumers,
        seconds_max=a.seconds_max,
        baseline_seconds=a.baseline_seconds,
        warmup=a.warmup,
        poll_wait=a.poll_wait,
        rate=a.rate,
        json_file=a.json,
        keep=a.keep,
        workers=a.workers,
        history=a.history,
        backlog=a.backlog,
        batch=a.batch,
        next=a.next,
    )


# ---------------------------------------------------------------------------- small helpers


def make_body(seq: int) -> bytes:
    """A ~300-byte JSON envelope, valid for the bus and stored as jsonb by the baseline."""
    item: dict[str, Any] = {
        "id": seq,
        "sku": f"SKU-{seq % 100000:06d}",
        "qty": 1 + seq % 7,
        "price": "19.90",
        "customer": f"customer-{seq % 977:04d}",
        "note": "",
    }
    envelope = {"events": [{"type": EVENT_TYPE, "encoding": "json", "items": [item]}]}
    item["note"] = "x" * max(0, BODY_BYTES - len(json.dumps(envelope, separators=(",", ":"))))
    return json.dumps(envelope, separators=(",", ":")).encode()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def latency_ms(values: list[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "p50": ms(percentile(values, 50)),
        "p95": ms(percentile(values, 95)),
        "p99": ms(percentile(values, 99)),
        "max": ms(max(values) if values else None),
    }


def per_item(cpu_s: float, count: int) -> float | None:
    """CPU ms per item."""
    return round(cpu_s * 1000 / count, 2) if count else None


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def new_client(base_url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers or {},
        timeout=HTTP_TIMEOUT,
        limits=httpx.Limits(max_connections=2, max_keepalive_connections=2),
        trust_env=False,
    )


LOADGEN = -1  # this process, without its children (the servers)


def cpu_seconds(pid: int | None, exclude: frozenset[int] = frozenset()) -> float:
    """CPU time of a process, its live descendants (all of them: uvicorn workers with
    `--workers`, anything they start) and the children it has reaped; descendants in
    `exclude` (PostgreSQL, nats-server: counted apart) and theirs are left out."""
    if pid is None:
        return 0.0
    if pid == LOADGEN:
        own = psutil.Process().cpu_times()
        return own.user + own.system
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        skip = set(exclude)
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid in skip or child.ppid() in skip:
                    skip.add(child.pid)
                    continue
                c = child.cpu_times()
                total += c.user + c.system
        return total
    except psutil.Error:
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent on anything but idling, since boot."""
    t = psutil.cpu_times()
    return (
        sum(t)
        - t.idle
        - getattr(t, "iowait", 0.0)
        - getattr(t, "guest", 0.0)
        - getattr(t, "guest_nice", 0.0)
    )


def worker_seconds(pid: int | None, exclude: frozenset[int] = frozenset()) -> dict[int, float]:
    """CPU time of each of xbusd's uvicorn workers (its direct children but multiprocessing's
    resource tracker, each with its own descendants), PostgreSQL and nats-server left out."""
    if pid is None or pid == LOADGEN:
        return {}
    workers = {}
    try:
        kids = psutil.Process(pid).children()
    except psutil.Error:
        return {}
    for kid in kids:
        with contextlib.suppress(psutil.Error):
            if kid.pid not in exclude and "resource_tracker" not in " ".join(kid.cmdline()):
                workers[kid.pid] = cpu_seconds(kid.pid, exclude)
    return workers


def uneven(workers: list[float]) -> bool:
    """Whether one worker did most of the work: with a few long-lived connections, one
    worker may accept them all (it takes every connection waiting when it wakes up), and the
    others stand idle."""
    return len(workers) > 1 and workers[0] > 0.75 * sum(workers)


class CpuMeter:
    """CPU seconds used by named processes between `start()` and `stop()`, and by everything
    else on the machine ("others": other people's work disturbs the figures). `workers`:
    what each of the server's workers used, the busiest first."""

    def __init__(
        self, pids: dict[str, int | None], exclude: dict[str, int | None] | None = None
    ) -> None:
        self.pids = pids
        self.exclude = frozenset(p for p in (exclude or {}).values() if p is not None)
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}
        self.machine_before = 0.0
        self.wall_before = 0.0
        self.workers_before: dict[int, float] = {}
        self.workers: list[float] = []

    def _cpu(self, name: str, pid: int | None) -> float:
        return cpu_seconds(pid, self.exclude if name == "server" else frozenset())

    def start(self) -> None:
        self.before = {name: self._cpu(name, pid) for name, pid in self.pids.items()}
        self.workers_before = worker_seconds(self.pids.get("server"), self.exclude)
        self.machine_before = machine_busy_seconds()
        self.wall_before = time.perf_counter()

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(self._cpu(name, pid) - self.before[name], 2)
            for name, pid in self.pids.items()
        }
        after = worker_seconds(self.pids.get("server"), self.exclude)
        # A worker replaced meanwhile counts from its start; one that died, not at all.
        used = [after[pid] - self.workers_before.get(pid, 0.0) for pid in after]
        self.workers = sorted((round(max(0.0, s), 2) for s in used), reverse=True)
        busy = machine_busy_seconds() - self.machine_before
        self.used["others"] = round(max(0.0, busy - sum(self.used.values())), 2)
        self.used["wall"] = round(time.perf_counter() - self.wall_before, 2)
        return self.used


# ---------------------------------------------------------------------------- child servers


class Children:
    """Servers this run started; all stopped by pid at the end, whatever happens."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, args: list[str], log_file: Path, env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        proc = children.spawn(
            args, log_file=log_file, death_signal=signal.SIGTERM, env=env, cwd=cwd
        )
        self.procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        for i, (name, p) in enumerate(self.procs):
            if p is proc:
                children.stop(p, signal.SIGTERM, 20, name)
                del self.procs[i]
                return

    def stop_all(self) -> None:
        while self.procs:
            name, p = self.procs.pop()
            with contextlib.suppress(Exception):
                children.stop(p, signal.SIGTERM, 20, name)


def wait_ready(url: str, proc: subprocess.Popen[bytes], log_file: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{url}: server exited with {proc.returncode}:\n{children.tail(log_file, 40)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{children.tail(log_file, 40)}")


# ---------------------------------------------------------------------------- load generation


@dataclasses.dataclass(slots=True)
class Sample:
    start: float
    end: float
    status: int  # 0: transport error
    content: bytes


@dataclasses.dataclass
class LoadResult:
    samples: list[Sample]
    errors: Counter[str]
    first_start: float
    last_end: float

    @property
    def wall(self) -> float:
        return max(0.0, self.last_end - self.first_start)

    def statuses(self) -> dict[str, int]:
        return dict(sorted(Counter(str(s.status) for s in self.samples).items()))


async def post_load(
    base_url: str,
    path: str,
    headers: dict[str, str],
    n: int | None,
    concurrency: int,
    deadline: float,
    on_sample: Callable[[Sample], None] | None = None,
    rate: float | None = None,
) -> LoadResult:
    """`concurrency` clients, each with its own connection, POST ~300-byte bodies to `path`:
    `n` in total (None: no limit) or until `deadline` (a `time.perf_counter()` value).
    With `rate`, request i is due at i / rate s from the start and its latency counts from
    then (no coordinated omission)."""
    next_seq = 0
    samples: list[Sample] = []
    errors: Counter[str] = Counter()
    bodies = [make_body(i) for i in range(1000)]
    headers = {**headers, "content-type": "application/json"}

    t0 = time.perf_counter()

    async def worker() -> None:
        nonlocal next_seq
        async with RawClient(base_url, headers, HTTP_TIMEOUT) as poster:
            while (n is None or next_seq < n) and time.perf_counter() < deadline:
                seq = next_seq
                next_seq += 1
                start = time.perf_counter()
                if rate is not None:
                    due = t0 + seq / rate
                    if due > deadline:
                        break
                    if due > start:
                        await asyncio.sleep(due - start)
                    start = due
                try:
                    r = await poster.post(path, bodies[seq % len(bodies)])
                    sample = Sample(start, time.perf_counter(), r.status, r.body)
                except TRANSPORT_ERRORS as exc:
                    errors[type(exc).__name__] += 1
                    sample = Sample(start, time.perf_counter(), 0, b"")
                samples.append(sample)
                if on_sample is not None:
                    on_sample(sample)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    first = min((s.start for s in samples), default=0.0)
    last = max((s.end for s in samples), default=0.0)
    return LoadResult(samples, errors, first, last)


# ---------------------------------------------------------------------------- baseline


def asyncpg_dsn(database_url: str, database: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def ensure_scratch_db(database_url: str) -> str:
    conn: Any = await asyncpg.connect(asyncpg_dsn(database_url, "postgres"))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", SCRATCH_DB):
            await conn.execute(f'CREATE DATABASE "{SCRATCH_DB}"')
    finally:
        await conn.close()
    return asyncpg_dsn(database_url, SCRATCH_DB)


async def baseline_round(base_url: str, opts: Options, meter: CpuMeter) -> LoadResult:
    if opts.warmup:
        await post_load(
            base_url,
            "/ingest",
            {},
            opts.warmup,
            opts.concurrency,
            time.perf_counter() + opts.baseline_seconds,
        )
    meter.start()
    result = await post_load(
        base_url,
        "/ingest",
        {},
        None,
        opts.concurrency,
        time.perf_counter() + opts.baseline_seconds,
    )
    meter.stop()
    return result


def baseline_figures(result: LoadResult, cpu: dict[str, float]) -> dict[str, Any]:
    ok = [s for s in result.samples if s.status == 202]
    return {
        "requests": len(result.samples),
        "ok": len(ok),
        "statuses": result.statuses(),
        "transport_errors": dict(result.errors),
        "wall_s": round(result.wall, 3),
        "requests_per_s": rate(len(ok), result.wall),
        "latency_ms": latency_ms([s.end - s.start for s in ok]),
        "cpu_s": cpu,
        "server_cpu_ms_per_request": round(cpu["server"] * 1000 / len(ok), 2) if ok else None,
        "loadgen_cpu_ms_per_request": round(cpu["loadgen"] * 1000 / len(ok), 2) if ok else None,
    }


def run_baseline(
    opts: Options, kids: Children, workdir: Path, database_url: str, pids: dict[str, int | None]
) -> dict[str, Any]:
    """The baseline app driven by the raw client, as the bus is: C clients for B seconds."""
    dsn = asyncio.run(ensure_scratch_db(database_url))
    port = children.free_port(HOST)
    log_file = workdir / "baseline.log"
    env = {**os.environ, "BENCH_BASELINE_DSN": dsn}
    args = [
        sys.executable,
        "-m",
        "uvicorn",
        "bench.baseline_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    proc = kids.spawn("baseline", args, log_file, env)
    base_url = f"http://{HOST}:{port}"
    try:
        wait_ready(f"{base_url}/readyz", proc, log_file, 60)
        meter = CpuMeter({"server": proc.pid, **pids, "loadgen": LOADGEN}, exclude=pids)
        result = run_async(baseline_round(base_url, opts, meter))
        figures = baseline_figures(result, meter.used)
    finally:
        kids.stop(proc)
    figures["log_problems"] = log_problems(log_file)
    return figures


# ---------------------------------------------------------------------------- bus


@dataclasses.dataclass
class Topology:
    emitter: str
    emitter_key: str
    consumers: list[str]


async def post_json(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], expect: int = 201
) -> dict[str, Any]:
    r = await client.post(path, json=body)
    if r.status_code != expect:
        raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
    data: dict[str, Any] = r.json()
    return data


async def bench_emitter(admin: httpx.AsyncClient, tag: str) -> tuple[dict[str, Any], str]:
    """A gateway account of its own and its emitter: (the account, the emitter's name)."""
    body = {"name": f"bench-{tag}", "type": "gateway"}
    account = await post_json(admin, "/api/v1/accounts", body)
    emitter = f"bench-emitter-{tag}"
    body = {"name": emitter, "kind": "emitter", "account_id": account["id"]}
    await post_json(admin, "/api/v1/actors", body)
    return account, emitter


async def activate_hop(
    admin: httpx.AsyncClient, tag: str, emitter: str, sink: dict[str, Any]
) -> None:
    """An active pipeline `emitter -> sink` (the consumer node's actors or roles)."""
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [emitter],
                "sourcematch": {"eventtypes": [EVENT_TYPE]},
            },
            {"id": "sink", "type": "consumer", **sink},
        ],
        "edges": ["emit->sink"],
    }
    body = {"name": f"bench-{tag}", "version": "1", "graph": graph}
    pipeline = await post_json(admin, "/api/v1/pipelines", body)
    if not pipeline["valid"]:
        raise RuntimeError(f"pipeline invalid: {pipeline['validation_messages']}")
    await post_json(admin, f"/api/v1/pipelines/{pipeline['id']}/status", {"status": "active"}, 200)


async def create_topology(base_url: str, admin_key: str, consumers: int) -> Topology:
    tag = secrets.token_hex(3)
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, tag)
        names = [f"bench-consumer-{tag}-{i}" for i in range(consumers)]
        for name in names:
            body = {"name": name, "kind": "consumer", "account_id": account["id"]}
            await post_json(admin, "/api/v1/actors", {**body, "roles": [ROLE]})
        await activate_hop(admin, tag, emitter, {"roles": [ROLE]})
    return Topology(emitter, account["api_key"], names)


@dataclasses.dataclass
class ConsumerStats:
    poll_statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    state_statuses: Counter[str] = dataclasses.field(default_factory=Counter)
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    samples: list[str] = dataclasses.field(default_factory=list)
    lease_latency: list[float] = dataclasses.field(default_factory=list)  # GET that got a job
    state_latency: list[float] = dataclasses.field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.samples) < 10:
            self.samples.append(text[:500])


class Consumers:
    """K polling loops, one per consumer actor, alive across the warm-up and the measured
    round. (Cancelling a loop mid long-poll would leave the server to lease the next request
    to a closed connection; that request would wait out its lease.)"""

    def __init__(
        self,
        base_url: str,
        key: str,
        actors: list[str],
        wait: float,
        batch: int = 1,
        chained: bool = False,
    ) -> None:
        self.base_url = base_url
        self.key = key
        self.actors = actors
        self.wait = wait
        self.batch = batch
        self.chained = chained  # --next
        self.stats = ConsumerStats()
        self.done: dict[str, float] = {}  # process id -> success answered, all rounds
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop(actor)) for actor in self.actors]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _loop(self, actor: str) -> None:
        auth = {"Authorization": f"Bearer {self.key}"}
        # The long-poll may last `wait` s: the client's timeout must outlast it.
        async with RawClient(self.base_url, auth, HTTP_TIMEOUT + self.wait) as client:
            path = f"/api/v1/actors/{actor}/requests?wait={self.wait:g}"
            if self.batch > 1:
                path += f"&max={self.batch}"
            while True:
                try:
                    t0 = time.perf_counter()
                    r = await client.get(path)
                    # Look the stats up after each await: a long-poll started in the warm-up
                    # may hand out a job of the measured round.
                    self.stats.poll_statuses[str(r.status)] += 1
                    if r.status == 204:
                        continue
                    if r.status != 200:
                        self.stats.problem(f"GET requests {r.status}: {r.text}")
                        await asyncio.sleep(0.1)
                        continue
                    t1 = time.perf_counter()
                    self.stats.lease_latency.append(t1 - t0)
                    if self.batch > 1:
                        await self._report_all(client, r.json()["requests"], t1)
                        continue
                    job: dict[str, Any] | None = r.json()
                    while job is not None:  # --next: the request each answer returned
                        job, t1 = await self._report_one(client, job, t1)
                except TRANSPORT_ERRORS as exc:
                    self.stats.errors[type(exc).__name__] += 1
                    self.stats.problem(f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.1)

    async def _report_one(
        self, client: RawClient, job: dict[str, Any], leased: float
    ) -> tuple[dict[str, Any] | None, float]:
        """The job's success; with --next, the request its answer leased (or None)."""
        path = f"/api/v1/requests/{job['request_id']}/state"
        s = await client.request(
            "POST", path + "?next=1" if self.chained else path, SUCCESS, JSON_HEADERS
        )
        answered = time.perf_counter()
        self.stats.state_statuses[str(s.status)] += 1
        if s.status != 200:
            self.stats.problem(f"POST state {s.status}: {s.text}")
            return None, answered
        self.stats.state_latency.append(answered - leased)
        self.done[job["process_id"]] = answered
        following = s.json()["next"] if self.chained else None
        if following:
            self.stats.poll_statuses["200 (next)"] += 1
            return following[0], answered
        return None, answered

    async def _report_all(
        self, client: RawClient, jobs: list[dict[str, Any]], leased: float
    ) -> None:
        """--batch: the leased requests' successes in one POST /requests/states; each
        result counted as a POST .../state would be."""
        body = {"states": [{"request_id": job["request_id"], "status": "success"} for job in jobs]}
        s = await client.request(
            "POST", "/api/v1/requests/states", json.dumps(body).encode(), JSON_HEADERS
        )
        answered = time.perf_counter()
        if s.status != 200:
            self.stats.state_statuses[str(s.status)] += len(jobs)
            self.stats.problem(f"POST states {s.status}: {s.text}")
            return
        processes = {job["request_id"]: job["process_id"] for job in jobs}
        for result in s.json()["results"]:
            self.stats.state_statuses[str(result["status"])] += 1
            if result["status"] == 200:
                self.stats.state_latency.append(answered - leased)
                self.done[processes[result["request_id"]]] = answered
            else:
                self.stats.problem(f"POST states item {result['status']}: {result['problem']}")


@dataclasses.dataclass
class BusRun:
    emission: LoadResult
    started: dict[str, float]  # process id -> POST start
    done: dict[str, float]  # process id -> success answered
    stats: ConsumerStats
    timed_out: bool


async def bus_round(
    topo: Topology, consumers: Consumers, opts: Options, n: int, rate: float | None = None
) -> BusRun:
    """Emit `n` envelopes with C clients while the consumers drain them; ends when every
    accepted envelope's process is done or at --seconds-max."""
    deadline = time.perf_counter() + opts.seconds_max
    stats = consumers.stats = ConsumerStats()
    started: dict[str, float] = {}

    def on_sample(sample: Sample) -> None:
        if sample.status == 202:
            started[json.loads(sample.content)["process_id"]] = sample.start

    emission = await post_load(
        consumers.base_url,
        f"/api/v1/actors/{topo.emitter}/output",
        {"Authorization": f"Bearer {topo.emitter_key}"},
        n,
        opts.concurrency,
        deadline,
        on_sample=on_sample,
        rate=rate,
    )
    timed_out = False
    pending = set(started)
    while pending := {pid for pid in pending if pid not in consumers.done}:
        if time.perf_counter() >= deadline:
            timed_out = True
            break
        await asyncio.sleep(0.02)
    done = {pid: consumers.done[pid] for pid in started if pid in consumers.done}
    return BusRun(emission, started, done, stats, timed_out)


async def bus_session(
    base_url: str, admin_key: str, dsn: str, opts: Options, meter: CpuMeter
) -> tuple[BusRun, dict[str, int], dict[str, Any]]:
    topo = await create_topology(base_url, admin_key, opts.consumers)
    consumers = Consumers(
        base_url, topo.emitter_key, topo.consumers, opts.poll_wait, opts.batch, opts.next
    )
    consumers.start()
    seeded: dict[str, Any] = {}
    try:
        warm = await bus_round(topo, consumers, opts, max(opts.warmup, 1 if opts.history else 0))
        if warm.timed_out:
            raise RuntimeError("the bus warm-up did not finish within --seconds-max")
        if opts.history or opts.backlog:
            seeded = await seed_database(base_url, admin_key, dsn, opts, warm)
        meter.start()
        run = await bus_round(topo, consumers, opts, opts.envelopes, opts.rate)
        meter.stop()
    finally:
        await consumers.stop()
    return run, await count_processes(dsn, list(run.started)), seeded


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def seed_database(
    base_url: str, admin_key: str, dsn: str, opts: Options, warm: BusRun
) -> dict[str, Any]:
    """--history: copies of a done process of the warm-up; --backlog: copies of a process
    waiting for an idle consumer (nobody polls it), emitted by an emitter of its own."""
    conn: Any = await asyncpg.connect(dsn)
    out: dict[str, Any] = {}
    try:
        if opts.history:
            template = uuid.UUID(next(iter(warm.done)))
            say(f"seeding {opts.history:,} done processes ...")
            out["history"] = await seed.seed(conn, template, opts.history, "history", say)
        if opts.backlog:
            template = await backlog_template(base_url, admin_key, conn)
            say(f"seeding a backlog of {opts.backlog:,} processes ...")
            out["backlog"] = await seed.seed(conn, template, opts.backlog, "backlog", say)
        for name, figures in out.items():
            say(
                f"{name}: {figures['processes']:,} processes in {figures['insert_s']} s "
                f"({figures['with_analyze_s']} s with ANALYZE); database now "
                f"{figures['database_bytes'] / 2**20:,.0f} MiB"
            )
    finally:
        await conn.close()
    return out


async def backlog_template(base_url: str, admin_key: str, conn: Any) -> uuid.UUID:
    """An emitter and a consumer nobody polls, in a pipeline of their own; one envelope
    emitted: its process, running with a pending request, is the template of the backlog."""
    tag = secrets.token_hex(3)
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, tag)
        idle = f"bench-idle-{tag}"
        body = {"name": idle, "kind": "consumer", "account_id": account["id"]}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, tag, emitter, {"actors": [idle]})
    auth = {"Authorization": f"Bearer {account['api_key']}"}
    async with RawClient(base_url, auth) as client:
        r = await client.request(
            "POST", f"/api/v1/actors/{emitter}/output", make_body(0), JSON_HEADERS
        )
        if r.status != 202:
            raise RuntimeError(f"backlog template: {r.status} {r.text}")
        process = uuid.UUID(r.json()["process_id"])
    for _ in range(100):
        if await conn.fetchval(
            "SELECT count(*) FROM requests WHERE process_id = $1 AND status = 'pending'", process
        ):
            return process
        await asyncio.sleep(0.1)
    raise RuntimeError(f"backlog template {process}: no pending request after 10 s")


async def count_processes(dsn: str, ids: list[str]) -> dict[str, int]:
    """The server's own view of the measured round's processes, by status."""
    conn: Any = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM processes WHERE id = ANY($1::uuid[]) "
            "GROUP BY status ORDER BY status",
            ids,
        )
    finally:
        await conn.close()
    return {row["status"]: row["n"] for row in rows}


def runtime_env(before: Settings, after: Settings) -> dict[str, str]:
    """`XBUS_*` variables for what `EmbeddedRuntime` filled in (database and NATS URLs, NATS
    TLS files, ...), so that xbusd uses the servers already running."""
    env: dict[str, str] = {}
    for name in type(after).model_fields:
        value = getattr(after, name)
        if value is None or value == getattr(before, name):
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        env[f"XBUS_{name.upper()}"] = text
    return env


@dataclasses.dataclass
class Xbusd:
    proc: subprocess.Popen[bytes]
    base_url: str
    admin_key: str
    log_file: Path
    database_url: str = ""


def start_xbusd(
    kids: Children,
    workdir: Path,
    env: dict[str, str],
    workers: int | None = None,
    source: Path = ROOT,
) -> Xbusd:
    """`xbusd serve` on a free port of 127.0.0.1 with a fresh admin key, against the servers
    `env` names (see `runtime_env`), with `--workers N` when `workers` is given, from the
    source tree `source` (this one by default); returns once it is ready."""
    port = children.free_port(HOST)
    admin_key = "xbk_bench_" + secrets.token_urlsafe(24)
    log_file = workdir / "xbusd.log"
    args = [
        sys.executable,
        "-m",
        "app.cli.xbusd",
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--data-dir",
        str(workdir / "xbusd-data"),
    ]
    if workers is not None:
        args += ["--workers", str(workers)]
    env = {**env, "XBUS_ADMIN_API_KEY": admin_key, "PYTHONPATH": str(source)}
    proc = kids.spawn("xbusd", args, log_file, env, cwd=source)
    base_url = f"http://{HOST}:{port}"
    wait_ready(f"{base_url}/readyz", proc, log_file, 120)
    return Xbusd(proc, base_url, admin_key, log_file, env.get("XBUS_DATABASE_URL", ""))


def server_pids(runtime: EmbeddedRuntime) -> dict[str, int | None]:
    """The pids of the embedded PostgreSQL and nats-server (their CPU is counted apart)."""
    return {
        "postgres": runtime.postgres.process.pid
        if runtime.postgres and runtime.postgres.process
        else None,
        "nats": runtime.nats.process.pid if runtime.nats and runtime.nats.process else None,
    }


@contextlib.contextmanager
def embedded_xbusd(
    workers: int | None, against: Path | None = None
) -> Iterator[tuple[list[Xbusd], dict[str, int | None]]]:
    """PostgreSQL and nats-server from the embedded packages in a temporary directory, and
    `xbusd serve` on them (`--workers` when given): yields [xbusd] and the servers' pids;
    all stopped by pid on the way out. With `against` (another source tree), a second
    xbusd from that tree serves a database of its own on the same servers: [xbusd, other]."""
    kids = Children()
    with workspace(False) as workdir:
        settings = load_settings(
            None, data_dir=workdir / "embedded", nats_port=0, port=children.free_port(HOST)
        )
        runtime = EmbeddedRuntime(settings)
        try:
            with runtime as effective:
                pids = server_pids(runtime)
                env = {**os.environ, **runtime_env(settings, effective)}
                servers = [start_xbusd(kids, workdir, env, workers)]
                if against is not None:
                    url = make_url(env["XBUS_DATABASE_URL"])
                    admin_dsn = asyncpg_dsn(env["XBUS_DATABASE_URL"], "postgres")
                    run_async(_create_database(admin_dsn, "xbus_other"))
                    other = url.set(database="xbus_other").render_as_string(False)
                    other_dir = workdir / "other"
                    other_dir.mkdir()
                    other_env = {**env, "XBUS_DATABASE_URL": other}
                    servers.append(start_xbusd(kids, other_dir, other_env, workers, against))
                yield servers, pids
        finally:
            kids.stop_all()


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def run_bus(
    opts: Options,
    kids: Children,
    workdir: Path,
    runtime: dict[str, str],
    pids: dict[str, int | None],
    database_url: str,
) -> dict[str, Any]:
    xbusd = start_xbusd(kids, workdir, {**os.environ, **runtime}, opts.workers)
    base_url, admin_key, log_file = xbusd.base_url, xbusd.admin_key, xbusd.log_file
    dsn = asyncpg_dsn(database_url, make_url(database_url).database or "xbus")
    try:
        meter = CpuMeter({"server": xbusd.proc.pid, **pids, "loadgen": LOADGEN}, exclude=pids)
        run, server_counts, seeded = run_async(bus_session(base_url, admin_key, dsn, opts, meter))
        cpu = meter.used
    finally:
        kids.stop(xbusd.proc)

    emission = run.emission
    accepted = [s for s in emission.samples if s.status == 202]
    done = run.done
    e2e = [done[pid] - run.started[pid] for pid in done]
    first = emission.first_start
    last_done = max(done.values(), default=first)
    completion_wall = max(0.0, last_done - first)
    return {
        "envelopes_sent": len(emission.samples),
        "accepted": len(accepted),
        "emission_statuses": emission.statuses(),
        "emission_transport_errors": dict(emission.errors),
        "emission_wall_s": round(emission.wall, 3),
        "accepted_per_s": rate(len(accepted), emission.wall),
        "emission_latency_ms": latency_ms([s.end - s.start for s in accepted]),
        "completed": len(done),
        "not_completed": len(run.started) - len(done),
        "timed_out": run.timed_out,
        "completion_wall_s": round(completion_wall, 3),
        "completed_per_s": rate(len(done), completion_wall),
        "e2e_latency_ms": latency_ms(e2e),
        "lease_latency_ms": latency_ms(run.stats.lease_latency),
        "state_latency_ms": latency_ms(run.stats.state_latency),
        "poll_statuses": dict(run.stats.poll_statuses),
        "state_statuses": dict(run.stats.state_statuses),
        "consumer_transport_errors": dict(run.stats.errors),
        "consumer_problem_samples": run.stats.samples,
        "emission_problem_samples": [
            s.content.decode(errors="replace")[:500]
            for s in emission.samples
            if s.status not in (0, 202)
        ][:10],
        "processes_by_status": server_counts,
        "seeded": seeded,
        "cpu_s": cpu,
        "server_cpu_ms_per_process": per_item(cpu["server"], len(done)),
        "postgres_cpu_ms_per_process": per_item(cpu["postgres"], len(done)),
        "loadgen_cpu_ms_per_process": per_item(cpu["loadgen"], len(done)),
        "log_problems": log_problems(log_file),
    }


# ---------------------------------------------------------------------------- reporting


def log_problems(log_file: Path, limit: int = 20) -> list[str]:
    """Error and warning lines of a server log, up to its shutdown."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        if "Shutting down" in line:
            lines = lines[:i]
            break
    keep = [
        line
        for line in lines
        if any(word in line for word in (" ERROR ", " WARNING ", "Traceback", "Error:"))
    ]
    return keep[:limit]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def report(figures: dict[str, Any]) -> str:
    b = figures["baseline"]
    u = figures["bus"]
    r = figures["ratios"]
    o = figures["options"]
    m = figures["machine"]

    def lat(d: dict[str, Any]) -> tuple[Any, Any, Any]:
        return d["p50"], d["p95"], d["p99"]

    rows: list[tuple[str, Any, str, tuple[Any, Any, Any]]] = [
        ("baseline POST /ingest", b["requests_per_s"], "req/s", lat(b["latency_ms"])),
        (
            "bus: envelopes accepted (202)",
            u["accepted_per_s"],
            "env/s",
            lat(u["emission_latency_ms"]),
        ),
        ("bus: processes completed", u["completed_per_s"], "proc/s", lat(u["e2e_latency_ms"])),
        ("  consumer GET .../requests (leased)", None, "", lat(u["lease_latency_ms"])),
        (
            "  consumer POST .../states"
            if o.get("batch", 1) > 1
            else "  consumer POST .../state?next=1"
            if o.get("next")
            else "  consumer POST .../state",
            None,
            "",
            lat(u["state_latency_ms"]),
        ),
    ]
    width = 88
    out = [
        f"bench.http_bus: N={o['envelopes']} C={o['concurrency']} K={o['consumers']} "
        f"warm-up={o['warmup']} baseline={o['baseline_seconds']:g}s body={o['body_bytes']}B "
        f"rate={o['rate'] or 'unlimited'} workers={o['workers'] or 'default'} "
        f"history={o['history']} backlog={o['backlog']} batch={o.get('batch', 1)}"
        f"{' next=1' if o.get('next') else ''}; "
        f"{m['nproc']} CPUs, Python {m['python']}; raw HTTP/1.1 clients for both",
        "",
        f"{'what':<40} {'rate':>10} {'unit':<7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}",
        "-" * width,
    ]
    for name, value, unit, (p50, p95, p99) in rows:
        out.append(
            f"{name:<40} {fmt(value):>10} {unit:<7} {fmt(p50):>9} {fmt(p95):>9} {fmt(p99):>9}"
        )
    out += [
        "-" * width,
        "latency: baseline = one request; accepted = POST -> 202; completed = POST start ->",
        "         the consumer's success answered (the end of the process)",
        f"bus/baseline: accepted {r['accepted_vs_baseline']:.3f}, "
        f"completed {r['completed_vs_baseline']:.3f}",
        "",
        f"baseline: {b['ok']}/{b['requests']} ok in {b['wall_s']} s, "
        f"transport errors {b['transport_errors'] or 'none'}; CPU s {b['cpu_s']}; server "
        f"{b['server_cpu_ms_per_request']} ms, generator {b['loadgen_cpu_ms_per_request']} ms "
        "per request",
        f"bus: {u['accepted']}/{u['envelopes_sent']} accepted in {u['emission_wall_s']} s, "
        f"{u['completed']} completed in {u['completion_wall_s']} s"
        f"{' (TIMED OUT: ' + str(u['not_completed']) + ' not done)' if u['timed_out'] else ''}",
        f"     emission statuses {u['emission_statuses']}, polls {u['poll_statuses']}, "
        f"states {u['state_statuses']}, transport errors "
        f"{u['emission_transport_errors'] or u['consumer_transport_errors'] or 'none'}",
        f"     server's count of the round's processes: {u['processes_by_status']}",
        f"     CPU s {u['cpu_s']}; xbusd (all its processes) {u['server_cpu_ms_per_process']} "
        f"ms, PostgreSQL {u['postgres_cpu_ms_per_process']} ms, generator "
        f"{u['loadgen_cpu_ms_per_process']} ms per process",
    ]
    for name, seeded in u["seeded"].items():
        out.append(
            f"     seeded {name}: {seeded['processes']:,} processes in {seeded['insert_s']} s "
            f"({seeded['with_analyze_s']} s with ANALYZE), database "
            f"{seeded['database_bytes'] / 2**20:,.0f} MiB"
        )
    for phase, cpu in (("baseline", b["cpu_s"]), ("bus", u["cpu_s"])):
        share = cpu["others"] / (cpu["wall"] * (m["nproc"] or 1)) if cpu["wall"] else 0.0
        if share > 0.05:
            out.append(
                f"WARNING: other processes used {share:.0%} of the machine during the {phase} "
                "run: its figures are disturbed"
            )
    problems = (
        u["emission_problem_samples"]
        + u["consumer_problem_samples"]
        + u["log_problems"]
        + b["log_problems"]
    )
    if problems:
        out += ["", "problems seen:"] + [f"  {p}" for p in problems[:30]]
    return "\n".join(out)


# ---------------------------------------------------------------------------- main


def run_async(coro: Awaitable[T]) -> T:
    """Run on uvloop when available, as the servers do."""

    async def wrap() -> T:
        return await coro

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(wrap())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(wrap())


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="xbus-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "uv run python -m bench.http_bus " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    kids = Children()
    with workspace(opts.keep) as workdir:
        settings = load_settings(
            None, data_dir=workdir / "embedded", nats_port=0, port=children.free_port(HOST)
        )
        runtime = EmbeddedRuntime(settings)
        try:
            with runtime as effective:
                assert effective.database_url is not None
                assert effective.nats_url is not None
                pids = server_pids(runtime)
                print("baseline ...", file=sys.stderr, flush=True)
                baseline = run_baseline(opts, kids, workdir, effective.database_url, pids)
                print("bus ...", file=sys.stderr, flush=True)
                bus = run_bus(
                    opts,
                    kids,
                    workdir,
                    runtime_env(settings, effective),
                    pids,
                    effective.database_url,
                )
        finally:
            kids.stop_all()

    def ratio(value: float, base: float) -> float:
        return round(value / base, 3) if base else 0.0

    base_rate = baseline["requests_per_s"]
    figures: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "options": {
            "envelopes": opts.envelopes,
            "concurrency": opts.concurrency,
            "consumers": opts.consumers,
            "seconds_max": opts.seconds_max,
            "baseline_seconds": opts.baseline_seconds,
            "warmup": opts.warmup,
            "poll_wait": opts.poll_wait,
            "batch": opts.batch,
            "next": opts.next,
            "rate": opts.rate,
            "workers": opts.workers,
            "history": opts.history,
            "backlog": opts.backlog,
            "client": "raw HTTP/1.1 (bench/rawhttp.py)",
            "body_bytes": len(make_body(0)),
        },
        "baseline": baseline,
        "bus": bus,
        "ratios": {
            "accepted_vs_baseline": ratio(bus["accepted_per_s"], base_rate),
            "completed_vs_baseline": ratio(bus["completed_per_s"], base_rate),
        },
    }
    print(report(figures))
    if opts.json_file is not None:
        opts.json_file.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # servers are stopped by then (finally blocks)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
