"""`xbus-fullenv run`: start (or reach) a bus, create what the environment file describes,
run the NATS actors, and either wait for Ctrl-C/SIGTERM, or run the `emit` steps (--batch),
or take commands on stdin (`--no-prompt`, `--shell`: the line protocol python-xbus's
`xbus.fullenv.Fullenv` helper speaks; see app/cli/fullenv_shell.py).

Everything it creates is looked up by name first, so a second run on the same directory
reuses and updates rather than duplicates. Children (xbusd, `xbus-client serve`) get their
own session and a parent-death signal, and are stopped in reverse order, so none outlives
the run, even after a `kill -9` of xbus-fullenv."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console
from rich.table import Table

from app.certs.pki import key_pem, make_csr, new_key
from app.cli.client_files import (
    BUS_URL,
    CERTIFICATE,
    CSR,
    PRIVATE_KEY,
    REGISTRATION_ID,
    ROOTCA,
    read_certs,
    write_certs,
)
from app.cli.client_http import BusError, BusHttp
from app.cli.fullenv_config import SECRET_MASK, AccountSpec, ActorSpec, Environment, PipelineSpec
from app.db import async_url
from app.pipelines.graph import check_graph
from app.runtime.children import free_port, spawn, stop, tail, wait_until

FINAL = ("done", "error")
ENV_JSON = "env.json"
# A PostgreSQL server for the started xbusd instead of its embedded one: each startup gets a
# fresh database there, dropped at shutdown (python-xbus's Fullenv helper requires it).
TEST_DSN = "XBUS_TEST_POSTGRES_DSN"


class RunError(Exception):
    """A step of the run failed; the message says which and why."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived."""


def write(text: str) -> None:
    """Text to stdout at once; a reader that went away stops everything, quietly."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        raise Interrupted(signal.SIGPIPE) from None


def reply(line: str) -> None:
    """One reply line: `< OK`, `< OK: <value>` or `< ERR: <message>`."""
    write(" ".join(line.splitlines()) + "\n")


@dataclass
class RunOptions:
    data_dir: Path | None = None
    keep: bool = False
    auto_startup: bool = True
    batch: bool = False
    timeout: float = 60.0
    startup_timeout: float = 120.0
    commands: bool = False  # command mode: the line protocol on stdin/stdout
    prompt: bool = False  # command mode: print a prompt (--shell)
    up: bool = False  # command mode: start the environment at launch


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    watched: bool = True


@dataclass
class AccountState:
    spec: AccountSpec
    id: str
    api_key: str
    action: str
    client_config: Path | None = None
    certs: Path | None = None


@dataclass
class Row:
    what: str
    name: str
    action: str
    details: str = ""


@dataclass
class EmitResult:
    index: int
    emitter: str
    expect: str
    got: str
    process_id: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.got == self.expect


@dataclass
class _Signals:
    """SIGINT/SIGTERM raise Interrupted in the main thread, except while a child is being
    spawned (then right after), and never once the stop has begun."""

    received: int | None = None
    hold: int = 0
    stopping: bool = False
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.stopping:
            return
        self.received = signum
        if not self.hold:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.hold += 1
        try:
            yield
        finally:
            self.hold -= 1
        if not self.hold and self.received is not None and not self.stopping:
            raise Interrupted(self.received)


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def _clean_environ() -> dict[str, str]:
    """The children's environment: ours without XBUS_* (the file says what the bus gets)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


