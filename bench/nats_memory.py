"""A large envelope through xbusd in bounded memory: xbusd's peak RSS and MB/s.

    uv run python -m bench.nats_memory [--megabytes M] [--item-kib K] [--json FILE] [--keep]

Everything local (127.0.0.1 and Unix sockets):

1. starts PostgreSQL and a TLS nats-server from the embedded packages, then `xbusd serve
   --workers 1` (one process: its RSS is xbusd's);
2. registers an actor account (emitter, worker, consumer, and a second emitter) as `bench.nats`
   does, and two active pipelines: emitter -> worker -> consumer, all python-xbus 0.4.0 over
   NATS (the worker reads its whole input, then forwards it), and emitter2 -> a consumer
   polled over HTTP, which reads the envelope a page of items at a time and reports success;
3. warms both paths up with a small envelope, then reads xbusd's idle RSS;
4. relays one M MB envelope (items of K KiB) through each path, sampling xbusd's RSS every
   20 ms, and prints the peak growth over the idle size and MB/s from the start of the
   emission to the consumer's end;
5. baseline, same run: the same bytes published over raw NATS (same nats-server, TLS, 500 KiB
   messages) to a subscriber that counts them: MB/s.

python-xbus computes CRC-32C in pure Python (~1.5 s per MiB): this benchmark swaps in
google-crc32c for the client (the bytes on the wire are the same), so the figures are the
server's, not the client's checksum. The client (this process) holds the envelope in memory;
only xbusd's memory is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import secrets
import shlex
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import google_crc32c
import httpx
import nats
import psutil
from xbus import checksum as xbus_checksum

from app.certs.pki import key_pem, make_csr, new_key
from app.config import Settings, load_settings
from app.runtime import children
from app.runtime.embedded import EmbeddedRuntime
from bench.http_bus import (
    HOST,
    Children,
    log_problems,
    machine,
    new_client,
    post_json,
    run_async,
    runtime_env,
    start_xbusd,
    workspace,
)
from bench.nats import connect

EVENT = "bench.blob"
MB = 1_000_000


class FastChecksum:
    """python-xbus's `xbus.checksum.Checksum`, with google-crc32c's CRC-32C."""

    def __init__(self, data: bytes | None = None) -> None:
        self._crc = 0
        if data is not None:
            self.update(data)

    def update(self, data: bytes) -> None:
        self._crc = google_crc32c.extend(self._crc, data)

    def final(self) -> int:
        return self._crc


class RssSampler:
    """xbusd's RSS every `period` seconds while running; `peak` in bytes."""

    def __init__(self, pid: int, period: float = 0.02) -> None:
        self.proc = psutil.Process(pid)
        self.period = period
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, self.rss())
            await asyncio.sleep(self.period)

    def start(self) -> None:
        self.peak = self.rss()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> int:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.peak = max(self.peak, self.rss())
        return self.peak


def graph(nodes: list[tuple[str, str]]) -> dict[str, Any]:
    """A chain of nodes (type, actor): the first is the emitter."""
    ids = [f"n{i}" for i in range(len(nodes))]
    spec: list[dict[str, Any]] = []
    for node_id, (kind, actor) in zip(ids, nodes, strict=True):
        node: dict[str, Any] = {"id": node_id, "type": kind, "actors": [actor]}
        if kind == "emitter":
            node["sourcematch"] = {"eventtypes": [EVENT]}
        spec.append(node)
    return {"nodes": spec, "edges": [f"{a}->{b}" for a, b in itertools.pairwise(ids)]}


