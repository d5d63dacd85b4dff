"""`xbus-fullenv run` in command mode: the line protocol over pipes (`--no-prompt`), the
prompt of `--shell`, and python-xbus's own `xbus.fullenv.Fullenv` helper driving it
unchanged, with XBUS_TEST_POSTGRES_DSN pointing at the test session's PostgreSQL (each
startup gets a fresh database there, dropped at shutdown)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import yaml

from app.runtime.children import free_port
from tests.cli.test_fullenv import _env, _gone, _processes_of
from tests.conftest import _plain

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "fullenv-python-xbus.yaml"
BIN = str(Path(sys.executable).parent)


@pytest.fixture
def dsn(pg_server_url: str) -> str:
    """The session's PostgreSQL as a plain postgresql:// DSN (what XBUS_TEST_POSTGRES_DSN
    usually holds)."""
    return _plain(pg_server_url)


async def _databases(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'xbus_fullenv_%'"
        )
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


@dataclass
class Shell:
    """xbus-fullenv in command mode, one command at a time."""

    proc: asyncio.subprocess.Process
    stderr: list[bytes]

    async def reply(self, timeout: float = 30) -> str:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            assert raw, "xbus-fullenv closed its stdout:\n" + b"".join(self.stderr).decode()
            line = raw.decode().rstrip("\n")
            if line.startswith("< "):
                return line

    async def send(self, command: str, timeout: float = 30) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.reply(timeout)


async def run_fullenv(
    *args: str, stdin: int = subprocess.PIPE, extra_env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    """`xbus-fullenv run ARGS`, its three streams piped (stdin unless told otherwise)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli.fullenv",
        "run",
        *args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(extra_env),
    )


@pytest.fixture
async def shell(dsn: str) -> AsyncIterator[Shell]:
    proc = await run_fullenv(
        "--no-prompt",
        str(EXAMPLE),
        "--var",
        "EXPECT=accepted",
        extra_env={"XBUS_TEST_POSTGRES_DSN": dsn},
    )
    stderr: list[bytes] = []

    async def drain() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            stderr.append(line)

    reader = asyncio.create_task(drain())
    try:
        yield Shell(proc, stderr)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait_for(reader, 10)


@pytest.mark.timeout(120)
async def test_the_line_protocol_over_pipes(shell: Shell, dsn: str) -> None:
    first = await shell.reply()
    assert first.startswith("< OK: ")
    workdir = Path(first.removeprefix("< OK: "))
    assert workdir.is_dir()
    assert await shell.send("wd") == f"< OK: {workdir}"
    assert await shell.send("frobnicate now") == "< ERR: unknown command frobnicate (try help)"
    assert "client-config ACCOUNT" in await shell.send("help")
    assert await shell.send("client-config tester") == (
        "< ERR: the environment is not up: run startup first"
    )
    assert json.loads((await shell.send("status")).removeprefix("< OK: "))["state"] == "down"
    before = await _databases(dsn)

    assert await shell.send("startup", timeout=150) == "< OK"
    summary = json.loads((workdir / "env.json").read_text())
    database = summary["database"]
    assert database.startswith("xbus_fullenv_")
    assert await _databases(dsn) == before | {database}
    assert await shell.send("startup") == "< ERR: the environment is already up (shutdown first)"

    # The test process's client configuration has the fullenv.consumer service (python-xbus
    # serves it there) and not the one xbus-client serve runs; the other way round for the
    # configuration xbus-client serve got: no actor is served twice.
    reply = await shell.send("client-config tester")
    path = Path(reply.removeprefix("< OK: "))
    assert path == workdir / "clients" / "tester.yaml"
    conf = yaml.safe_load(path.read_text())
    assert conf["actors"]["tester.consumer"]["service"] == {"type": "fullenv.consumer"}
    assert "service" not in conf["actors"]["tester.printer"]
    assert "service" not in conf["actors"]["tester.emitter"]
    assert (path.parent / "tester.certs").is_file()  # where python-xbus looks for it
    served = yaml.safe_load((path.parent / "tester.served.yaml").read_text())
    assert "service" not in served["actors"]["tester.consumer"]
    assert served["actors"]["tester.printer"]["service"] == {"type": "demo.print-to-console"}
    assert (await shell.send("client-config shop")).startswith(
        "< ERR: account shop is not a NATS account"
    )
    assert (await shell.send("client-config")).startswith("< ERR: usage: client-config")

    status = json.loads((await shell.send("status")).removeprefix("< OK: "))
    assert status["state"] == "up"
    assert status["database"] == database
    assert {n: p["running"] for n, p in status["processes"].items()} == {
        "xbusd": True,
        "tester": True,
    }
    async with httpx.AsyncClient(base_url=summary["url"]) as http:
        key = summary["accounts"]["shop"]["api_key"]
        actors = await http.get("/api/v1/actors", headers={"Authorization": f"Bearer {key}"})
        assert actors.status_code == 200
    emitted = json.loads((await shell.send("emit", timeout=90)).removeprefix("< OK: "))
    assert emitted["ok"] is True
    assert emitted["results"][0]["got"] == "accepted"
    assert (await shell.send("emit 7")).startswith("< ERR: no emit step 7")

    pids = list(summary["processes"].values())
    pids += [p.pid for p in psutil.Process(summary["processes"]["xbusd"]).children(True)]
    assert await shell.send("shutdown", timeout=90) == "< OK"
    assert _gone(pids) == []
    assert await _databases(dsn) == before
    assert await shell.send("shutdown") == "< OK"  # nothing left to stop
    assert (await shell.send("client-config tester")).startswith("< ERR: the environment is not")

    # Up again on the same directory (a fresh database: everything registered again), then
    # quit while up: everything stops, the database is dropped.
    assert await shell.send("startup", timeout=150) == "< OK"
    again = json.loads((workdir / "env.json").read_text())
    assert again["database"] not in (database, None)
    assert (await shell.send("client-config tester")).startswith("< OK: ")
    pids = list(again["processes"].values())
    pids += [p.pid for p in psutil.Process(again["processes"]["xbusd"]).children(True)]
    assert await shell.send("quit", timeout=90) == "< OK"
    assert await asyncio.wait_for(shell.proc.wait(), 30) == 0
    assert _gone(pids) == []
    assert await _databases(dsn) == before
    assert not workdir.exists()  # a temporary directory, removed
    assert _processes_of(workdir) == []


