"""Export: an NDJSON stream of processes with their logs, requests and envelopes, gzip on
request, in constant memory."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import tracemalloc
from collections.abc import MutableMapping
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from tests.conftest import ADMIN_KEY, assert_problem, row_counts
from tests.ops.conftest import Wired, emit, poll, report, seed_processes


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


async def test_export_processes_with_logs_requests_and_envelopes(
    wired: Wired, admin: httpx.AsyncClient
) -> None:
    w = wired
    emission = await emit(w)
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    out = {"events": [{"type": "order.enriched", "encoding": "json", "items": [{"ok": True}]}]}
    assert (
        await report(
            w.acct.http,
            job["request_id"],
            status="success",
            outputs={"default": out},
            messages=[{"level": "warning", "text": "slow"}],
        )
    ).status_code == 200
    other = await emit(w)

    r = await admin.post("/api/v1/processes/export", json={"envelopes": True})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = _lines(r.text)
    assert lines[0]["kind"] == "header"
    assert lines[0]["total"] == 2
    assert lines[0]["selection"]["envelopes"] is True
    assert lines[-1] == {"kind": "end", "count": 2}
    processes = [line for line in lines if line["kind"] == "process"]
    envelopes = {line["id"]: line for line in lines if line["kind"] == "envelope"}
    # Newest first.
    assert [p["id"] for p in processes] == [other["process_id"], emission["process_id"]]
    first = processes[1]
    assert first["emitter_name"] == w.em["name"]
    assert first["pipeline_name"] == w.pipeline["name"]
    assert [n["node_id"] for n in first["nodes"]] == ["emit", "worker0", "consumer1"]
    assert "slow" in [e["text"] for e in first["logs"]]
    assert [(r["node_id"], r["status"]) for r in first["requests"]] == [
        ("worker0", "success"),
        ("consumer1", "pending"),
    ]
    assert first["requests"][0]["delivery_attempts"] == []
    trigger = envelopes[emission["envelope_id"]]
    assert trigger["items_included"] is True
    assert trigger["events"][0]["items"] == [{"id": 1}, {"id": 2}]
    produced = [e for e in envelopes.values() if e["node_id"] == "worker0"]
    assert produced[0]["events"][0]["items"] == [{"ok": True}]
    assert produced[0]["process_id"] == emission["process_id"]

    # Filters as the process list; envelopes above the limit: metadata only.
    r = await admin.post(
        "/api/v1/processes/export",
        json={
            "ids": [emission["process_id"]],
            "envelopes": True,
            "envelope_size_limit": 5,
        },
    )
    lines = _lines(r.text)
    assert lines[0]["total"] == 1
    trigger = next(line for line in lines if line.get("id") == emission["envelope_id"])
    assert trigger["items_included"] is False
    assert "items" not in trigger["events"][0]
    assert trigger["events"][0]["item_count"] == 2
    # Without envelopes, none.
    r = await admin.post("/api/v1/processes/export", json={"emitter": w.em["name"]})
    assert {line["kind"] for line in _lines(r.text)} == {"header", "process", "end"}


async def test_export_gzip_and_partitions(
    app: FastAPI, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await seed_processes(db, 300, logs_per_process=1)
    # A gzip file on request.
    r = await admin.post("/api/v1/processes/export", json={"gzip": True})
    assert r.headers["content-type"] == "application/gzip"
    assert "attachment" in r.headers["content-disposition"]
    lines = _lines(gzip.decompress(r.content).decode())
    assert lines[0]["total"] == 300
    assert lines[-1] == {"kind": "end", "count": 300}

    # Compressed on the wire when the client accepts it (httpx decodes it).
    async with admin.stream(
        "POST", "/api/v1/processes/export", json={}, headers={"Accept-Encoding": "gzip"}
    ) as response:
        assert response.headers["content-encoding"] == "gzip"
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert len(_lines(gzip.decompress(raw).decode())) == 302

    # Partitions: disjoint, and together the whole selection.
    seen: list[str] = []
    for index in range(3):
        r = await admin.post(
            "/api/v1/processes/export", json={"partition_index": index, "partition_count": 3}
        )
        part = _lines(r.text)
        assert part[0]["total"] == part[-1]["count"]
        seen += [line["id"] for line in part if line["kind"] == "process"]
    assert len(seen) == len(set(seen)) == 300


async def test_bad_export_requests(admin: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await row_counts(db)
    for body, text in [
        ({"partition_index": 1}, "go together"),
        ({"partition_index": 3, "partition_count": 3}, "less than"),
        ({"envelope_size_limit": -1}, None),
        ({"envelope_size_limit": 10**12}, "at most"),
        ({"status": ["sleeping"]}, None),
        ({"unknown": 1}, None),
        ({"created_after": "yesterday"}, None),
        ({"created_after": "2026-01-01T00:00:00"}, "timezone"),
    ]:
        assert_problem(await admin.post("/api/v1/processes/export", json=body), 422, text)
    assert await row_counts(db) == before


class _Sink:
    """The ASGI side of a client that reads the body and throws it away."""

    def __init__(self) -> None:
        self.size = 0
        self.lines = 0
        self.status = 0
        self.chunks = 0
        self.done = asyncio.Event()
        self.tail = b""

    async def receive(self, body: bytes) -> Any:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.done.wait()
            return {"type": "http.disconnect"}

        return receive

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            self.lines += chunk.count(b"\n")
            self.chunks += 1
            self.tail = (self.tail + chunk)[-200:]
            if not message.get("more_body", False):
                self.done.set()


async def test_export_of_10000_processes_streams_in_bounded_memory(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    # 10,000 processes, each with 5 log lines of ~300 bytes and an envelope of 2 KB.
    await seed_processes(
        db,
        10_000,
        logs_per_process=5,
        log_text_bytes=300,
        with_envelopes=True,
        item_bytes=2000,
    )
    await db.execute("ANALYZE")
    body = json.dumps({"envelopes": True}).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/processes/export",
        "raw_path": b"/api/v1/processes/export",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"xbus.test"),
            (b"authorization", f"Bearer {ADMIN_KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("xbus.test", 80),
    }
    sink = _Sink()
    tracemalloc.start()
    try:
        started = time.monotonic()
        await app(scope, await sink.receive(body), sink.send)
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.status == 200
    assert sink.lines == 1 + 10_000 + 10_000 + 1  # header, envelopes, processes, end
    assert sink.tail.endswith(b'{"kind":"end","count":10000}\n')
    print(
        f"\nexport: {sink.size / 1e6:.1f} MB in {sink.chunks} chunks, {elapsed:.1f} s, "
        f"peak traced memory {peak / 1e6:.1f} MB"
    )
    # The stream is ~50 MB; the server holds one batch at a time.
    assert sink.size > 40_000_000
    assert peak < sink.size / 5
    assert peak < 12_000_000
