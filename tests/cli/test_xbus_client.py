"""`xbus-client` as an operator runs it, against a live bus over HTTP: register (the exact
accept command printed, the certificate file written the way python-xbus reads it, the
configuration never rewritten), resume, rejection, renew-cert after reset-cert; and, once
the NATS services exist, emit and serve over NATS with python-xbus unchanged."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from xbus import client as xbus_client
from xbus import testutils

from app.certs.pki import CertificateAuthority
from app.cli.client_files import ClientConfig, ClientFileError, read_certs, write_certs
from app.clientdemo import HelloWorld, PrintToConsole, Relay, register_services
from app.config import Settings
from app.main import create_app
from app.runtime.children import free_port
from tests.conftest import ADMIN_KEY, bound_port, new_name

XBUS_CLIENT = str(Path(sys.executable).parent / "xbus-client")
XBUSD = str(Path(sys.executable).parent / "xbusd")
RESET_REQUIRED = (
    "reset-cert was not applied to this account; ask an administrator to run reset-cert first"
)


# --- a live bus on a free port ---------------------------------------------------------------


@dataclass
class LiveBus:
    url: str
    ca: CertificateAuthority
    admin: httpx.AsyncClient


@pytest.fixture
async def live_bus(settings: Settings, clean_db: None) -> AsyncIterator[LiveBus]:
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="live-bus", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "the live bus did not start"
        assert time.monotonic() < deadline, "the live bus did not start in 30 s"
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        ) as admin:
            yield LiveBus(url, app.state.xbus.ca, admin)
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 30)


@dataclass
class Run:
    code: int
    out: str
    err: str


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}


async def xbus_client_run(*args: str, stdin: str | None = None, timeout: float = 60) -> Run:
    proc = await asyncio.create_subprocess_exec(
        XBUS_CLIENT,
        *args,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout
    )
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def write_config(directory: Path, name: str, actors: dict[str, Any] | None = None) -> Path:
    actors = actors or {
        f"{name}.emitter": {"kind": "emitter"},
        f"{name}.printer": {
            "kind": "consumer",
            "roles": ["printer"],
            "service": {"type": "demo.print-to-console"},
        },
    }
    path = directory / "client.yaml"
    path.write_text(yaml.safe_dump({"account-name": name, "actors": actors}, sort_keys=False))
    return path


async def registration_of(bus: LiveBus, name: str) -> dict[str, Any]:
    r = await bus.admin.get("/api/v1/accounts", params={"name": name})
    items: list[dict[str, Any]] = r.json()["items"]
    assert len(items) == 1, items
    return items[0]


async def register_accepted(bus: LiveBus, directory: Path, name: str) -> Path:
    """`register --wait 0`, an admin's accept, then `register` again to collect."""
    config = write_config(directory, name)
    first = await xbus_client_run("register", "-c", str(config), "--url", bus.url, "--wait", "0")
    assert first.code == 0, first.err
    account = await registration_of(bus, name)
    r = await bus.admin.post(f"/api/v1/accounts/{account['id']}/accept")
    assert r.status_code == 200, r.text
    second = await xbus_client_run("register", "-c", str(config), "--url", bus.url)
    assert second.code == 0, second.err
    return config


def assert_certs_file_for_python_xbus(
    config: Path, name: str, ca: CertificateAuthority
) -> dict[str, str]:
    certs_path = config.parent / f"{name}.certs"
    assert stat.S_IMODE(certs_path.stat().st_mode) == 0o600
    certs = yaml.safe_load(certs_path.read_text())
    for entry in ("tls.private-key", "tls.certificate", "tls.csr", "tls.rootca"):
        assert certs[entry].startswith("-----BEGIN"), entry
    assert certs["tls.rootca"] == ca.pem
    cert = ca.verify(certs["tls.certificate"])
    key = serialization.load_pem_private_key(certs["tls.private-key"].encode(), password=None)
    assert cert.public_key() == key.public_key()
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
    assert cn == name

    # python-xbus, unchanged, finds its TLS material in it and can build its TLS context.
    confdict = yaml.safe_load(config.read_text())
    client = xbus_client.Client(confdict, str(config.parent))
    assert client.conf["tls.certificate"] == certs["tls.certificate"]
    assert client.conf["tls.private-key"] == certs["tls.private-key"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=client.conf["tls.rootca"])
    with xbus_client.pemfiles(client.conf["tls.certificate"], client.conf["tls.private-key"]) as (
        certfile,
        keyfile,
    ):
        ctx.load_cert_chain(certfile=certfile, keyfile=keyfile)
    return dict(certs)