@pytest.mark.timeout(120)
async def test_up_at_launch_then_sigterm_stops_everything(dsn: str) -> None:
    """--up: the first reply comes once the environment is up; SIGTERM stops it all (exit
    0), the database is dropped."""
    proc = await run_fullenv(
        str(EXAMPLE),
        "--no-prompt",
        "--up",
        "--no-auto-startup",
        extra_env={"XBUS_TEST_POSTGRES_DSN": dsn},
    )
    assert proc.stdout is not None
    try:
        first = (await asyncio.wait_for(proc.stdout.readline(), 150)).decode()
        if not first.startswith("< OK: "):
            proc.kill()
            _, err = await proc.communicate()
            raise AssertionError(first + err.decode())
        workdir = Path(first.removeprefix("< OK: ").strip())
        summary = json.loads((workdir / "env.json").read_text())
        assert set(summary["processes"]) == {"xbusd"}  # --no-auto-startup: no xbus-client
        # Without auto-startup, tester.yaml keeps every service (run them as you like).
        conf = yaml.safe_load((workdir / "clients" / "tester.yaml").read_text())
        assert conf["actors"]["tester.printer"]["service"] == {"type": "demo.print-to-console"}
        pids = [summary["processes"]["xbusd"]]
        pids += [p.pid for p in psutil.Process(pids[0]).children(True)]
        assert summary["database"] in await _databases(dsn)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert _gone(pids) == []
    assert summary["database"] not in await _databases(dsn)
    assert not workdir.exists()


async def test_shell_prompt_and_end_of_input(tmp_path: Path) -> None:
    """--shell: the same replies after a prompt; the end of input quits. Nothing is started
    before `startup`."""
    data_dir = tmp_path / "env"
    proc = await run_fullenv(
        str(EXAMPLE),
        "--shell",
        "--data-dir",
        str(data_dir),
    )
    out, err = await asyncio.wait_for(proc.communicate(b"wd\n\nnope\nclient-config tester\n"), 60)
    assert proc.returncode == 0, err.decode()
    prompts = out.decode().split("xbus-fullenv> ")
    assert prompts == [
        f"< OK: {data_dir}\n",
        f"< OK: {data_dir}\n",
        "",
        "< ERR: unknown command nope (try help)\n",
        "< ERR: the environment is not up: run startup first\n",
        "\n",
    ]
    assert "end of input: stopping" in err.decode()
    assert not (data_dir / "env.json").exists()

    both = await run_fullenv(
        str(EXAMPLE),
        "--shell",
        "--batch",
        stdin=subprocess.DEVNULL,
    )
    _, err = await asyncio.wait_for(both.communicate(), 60)
    assert both.returncode == 2
    assert "exclude each other" in err.decode()