async def topology(base_url: str, admin_key: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The actor account (python-xbus configuration), the HTTP consumer, the pipelines."""
    tag = secrets.token_hex(3)
    name = f"bench-mem-{tag}"
    names = {
        "emitter": f"{name}.emitter",
        "worker": f"{name}.worker",
        "consumer": f"{name}.consumer",
        "emitter2": f"{name}.emitter2",
        "poller": f"bench-mem-poller-{tag}",
    }
    key = new_key()
    csr = make_csr(name, key)
    kinds = {
        "emitter": "emitter",
        "worker": "worker",
        "consumer": "consumer",
        "emitter2": "emitter",
    }
    async with new_client(base_url, {"Authorization": f"Bearer {admin_key}"}) as admin:
        body = {
            "name": name,
            "type": "actor",
            "csr": csr.decode(),
            "actors": [{"name": names[role], "kind": kind} for role, kind in kinds.items()],
        }
        account_id = (await post_json(admin, "/api/v1/registrations", body))["id"]
        await post_json(admin, f"/api/v1/accounts/{account_id}/accept", {}, 200)
        signed = (await admin.get(f"/api/v1/registrations/{account_id}")).json()
        gateway = await post_json(
            admin, "/api/v1/accounts", {"name": f"bench-mem-gw-{tag}", "type": "gateway"}
        )
        poller = {"name": names["poller"], "kind": "consumer", "account_id": gateway["id"]}
        await post_json(admin, "/api/v1/actors", poller)
        chains = [
            [
                ("emitter", names["emitter"]),
                ("worker", names["worker"]),
                ("consumer", names["consumer"]),
            ],
            [("emitter", names["emitter2"]), ("consumer", names["poller"])],
        ]
        for n, chain in enumerate(chains):
            created = await post_json(
                admin,
                "/api/v1/pipelines",
                {"name": f"bench-mem-{tag}-{n}", "version": "1", "graph": graph(chain)},
            )
            await post_json(
                admin, f"/api/v1/pipelines/{created['id']}/status", {"status": "active"}, 200
            )
    conf = {
        "account-name": name,
        "nats-url": "",
        "no-reconnect": True,
        "tls": {
            "private-key": key_pem(key).decode(),
            "certificate": signed["certificate"],
            "csr": csr.decode(),
            "rootca": signed["ca"],
        },
        "actors": {names[role]: {"kind": kind} for role, kind in kinds.items()},
    }
    names["poller_key"] = gateway["api_key"]
    return conf, names


async def emit(client: Any, emitter: str, payload: bytes, item: int) -> None:
    writer = client.get_actor(emitter).open_output("default", None)
    message = writer.open_message(EVENT)
    for start in range(0, len(payload), item):
        await message.write(payload[start : start + item])
    await message.close()
    await writer.last_message()


async def poll_and_read(http: httpx.AsyncClient, poller: str, seconds: float) -> int:
    """The polling consumer: lease, read the input a page at a time, report; bytes read."""
    deadline = time.monotonic() + seconds
    while True:
        r = await http.get(f"/api/v1/actors/{poller}/requests", params={"wait": 5})
        if r.status_code == 200:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the polling consumer got no request")
    request = r.json()
    envelope = request["inputs"][0]
    read = 0
    detail = (await http.get(f"/api/v1/envelopes/{envelope['envelope_id']}")).json()
    for event in detail["events"]:
        cursor = None
        while True:
            params: dict[str, str] = {"cursor": cursor} if cursor else {}
            page: dict[str, Any] = (await http.get(event["items_url"], params=params)).json()
            if page["encoding"] == "base64":
                read += sum(len(base64.b64decode(item)) for item in page["items"])
            else:
                read += sum(len(str(item).encode()) for item in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    state = {"status": "success"}
    r = await http.post(f"/api/v1/requests/{request['request_id']}/state", json=state)
    r.raise_for_status()
    return read


async def measured(
    sampler: RssSampler, run: Callable[[], Awaitable[Any]]
) -> tuple[float, int, Any]:
    """(seconds, peak RSS, result) of one relay."""
    sampler.start()
    started = time.perf_counter()
    result = await run()
    took = time.perf_counter() - started
    return took, await sampler.stop(), result


async def raw_nats(settings: Settings, size: int, chunk: int = 500 * 1024) -> float:
    """Seconds to send `size` bytes over raw NATS (TLS, xbusd's client certificate)."""
    tls = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
    tls.load_cert_chain(str(settings.nats_tls_cert), str(settings.nats_tls_key))
    assert settings.nats_url is not None
    nc = await nats.connect(settings.nats_url, tls=tls)
    subject = f"bench.raw.{secrets.token_hex(4)}"
    got = 0
    done = asyncio.Event()

    async def count(msg: Any) -> None:
        nonlocal got
        got += len(msg.data)
        if got >= size:
            done.set()

    sub = await nc.subscribe(subject, cb=count, pending_bytes_limit=256 * 1024 * 1024)
    block = os.urandom(chunk)
    started = time.perf_counter()
    sent = 0
    while sent < size:
        part = block[: min(chunk, size - sent)]
        await nc.publish(subject, part)
        sent += len(part)
    await nc.flush()
    await asyncio.wait_for(done.wait(), 300)
    took = time.perf_counter() - started
    await sub.unsubscribe()
    await nc.close()
    return took


async def session(
    xbusd: Any, effective: Settings, workdir: Path, megabytes: float, item_kib: int
) -> dict[str, Any]:
    conf, names = await topology(xbusd.base_url, xbusd.admin_key)
    assert effective.nats_url is not None
    conf["nats-url"] = effective.nats_url
    client = await connect(conf, workdir, 30)
    size = int(megabytes * MB)
    item = item_kib * 1024
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    received: asyncio.Queue[int] = asyncio.Queue()

    async def relay(apc: Any) -> None:
        await apc.read_envelope_complete("default", 600)
        await apc.forward("default", input_name="default")

    async def consume(apc: Any) -> None:
        envelope = await apc.read_envelope_complete("default", 600)
        received.put_nowait(sum(len(i) for e in envelope.events for i in e.items))

    await client.get_actor(names["worker"]).subscribe(relay)
    await client.get_actor(names["consumer"]).subscribe(consume)
    sampler = RssSampler(xbusd.proc.pid)
    poller = {"Authorization": f"Bearer {names['poller_key']}"}
    async with httpx.AsyncClient(base_url=xbusd.base_url, headers=poller, timeout=120) as http:

        async def nats_relay(data: bytes) -> int:
            await emit(client, names["emitter"], data, item)
            return await asyncio.wait_for(received.get(), 1800)

        async def http_relay(data: bytes) -> int:
            reading = asyncio.create_task(poll_and_read(http, names["poller"], 1800))
            await emit(client, names["emitter2"], data, item)
            return await reading

        # Warm-up of both paths (prepared statements, caches), then the idle size.
        small = payload[: 2 * item]
        await nats_relay(small)
        await http_relay(small)
        await asyncio.sleep(2)
        idle = sampler.rss()
        nats_s, nats_peak, nats_bytes = await measured(sampler, lambda: nats_relay(payload))
        http_s, http_peak, http_bytes = await measured(sampler, lambda: http_relay(payload))
    try:
        await client.shutdown()
        await client.close()
    except Exception as exc:
        print(f"closing the python-xbus client: {exc!r}", file=sys.stderr)
    baseline_s = await raw_nats(effective, size)
    return {
        "megabytes": megabytes,
        "item_kib": item_kib,
        "idle_rss_mb": round(idle / MB, 1),
        "nats_relay": {
            "bytes_received": nats_bytes,
            "seconds": round(nats_s, 2),
            "mb_per_s": round(size / MB / nats_s, 2),
            "peak_rss_growth_mb": round((nats_peak - idle) / MB, 1),
        },
        "http_polling": {
            "bytes_read": http_bytes,
            "seconds": round(http_s, 2),
            "mb_per_s": round(size / MB / http_s, 2),
            "peak_rss_growth_mb": round((http_peak - idle) / MB, 1),
        },
        "raw_nats_baseline": {
            "seconds": round(baseline_s, 2),
            "mb_per_s": round(size / MB / baseline_s, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nats_memory", description=__doc__)
    parser.add_argument("--megabytes", "-m", type=float, default=200.0)
    parser.add_argument("--item-kib", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, dest="json_file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    command = "uv run python -m bench.nats_memory " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    xbus_checksum.Checksum = FastChecksum
    kids = Children()
    with workspace(args.keep) as workdir:
        settings = load_settings(
            None, data_dir=workdir / "embedded", nats_port=0, port=children.free_port(HOST)
        )
        runtime = EmbeddedRuntime(settings)
        try:
            with runtime as effective:
                env = {
                    **os.environ,
                    **runtime_env(settings, effective),
                    "XBUS_PKI_DIR": str(effective.pki_path),
                    # The envelope is one event of 2,000 items of 100 KiB: within the limits.
                    "XBUS_ENVELOPE_MAX_BYTES": str(int(args.megabytes * MB) + MB),
                }
                xbusd = start_xbusd(kids, workdir, env, 1)
                client_dir = workdir / "python-xbus"
                client_dir.mkdir()
                try:
                    figures = run_async(
                        session(xbusd, effective, client_dir, args.megabytes, args.item_kib)
                    )
                finally:
                    kids.stop(xbusd.proc)
                figures["log_problems"] = log_problems(xbusd.log_file)
        finally:
            kids.stop_all()
    figures = {"command": command, "machine": machine(), **figures}
    print(json.dumps(figures, indent=2))
    if args.json_file is not None:
        args.json_file.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