# --- register --------------------------------------------------------------------------------


async def test_register_waits_for_accept_then_writes_the_certs_file(
    live_bus: LiveBus, tmp_path: Path
) -> None:
    name = new_name("shop")
    config = write_config(tmp_path, name)
    original = config.read_bytes()
    proc = await asyncio.create_subprocess_exec(
        XBUS_CLIENT,
        "register",
        "--config",
        str(config),
        "--url",
        live_bus.url,
        "--poll-interval",
        "0.1",
        "--wait",
        "60",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    assert proc.stdout is not None
    printed = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "register ended before printing the accept command"
            printed.append(line)
            if line.strip().startswith("xbusctl"):
                break
        # The exact command an administrator runs.
        assert line.strip() == f"xbusctl account accept {name}"
        # It is waiting: the registration is pending, its actors too.
        account = await registration_of(live_bus, name)
        assert account["status"] == "pending"
        r = await live_bus.admin.get("/api/v1/actors", params={"account_id": name})
        assert {a["status"] for a in r.json()["items"]} == {"pending"}
        assert {a["name"] for a in r.json()["items"]} == {f"{name}.emitter", f"{name}.printer"}

        r = await live_bus.admin.post(f"/api/v1/accounts/{account['id']}/accept")
        assert r.status_code == 200, r.text
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    text = "".join(printed) + out.decode()
    assert "Accepted. Certificate written to" in text
    # The bus announces its NATS URL; the configuration has none: guidance, no rewrite.
    info = (await live_bus.admin.get("/api/v1/info")).json()
    assert f"nats-url: {info['nats_url']}" in text
    assert config.read_bytes() == original
    certs = assert_certs_file_for_python_xbus(config, name, live_bus.ca)
    assert certs["xbus.url"] == live_bus.url


async def test_register_wait_0_then_resume_keeps_the_key(live_bus: LiveBus, tmp_path: Path) -> None:
    name = new_name("resume")
    config = write_config(tmp_path, name)
    first = await xbus_client_run(
        "register", "-c", str(config), "--url", live_bus.url, "--wait", "0"
    )
    assert first.code == 0, first.err
    assert f"xbusctl account accept {name}" in first.out
    pending = read_certs(tmp_path / f"{name}.certs")
    assert set(pending) == {"tls.private-key", "tls.csr", "xbus.registration-id", "xbus.url"}

    # Still pending: a bounded wait ends with exit code 3 and sends nothing new.
    waited = await xbus_client_run(
        "register", "-c", str(config), "--wait", "0.3", "--poll-interval", "0.1"
    )
    assert waited.code == 3, waited.err
    assert "Resuming registration" in waited.out
    assert "still pending" in waited.err.lower()

    account = await registration_of(live_bus, name)
    assert account["id"] == pending["xbus.registration-id"]
    assert (
        await live_bus.admin.post(f"/api/v1/accounts/{account['id']}/accept")
    ).status_code == 200
    # No --url: the .certs file remembers the bus.
    done = await xbus_client_run("register", "-c", str(config))
    assert done.code == 0, done.err
    certs = assert_certs_file_for_python_xbus(config, name, live_bus.ca)
    assert certs["tls.private-key"] == pending["tls.private-key"]

    # Registered: a second register refuses and points at renew-cert.
    again = await xbus_client_run("register", "-c", str(config))
    assert again.code == 1
    assert "renew-cert" in again.err


async def test_rejected_registration_fails_and_removes_the_pending_file(
    live_bus: LiveBus, tmp_path: Path
) -> None:
    name = new_name("nope")
    config = write_config(tmp_path, name)
    sent = await xbus_client_run(
        "register", "-c", str(config), "--url", live_bus.url, "--wait", "0"
    )
    assert sent.code == 0, sent.err
    account = await registration_of(live_bus, name)
    assert (
        await live_bus.admin.post(f"/api/v1/accounts/{account['id']}/reject")
    ).status_code == 200
    result = await xbus_client_run("register", "-c", str(config))
    assert result.code == 1
    assert "rejected" in result.err
    assert not (tmp_path / f"{name}.certs").exists()


async def test_refused_registrations_say_why_and_write_nothing(
    live_bus: LiveBus, tmp_path: Path
) -> None:
    taken = new_name("taken")
    await live_bus.admin.post("/api/v1/accounts", json={"name": taken, "type": "gateway"})
    config = write_config(tmp_path, taken)
    result = await xbus_client_run("register", "-c", str(config), "--url", live_bus.url)
    assert result.code == 1
    assert "already exists" in result.err
    assert not (tmp_path / f"{taken}.certs").exists()

    # An actor account with no actors: the bus's own words.
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    config = lonely / "client.yaml"
    config.write_text(yaml.safe_dump({"account-name": new_name("lonely")}))
    result = await xbus_client_run("register", "-c", str(config), "--url", live_bus.url)
    assert result.code == 1
    assert "at least one actor" in result.err

    # Bad configurations never reach the bus.
    bad = tmp_path / "bad.yaml"
    bad.write_text("actors: {}\n")
    result = await xbus_client_run("register", "-c", str(bad), "--url", live_bus.url)
    assert result.code == 2
    assert "account-name" in result.err
    # No bus there.
    config = write_config(tmp_path / "lonely", new_name("nobus"))
    result = await xbus_client_run(
        "register", "-c", str(config), "--url", f"http://127.0.0.1:{free_port()}"
    )
    assert result.code == 1
    assert "cannot reach the bus" in result.err


# --- renew-cert ------------------------------------------------------------------------------


async def test_renew_cert_needs_reset_cert_first(live_bus: LiveBus, tmp_path: Path) -> None:
    name = new_name("renew")
    config = await register_accepted(live_bus, tmp_path, name)
    certs_path = tmp_path / f"{name}.certs"
    before = read_certs(certs_path)

    refused = await xbus_client_run("renew-cert", "-c", str(config))
    assert refused.code == 1
    assert RESET_REQUIRED in refused.err
    assert read_certs(certs_path) == before

    r = await live_bus.admin.post(f"/api/v1/accounts/{name}/reset-cert")
    assert r.status_code == 200, r.text
    renewed = await xbus_client_run("renew-cert", "-c", str(config))
    assert renewed.code == 0, renewed.err
    assert "Certificate renewed" in renewed.out
    after = assert_certs_file_for_python_xbus(config, name, live_bus.ca)
    assert after["tls.private-key"] != before["tls.private-key"]
    assert after["tls.certificate"] != before["tls.certificate"]
    state = (await live_bus.admin.get(f"/api/v1/accounts/{name}/certificate")).json()
    assert state["cert_reset"] is False
    assert state["csr_origin"] == "authaccount"
    assert state["certificate"] == after["tls.certificate"]


async def test_renew_cert_with_an_api_key(live_bus: LiveBus, tmp_path: Path) -> None:
    name = new_name("keyed")
    config = await register_accepted(live_bus, tmp_path, name)
    key = (await live_bus.admin.post(f"/api/v1/accounts/{name}/api-key")).json()["api_key"]
    await live_bus.admin.post(f"/api/v1/accounts/{name}/reset-cert")
    # A certs file whose key is lost still renews with the account's API key... but it needs
    # the old certificate file to exist; the signature it adds is simply not needed.
    renewed = await xbus_client_run(
        "renew-cert", "-c", str(config), "--api-key", key, "--cert-expire-days", "30"
    )
    assert renewed.code == 0, renewed.err
    certs = assert_certs_file_for_python_xbus(config, name, live_bus.ca)
    cert = x509.load_pem_x509_certificate(certs["tls.certificate"].encode())
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert 29 < lifetime.days <= 31


async def test_renew_cert_before_register_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path, new_name("fresh"))
    result = await xbus_client_run("renew-cert", "-c", str(config))
    assert result.code == 1
    assert "register first" in result.err