async def test_a_failed_startup_is_an_error_and_the_shell_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "env.yaml"
    port = free_port()  # nothing listens there
    path.write_text(f"xbusd: {{url: 'http://127.0.0.1:{port}', admin-key: xbk_x}}\n")
    proc = await run_fullenv(
        str(path),
        "--no-prompt",
        "--startup-timeout",
        "1",
    )
    out, err = await asyncio.wait_for(proc.communicate(b"startup\nstatus\nshutdown\nquit\n"), 60)
    assert proc.returncode == 0, err.decode()
    replies = out.decode().splitlines()
    assert replies[0].startswith("< OK: ")
    assert replies[1] == (
        f"< ERR: startup failed: the bus at http://127.0.0.1:{port} is not ready (GET /readyz)"
    )
    assert json.loads(replies[2].removeprefix("< OK: "))["state"] == "down"
    assert replies[3:] == ["< OK", "< OK"]


@pytest.mark.timeout(150)
async def test_python_xbus_fullenv_helper_unchanged(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-xbus's own helper: it runs `xbus-fullenv run --no-prompt FILE` from the PATH,
    serves `fullenv.consumer` in this process, and runs xbusctl with the environment's
    configuration (any stderr output is an error there)."""
    from xbus import envelope_writer, xbus_pb2
    from xbus.fullenv import Fullenv

    monkeypatch.setenv("XBUS_TEST_POSTGRES_DSN", dsn)
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    for name in [k for k in os.environ if k.startswith("XBUS_") and k != "XBUS_TEST_POSTGRES_DSN"]:
        monkeypatch.delenv(name)  # xbusctl would read XBUS_URL / XBUS_API_KEY over its config

    env = Fullenv(str(EXAMPLE))
    pids: list[int] = []
    database = ""
    async with env:
        workdir = Path(env.workdir)
        async with env.up():
            summary: dict[str, Any] = json.loads((workdir / "env.json").read_text())
            database = summary["database"]
            pids = list(summary["processes"].values())
            pids += [p.pid for p in psutil.Process(summary["processes"]["xbusd"]).children(True)]
            assert await env.wd() == str(workdir)

            client = await env.load_client("tester")
            assert set(env.consumers) == {"tester.consumer"}
            await client.connect()
            await client.startup()
            try:
                consumer = env.consumers["tester.consumer"]
                # Over HTTP, as the emitter's account ...
                key = summary["accounts"]["shop"]["api_key"]
                async with httpx.AsyncClient(
                    base_url=summary["url"],
                    headers={"Authorization": f"Bearer {key}"},
                    timeout=60,
                ) as shop:
                    body = {
                        "events": [
                            {"type": "order.created", "encoding": "json", "items": [{"id": 7}]}
                        ]
                    }
                    r = await shop.post("/api/v1/actors/shop.orders/output", json=body)
                    assert r.status_code == 202, r.text
                    first = r.json()["process_id"]
                    r = await shop.get(f"/api/v1/processes/{first}", params={"wait": 45})
                    assert r.json()["status"] == "done", r.text
                received = consumer.inputs["default"]
                assert received.events[0].type == "order.created"
                assert [json.loads(i) for i in received.events[0].items] == [{"id": 7}]

                # ... and through python-xbus, as the account's emitter actor.
                emitter = client.get_actor("tester.emitter")
                acks: list[Any] = []

                async def send(fragment: Any) -> None:
                    request = xbus_pb2.OutputRequest(output="default", envelope=fragment)
                    acks.append(await emitter.broker.Output(request))

                writer = envelope_writer.EnvelopeWriter(send)
                message = writer.open_message("order.created")
                await message.write_chunk(b'{"id": 8}')
                await message.close()
                await writer.last_message()
                assert acks[-1].status == xbus_pb2.EnvelopeAck.ACCEPTED, acks[-1]
                for _ in range(300):  # bounded: up to 60 s
                    items = consumer.inputs["default"].events[0].items
                    if [json.loads(i) for i in items] == [{"id": 8}]:
                        break
                    await asyncio.sleep(0.2)
                else:
                    raise AssertionError("fullenv.consumer did not get the NATS envelope")
            finally:
                await client.shutdown()
                await client.close()

            listed = json.loads(await env.ctl("ps", "list", "--json"))
            statuses = {p["id"]: p["status"] for p in listed}
            assert statuses[first] == "done"
            assert len(statuses) == 2
    assert env.process is None  # quit answered, the process waited for
    assert _gone(pids) == []
    assert database not in await _databases(dsn)
    assert not workdir.exists()
