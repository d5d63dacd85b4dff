"""Webhook delivery throughput and latency, beside a baseline in the same run.

    uv run python -m bench.webhooks [--envelopes N] [--concurrency C] [--baseline-seconds B]
                                    [--workers W] [--json FILE]

Everything local (127.0.0.1):

1. starts PostgreSQL and nats-server from the embedded packages (`EmbeddedRuntime`), and a
   webhook receiver (`receiver_app` below, one uvicorn worker in a process of its own) that
   notes when each request arrives (`time.monotonic()`, one clock for every process here);
2. baselines, every client the raw HTTP/1.1 one of `bench.rawhttp` (as for the bus's
   emitters): `bench.baseline_app` (FastAPI + asyncpg, one SELECT and one INSERT a request)
   driven as `bench.http_bus` drives it, for B seconds: THE reference of the ratios; then C
   tasks POST N webhook-shaped bodies (the JSON a webhook carries, signed as the bus signs
   it) straight to the receiver, with that raw client and with the bus's own webhook client
   (app/webhooks/client.py): what the receiver and the sending client cost alone;
3. bus: `xbusd serve` on the same servers; an emitter and a webhook consumer (concurrency C,
   a signing secret) in an active pipeline; C emitter clients POST N envelopes; the round
   ends when the receiver has seen every accepted envelope's process;
   then the same N queued while the webhook is disabled and delivered once it is enabled
   (delivery alone), then a light load (`--pace` envelopes/s) for latency without queueing;
4. prints requests/s and p50/p99 from POST to receipt for each, the ratios, and the CPU of
   xbusd (all its processes, `--workers` included), PostgreSQL, nats-server and the generator.

The load generator runs in this process, on the same 2 cores as the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from app.config import load_settings
from app.runtime import children
from app.runtime.embedded import EmbeddedRuntime
from app.webhooks.client import ConnectionPool, Target
from app.webhooks.signing import signature_headers
from bench.http_bus import (
    HOST,
    LOADGEN,
    Children,
    CpuMeter,
    Options,
    Sample,
    activate_hop,
    bench_emitter,
    fmt,
    latency_ms,
    log_problems,
    machine,
    make_body,
    new_client,
    post_json,
    post_load,
    rate,
    run_async,
    run_baseline,
    runtime_env,
    server_pids,
    start_xbusd,
    wait_ready,
    workspace,
)
from bench.rawhttp import TRANSPORT_ERRORS, RawClient

SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789").decode()


# ---------------------------------------------------------------------------- the receiver

_arrivals: list[tuple[str, float]] = []


async def receiver_app(scope: Any, receive: Any, send: Any) -> None:
    """POST anything: note (process_id of the JSON body, arrival time), answer 204.
    GET /arrivals: the notes so far; POST /reset: forget them."""
    if scope["type"] != "http":
        return
    now = time.monotonic()
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    status, answer = 204, b""
    if scope["method"] == "GET" and scope["path"] == "/arrivals":
        status, answer = 200, json.dumps(_arrivals).encode()
    elif scope["path"] == "/reset":
        _arrivals.clear()
    else:
        try:
            _arrivals.append((json.loads(body)["process_id"], now))
        except (ValueError, KeyError, TypeError):
            status = 400
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": answer})


async def arrivals(base_url: str) -> dict[str, float]:
    async with RawClient(base_url) as client:
        r = await client.get("/arrivals")
        if r.status != 200:
            raise RuntimeError(f"GET /arrivals: {r.status} {r.text}")
        return dict(r.json())


async def reset(base_url: str) -> None:
    async with RawClient(base_url) as client:
        r = await client.post("/reset")
        if r.status != 204:
            raise RuntimeError(f"POST /reset: {r.status} {r.text}")


# ---------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.webhooks",
        description="Webhook delivery (emit -> webhook consumer) against the same raw HTTP "
        "client posting to a FastAPI+asyncpg ingest endpoint and straight to the receiver.",
    )
    p.add_argument("--envelopes", "-n", type=int, default=2000, help="envelopes [2000]")
    p.add_argument(
        "--concurrency", "-c", type=int, default=16, help="clients, webhook concurrency [16]"
    )
    p.add_argument("--warmup", type=int, default=200, help="unmeasured rounds first [200]")
    p.add_argument("--seconds-max", type=float, default=180.0, help="bound of a round [180]")
    p.add_argument(
        "--pace", type=float, default=10.0, help="envelopes/s of the light-load round [10]"
    )
    p.add_argument("--paced", type=int, default=100, help="envelopes of that round [100]")
    p.add_argument(
        "--baseline-seconds",
        type=float,
        default=10.0,
        help="length of the FastAPI+asyncpg baseline run (as bench.http_bus) [10]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run `xbusd serve --workers N` [not passed: xbusd's default]",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep", action="store_true", help="keep the data dir and logs")
    a = p.parse_args(argv)
    if a.envelopes < 1 or a.concurrency < 1 or a.paced < 1 or a.warmup < 0 or a.pace <= 0:
        p.error("--envelopes, --concurrency, --paced must be at least 1, --pace positive")
    if a.baseline_seconds <= 0 or (a.workers is not None and a.workers < 1):
        p.error("--baseline-seconds must be positive, --workers at least 1")
    return a


# ---------------------------------------------------------------------------- baseline


def webhook_body(seq: int) -> bytes:
    """A body shaped like the bus's webhook JSON, around the same ~300-byte envelope."""
    envelope = json.loads(make_body(seq))
    envelope["id"] = str(uuid.uuid4())
    envelope["events"][0]["id"] = str(uuid.uuid4())
    return json.dumps(
        {
            "request_id": str(uuid.uuid4()),
            "process_id": str(uuid.uuid4()),
            "node_id": "sink",
            "actor_id": str(uuid.uuid4()),
            "attempt": 1,
            "lease_expires_at": "2026-01-01T00:00:40Z",
            "inputs": [
                {
                    "name": "default",
                    "envelope_id": envelope["id"],
                    "envelope_url": f"/api/v1/envelopes/{envelope['id']}",
                    "size_bytes": 280,
                    "item_count": 1,
                    "inline": True,
                    "envelope": envelope,
                }
            ],
        }
    ).encode()