# --- the configuration and certificate files -------------------------------------------------


def test_actors_are_read_as_python_xbus_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "account-name": "acme",
                "nats-url": "tls://bus:4222",
                "actors": {
                    "acme.in": {"kind": "emitter"},
                    0: {"name": "acme.work", "kind": "WORKER", "roles": ["r1"]},
                },
            }
        )
    )
    config = ClientConfig.load(path)
    assert config.account_name == "acme"
    assert config.nats_url == "tls://bus:4222"
    assert [(a.name, a.kind, a.roles) for a in config.actors()] == [
        ("acme.in", "emitter", []),
        ("acme.work", "worker", ["r1"]),
    ]
    assert config.certs_path() == tmp_path.resolve() / "acme.certs"

    path.write_text(yaml.safe_dump({"account-name": "acme", "tls": {"certfile": "/x/y.certs"}}))
    assert ClientConfig.load(path).certs_path() == Path("/x/y.certs")
    path.write_text(yaml.safe_dump({"account-name": "acme", "tls.certdir": "/x"}))
    with pytest.raises(ClientFileError, match="certdir"):
        ClientConfig.load(path).certs_path()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "mapping"),
        ("account-name: 'bad name'", "not a valid name"),
        ("account-name: a\nactors: {x: {kind: printer}}", "kind"),
        ("account-name: a\nactors: {x: {name: y, kind: worker}}", "named"),
        ("account-name: a\nactors: [x]", "mapping"),
        ("account-name: [", "YAML"),
    ],
)
def test_bad_configurations_are_explained(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(content)
    with pytest.raises(ClientFileError, match=message):
        ClientConfig.load(path)


def test_certs_file_is_private_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.certs"
    write_certs(path, {"tls.private-key": "-----BEGIN KEY-----\nabc\n-----END KEY-----\n"})
    write_certs(path, {"tls.csr": "x", "xbus.url": "http://bus"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_certs(path) == {"tls.csr": "x", "xbus.url": "http://bus"}
    assert [p.name for p in tmp_path.iterdir()] == ["a.certs"]


# --- the demo services, with python-xbus's test helpers ---------------------------------------


async def test_print_to_console_prints_every_item_of_a_complete_envelope(
    capsys: pytest.CaptureFixture[str],
) -> None:
    actor = testutils.Actor("id", "printer", "consumer", [])
    request, tails = await testutils.make_request(
        default=[("demo.msg", [b"hello", b"world"]), ("demo.bin", [b"\xff\x00"])]
    )
    await PrintToConsole(actor).process(testutils.APC(actor, request, tails))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("print-to-console: printer default ")
    assert lines[0].endswith("demo.msg: hello")
    assert lines[1].endswith("demo.msg: world")
    assert lines[2].endswith("demo.bin: <2 bytes> /wA=")


async def test_relay_forwards_its_input() -> None:
    actor = testutils.Actor("id", "relay", "worker", [], {"processing-duration": "0"})
    request, tails = await testutils.make_request(default=("demo.msg", [b"x"]))
    apc = testutils.APC(actor, request, tails)
    await Relay(actor).process(apc)
    assert apc.forwarded == {"default": ("default", None)}


async def test_helloworld_emits_count_messages() -> None:
    sent: list[Any] = []

    class FakeActor(testutils.Actor):  # type: ignore[misc]
        def open_output(self, output: str, eventtypes: list[str]) -> Any:
            from xbus import envelope_writer

            async def send(fragment: Any) -> None:
                sent.append((output, fragment))

            return envelope_writer.EnvelopeWriter(send, eventtypes)

    actor = FakeActor(
        "id", "hello", "emitter", [], {"message": "hi", "interval": "0", "count": "3"}
    )
    service = HelloWorld(actor)
    await service.startup()
    assert service.task is not None
    await asyncio.wait_for(asyncio.shield(service.task), 5)
    await service.shutdown()
    assert len(sent) == 3
    output, fragment = sent[0]
    assert output == "default"
    assert [(e.type, list(e.items)) for e in fragment.events] == [("demo.simplemessage", [b"hi"])]


def test_our_demo_services_replace_python_xbus_ones() -> None:
    from xbus import service

    register_services()
    assert service.get("demo.print-to-console") is PrintToConsole
    assert service.get("demo.relay") is Relay
    assert service.get("demo.helloworld") is HelloWorld


# --- emit and serve over NATS: a whole `xbusd serve` with TLS NATS ----------------------------


class Xbusd:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""
        self.log = data_dir.parent / "xbusd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**_env(), "XBUS_NATS_PORT": "0"}
        with self.log.open("ab") as out:
            start = out.tell()
            self.proc = subprocess.Popen(
                [XBUSD, "serve", "--data-dir", str(self.data_dir), "--port", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.url = f"http://127.0.0.1:{bound_port(self.log, self.proc, start, 90)}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("xbusd not ready:\n" + self.log.read_text())

    def admin(self) -> httpx.AsyncClient:
        key = (self.data_dir / "admin.key").read_text().strip()
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def xbusd(tmp_path: Path) -> Iterator[Xbusd]:
    server = Xbusd(tmp_path / "bus")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _register_over_cli(
    xbusd: Xbusd, admin: httpx.AsyncClient, directory: Path, name: str, actors: dict[str, Any]
) -> Path:
    directory.mkdir()
    config = write_config(directory, name, actors)
    sent = await xbus_client_run("register", "-c", str(config), "--url", xbusd.url, "--wait", "0")
    assert sent.code == 0, sent.err
    r = await admin.post(f"/api/v1/accounts/{name}/accept")
    assert r.status_code == 200, r.text
    done = await xbus_client_run("register", "-c", str(config))
    assert done.code == 0, done.err
    return config


@pytest.mark.timeout(240)
async def test_emit_to_a_served_print_to_console_consumer(xbusd: Xbusd, tmp_path: Path) -> None:
    async with xbusd.admin() as admin:
        shop, sink = new_name("shop"), new_name("sink")
        emitter, printer = f"{shop}.orders", f"{sink}.printer"
        shop_config = await _register_over_cli(
            xbusd, admin, tmp_path / "shop", shop, {emitter: {"kind": "emitter"}}
        )
        sink_config = await _register_over_cli(
            xbusd,
            admin,
            tmp_path / "sink",
            sink,
            {printer: {"kind": "consumer", "service": {"type": "demo.print-to-console"}}},
        )
        graph = {
            "nodes": [
                {
                    "id": "orders",
                    "type": "emitter",
                    "actors": [emitter],
                    "sourcematch": {"eventtypes": ["demo.order"]},
                },
                {"id": "print", "type": "consumer", "actors": [printer]},
            ],
            "edges": ["orders->print"],
        }
        r = await admin.post(
            "/api/v1/pipelines", json={"name": new_name("p"), "version": "1", "graph": graph}
        )
        assert r.status_code == 201, r.text
        pipeline = r.json()
        assert pipeline["valid"], pipeline["validation_messages"]
        r = await admin.post(
            f"/api/v1/pipelines/{pipeline['id']}/status", json={"status": "active"}
        )
        assert r.status_code == 200, r.text

        serve = await asyncio.create_subprocess_exec(
            XBUS_CLIENT,
            "serve",
            "-c",
            str(sink_config),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        try:
            # The consumer is online once python-xbus said ActorReady.
            deadline = time.monotonic() + 30
            while True:
                actor = (await admin.get(f"/api/v1/actors/{printer}")).json()
                if actor.get("online"):
                    break
                assert serve.returncode is None, (await serve.communicate())[1].decode()
                assert time.monotonic() < deadline, "the served consumer never came online"
                await asyncio.sleep(0.2)

            envelope = {
                "events": [
                    {"type": "demo.order", "encoding": "text", "items": ["order 1", "order 2"]}
                ]
            }
            emitted = await xbus_client_run(
                "emit", "-c", str(shop_config), emitter, stdin=json.dumps(envelope)
            )
            assert emitted.code == 0, emitted.err
            answer = json.loads(emitted.out)
            assert answer["status"] == "accepted"
            assert "process_id" in answer

            r = await admin.get(f"/api/v1/processes/{answer['process_id']}", params={"wait": 30})
            assert r.json()["status"] == "done", r.text
        finally:
            if serve.returncode is None:
                serve.send_signal(signal.SIGTERM)
            out, err = await asyncio.wait_for(serve.communicate(), 30)
        assert serve.returncode == 0, err.decode()
        printed = out.decode()
        assert "demo.order: order 1" in printed
        assert "demo.order: order 2" in printed


@pytest.mark.timeout(240)
async def test_emit_with_no_matching_pipeline_reports_the_refusal(
    xbusd: Xbusd, tmp_path: Path
) -> None:
    async with xbusd.admin() as admin:
        shop = new_name("shop")
        emitter = f"{shop}.orders"
        config = await _register_over_cli(
            xbusd, admin, tmp_path / "shop", shop, {emitter: {"kind": "emitter"}}
        )
    envelope = {"events": [{"type": "nobody.listens", "items": ["x"]}]}
    result = await xbus_client_run("emit", "-c", str(config), emitter, stdin=json.dumps(envelope))
    assert result.code == 1
    assert result.err.strip()
    # Not an emitter of this account.
    result = await xbus_client_run(
        "emit", "-c", str(config), "someone.else", stdin=json.dumps(envelope)
    )
    assert result.code == 1


async def test_emit_refuses_a_bad_envelope_before_connecting(tmp_path: Path) -> None:
    config = write_config(tmp_path, new_name("shop"))
    for text, message in (("not json", "envelope JSON"), ('{"events": []}', "at least one event")):
        result = await xbus_client_run("emit", "-c", str(config), "x", stdin=text)
        assert result.code == 2
        assert message in result.err


async def test_emit_and_serve_need_a_certificate_first(tmp_path: Path) -> None:
    config = write_config(tmp_path, new_name("fresh"))
    envelope = json.dumps({"events": [{"type": "t", "items": ["x"]}]})
    for args in (("emit", "-c", str(config), "x"), ("serve", "-c", str(config))):
        result = await xbus_client_run(*args, stdin=envelope)
        assert result.code == 1, result
        assert "register" in result.err
        assert result.out == ""