class FullEnv:
    def __init__(self, env: Environment, options: RunOptions, out: Console, err: Console) -> None:
        self.env = env
        self.options = options
        self.out = out
        self.err = err
        self.signals = _Signals()
        self.children: list[Child] = []
        self.rows: list[Row] = []
        self.accounts: dict[str, AccountState] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.dir = Path()
        self.temporary = False
        self.url = ""
        self.admin_key = ""
        self.admin_key_file: Path | None = None
        self.nats_url: str | None = None
        self.serving = False
        self.database: str | None = None  # created on XBUS_TEST_POSTGRES_DSN's server
        self.database_dsn = ""  # the maintenance connection to that server
        self.up = False
        self.quit_requested = False

    # ------------------------------------------------------------------------ the run
    def run(self, command_loop: Callable[[FullEnv], int] | None = None) -> int:
        """The environment's whole run; in command mode, `command_loop` reads the commands
        (app/cli/fullenv_shell.py)."""
        self.signals.install()
        code = 1
        try:
            self._prepare_dir()
            if self.options.commands:
                assert command_loop is not None, "command mode needs its command loop"
                code = command_loop(self)
            else:
                self.startup()
                code = self._batch() if self.options.batch else self._serve()
        except Interrupted:
            self.note("stopping")
            # Ctrl-C is how a running environment ends; before that, it is an interruption.
            code = 0 if self.serving else 130
        except RunError as exc:
            self.fail(str(exc))
            code = 1
        except BusError as exc:
            self.fail(f"the bus answered: {exc}{bus_messages(exc)}")
            code = 1
        finally:
            self.signals.stopping = True
            try:
                self.shutdown()
                self._cleanup_dir()
            finally:
                self.signals.restore()
            if self.quit_requested:
                reply("< OK")
        return code

    def startup(self) -> None:
        """The environment up: the bus, what the file describes, the served actors."""
        self._start_bus()
        with BusHttp(self.url, self.admin_key) as admin:
            self._check_admin(admin)
            self._provision(admin)
            if self.options.auto_startup:
                self._start_actors(admin)
        self._write_env_json()
        self._print_summary()
        self.up = True

    def shutdown(self) -> None:
        """Everything started stopped (in reverse order), the test database dropped; the
        directory stays (a later startup reuses it)."""
        self.up = False
        self._stop_children()
        self.children = []
        self._drop_database()
        self.rows = []
        self.accounts = {}
        self.pipelines = {}
        self.nats_url = None
        self.admin_key_file = None

    def note(self, text: str) -> None:
        self.err.print(f"xbus-fullenv: {text}", highlight=False, markup=False)

    def fail(self, text: str) -> None:
        self.err.print(f"error: {text}", style="red", highlight=False, markup=False)

    # ------------------------------------------------------------------------ directory
    def _prepare_dir(self) -> None:
        configured = self.options.data_dir or self.env.data_dir()
        if configured is None:
            self.dir = Path(tempfile.mkdtemp(prefix="xbus-fullenv-"))
            self.temporary = True
        else:
            self.dir = configured.resolve()
            self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.note(f"environment directory {self.dir}")

    def _cleanup_dir(self) -> None:
        if not self.temporary:
            return
        if self.options.keep:
            self.note(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _previous(self) -> dict[str, Any]:
        """The env.json of an earlier run in this directory (its API keys), if any."""
        try:
            data = json.loads((self.dir / ENV_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------------ children
    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> Child:
        log = self.dir / "logs" / f"{name}.log"
        with self.signals.held():
            process = spawn(args, log_file=log, env=env, cwd=self.dir)
            child = Child(name, process, log)
            self.children.append(child)
        return child

    def _stop_children(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                self.note(f"stopping {child.name} (pid {child.process.pid})")
            timeout = 60.0 if child.name == "xbusd" else 20.0
            try:
                stop(child.process, signal.SIGTERM, timeout, child.name)
            except subprocess.TimeoutExpired:  # not even SIGKILL answered in time
                self.fail(f"{child.name} (pid {child.process.pid}) did not stop")
        if self.children:
            self.note("stopped")

    # ------------------------------------------------------------------------ the bus
    def _start_bus(self) -> None:
        spec = self.env.spec.xbusd
        if spec.url is not None:
            self.url = spec.url.rstrip("/")
            assert spec.admin_key is not None
            self.admin_key = spec.admin_key
            self._wait_ready(None)
            self.rows.append(Row("bus", self.url, "reached"))
            return
        port = spec.port or free_port()
        self.url = f"http://127.0.0.1:{port}"
        environ = _clean_environ()
        environ.update({"XBUS_NATS_PORT": "0"})
        environ.update(spec.environment())
        environ["XBUS_NATS_HOST"] = "127.0.0.1"
        if spec.admin_key is not None:
            environ["XBUS_ADMIN_API_KEY"] = spec.admin_key
        if "XBUS_DATABASE_URL" not in environ and os.environ.get(TEST_DSN):
            environ["XBUS_DATABASE_URL"] = self._create_database(os.environ[TEST_DSN])
        args = [sys.executable, "-m", "app.cli.xbusd", "serve", "--data-dir", str(self.dir)]
        args += ["--host", "127.0.0.1", "--port", str(port)]
        self.note(f"starting xbusd on {self.url}")
        child = self._spawn("xbusd", args, environ)
        self._wait_ready(child)
        if spec.admin_key is not None:
            self.admin_key = spec.admin_key
        else:
            self.admin_key_file = self.dir / "admin.key"
            try:
                self.admin_key = self.admin_key_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise RunError(f"cannot read the admin key {self.admin_key_file}: {exc}") from None
        self.rows.append(Row("bus", self.url, "started", f"pid {child.process.pid}"))

    def _create_database(self, dsn: str) -> str:
        """A fresh database on the server of XBUS_TEST_POSTGRES_DSN; its URL for xbusd."""
        plain = plain_dsn(dsn)
        name = f"xbus_fullenv_{secrets.token_hex(6)}"
        self.note(f"creating database {name} ({TEST_DSN})")
        try:
            asyncio.run(_pg_execute(plain, f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # asyncpg's errors, OSError, timeouts
            raise RunError(f"{TEST_DSN}: cannot create a database: {describe(exc)}") from None
        self.database, self.database_dsn = name, plain
        self.rows.append(Row("database", name, "created", f"on the server of {TEST_DSN}"))
        return async_url(with_database(plain, name))

    def _drop_database(self) -> None:
        if self.database is None:
            return
        name, self.database = self.database, None
        try:
            asyncio.run(
                _pg_execute(self.database_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        except Exception as exc:
            self.fail(f"cannot drop the database {name}: {describe(exc)}")
        else:
            self.note(f"dropped database {name}")

    def _wait_ready(self, child: Child | None) -> None:
        def ready() -> bool:
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        timeout = self.options.startup_timeout
        if child is not None:
            try:
                wait_until(ready, timeout, "xbusd", child.process, child.log)
            except RuntimeError as exc:
                raise RunError(str(exc)) from None
            return
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RunError(f"the bus at {self.url} is not ready (GET /readyz)")
            time.sleep(0.2)

    def _check_admin(self, admin: BusHttp) -> None:
        me = admin.call("GET", "/api/v1/whoami")
        if not me.get("admin"):
            raise RunError("the admin-key is not the bus's admin key")
        self.nats_url = admin.info().get("nats_url")

    # ------------------------------------------------------------------------ provisioning
    def _provision(self, admin: BusHttp) -> None:
        previous = self._previous().get("accounts") or {}
        for account in self.env.spec.accounts:
            known = previous.get(account.name) if isinstance(previous, dict) else None
            old_key = known.get("api_key") if isinstance(known, dict) else None
            with _step(f"account {account.name}"):
                state = self._ensure_account(admin, account, old_key)
            self.accounts[account.name] = state
            kind = account.account_type + (", nats" if account.uses_nats else "")
            self.rows.append(Row("account", account.name, state.action, kind))
            for actor in account.actors:
                with _step(f"actor {actor.name}"):
                    action = self._ensure_actor(admin, state, actor)
                details = actor.kind + (f", service {actor.service}" if actor.service else "")
                if actor.service and not actor.served_by_fullenv:
                    details += (
                        " (not run here: the program that loads the client configuration serves it)"
                    )
                self.rows.append(Row("actor", actor.name, action, details))
        for pipeline in self.env.spec.pipelines:
            with _step(f"pipeline {pipeline.name}"):
                self._ensure_pipeline(admin, pipeline)
        self._write_ctl_config()

    def _find_account(self, admin: BusHttp, name: str) -> dict[str, Any] | None:
        items = admin.call("GET", "/api/v1/accounts", params={"name": name}).get("items") or []
        return items[0] if items else None

    def _ensure_account(
        self, admin: BusHttp, spec: AccountSpec, old_key: str | None
    ) -> AccountState:
        found = self._find_account(admin, spec.name)
        if found is not None and found.get("type") != spec.account_type:
            raise RunError(
                f"account {spec.name} exists on the bus as a {found.get('type')} account; the "
                f"file says {spec.account_type} (delete it, or change the file)"
            )
        if found is not None and found.get("admin"):
            raise RunError(f"account {spec.name} is the bus's admin account")
        if spec.uses_nats:
            return self._ensure_nats_account(admin, spec, found, old_key)
        if found is None:
            body = {"name": spec.name, "type": spec.account_type, "description": spec.description}
            created = admin.call("POST", "/api/v1/accounts", body)
            return AccountState(spec, str(created["id"]), str(created["api_key"]), "created")
        action = self._update_account(admin, spec, found)
        key = self._api_key(admin, spec.name, str(found["id"]), old_key)
        return AccountState(spec, str(found["id"]), key, action)

    def _update_account(self, admin: BusHttp, spec: AccountSpec, found: dict[str, Any]) -> str:
        patch: dict[str, Any] = {}
        if found.get("status") != "enabled":
            if found.get("status") == "rejected":
                raise RunError(f"account {spec.name} was rejected; delete it to register it again")
            patch["status"] = "enabled"
        if found.get("description", "") != spec.description:
            patch["description"] = spec.description
        if not patch:
            return "reused"
        admin.call("PATCH", f"/api/v1/accounts/{_quote(spec.name)}", patch)
        return "updated"

    def _api_key(self, admin: BusHttp, name: str, account_id: str, old_key: str | None) -> str:
        """The key of an earlier run if it still works, else a new one."""
        if old_key:
            with BusHttp(self.url, old_key) as own:
                try:
                    me = own.call("GET", "/api/v1/whoami")
                except BusError:
                    me = {}
            if (me.get("account") or {}).get("name") == name:
                return old_key
        return str(admin.call("POST", f"/api/v1/accounts/{account_id}/api-key", {})["api_key"])

    def _ensure_nats_account(
        self,
        admin: BusHttp,
        spec: AccountSpec,
        found: dict[str, Any] | None,
        old_key: str | None,
    ) -> AccountState:
        clients = self.dir / "clients"
        certs_path = clients / f"{spec.name}.certs"
        days = {"cert_expire_days": spec.cert_expire_days} if spec.cert_expire_days else {}
        if found is None:
            # As `xbus-client register` does it: a key, a CSR, a registration; then the
            # admin's accept, and the certificate collected from the registration.
            key = new_key()
            csr = make_csr(spec.name, key).decode()
            actors = [{"name": a.name, "kind": a.kind, "roles": a.roles} for a in spec.actors]
            created = admin.register(spec.name, spec.account_type, csr, actors)
            account_id = str(created["id"])
            certs = {PRIVATE_KEY: key_pem(key).decode(), CSR: csr}
            certs.update({REGISTRATION_ID: account_id, BUS_URL: self.url})
            write_certs(certs_path, certs)
            admin.call("POST", f"/api/v1/accounts/{account_id}/accept", days or None)
            registration = admin.registration(account_id)
            if not registration.get("certificate"):
                raise BusError(f"the accepted registration of {spec.name} has no certificate")
            certs.update({CERTIFICATE: registration["certificate"], ROOTCA: registration["ca"]})
            write_certs(certs_path, certs)
            action = "registered"
        else:
            account_id = str(found["id"])
            action = "reused"
            if found.get("status") == "pending":
                admin.call("POST", f"/api/v1/accounts/{account_id}/accept", days or None)
                action = "accepted"
            if self._update_account(admin, spec, found) == "updated":
                action = "updated"
            if self._renew_if_needed(admin, spec, account_id, certs_path):
                action = "updated" if action == "reused" else action
        state = AccountState(spec, account_id, "", action, certs=certs_path)
        state.api_key = self._api_key(admin, spec.name, account_id, old_key)
        state.client_config = self._write_client_config(spec)
        return state

    def _renew_if_needed(
        self, admin: BusHttp, spec: AccountSpec, account_id: str, certs_path: Path
    ) -> bool:
        """Keep the local certificate when it is the account's current one; otherwise get a
        new one (reset-cert, then renew-cert as the admin). Returns True when renewed."""
        local = read_certs(certs_path)
        current = admin.call("GET", f"/api/v1/accounts/{account_id}/certificate")
        if (
            local.get(CERTIFICATE)
            and local.get(PRIVATE_KEY)
            and local[CERTIFICATE] == current.get("certificate")
            and not current.get("cert_reset")
        ):
            return False
        admin.call("POST", f"/api/v1/accounts/{account_id}/reset-cert")
        key = new_key()
        csr = make_csr(spec.name, key).decode()
        renewed = admin.renew_cert(account_id, csr, None, spec.cert_expire_days)
        certs = {
            PRIVATE_KEY: key_pem(key).decode(),
            CSR: csr,
            CERTIFICATE: renewed["certificate"],
            ROOTCA: renewed["ca"],
            REGISTRATION_ID: account_id,
            BUS_URL: self.url,
        }
        write_certs(certs_path, certs)
        return True

    def _runs(self, actor: ActorSpec) -> bool:
        """xbus-fullenv runs this actor's service in this session."""
        return self.options.auto_startup and actor.served_by_fullenv

    def _write_client_config(self, spec: AccountSpec, served: bool = False) -> Path:
        """A python-xbus client configuration of a NATS account (its certificates are in
        <account>.certs beside it, where python-xbus looks). Every actor is listed, with the
        services of one side only, so that no actor is served twice: <account>.yaml (the
        one `client-config` answers, for the user's program) has the services xbus-fullenv
        does not run; <account>.served.yaml (`served`, for xbus-client serve) those it runs."""
        actors: dict[str, Any] = {}
        for actor in spec.actors:
            conf: dict[str, Any] = {"kind": actor.kind}
            if actor.roles:
                conf["roles"] = list(actor.roles)
            if actor.service and self._runs(actor) == served:
                conf["service"] = {"type": actor.service}
                if actor.service_settings:
                    conf["service"]["settings"] = dict(actor.service_settings)
            actors[actor.name] = conf
        data: dict[str, Any] = {"account-name": spec.name}
        if self.nats_url:
            data["nats-url"] = self.nats_url
        data.update(spec.client)
        data["actors"] = actors
        suffix = ".served.yaml" if served else ".yaml"
        path = self.dir / "clients" / f"{spec.name}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        header = "# Written by xbus-fullenv at each run: edit the environment file instead.\n"
        path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    def _ensure_actor(self, admin: BusHttp, account: AccountState, spec: ActorSpec) -> str:
        try:
            found: dict[str, Any] | None = admin.call("GET", f"/api/v1/actors/{_quote(spec.name)}")
        except BusError as exc:
            if exc.status != 404:
                raise
            found = None
        config = spec.config_strings()
        if found is None:
            body = {
                "name": spec.name,
                "kind": spec.kind,
                "account_id": account.id,
                "roles": spec.roles,
                "config": config,
                "description": spec.description,
            }
            admin.call("POST", "/api/v1/actors", body)
            return "created"
        if str(found.get("account_id")) != account.id:
            raise RunError(
                f"actor {spec.name} exists on the bus for account {found.get('account_name')}, "
                f"not {account.spec.name}"
            )
        patch: dict[str, Any] = {}
        if found.get("kind") != spec.kind:
            patch["kind"] = spec.kind
        if sorted(found.get("roles") or []) != sorted(spec.roles):
            patch["roles"] = spec.roles
        if found.get("description", "") != spec.description:
            patch["description"] = spec.description
        if found.get("status") != "enabled":
            patch["status"] = "enabled"
        # Secrets read back masked: they are written again each time, which changes nothing.
        shown = {k: SECRET_MASK if k.endswith("secret") else v for k, v in config.items()}
        changed = bool(patch) or found.get("config") != shown
        if changed or any(k.endswith("secret") for k in config):
            patch["config"] = config
        if patch:
            admin.call("PATCH", f"/api/v1/actors/{_quote(spec.name)}", patch)
        if account.action == "registered":
            return "registered"
        return "updated" if changed else "reused"

    def _ensure_pipeline(self, admin: BusHttp, spec: PipelineSpec) -> None:
        params = {"name": spec.name, "version": spec.version}
        items = admin.call("GET", "/api/v1/pipelines", params=params).get("items") or []
        body = {"graph": spec.graph, "description": spec.description}
        if not items:
            pipeline = admin.call(
                "POST", "/api/v1/pipelines", {"name": spec.name, "version": spec.version, **body}
            )
            action = "created"
        else:
            pipeline = items[0]
            graph, _ = check_graph(spec.graph)
            canonical = graph.to_dict() if graph is not None else None
            same = pipeline.get("graph") == canonical and (
                pipeline.get("description", "") == spec.description
            )
            action = "reused"
            if not same:
                path = f"/api/v1/pipelines/{pipeline['id']}"
                for status in _path_to_draft(str(pipeline["status"])):
                    admin.call("POST", path + "/status", {"status": status})
                pipeline = admin.call("PUT", path, body)
                action = "updated"
        path = f"/api/v1/pipelines/{pipeline['id']}"
        for message in pipeline.get("validation_messages") or []:
            node = f" [node {message.get('node_id')}]" if message.get("node_id") else ""
            self.note(f"pipeline {spec.name}{node}: {message.get('level')}: {message.get('text')}")
        status = str(pipeline["status"])
        wanted = "active" if spec.activate else ("inactive" if status == "active" else status)
        if status != wanted:
            try:
                pipeline = admin.call("POST", path + "/status", {"status": wanted})
            except BusError as exc:
                raise RunError(
                    f"pipeline {spec.name} cannot become {wanted}: {exc}{bus_messages(exc)}"
                ) from None
            if action == "reused":
                action = "updated"
        self.pipelines[spec.name] = {
            "id": str(pipeline["id"]),
            "version": spec.version,
            "status": pipeline["status"],
        }
        self.rows.append(
            Row("pipeline", spec.name, action, f"version {spec.version}, {pipeline['status']}")
        )

    def _write_ctl_config(self) -> None:
        """`xbusctl -c <dir>/ctl/xbusctl.yaml ...` works as the admin (python-xbus's Fullenv
        helper looks for it there too)."""
        text = yaml.safe_dump({"url": self.url, "api-key": self.admin_key}, sort_keys=False)
        _write_private(self.dir / "ctl" / "xbusctl.yaml", text)
        if self.admin_key_file is None:
            self.admin_key_file = self.dir / "ctl" / "admin.key"
            _write_private(self.admin_key_file, self.admin_key + "\n")

    # ------------------------------------------------------------------------ actors
    def _start_actors(self, admin: BusHttp) -> None:
        served: list[tuple[Child, list[str]]] = []
        for state in self.accounts.values():
            names = [a.name for a in state.spec.actors if self._runs(a)]
            if not names or state.client_config is None:
                continue
            config = self._write_client_config(state.spec, served=True)
            args = [sys.executable, "-m", "app.cli.xbus_client", "serve"]
            args += ["--config", str(config), "--url", self.url]
            self.note(f"starting the actors of {state.spec.name}: {', '.join(names)}")
            served.append((self._spawn(state.spec.name, args, _clean_environ()), names))
        deadline = time.monotonic() + self.options.startup_timeout
        for child, names in served:
            for name in names:
                while not admin.call("GET", f"/api/v1/actors/{_quote(name)}").get("online"):
                    if child.process.poll() is not None:
                        raise RunError(
                            f"xbus-client serve for {child.name} exited with code "
                            f"{child.process.returncode}; see {child.log}:\n{tail(child.log)}"
                        )
                    if time.monotonic() > deadline:
                        raise RunError(f"actor {name} did not come online; see {child.log}")
                    time.sleep(0.2)
            self.rows.append(
                Row("served", child.name, "online", f"pid {child.process.pid}, log {child.log}")
            )

    # ------------------------------------------------------------------------ output
    def _write_env_json(self) -> None:
        data = {
            "url": self.url,
            "nats_url": self.nats_url,
            "directory": str(self.dir),
            "admin_key_file": str(self.admin_key_file) if self.admin_key_file else None,
            "xbusctl_config": str(self.dir / "ctl" / "xbusctl.yaml"),
            "started_at": datetime.now(UTC).isoformat(),
            "accounts": {
                name: {
                    "id": state.id,
                    "type": state.spec.account_type,
                    "nats": state.spec.uses_nats,
                    "api_key": state.api_key,
                    "client_config": str(state.client_config) if state.client_config else None,
                    "certs": str(state.certs) if state.certs else None,
                    "actors": [a.name for a in state.spec.actors],
                }
                for name, state in self.accounts.items()
            },
            "pipelines": self.pipelines,
            "database": self.database,
            "processes": {child.name: child.process.pid for child in self.children},
            "logs": {child.name: str(child.log) for child in self.children},
        }
        _write_private(self.dir / ENV_JSON, json.dumps(data, indent=2) + "\n")

    def _print_summary(self) -> None:
        table = Table(title=f"xbus-fullenv: {self.dir}", show_edge=False, header_style="bold")
        for column in ("what", "name", "state", "details"):
            table.add_column(column, overflow="fold")
        for row in self.rows:
            table.add_row(row.what, row.name, row.action, row.details)
        self.out.print(table)
        self.out.print(
            f"summary: {self.dir / ENV_JSON}\n"
            f"operate: xbusctl -c {self.dir / 'ctl' / 'xbusctl.yaml'} ps",
            highlight=False,
            markup=False,
        )

    # ------------------------------------------------------------------------ modes
    def _serve(self) -> int:
        self.note("running: Ctrl-C or SIGTERM stops everything")
        self.serving = True
        while True:
            for child in self.children:
                code = child.process.poll()
                if code is None or not child.watched:
                    continue
                if child.name == "xbusd":
                    raise RunError(f"xbusd exited with code {code}; see {child.log}")
                child.watched = False
                self.fail(f"the actors of {child.name} exited with code {code}; see {child.log}")
            time.sleep(0.2)

    def _batch(self) -> int:
        with BusHttp(self.url, self.admin_key) as admin:
            results = self.emit(admin, list(range(len(self.env.spec.emit))))
        self.print_results(results)
        return 0 if all(r.ok for r in results) else 1

    def emit(self, admin: BusHttp, indexes: list[int]) -> list[EmitResult]:
        """Post the `emit` steps (all first), then follow each process to its expectation."""
        results: list[EmitResult] = []
        started = time.monotonic()
        for index in indexes:
            step, envelope = self.env.spec.emit[index], self.env.envelopes[index]
            key = self.accounts[self._account_of(step.emitter)].api_key
            with BusHttp(self.url, key) as emitter:
                try:
                    answer = emitter.call(
                        "POST", f"/api/v1/actors/{_quote(step.emitter)}/output", envelope
                    )
                except BusError as exc:
                    if exc.status is None or exc.status >= 500:
                        raise
                    results.append(
                        EmitResult(index, step.emitter, step.expect, "refused", None, str(exc))
                    )
                    continue
            process_id = str(answer["process_id"])
            got = "accepted" if step.expect in ("accepted", "refused") else ""
            results.append(EmitResult(index, step.emitter, step.expect, got, process_id))
        for result in results:
            if result.got:
                continue
            step = self.env.spec.emit[result.index]
            budget = step.timeout if step.timeout is not None else self.options.timeout
            result.got = self._wait_process(admin, str(result.process_id), started + budget)
            if not result.ok:
                result.detail = self._process_story(admin, str(result.process_id))
        return results

    def _account_of(self, actor: str) -> str:
        found = self.env.actor(actor)
        assert found is not None  # checked when the file was loaded
        return found[0].name

    def _wait_process(self, admin: BusHttp, process_id: str, deadline: float) -> str:
        status = "unknown"
        while True:
            left = deadline - time.monotonic()
            wait = max(0, min(int(left), 20))
            process = admin.call(
                "GET", f"/api/v1/processes/{process_id}", params={"wait": wait}, timeout=wait + 30
            )
            status = str(process.get("status"))
            if status in FINAL:
                return status
            if time.monotonic() >= deadline:
                return f"{status} (timeout)"
            if wait == 0:
                time.sleep(min(0.2, max(left, 0)))

    def _process_story(self, admin: BusHttp, process_id: str) -> str:
        try:
            logs = admin.call("GET", f"/api/v1/processes/{process_id}/logs").get("items") or []
        except BusError:
            return ""
        lines = [
            f"{entry.get('level')}: {entry.get('text')}"
            + (f" [node {entry['node_id']}]" if entry.get("node_id") else "")
            for entry in logs[-10:]
        ]
        return "\n".join(lines)

    def print_results(self, results: list[EmitResult]) -> None:
        table = Table(title="emit", show_edge=False, header_style="bold")
        for column in ("#", "emitter", "process", "expected", "got", ""):
            table.add_column(column, overflow="fold")
        for r in results:
            mark = "[green]ok[/green]" if r.ok else "[red]FAILED[/red]"
            table.add_row(str(r.index), r.emitter, r.process_id or "-", r.expect, r.got, mark)
        self.out.print(table)
        for r in results:
            if not r.ok and r.detail:
                self.out.print(f"emit[{r.index}] ({r.emitter}):\n{r.detail}", markup=False)
        passed = sum(r.ok for r in results)
        self.out.print(
            f"{passed}/{len(results)} expectations met",
            style="green" if passed == len(results) else "red",
        )


def plain_dsn(dsn: str) -> str:
    """A PostgreSQL URL as asyncpg reads it (postgres://, postgresql://, postgresql+driver://)."""
    try:
        url = async_url(dsn)
    except ValueError:
        raise RunError(f"{TEST_DSN} must be a postgres:// or postgresql:// URL") from None
    return "postgresql://" + url.removeprefix("postgresql+asyncpg://")


def with_database(dsn: str, database: str) -> str:
    """The same server, another database (the query, e.g. ?host=/socket/dir, is kept)."""
    head, sep, query = dsn.partition("?")
    scheme, _, rest = head.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}{sep}{query}"


async def _pg_execute(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=20)
    try:
        await conn.execute(statement, timeout=60)
    finally:
        await conn.close()


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """A bus error, told with what was being set up."""
    try:
        yield
    except BusError as exc:
        raise RunError(f"{what}: {exc}{bus_messages(exc)}") from None


def _path_to_draft(status: str) -> list[str]:
    return {"active": ["inactive", "draft"], "inactive": ["draft"]}.get(status, [])


def bus_messages(exc: BusError) -> str:
    lines = []
    for message in exc.problem.get("validation_messages") or []:
        node = f" [node {message.get('node_id')}]" if message.get("node_id") else ""
        lines.append(f"\n  {message.get('level')}{node}: {message.get('text')}")
    for error in exc.problem.get("errors") or []:
        where = ".".join(str(p) for p in error.get("loc", []))
        lines.append(f"\n  {where}: {error.get('msg')}")
    return "".join(lines)