async def direct_round(base_url: str, n: int, concurrency: int, client: str) -> dict[str, Any]:
    """C tasks POST n signed webhook bodies straight to the receiver."""
    bodies = [webhook_body(i) for i in range(n)]
    starts: dict[str, float] = {}
    errors = 0
    next_seq = 0
    key = base64.b64decode(SECRET.removeprefix("whsec_"))

    def headers(body: bytes) -> list[tuple[str, str]]:
        msg_id = json.loads(body)["request_id"]
        return [("content-type", "application/json"), *signature_headers([key], msg_id, body)]

    async def with_raw() -> None:
        nonlocal next_seq, errors
        async with RawClient(base_url) as http:
            while next_seq < n:
                body = bodies[next_seq]
                next_seq += 1
                starts[json.loads(body)["process_id"]] = time.monotonic()
                try:
                    r = await http.post("/hook", body, headers(body))
                    errors += r.status != 204
                except TRANSPORT_ERRORS:
                    errors += 1

    pool = ConnectionPool(Target.of(base_url + "/hook").origin, concurrency)
    target = Target.of(base_url + "/hook")

    async def with_bus_client() -> None:
        nonlocal next_seq, errors
        while next_seq < n:
            body = bodies[next_seq]
            next_seq += 1
            starts[json.loads(body)["process_id"]] = time.monotonic()
            try:
                answer = await pool.post(target, headers(body), body, 1 << 20)
                errors += answer.status != 204
            except OSError:
                errors += 1

    await reset(base_url)
    meter = CpuMeter({"loadgen": LOADGEN})
    meter.start()
    worker = with_raw if client == "raw" else with_bus_client
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu = meter.stop()
    pool.close()
    return figures(starts, await arrivals(base_url), errors, cpu["loadgen"])


