"""Batch emission: envelopes/s accepted through `POST /api/v1/actors/{emitter}/outputs`.

    uv run python -m bench.batch_emit [--envelopes N] [--batch B] [--concurrency C]
                                      [--workers W] [--ndjson] [--json FILE]

Starts PostgreSQL and nats-server from the embedded packages in a temporary directory and
`xbusd serve` against them (as `bench.http_bus` does), creates an emitter and a pipeline
emitter -> consumer (a consumer nobody polls: the processes stay running, which is what
accepting costs), then C clients post N ~300-byte envelopes in batches of B (JSON arrays,
or NDJSON with --ndjson) with the raw HTTP/1.1 client, back to back. Prints envelopes/s
accepted (202 in the batch answers, each stored and routed before its batch is answered),
the latency of a batch, and the CPU of xbusd (all its processes) and PostgreSQL per
envelope, and what each of xbusd's workers used: a warning says when one did most of the
work (a worker that wakes up takes every connection waiting, so C long-lived connections
may all land on one worker while the others stand idle; then the figures are one worker's).
Everything on 127.0.0.1; servers stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.http_bus import (
    LOADGEN,
    CpuMeter,
    activate_hop,
    bench_emitter,
    embedded_xbusd,
    latency_ms,
    machine,
    new_client,
    post_json,
    uneven,
)
from bench.rawhttp import RawClient

EVENT = "order.created"


def envelope(seq: int) -> dict[str, Any]:
    return {
        "events": [
            {
                "type": EVENT,
                "encoding": "json",
                "items": [{"order": seq, "lines": [{"sku": f"SKU-{seq % 97}", "qty": 2}] * 4}],
            }
        ]
    }


def body_of(batch: list[dict[str, Any]], ndjson: bool) -> tuple[bytes, str]:
    if ndjson:
        lines = "\n".join(json.dumps(e, separators=(",", ":")) for e in batch)
        return lines.encode(), "application/x-ndjson"
    return json.dumps(batch, separators=(",", ":")).encode(), "application/json"


async def topology(base_url: str, admin_key: str) -> tuple[str, str]:
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        account, emitter = await bench_emitter(admin, "batch")
        consumer = "bench-batch-sink"
        body = {"name": consumer, "kind": "consumer", "account_id": account["id"]}
        await post_json(admin, "/api/v1/actors", body)
        await activate_hop(admin, "batch", emitter, {"actors": [consumer]})
    return emitter, str(account["api_key"])


async def load(
    base_url: str, key: str, emitter: str, args: argparse.Namespace, meter: CpuMeter
) -> dict[str, Any]:
    path = f"/api/v1/actors/{emitter}/outputs"
    batches = [
        [envelope(n) for n in range(start, min(start + args.batch, args.envelopes))]
        for start in range(0, args.envelopes, args.batch)
    ]
    bodies = [body_of(b, args.ndjson) for b in batches]
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()

    async def client() -> None:
        async with RawClient(base_url, {"authorization": f"Bearer {key}"}, 120) as http:
            while not queue.empty():
                body, media = queue.get_nowait()
                started = time.perf_counter()
                r = await http.post(path, body, {"content-type": media})
                latencies.append(time.perf_counter() - started)
                if r.status != 200:
                    statuses[r.status] += len(body.splitlines()) if args.ndjson else 1
                    continue
                for result in r.json()["results"]:
                    statuses[result["status"]] += 1

    # A warm-up batch, unmeasured (connections, prepared statements, caches).
    async with RawClient(base_url, {"authorization": f"Bearer {key}"}, 120) as http:
        warm, media = body_of([envelope(-n) for n in range(1, args.batch + 1)], args.ndjson)
        await http.post(path, warm, {"content-type": media})
    for body in bodies:
        queue.put_nowait(body)
    meter.start()
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.concurrency)))
    wall = time.perf_counter() - started
    cpu = meter.stop()
    accepted = statuses.get(202, 0)

    def per_envelope(seconds: float) -> float | None:
        return round(1000 * seconds / accepted, 3) if accepted else None

    return {
        "envelopes": args.envelopes,
        "batch": args.batch,
        "accepted": accepted,
        "statuses": dict(statuses),
        "wall_s": round(wall, 3),
        "accepted_per_s": round(accepted / wall, 1) if wall else 0.0,
        "batch_latency_ms": latency_ms(latencies),
        "cpu_s": cpu,
        "workers_cpu_s": meter.workers,
        "xbusd_cpu_ms_per_envelope": round(1000 * cpu["server"] / accepted, 3)
        if accepted
        else None,
        "postgres_cpu_ms_per_envelope": round(1000 * cpu["postgres"] / accepted, 3)
        if accepted
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_emit", description=__doc__)
    parser.add_argument("--envelopes", "-n", type=int, default=50_000)
    parser.add_argument("--batch", "-b", type=int, default=1000)
    parser.add_argument("--concurrency", "-c", type=int, default=4)
    parser.add_argument("--workers", type=int, default=None, help="xbusd serve --workers")
    parser.add_argument("--ndjson", action="store_true", help="NDJSON bodies, not JSON arrays")
    parser.add_argument("--json", type=Path, default=None, dest="json_file")
    args = parser.parse_args(argv)
    with embedded_xbusd(args.workers) as ([xbusd], pids):
        meter = CpuMeter({"server": xbusd.proc.pid, **pids, "loadgen": LOADGEN}, exclude=pids)

        async def run() -> dict[str, Any]:
            emitter, key = await topology(xbusd.base_url, xbusd.admin_key)
            return await load(xbusd.base_url, key, emitter, args, meter)

        figures = asyncio.run(run())
    figures["machine"] = machine()
    figures["workers"] = args.workers
    figures["ndjson"] = args.ndjson
    print(
        f"bench.batch_emit: N={args.envelopes} batch={args.batch} C={args.concurrency} "
        f"workers={args.workers or 'default'} {'NDJSON' if args.ndjson else 'JSON array'}"
    )
    lat = figures["batch_latency_ms"]
    print(
        f"accepted {figures['accepted']}/{args.envelopes} in {figures['wall_s']} s: "
        f"{figures['accepted_per_s']:,.0f} envelopes/s; batch p50/p99 "
        f"{lat['p50']}/{lat['p99']} ms; statuses {figures['statuses']}"
    )
    print(
        f"CPU s {figures['cpu_s']}; xbusd {figures['xbusd_cpu_ms_per_envelope']} ms, "
        f"PostgreSQL {figures['postgres_cpu_ms_per_envelope']} ms per envelope"
    )
    if len(figures["workers_cpu_s"]) > 1:
        print(f"xbusd's workers, CPU s: {', '.join(map(str, figures['workers_cpu_s']))}")
    if uneven(figures["workers_cpu_s"]):
        print(
            "WARNING: one worker took most of the connections, the others stood idle: the "
            "figures are one worker's (run again)"
        )
    busy = figures["cpu_s"]["others"] / max(figures["cpu_s"]["wall"], 1e-9) / (os.cpu_count() or 1)
    if busy > 0.05:
        print(f"WARNING: other processes used {busy:.0%} of the machine: the figures are disturbed")
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
