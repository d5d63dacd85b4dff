"""The command mode of `xbus-fullenv run` (`--no-prompt`, `--shell`): the line protocol of
python-xbus's `xbus.fullenv.Fullenv` helper. One command a line on stdin, one reply a line on
stdout (`< OK`, `< OK: <value>`, `< ERR: <message>`); everything else goes to stderr."""

from __future__ import annotations

import json
import os
import select
import sys
from collections.abc import Callable

from app.cli.client_http import BusError, BusHttp
from app.cli.fullenv_run import (
    ENV_JSON,
    FullEnv,
    Interrupted,
    RunError,
    bus_messages,
    describe,
    reply,
    write,
)

PROMPT = "xbus-fullenv> "
COMMANDS_HELP = (
    "startup | shutdown | status | wd | client-config ACCOUNT | env | emit [INDEX...] | help | quit"
)


class CommandError(Exception):
    """A command of the command mode failed: answered `< ERR: <message>`."""


class CommandShell:
    """Commands on stdin drive a `FullEnv`: startup, shutdown, status, emit..."""

    def __init__(self, fe: FullEnv) -> None:
        self.fe = fe

    def loop(self) -> int:
        """The line protocol of python-xbus's `xbus.fullenv.Fullenv`: one command a line on
        stdin, one reply a line on stdout (`< OK`, `< OK: <value>`, `< ERR: <message>`);
        everything else goes to stderr. The first reply, at launch, is the directory. End of
        input is `quit`."""
        self.fe.serving = True  # from now on, Ctrl-C/SIGTERM is the way out, not a failure
        if self.fe.options.up:
            try:
                self._command("startup", [])
            except CommandError as exc:
                reply(f"< ERR: {exc}")
            else:
                reply(f"< OK: {self.fe.dir}")
        else:
            reply(f"< OK: {self.fe.dir}")
        lines = _Lines(sys.stdin.fileno())
        while True:
            if self.fe.options.prompt:
                write(PROMPT)
            line = lines.next(self._watch)
            if line is None:
                if self.fe.options.prompt:
                    write("\n")
                self.fe.note("end of input: stopping")
                return 0
            words = line.split()
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                self.fe.quit_requested = True  # answered once everything is stopped
                return 0
            try:
                value = self._command(words[0], words[1:])
            except CommandError as exc:
                reply(f"< ERR: {exc}")
            except Interrupted:
                raise
            except Exception as exc:  # the command failed unexpectedly; the shell goes on
                self.fe.err.print_exception()
                reply(f"< ERR: {words[0]} failed: {describe(exc)}")
            else:
                reply("< OK" if value is None else f"< OK: {value}")

    def _command(self, name: str, args: list[str]) -> str | None:
        handlers: dict[str, Callable[[list[str]], str | None]] = {
            "startup": self._cmd_startup,
            "shutdown": self._cmd_shutdown,
            "status": self._cmd_status,
            "wd": lambda _: str(self.fe.dir),
            "client-config": self._cmd_client_config,
            "env": self._cmd_env,
            "emit": self._cmd_emit,
            "help": lambda _: COMMANDS_HELP,
        }
        handler = handlers.get(name)
        if handler is None:
            raise CommandError(f"unknown command {name} (try help)")
        return handler(args)

    def _cmd_startup(self, _args: list[str]) -> None:
        if self.fe.up:
            raise CommandError("the environment is already up (shutdown first)")
        try:
            self.fe.startup()
        except Interrupted:
            raise
        except Exception as exc:
            if isinstance(exc, BusError):
                message = f"the bus answered: {exc}{bus_messages(exc)}"
            elif isinstance(exc, RunError):
                message = str(exc)
            else:  # a bug, or an unexpected failure: the details on stderr
                self.fe.err.print_exception()
                message = describe(exc)
            self.fe.fail(message)
            self.fe.shutdown()
            first, _, more = message.partition("\n")
            more_text = " (more on stderr)" if more else ""
            raise CommandError(f"startup failed: {first}{more_text}") from None
        return None

    def _cmd_shutdown(self, _args: list[str]) -> None:
        self.fe.shutdown()  # stopping what is already stopped does nothing
        return None

    def _require_up(self) -> None:
        if not self.fe.up:
            raise CommandError("the environment is not up: run startup first")

    def _cmd_client_config(self, args: list[str]) -> str:
        if len(args) != 1:
            raise CommandError("usage: client-config ACCOUNT")
        self._require_up()
        state = self.fe.accounts.get(args[0])
        nats = ", ".join(n for n, s in self.fe.accounts.items() if s.client_config) or "none"
        if state is None:
            raise CommandError(f"no account {args[0]} in the file (NATS accounts: {nats})")
        if state.client_config is None:
            raise CommandError(
                f"account {args[0]} is not a NATS account: it has no client configuration "
                f"(NATS accounts: {nats})"
            )
        return str(state.client_config)

    def _cmd_env(self, _args: list[str]) -> str:
        self._require_up()
        return str(self.fe.dir / ENV_JSON)

    def _cmd_status(self, _args: list[str]) -> str:
        status = {
            "state": "up" if self.fe.up else "down",
            "directory": str(self.fe.dir),
            "url": self.fe.url if self.fe.up else None,
            "nats_url": self.fe.nats_url,
            "database": self.fe.database,
            "processes": {
                child.name: {"pid": child.process.pid, "running": child.process.poll() is None}
                for child in self.fe.children
            },
        }
        return json.dumps(status)

    def _cmd_emit(self, args: list[str]) -> str:
        count = len(self.fe.env.spec.emit)
        try:
            indexes = [int(a) for a in args] if args else list(range(count))
        except ValueError:
            raise CommandError(
                "usage: emit [INDEX...] (indexes of the file's emit steps)"
            ) from None
        wrong = [i for i in indexes if not 0 <= i < count]
        if wrong:
            raise CommandError(f"no emit step {wrong[0]} (the file has {count}: 0 to {count - 1})")
        if not indexes:
            raise CommandError("the file has no emit steps")
        self._require_up()
        try:
            with BusHttp(self.fe.url, self.fe.admin_key) as admin:
                results = self.fe.emit(admin, indexes)
        except BusError as exc:
            raise CommandError(f"the bus answered: {exc}") from None
        self.fe.print_results(results)
        summary = {
            "ok": all(r.ok for r in results),
            "met": sum(r.ok for r in results),
            "total": len(results),
            "results": [
                {
                    "index": r.index,
                    "emitter": r.emitter,
                    "process_id": r.process_id,
                    "expected": r.expect,
                    "got": r.got,
                    "ok": r.ok,
                }
                for r in results
            ],
        }
        return json.dumps(summary)

    def _watch(self) -> None:
        """While waiting for a command: a child that died is told on stderr; without xbusd
        the environment is down (the next command says so)."""
        for child in self.fe.children:
            code = child.process.poll()
            if code is None or not child.watched:
                continue
            child.watched = False
            if child.name == "xbusd":
                self.fe.fail(f"xbusd exited with code {code}; see {child.log}; stopping the rest")
                self.fe.shutdown()
                return
            self.fe.fail(f"the actors of {child.name} exited with code {code}; see {child.log}")


class _Lines:
    """Lines of a file descriptor, read without blocking the main thread for long: `idle`
    runs every 0.2 s while no line is complete (signals are handled meanwhile)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False

    def next(self, idle: Callable[[], None]) -> str | None:
        while True:
            if b"\n" in self.buffer:
                line, _, self.buffer = self.buffer.partition(b"\n")
                return line.decode("utf-8", "replace")
            if self.eof:
                rest, self.buffer = self.buffer, b""
                return rest.decode("utf-8", "replace") if rest else None
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                idle()
                continue
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.buffer += chunk
            else:
                self.eof = True
