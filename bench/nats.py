"""NATS throughput: a python-xbus 0.4.0 emitter to a python-xbus consumer, through xbusd.

    uv run python -m bench.nats [--envelopes N] [--concurrency C] [--warmup W]
                                [--seconds-max S] [--workers X] [--json FILE] [--keep]

Everything local (127.0.0.1 and Unix sockets):

1. starts PostgreSQL and a TLS nats-server from the embedded packages (`EmbeddedRuntime`, as
   `xbusd serve` does by default), then `xbusd serve` against them, with the runtime's CA
   (`XBUS_PKI_DIR`) so that the certificates it signs are those nats-server trusts;
2. registers an `actor` account with an emitter and a consumer the way `xbus-client
   register` does (`POST /api/v1/registrations` with a CSR, accepted by the admin), and an
   active pipeline emitter -> consumer; the python-xbus client, used unchanged, connects with
   the signed certificate (as tests/nats_api does) and subscribes the consumer;
3. after W warm-up envelopes, C tasks emit N small envelopes (one event, one ~300-byte item;
   `Broker.Output`, answered once the envelope is stored and its process started), while
   the consumer reads each request's envelope and returns (python-xbus reports SUCCESS);
   the round ends when the bus has every process of the round done, or at S seconds;
4. prints envelopes/s (emission, acknowledged), processes done/s, the latency of an emission
   (Output -> ack) and of a process (its created_at -> ended_at, the bus's own clock), and
   the CPU of xbusd (all its processes) per process and, apart, that of this process: the
   python-xbus client (emitter and consumer) is all it runs during the round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from xbus import client as xbus_client

from app.certs.pki import key_pem, make_csr, new_key
from app.config import load_settings
from app.runtime import children
from app.runtime.embedded import EmbeddedRuntime
from bench.http_bus import (
    EVENT_TYPE,
    HOST,
    LOADGEN,
    Children,
    CpuMeter,
    activate_hop,
    asyncpg_dsn,
    fmt,
    latency_ms,
    log_problems,
    machine,
    make_body,
    new_client,
    per_item,
    post_json,
    rate,
    run_async,
    runtime_env,
    server_pids,
    start_xbusd,
    workspace,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.nats",
        description="python-xbus emitter -> NATS consumer through xbusd, on embedded "
        "PostgreSQL and nats-server.",
    )
    p.add_argument("--envelopes", "-n", type=int, default=1000, help="envelopes [1000]")
    p.add_argument(
        "--concurrency", "-c", type=int, default=16, help="concurrent emitting tasks [16]"
    )
    p.add_argument("--warmup", type=int, default=50, help="unmeasured envelopes first [50]")
    p.add_argument("--seconds-max", type=float, default=120.0, help="bound of a round [120]")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run `xbusd serve --workers N` [not passed: xbusd's default]",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    a = p.parse_args(argv)
    if a.envelopes < 1 or a.concurrency < 1 or a.warmup < 0 or a.seconds_max <= 0:
        p.error("--envelopes and --concurrency at least 1, --warmup >= 0, --seconds-max > 0")
    if a.workers is not None and a.workers < 1:
        p.error("--workers must be at least 1")
    return a


# ---------------------------------------------------------------------------- setup


async def register(base_url: str, admin_key: str, tag: str) -> tuple[dict[str, Any], str, str]:
    """An actor account with an emitter and a consumer, registered and accepted as
    `xbus-client register` and an administrator do; an active pipeline between them.
    Returns the python-xbus configuration, the emitter's and the consumer's names."""
    name = f"bench-nats-{tag}"
    emitter, consumer = f"{name}.emitter", f"{name}.consumer"
    key = new_key()
    csr = make_csr(name, key)
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        body = {
            "name": name,
            "type": "actor",
            "csr": csr.decode(),
            "actors": [
                {"name": emitter, "kind": "emitter"},
                {"name": consumer, "kind": "consumer"},
            ],
        }
        registration = await post_json(admin, "/api/v1/registrations", body)
        account_id = registration["id"]
        await post_json(admin, f"/api/v1/accounts/{account_id}/accept", {}, 200)
        r = await admin.get(f"/api/v1/registrations/{account_id}")
        r.raise_for_status()
        signed = r.json()
        if signed["status"] != "accepted" or not signed["certificate"]:
            raise RuntimeError(f"registration not accepted: {signed}")
        await activate_hop(admin, tag, emitter, {"actors": [consumer]})
    conf = {
        "account-name": name,
        "nats-url": "",  # filled in by the caller
        "no-reconnect": True,
        "tls": {
            "private-key": key_pem(key).decode(),
            "certificate": signed["certificate"],
            "csr": csr.decode(),
            "rootca": signed["ca"],
        },
        "actors": {emitter: {"kind": "emitter"}, consumer: {"kind": "consumer"}},
    }
    return conf, emitter, consumer


async def connect(conf: dict[str, Any], workdir: Path, seconds: float) -> Any:
    """The python-xbus client, once nats-server has reloaded the account's permissions."""
    deadline = time.monotonic() + seconds
    while True:
        client = xbus_client.Client(dict(conf), str(workdir))
        try:
            await asyncio.wait_for(client.connect(), 10)
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


