"""Starting and stopping child servers so that none outlives xbusd.

Children get their own session (a terminal's Ctrl-C reaches xbusd only, which then stops
them in order) and a parent-death signal, so even a `kill -9` of xbusd stops them. What a
crash still leaves behind (pid files, a server started by an older xbusd) is cleaned up at
the next start by `stop_stale`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import psutil

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _parent_death_signal(sig: int) -> Callable[[], None]:
    def set_it() -> None:
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)

    return set_it


def die_with_parent(sig: int, parent_pid: int) -> None:
    """For a child started by other means than `spawn` (uvicorn's worker processes): ask for
    `sig` when the parent dies, and send it at once if the parent is already gone."""
    _parent_death_signal(sig)()
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def spawn(
    args: Sequence[str],
    *,
    log_file: Path,
    death_signal: int = signal.SIGTERM,
    user: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a child server. Must be called from the main thread: the parent-death signal
    fires when the *thread* that forked exits."""
    out = log_file.open("ab")
    try:
        return subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal(death_signal),
            user=user,
            env=env,
            cwd=cwd,
        )
    finally:
        out.close()


class Server(Protocol):
    process: subprocess.Popen[bytes] | None

    def launch(self, timeout: float) -> None: ...

    def stop(self, timeout: float) -> None: ...


def relaunch(server: Server, timeout: float) -> None:
    """Start a server that exited again; one that started but never became ready is stopped,
    not left beside the next try."""
    try:
        server.launch(timeout)
    except BaseException:
        if server.process is not None and server.process.poll() is None:
            server.stop(10)
        raise


def stop(process: subprocess.Popen[bytes], sig: int, timeout: float, name: str) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop within %.0f s; killing it", name, timeout)
        process.kill()
        process.wait(10)


def stop_stale(pid: int, sig: int, matches: Callable[[psutil.Process], bool], name: str) -> bool:
    """Stop a process left by an earlier xbusd if it is still the server we think it is.
    Returns True when one was found."""
    try:
        proc = psutil.Process(pid)
        if not matches(proc):
            return False
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    log.warning("stopping a %s left running by an earlier xbusd (pid %d)", name, pid)
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return True


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes],
    log_file: Path,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {process.returncode}; see {log_file}:\n{tail(log_file)}"
            )
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s; see {log_file}:\n{tail(log_file)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def cmdline_mentions(proc: psutil.Process, needle: str) -> bool:
    return any(needle in part for part in proc.cmdline())


__all__ = [
    "cmdline_mentions",
    "die_with_parent",
    "free_port",
    "port_is_free",
    "read_pid",
    "relaunch",
    "spawn",
    "stop",
    "stop_stale",
    "wait_until",
]