def figures(
    starts: dict[str, float], seen: dict[str, float], errors: int, client_cpu: float | None
) -> dict[str, Any]:
    got = [pid for pid in starts if pid in seen]
    first = min(starts.values(), default=0.0)
    last = max((seen[pid] for pid in got), default=first)
    out: dict[str, Any] = {
        "sent": len(starts),
        "received": len(got),
        "errors": errors,
        "wall_s": round(last - first, 3),
        "per_s": rate(len(got), last - first),
        "latency_ms": latency_ms([seen[pid] - starts[pid] for pid in got]),
    }
    if client_cpu is not None and got:
        out["client_cpu_ms_per_request"] = round(client_cpu * 1000 / len(got), 3)
    return out


# ---------------------------------------------------------------------------- bus


async def topology(
    base_url: str, admin_key: str, hook_url: str, concurrency: int
) -> tuple[str, str]:
    tag = secrets.token_hex(3)
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, tag)
        sink = f"bench-webhook-{tag}"
        config = {
            "http.webhook.url": hook_url,
            "http.webhook.secret": SECRET,
            "http.webhook.concurrency": str(concurrency),
        }
        body = {"name": sink, "kind": "consumer", "account_id": account["id"], "config": config}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, tag, emitter, {"actors": [sink]})
    return emitter, account["api_key"]


async def bus_round(
    base_url: str,
    receiver_url: str,
    emitter: str,
    key: str,
    n: int,
    opts: argparse.Namespace,
    *,
    wait: bool = True,
    pace: float | None = None,
) -> tuple[dict[str, float], dict[str, float], int]:
    await reset(receiver_url)
    starts: dict[str, float] = {}
    offset = time.monotonic() - time.perf_counter()

    def on_sample(sample: Sample) -> None:
        if sample.status == 202:
            starts[json.loads(sample.content)["process_id"]] = sample.start + offset

    deadline = time.perf_counter() + opts.seconds_max
    result = await post_load(
        base_url,
        f"/api/v1/actors/{emitter}/output",
        {"Authorization": f"Bearer {key}"},
        n,
        opts.concurrency,
        deadline,
        on_sample=on_sample,
        rate=pace,
    )
    seen: dict[str, float] = {}
    while wait and time.perf_counter() < deadline:
        seen = await arrivals(receiver_url)
        if all(pid in seen for pid in starts):
            break
        await asyncio.sleep(0.1)
    errors = sum(1 for s in result.samples if s.status != 202)
    return starts, seen, errors


async def drain_round(
    base_url: str,
    receiver_url: str,
    emitter: str,
    key: str,
    opts: argparse.Namespace,
    meter: CpuMeter,
) -> dict[str, Any]:
    """Delivery alone: N requests queue up while the webhook is disabled, then it is enabled
    and the round ends when the receiver has them all."""
    sink = emitter.replace("bench-emitter-", "bench-webhook-")
    async with new_client(base_url, {"Authorization": f"Bearer {key}"}) as http:
        (await http.post(f"/api/v1/actors/{sink}/webhook/disable")).raise_for_status()
        starts, _, errors = await bus_round(
            base_url, receiver_url, emitter, key, opts.envelopes, opts, wait=False
        )
        meter.start()
        enabled = time.monotonic()
        (await http.post(f"/api/v1/actors/{sink}/webhook/enable")).raise_for_status()
        deadline = time.perf_counter() + opts.seconds_max
        seen: dict[str, float] = {}
        while time.perf_counter() < deadline:
            seen = await arrivals(receiver_url)
            if all(pid in seen for pid in starts):
                break
            await asyncio.sleep(0.05)
        cpu = meter.stop()
    got = [seen[pid] for pid in starts if pid in seen]
    wall = max(got, default=enabled) - enabled
    out: dict[str, Any] = {
        "sent": len(starts),
        "received": len(got),
        "errors": errors,
        "wall_s": round(wall, 3),
        "per_s": rate(len(got), wall),
        "latency_ms": {"p50": None, "p99": None},
        "cpu_s": cpu,
    }
    if got:
        out["server_cpu_ms_per_envelope"] = round(cpu["server"] * 1000 / len(got), 2)
    return out