# ---------------------------------------------------------------------------- rounds


async def emit_round(
    client: Any, emitter: str, n: int, concurrency: int, deadline: float
) -> tuple[list[float], int, float, float]:
    """C tasks emit n envelopes: (Output -> ack latencies, errors, first start, last end)."""
    actor = client.get_actor(emitter)
    items = [make_body(i) for i in range(100)]
    latencies: list[float] = []
    errors = 0
    next_seq = 0
    first = time.perf_counter()
    last = first

    async def worker() -> None:
        nonlocal next_seq, errors, last
        while next_seq < n and time.perf_counter() < deadline:
            seq = next_seq
            next_seq += 1
            t0 = time.perf_counter()
            try:
                writer = actor.open_output("default", [EVENT_TYPE])
                await writer.add_items(EVENT_TYPE, items[seq % len(items)])
                await writer.close()
                latencies.append(time.perf_counter() - t0)
            except Exception:
                errors += 1
            last = time.perf_counter()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, first, last


async def wait_done(conn: Any, emitter: str, since: Any, n: int, deadline: float) -> bool:
    query = (
        "SELECT count(*) FROM processes p JOIN actors a ON a.id = p.emitter_id "
        "WHERE a.name = $1 AND p.created_at >= $2 AND p.status IN ('done', 'error')"
    )
    while time.perf_counter() < deadline:
        if await conn.fetchval(query, emitter, since) >= n:
            return True
        await asyncio.sleep(0.1)
    return False


async def session(
    base_url: str, admin_key: str, dsn: str, nats_url: str, workdir: Path, opts: Any, meter: Any
) -> dict[str, Any]:
    conf, emitter, consumer = await register(base_url, admin_key, secrets.token_hex(3))
    conf["nats-url"] = nats_url
    client = await connect(conf, workdir, 30)
    received = 0

    async def consume(apc: Any) -> None:
        nonlocal received
        await apc.read_envelope_complete("default", 10)
        received += 1

    conn: Any = await asyncpg.connect(dsn)
    try:
        await client.get_actor(consumer).subscribe(consume)
        for n, measured in ((opts.warmup, False), (opts.envelopes, True)):
            if not n:
                continue
            since = await conn.fetchval("SELECT now()")
            deadline = time.perf_counter() + opts.seconds_max
            if measured:
                meter.start()
            latencies, errors, first, last = await emit_round(
                client, emitter, n, opts.concurrency, deadline
            )
            complete = await wait_done(conn, emitter, since, n - errors, deadline)
            end = time.perf_counter()
            if measured:
                meter.stop()
        rows = await conn.fetch(
            "SELECT p.status, extract(epoch FROM p.ended_at - p.created_at) AS seconds "
            "FROM processes p JOIN actors a ON a.id = p.emitter_id "
            "WHERE a.name = $1 AND p.created_at >= $2",
            emitter,
            since,
        )
    finally:
        await conn.close()
        try:
            await client.shutdown()
            await client.close()
        except Exception as exc:
            print(f"closing the python-xbus client: {exc!r}", file=sys.stderr)
    done = [float(r["seconds"]) for r in rows if r["status"] == "done"]
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    cpu = meter.used
    return {
        "emitted": len(latencies),
        "emit_errors": errors,
        "emission_wall_s": round(last - first, 3),
        "emitted_per_s": rate(len(latencies), last - first),
        "emission_latency_ms": latency_ms(latencies),
        "processes_by_status": statuses,
        "completed": len(done),
        "timed_out": not complete,
        "completion_wall_s": round(end - first, 3),
        "completed_per_s": rate(len(done), end - first),
        "process_latency_ms": latency_ms(done),
        "consumer_handled_incl_warmup": received,
        "cpu_s": cpu,
        "xbusd_cpu_ms_per_process": per_item(cpu["server"], len(done)),
        "postgres_cpu_ms_per_process": per_item(cpu["postgres"], len(done)),
        "nats_cpu_ms_per_process": per_item(cpu["nats"], len(done)),
        "python_xbus_cpu_ms_per_process": per_item(cpu["loadgen"], len(done)),
    }


