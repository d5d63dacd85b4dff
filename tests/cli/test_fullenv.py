"""`xbus-fullenv` as a user runs it: the file (substitution, schema, cross-checks) through
`check`; `run` against a live bus (url mode: webhooks, expectations met and not, a second run
that reuses everything); `run` with its own `xbusd serve` (embedded PostgreSQL and NATS) and a
NATS actor served by `xbus-client serve`, in batch and until SIGTERM, leaving no process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from app.cli.fullenv_config import EnvFileError, load, parse_vars, substitute
from tests.cli.test_xbus_client import LiveBus, live_bus
from tests.conftest import ADMIN_KEY

__all__ = ["live_bus"]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "fullenv.yaml"
SECRET = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTEyMzQ="


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


async def fullenv(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Ran:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli.fullenv",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def write(path: Path, data: dict[str, Any] | str) -> Path:
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
    return path


# --- a webhook receiver on 127.0.0.1 ------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """POST /ok answers 200, /fail answers 400 (the node fails at once)."""
    got: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            got.append((self.path, json.loads(body)))
            self.send_response(200 if self.path == "/ok" else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Receiver(f"http://127.0.0.1:{server.server_address[1]}", got)
    finally:
        server.shutdown()
        server.server_close()


# --- substitution --------------------------------------------------------------------------------


def test_substitution_from_vars_then_environment_with_defaults_and_escapes() -> None:
    text = "a: ${A}\nb: ${B}\nc: ${C:-fallback}\nd: ${D:-}\ne: $$HOME and $${A}\nf: ${E:-x}\ng: $x"
    result = substitute(text, {"A": "from-var"}, {"A": "from-env", "B": "env-b", "E": ""})
    assert result == ("a: from-var\nb: env-b\nc: fallback\nd: \ne: $HOME and ${A}\nf: x\ng: $x")
    assert parse_vars(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}


def test_undefined_variables_are_all_named_with_their_line() -> None:
    with pytest.raises(EnvFileError) as caught:
        substitute("ok: 1\na: ${MISSING_ONE}\nb: ${MISSING_TWO}\nc: ${1bad}\n", {}, {})
    problems = caught.value.problems
    assert len(problems) == 3
    assert problems[0].startswith("line 2: variable MISSING_ONE is not defined")
    assert problems[1].startswith("line 3: variable MISSING_TWO is not defined")
    assert problems[2].startswith("line 4: '${1bad}' is not a variable reference")
    with pytest.raises(EnvFileError, match="expected NAME=VALUE"):
        parse_vars(["no-equals"])


# --- the file ------------------------------------------------------------------------------------

VALID = {
    "accounts": [
        {
            "name": "shop",
            "type": "gateway",
            "actors": [
                {"name": "shop.orders", "kind": "emitter"},
                {
                    "name": "shop.hook",
                    "kind": "consumer",
                    "config": {"http.webhook.url": "http://127.0.0.1:1/ok"},
                },
            ],
        }
    ],
    "pipelines": [
        {
            "name": "orders",
            "graph": {
                "nodes": [
                    {
                        "id": "in",
                        "type": "emitter",
                        "actors": ["shop.orders"],
                        "sourcematch": {"eventtypes": ["order"]},
                    },
                    {"id": "out", "type": "consumer", "actors": ["shop.hook"]},
                ],
                "edges": ["in->out"],
            },
        }
    ],
    "emit": [
        {"emitter": "shop.orders", "envelope": {"events": [{"type": "order", "items": ["a"]}]}}
    ],
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """VALID with one entry replaced: `accounts.0.actors.1.kind`."""
    data: dict[str, Any] = json.loads(json.dumps(VALID))
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with("accounts.0.colour", "red"), "accounts[0].colour (shop): unknown key"),
        (
            _with("accounts.0.actors.1.kind", "printer"),
            "accounts[0].actors[1].kind (shop / shop.hook): Input should be",
        ),
        (_with("xbusd.url", "http://127.0.0.1:1"), "admin-key is required with url"),
        (_with("xbusd.settings", {"no-such-thing": 1}), "not an xbusd setting"),
        (_with("xbusd.settings", {"XBUS_PORT": 1}), "set by xbus-fullenv (use port)"),
        (_with("accounts.0.actors.0.service", "demo.relay"), "a service runs over NATS"),
        (_with("accounts.0.actors.1.name", "shop.orders"), "actor shop.orders is defined more"),
        (_with("emit.0.emitter", "shop.hook"), "shop.hook is a consumer, not an emitter"),
        (_with("emit.0.emitter", "elsewhere"), "the emitter must be an actor of the file"),
        (_with("emit.0.envelope", {"events": []}), "invalid envelope"),
        (_with("emit.0.expect", "maybe"), "emit[0].expect: Input should be"),
        (_with("pipelines.0.graph", {"nodes": [], "edges": []}), "pipeline orders: "),
        (
            _with("pipelines.0.graph", "nodes: [\n"),
            "pipeline orders: ",
        ),
        (_with("accounts.0", {"name": "n", "nats": True}), "needs at least one actor"),
    ],
)
def test_schema_and_cross_check_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    path = write(tmp_path / "env.yaml", data)
    with pytest.raises(EnvFileError) as caught:
        load(path, {}, {})
    assert any(message in p for p in caught.value.problems), caught.value.problems
    assert all(p.startswith(f"{path}: ") for p in caught.value.problems)


def test_warnings_for_what_the_bus_may_still_resolve(tmp_path: Path) -> None:
    data = _with("pipelines.0.graph.nodes.1.actors", ["not.in.the.file"])
    data["emit"].append(
        {"emitter": "shop.orders", "envelope": {"events": [{"type": "other", "items": ["x"]}]}}
    )
    env = load(write(tmp_path / "env.yaml", data), {}, {})
    assert any("not.in.the.file" in w and "among the file's actors" in w for w in env.warnings)
    assert any("emit[1]" in w and "no pipeline of the file takes" in w for w in env.warnings)


async def test_check_prints_the_resolved_environment(tmp_path: Path) -> None:
    ran = await fullenv("check", str(EXAMPLE), "--var", "HOOK_URL=http://127.0.0.1:9/x")
    assert ran.code == 0, ran
    resolved = yaml.safe_load(ran.out)
    assert resolved["accounts"][1]["actors"][0]["config"] == {
        "http.webhook.url": "http://127.0.0.1:9/x"
    }
    assert resolved["accounts"][2]["nats"] is True
    assert "3 account(s), 3 actor(s), 1 pipeline(s), 1 envelope(s) to emit: OK" in ran.err

    secret = write(
        tmp_path / "secret.yaml",
        {"xbusd": {"url": "http://127.0.0.1:1", "admin-key": "${KEY}"}},
    )
    ran = await fullenv("check", str(secret), "--json", env={"KEY": "xbk_very-secret"})
    assert ran.code == 0, ran
    assert json.loads(ran.out)["xbusd"]["admin-key"] == "********"
    ran = await fullenv("check", str(secret), "--show-secrets", env={"KEY": "xbk_very-secret"})
    assert "xbk_very-secret" in ran.out

    warned = write(tmp_path / "warned.yaml", _with("pipelines.0.graph.nodes.1.actors", ["x.y"]))
    assert (await fullenv("check", str(warned))).code == 0
    strict = await fullenv("check", str(warned), "--strict")
    assert strict.code == 2, strict
    assert "warning(s) (--strict)" in strict.err


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "fullenv.md").read_text()
    block = doc.split("## An example", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    env = load(write(tmp_path / "doc.yaml", block), {}, {})
    assert env.warnings == []
    assert [a.name for a in env.spec.accounts] == ["shop", "crm", "printer"]
    assert load(EXAMPLE, {}, {}).warnings == []


async def test_check_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    data = _with("accounts.0.actors.1.kind", "printer")
    data["emit"][0]["emitter"] = "${WHO}"
    path = write(tmp_path / "bad.yaml", data)
    ran = await fullenv("check", str(path))
    assert ran.code == 2, ran
    assert "variable WHO is not defined" in ran.err
    ran = await fullenv("check", str(path), "--var", "WHO=shop.orders")
    assert ran.code == 2, ran
    assert "accounts[0].actors[1].kind (shop / shop.hook)" in ran.err
    assert ran.out == ""


# --- run against a live bus (url mode) -----------------------------------------------------------


def _url_env(bus: LiveBus, receiver: Receiver) -> dict[str, Any]:
    graph = """
