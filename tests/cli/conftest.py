"""xbusctl against a live server: the test app served by uvicorn on a free port of
127.0.0.1 (in the test's event loop), and the CLI run as a subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from fastapi import FastAPI

from tests.bus.conftest import bus
from tests.conftest import ADMIN_KEY, served

__all__ = ["Result", "Run", "bus"]


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


Run = Callable[..., Awaitable[Result]]


@pytest.fixture
async def server(app: FastAPI) -> AsyncIterator[str]:
    async with served(app) as url:
        yield url


@pytest.fixture
def xbusctl(server: str) -> Run:
    """Run xbusctl as the admin (XBUS_URL, XBUS_API_KEY) unless `env` says otherwise."""

    async def run(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> Result:
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith("XBUS_") and k != "COLUMNS"
        }
        environ.update({"XBUS_URL": server, "XBUS_API_KEY": ADMIN_KEY})
        for key, value in (env or {}).items():
            if value == "":
                environ.pop(key, None)
            else:
                environ[key] = value
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli.xbusctl",
            *args,
            env=environ,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 120)
        assert proc.returncode is not None
        return Result(proc.returncode, out.decode(), err.decode())

    return run