# ---------------------------------------------------------------------------- main


def report(fig: dict[str, Any]) -> str:
    o, b, m = fig["options"], fig["bus"], fig["machine"]
    e, p = b["emission_latency_ms"], b["process_latency_ms"]
    lines = [
        f"bench.nats: N={o['envelopes']} C={o['concurrency']} warm-up={o['warmup']} "
        f"workers={o['workers'] or 'default'} item={o['item_bytes']}B; {m['nproc']} CPUs, "
        f"Python {m['python']}; python-xbus 0.4.0 emitter and consumer",
        "",
        f"{'what':<38} {'rate':>9} {'unit':<7} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}",
        "-" * 86,
        f"{'envelopes emitted (Output -> ack)':<38} {b['emitted_per_s']:>9,.1f} {'env/s':<7} "
        f"{fmt(e['p50']):>9} {fmt(e['p95']):>9} {fmt(e['p99']):>9}",
        f"{'processes done (created -> ended)':<38} {b['completed_per_s']:>9,.1f} {'proc/s':<7} "
        f"{fmt(p['p50']):>9} {fmt(p['p95']):>9} {fmt(p['p99']):>9}",
        "-" * 86,
        f"{b['emitted']} emitted ({b['emit_errors']} errors) in {b['emission_wall_s']} s; "
        f"processes {b['processes_by_status']} in {b['completion_wall_s']} s"
        f"{' (TIMED OUT)' if b['timed_out'] else ''}",
        f"CPU s {b['cpu_s']}",
        f"CPU ms per process: xbusd (all its processes) {b['xbusd_cpu_ms_per_process']}, "
        f"PostgreSQL {b['postgres_cpu_ms_per_process']}, nats-server "
        f"{b['nats_cpu_ms_per_process']}, python-xbus (this process) "
        f"{b['python_xbus_cpu_ms_per_process']}",
    ]
    cpu = b["cpu_s"]
    share = cpu["others"] / (cpu["wall"] * (m["nproc"] or 1)) if cpu["wall"] else 0.0
    if share > 0.05:
        lines.append(
            f"WARNING: other processes used {share:.0%} of the machine during the run: "
            "its figures are disturbed"
        )
    if b.get("log_problems"):
        lines += ["", "problems in the xbusd log:", *b["log_problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "uv run python -m bench.nats " + shlex.join(sys.argv[1:] if argv is None else argv)
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
                env = {
                    **os.environ,
                    **runtime_env(settings, effective),
                    # The runtime's CA signed nats-server's certificate: xbusd must sign the
                    # accounts' certificates with it too.
                    "XBUS_PKI_DIR": str(effective.pki_path),
                }
                xbusd = start_xbusd(kids, workdir, env, opts.workers)
                database = make_url(effective.database_url).database or "xbus"
                dsn = asyncpg_dsn(effective.database_url, database)
                meter = CpuMeter(
                    {"server": xbusd.proc.pid, **pids, "loadgen": LOADGEN}, exclude=pids
                )
                client_dir = workdir / "python-xbus"
                client_dir.mkdir()
                try:
                    bus = run_async(
                        session(
                            xbusd.base_url,
                            xbusd.admin_key,
                            dsn,
                            effective.nats_url,
                            client_dir,
                            opts,
                            meter,
                        )
                    )
                finally:
                    kids.stop(xbusd.proc)
                bus["log_problems"] = log_problems(xbusd.log_file)
        finally:
            kids.stop_all()
    fig: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "options": {
            "envelopes": opts.envelopes,
            "concurrency": opts.concurrency,
            "warmup": opts.warmup,
            "seconds_max": opts.seconds_max,
            "workers": opts.workers,
            "item_bytes": len(make_body(0)),
        },
        "bus": bus,
    }
    print(report(fig))
    if opts.json is not None:
        opts.json.write_text(json.dumps(fig, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # servers are stopped by then (finally blocks)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