nodes:
  - {id: in, type: emitter, actors: [shop.orders], sourcematch: {eventtypes: [order]}}
  - {id: crm, type: consumer, actors: [crm.hook]}
edges: [in->crm]
"""
    broken = {
        "nodes": [
            {
                "id": "in",
                "type": "emitter",
                "actors": ["shop.orders"],
                "sourcematch": {"eventtypes": ["broken"]},
            },
            {"id": "refuser", "type": "consumer", "actors": ["crm.refuser"]},
        ],
        "edges": ["in->refuser"],
    }
    return {
        "xbusd": {"url": bus.url, "admin-key": "${ADMIN}"},
        "accounts": [
            {
                "name": "shop",
                "actors": [{"name": "shop.orders", "kind": "emitter", "description": "${DESC:-}"}],
            },
            {
                "name": "crm",
                "actors": [
                    {
                        "name": "crm.hook",
                        "kind": "consumer",
                        "config": {
                            "http.webhook.url": "${HOOK}/ok",
                            "http.webhook.secret": SECRET,
                        },
                    },
                    {
                        "name": "crm.refuser",
                        "kind": "consumer",
                        "config": {"http.webhook.url": "${HOOK}/fail"},
                    },
                ],
            },
        ],
        "pipelines": [
            {"name": "crm-orders", "graph": graph},
            {"name": "crm-broken", "graph": broken},
        ],
        "emit": [
            {
                "emitter": "shop.orders",
                "envelope": {"events": [{"type": "order", "items": ["1"]}]},
                "expect": "${EXPECT:-done}",
            },
            {
                "emitter": "shop.orders",
                "envelope": {"events": [{"type": "nobody-takes-it", "items": ["2"]}]},
                "expect": "refused",
            },
            {
                "emitter": "shop.orders",
                "envelope": {"events": [{"type": "broken", "items": ["3"]}]},
                "expect": "error",
            },
        ],
    }


async def _names(bus: LiveBus, what: str) -> list[str]:
    r = await bus.admin.get(f"/api/v1/{what}", params={"limit": 100})
    assert r.status_code == 200, r.text
    return sorted(item["name"] for item in r.json()["items"])


async def test_run_batch_against_a_running_bus_then_again(
    live_bus: LiveBus, receiver: Receiver, tmp_path: Path
) -> None:
    path = write(tmp_path / "env.yaml", _url_env(live_bus, receiver))
    data_dir = tmp_path / "env"
    args = ["run", str(path), "--batch", "--data-dir", str(data_dir), "--timeout", "60"]
    args += ["--var", f"ADMIN={ADMIN_KEY}", "--var", f"HOOK={receiver.url}"]
    first = await fullenv(*args)
    assert first.code == 0, first
    assert "3/3 expectations met" in first.out
    assert sorted(p for p, _ in receiver.received) == ["/fail", "/ok"]
    summary = json.loads((data_dir / "env.json").read_text())
    assert summary["url"] == live_bus.url
    assert set(summary["accounts"]) == {"shop", "crm"}
    shop_key = summary["accounts"]["shop"]["api_key"]
    whoami = httpx.get(
        live_bus.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {shop_key}"}
    )
    assert whoami.json()["account"]["name"] == "shop"
    ctl = yaml.safe_load((data_dir / "ctl" / "xbusctl.yaml").read_text())
    assert ctl == {"url": live_bus.url, "api-key": ADMIN_KEY}

    # Again, on the same directory: everything is found by name and reused (the API keys too)
    # or updated; this time the first expectation is not met, and the run says so.
    second = await fullenv(*args, "--var", "EXPECT=error", "--var", "DESC=orders")
    assert second.code == 1, second
    assert "2/3 expectations met" in second.out
    assert "FAILED" in second.out
    table = second.out.split("summary:", 1)[0]
    assert "reused" in table
    assert "created" not in table
    assert "updated" in table  # shop.orders got a description
    assert json.loads((data_dir / "env.json").read_text())["accounts"]["shop"]["api_key"] == (
        shop_key
    )
    assert await _names(live_bus, "accounts") == ["admin", "crm", "shop"]
    assert await _names(live_bus, "actors") == ["crm.hook", "crm.refuser", "shop.orders"]
    assert await _names(live_bus, "pipelines") == ["crm-broken", "crm-orders"]
    emitter = (await live_bus.admin.get("/api/v1/actors/shop.orders")).json()
    assert emitter["description"] == "orders"
    assert sorted(p for p, _ in receiver.received) == ["/fail", "/fail", "/ok", "/ok"]


async def test_run_with_a_bad_file_starts_nothing(live_bus: LiveBus, tmp_path: Path) -> None:
    data = _url_env(live_bus, Receiver("http://127.0.0.1:1"))
    data["accounts"][1]["actors"][0]["kind"] = "printer"
    path = write(tmp_path / "env.yaml", data)
    data_dir = tmp_path / "never"
    ran = await fullenv("run", str(path), "--batch", "--data-dir", str(data_dir))
    assert ran.code == 2, ran
    assert "variable ADMIN is not defined" in ran.err
    ran = await fullenv(
        "run", str(path), "--data-dir", str(data_dir), "--var", "ADMIN=x", "--var", "HOOK=y"
    )
    assert ran.code == 2, ran
    assert "kind (crm / crm.hook)" in ran.err
    assert not data_dir.exists()
    assert await _names(live_bus, "accounts") == ["admin"]

    # A wrong admin key: the bus is reached, nothing is created, exit 1.
    ran = await fullenv(
        "run",
        str(write(tmp_path / "ok.yaml", _url_env(live_bus, Receiver("http://127.0.0.1:1")))),
        "--data-dir",
        str(data_dir),
        "--var",
        "ADMIN=xbk_wrong",
        "--var",
        "HOOK=http://127.0.0.1:1",
    )
    assert ran.code == 1, ran
    assert "error:" in ran.err
    assert await _names(live_bus, "accounts") == ["admin"]


# --- run with its own xbusd: embedded PostgreSQL and NATS, a NATS actor served ----------------


def _processes_of(data_dir: Path) -> list[psutil.Process]:
    """Every process whose command line names the directory: xbusd, postgres, nats-server,
    xbus-client serve."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(data_dir) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _gone(pids: list[int], timeout: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return alive


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(240)
async def test_run_with_its_own_bus_and_a_nats_actor(receiver: Receiver, tmp_path: Path) -> None:
    data_dir = tmp_path / "env"
    hook = f"HOOK_URL={receiver.url}/ok"
    batch = await fullenv(
        "run", str(EXAMPLE), "--batch", "--data-dir", str(data_dir), "--var", hook, timeout=200
    )
    assert batch.code == 0, batch
    assert "1/1 expectations met" in batch.out
    assert "registered" in batch.out
    summary = json.loads((data_dir / "env.json").read_text())
    assert summary["admin_key_file"] == str(data_dir / "admin.key")
    printer = summary["accounts"]["printer"]
    client = yaml.safe_load(Path(printer["client_config"]).read_text())
    assert client["account-name"] == "printer"
    assert client["nats-url"] == summary["nats_url"]
    # xbus-fullenv runs the service (from printer.served.yaml); printer.yaml, for the user's
    # own program, leaves it out so that nobody serves it twice.
    assert client["actors"]["printer.console"] == {"kind": "consumer", "roles": ["printer"]}
    served = yaml.safe_load(Path(printer["client_config"]).with_suffix(".served.yaml").read_text())
    assert served["actors"]["printer.console"]["service"] == {"type": "demo.print-to-console"}
    certs = yaml.safe_load(Path(printer["certs"]).read_text())
    assert certs["tls.certificate"].startswith("-----BEGIN CERTIFICATE")
    # The NATS consumer printed the order; the webhook got it too.
    printed = Path(summary["logs"]["printer"]).read_text()
    assert 'order.created: {"id":1,"total":42}' in printed
    assert [p for p, _ in receiver.received] == ["/ok"]
    pids = list(summary["processes"].values())
    assert _gone(pids) == [], "a child outlived xbus-fullenv"
    assert _processes_of(data_dir) == []

    # Again, without --batch: everything reused; up until SIGTERM, then nothing left.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli.fullenv",
        "run",
        str(EXAMPLE),
        "--data-dir",
        str(data_dir),
        "--var",
        hook,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stderr is not None
    try:
        seen = ""
        while "running: Ctrl-C or SIGTERM" not in seen:
            line = (await asyncio.wait_for(proc.stderr.readline(), 150)).decode()
            assert line, f"xbus-fullenv ended early:\n{seen}"
            seen += line
        summary = json.loads((data_dir / "env.json").read_text())
        admin_key = (data_dir / "admin.key").read_text().strip()
        async with httpx.AsyncClient(
            base_url=summary["url"], headers={"Authorization": f"Bearer {admin_key}"}
        ) as admin:
            accounts = (await admin.get("/api/v1/accounts")).json()["items"]
            assert sorted(a["name"] for a in accounts) == ["admin", "crm", "printer", "shop"]
            pipelines = (await admin.get("/api/v1/pipelines")).json()["items"]
            assert [(p["name"], p["status"]) for p in pipelines] == [("orders", "active")]
            actor = (await admin.get("/api/v1/actors/printer.console")).json()
            assert actor["online"] is True
        pids = list(summary["processes"].values())
        tree = [p.pid for p in psutil.Process(summary["processes"]["xbusd"]).children(True)]
        assert len(tree) >= 2  # postgres and nats-server
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, seen + err.decode()
    table = out.decode()
    assert "created" not in table
    assert "registered" not in table
    assert _gone(pids + tree) == []
    assert _processes_of(data_dir) == []