async def bus_session(
    base_url: str, receiver_url: str, admin_key: str, opts: argparse.Namespace, meter: CpuMeter
) -> dict[str, Any]:
    emitter, key = await topology(base_url, admin_key, receiver_url + "/hook", opts.concurrency)
    if opts.warmup:
        await bus_round(base_url, receiver_url, emitter, key, opts.warmup, opts)
    meter.start()
    starts, seen, errors = await bus_round(
        base_url, receiver_url, emitter, key, opts.envelopes, opts
    )
    cpu = meter.stop()
    out = figures(starts, seen, errors, None)
    out["cpu_s"] = cpu
    if out["received"]:
        out["server_cpu_ms_per_envelope"] = round(cpu["server"] * 1000 / out["received"], 2)
    out["drain"] = await drain_round(base_url, receiver_url, emitter, key, opts, meter)
    starts, seen, errors = await bus_round(
        base_url, receiver_url, emitter, key, opts.paced, opts, pace=opts.pace
    )
    out["paced"] = figures(starts, seen, errors, None)
    return out


# ---------------------------------------------------------------------------- main


def report(fig: dict[str, Any]) -> str:
    ingest = fig["baseline"]["ingest"]
    ingest_row = {
        "per_s": ingest["requests_per_s"],
        "latency_ms": ingest["latency_ms"],
        "received": ingest["ok"],
        "sent": ingest["requests"],
        "server_cpu_ms_per_envelope": ingest["server_cpu_ms_per_request"],
    }
    rows = [
        ("baseline: POST /ingest (FastAPI+asyncpg)", ingest_row),
        ("baseline: raw client -> receiver", fig["baseline"]["raw"]),
        ("baseline: bus client -> receiver", fig["baseline"]["bus_client"]),
        ("bus: POST envelope -> webhook received", fig["bus"]),
        ("bus: queued requests delivered (drain)", fig["bus"]["drain"]),
        (f"bus: paced at {fig['options']['pace']:g} envelopes/s", fig["bus"]["paced"]),
    ]
    o = fig["options"]
    lines = [
        f"bench.webhooks: N={o['envelopes']} C={o['concurrency']} warm-up={o['warmup']} "
        f"baseline={o['baseline_seconds']:g}s workers={o['workers'] or 'default'}; "
        f"{fig['machine']['nproc']} CPUs, Python {fig['machine']['python']}; "
        "raw HTTP/1.1 clients",
        "",
        f"{'what':<42} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'got':>11} {'cpu ms/req':>10}",
        "-" * 92,
    ]
    for name, r in rows:
        cpu = r.get("client_cpu_ms_per_request", r.get("server_cpu_ms_per_envelope", "-"))
        p50, p99 = (fmt(r["latency_ms"][q]) for q in ("p50", "p99"))
        lines.append(
            f"{name:<42} {r['per_s']:>9,.1f} {p50:>8} {p99:>8} "
            f"{r['received']:>5}/{r['sent']:<5} {cpu:>10}"
        )
    lines += [
        "-" * 92,
        "latency: from the POST's start (emission, or the direct post) to the receiver's "
        "arrival time",
        "cpu ms/req: the ingest server's CPU per request; the generator's per request (direct "
        "posts);",
        "            xbusd's (all its processes) per envelope (bus)",
        "drain: requests queued while the webhook was disabled, from enable to the last arrival",
        f"bus/baseline (ingest): {fig['ratios']['vs_ingest']:.3f}, "
        f"drain/baseline (ingest): {fig['ratios']['drain_vs_ingest']:.3f}; "
        f"bus/direct raw posts: {fig['ratios']['vs_direct']:.3f}, "
        f"bus/direct bus client: {fig['ratios']['vs_bus_client']:.3f}",
        f"CPU s: ingest baseline {ingest['cpu_s']}",
        f"       bus {fig['bus']['cpu_s']}",
        f"       drain {fig['bus']['drain']['cpu_s']}",
    ]
    for phase, cpu in (
        ("ingest baseline", ingest["cpu_s"]),
        ("bus", fig["bus"]["cpu_s"]),
        ("drain", fig["bus"]["drain"]["cpu_s"]),
    ):
        nproc = fig["machine"]["nproc"] or 1
        share = cpu["others"] / (cpu["wall"] * nproc) if cpu["wall"] else 0.0
        if share > 0.05:
            lines.append(
                f"WARNING: other processes used {share:.0%} of the machine during the {phase} "
                "run: its figures are disturbed"
            )
    if fig["bus"].get("log_problems"):
        lines += ["", "problems in the xbusd log:", *fig["bus"]["log_problems"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    command = "uv run python -m bench.webhooks " + shlex.join(
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
                base_env = {**os.environ, **runtime_env(settings, effective)}
                recv_port = children.free_port(HOST)
                receiver_url = f"http://{HOST}:{recv_port}"
                recv_log = workdir / "receiver.log"
                receiver = kids.spawn(
                    "receiver",
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bench.webhooks:receiver_app",
                        "--host",
                        HOST,
                        "--port",
                        str(recv_port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                        "--lifespan",
                        "off",
                    ],
                    recv_log,
                    base_env,
                )
                wait_ready(receiver_url + "/arrivals", receiver, recv_log, 30)
                pids = server_pids(runtime)
                print("baseline ...", file=sys.stderr, flush=True)
                assert effective.database_url is not None
                ingest_opts = Options(
                    envelopes=opts.envelopes,
                    concurrency=opts.concurrency,
                    consumers=1,
                    seconds_max=opts.seconds_max,
                    baseline_seconds=opts.baseline_seconds,
                    warmup=opts.warmup,
                    poll_wait=0,
                    rate=None,
                    json_file=None,
                    keep=False,
                )
                ingest = run_baseline(ingest_opts, kids, workdir, effective.database_url, pids)
                run_async(direct_round(receiver_url, opts.warmup or 1, opts.concurrency, "raw"))
                baseline: dict[str, Any] = {
                    client: run_async(
                        direct_round(receiver_url, opts.envelopes, opts.concurrency, client)
                    )
                    for client in ("raw", "bus_client")
                }
                baseline["ingest"] = ingest
                print("bus ...", file=sys.stderr, flush=True)
                env = {**base_env, "XBUS_WEBHOOK_ALLOW_PRIVATE": "true"}
                xbusd = start_xbusd(kids, workdir, env, opts.workers)
                meter = CpuMeter(
                    {
                        "server": xbusd.proc.pid,
                        **pids,
                        "receiver": receiver.pid,
                        "loadgen": LOADGEN,
                    },
                    exclude=pids,
                )
                bus = run_async(
                    bus_session(xbusd.base_url, receiver_url, xbusd.admin_key, opts, meter)
                )
                kids.stop(xbusd.proc)
                bus["log_problems"] = log_problems(xbusd.log_file)
        finally:
            kids.stop_all()

    def ratio(value: float, base: float) -> float:
        return round(value / base, 3) if base else 0.0

    fig: dict[str, Any] = {
        "command": command,
        "machine": machine(),
        "options": {
            "envelopes": opts.envelopes,
            "concurrency": opts.concurrency,
            "warmup": opts.warmup,
            "baseline_seconds": opts.baseline_seconds,
            "workers": opts.workers,
            "client": "raw HTTP/1.1 (bench/rawhttp.py)",
            "pace": opts.pace,
            "paced": opts.paced,
            "body_bytes": len(webhook_body(0)),
        },
        "baseline": baseline,
        "bus": bus,
        "ratios": {
            "vs_ingest": ratio(bus["per_s"], ingest["requests_per_s"]),
            "drain_vs_ingest": ratio(bus["drain"]["per_s"], ingest["requests_per_s"]),
            "vs_direct": ratio(bus["per_s"], baseline["raw"]["per_s"]),
            "vs_bus_client": ratio(bus["per_s"], baseline["bus_client"]["per_s"]),
        },
    }
    print(report(fig))
    if opts.json is not None:
        opts.json.write_text(json.dumps(fig, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
