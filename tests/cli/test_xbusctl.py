"""xbusctl as an operator runs it: a subprocess against a live server."""

from __future__ import annotations

import gzip
import json
import stat
from pathlib import Path
from typing import Any

import httpx
import typer
from typer.testing import CliRunner

from app.cli.xbusctl import cli
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.cli.conftest import Run
from tests.conftest import new_name


def test_help_on_every_command() -> None:
    root = typer.main.get_command(cli)
    runner = CliRunner()
    paths: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    assert len(paths) > 40
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path
        if not hasattr(_find(root, path), "commands"):
            assert "Example" in result.output, f"{' '.join(path)} has no example"


def _find(root: Any, path: list[str]) -> Any:
    command = root
    for name in path:
        command = command.commands[name]
    return command


async def test_configuration_and_failures(xbusctl: Run, server: str, tmp_path: Path) -> None:
    # A config file, the environment over it.
    config = tmp_path / "xbusctl.yaml"
    config.write_text(f"url: {server}\napi-key: xbk_wrong-key\n")
    r = await xbusctl("--config", str(config), "whoami", env={"XBUS_URL": "", "XBUS_API_KEY": ""})
    assert r.code == 1, r
    assert "error: Authentication required (401): the API key is not valid" in r.err
    r = await xbusctl("--config", str(config), "whoami", "--json", env={"XBUS_URL": ""})
    assert r.code == 0, r
    assert json.loads(r.out)["admin"] is True
    r = await xbusctl("--json", "whoami")  # --json before the command: for any command
    assert json.loads(r.out)["account"]["name"] == "admin"
    # No key at all, a missing file, an unreachable bus, a bad option.
    r = await xbusctl("whoami", env={"XBUS_API_KEY": ""})
    assert r.code == 2
    assert "no API key" in r.err
    r = await xbusctl("--config", str(tmp_path / "nope.yaml"), "whoami")
    assert r.code == 2
    assert "not found" in r.err
    r = await xbusctl("whoami", env={"XBUS_URL": "http://127.0.0.1:9"})
    assert r.code == 1
    assert "cannot reach the bus" in r.err
    r = await xbusctl("ps", "list", "--since", "the other day")
    assert r.code == 2
    assert "neither a date" in r.err
    # The server's detail, on a refused operation.
    r = await xbusctl("ps", "resume", "7a7d6f3e-0000-4000-8000-000000000000")
    assert r.code == 1
    assert "Not found (404): no process 7a7d6f3e-0000-4000-8000-000000000000" in r.err


async def test_accounts(xbusctl: Run, app: Any, tmp_path: Path, server: str) -> None:
    name = new_name("gw")
    r = await xbusctl("account", "create", name, "--type", "gateway", "--json")
    assert r.code == 0, r
    created = json.loads(r.out)
    assert created["api_key"].startswith("xbk_")
    r = await xbusctl("account", "list")
    assert name in r.out
    assert created["id"] in r.out
    r = await xbusctl("account", "get", name, "--json")
    assert json.loads(r.out)["type"] == "gateway"
    r = await xbusctl("account", "get-apikey", name)
    assert "has_api_key" in r.out
    r = await xbusctl("account", "renew-apikey", name, "--expires-in", "30", "--json")
    renewed = json.loads(r.out)
    assert renewed["api_key"] != created["api_key"]
    assert renewed["expires_at"]
    r = await xbusctl("account", "set-apikey", name, "--expires-at", "2099-01-01", "--json")
    assert json.loads(r.out)["expires_at"].startswith("2099-01-01")

    # A client configuration, with a new key that works at once.
    out = tmp_path / "client.yaml"
    r = await xbusctl("account", "export", name, "--renew-key", "-o", str(out))
    assert r.code == 0, r
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    exported = out.read_text()
    assert f"account: {name}" in exported
    assert f"url: {server}" in exported
    r = await xbusctl("--config", str(out), "whoami", env={"XBUS_API_KEY": "", "XBUS_URL": ""})
    assert r.code == 0, r
    assert name in r.out
    r = await xbusctl("account", "export", name)
    assert "<the API key of" in r.out  # a placeholder: keys are not stored
    r = await xbusctl("account", "export", name, "-o", str(out))
    assert r.code == 1
    assert "exists" in r.err

    # Delete asks first; its actors make it ask twice.
    r = await xbusctl(
        "actor", "create", f"{name}-em", "--kind", "emitter", "--account", name, "--json"
    )
    assert r.code == 0, r
    r = await xbusctl("account", "delete", name, stdin="n\n")
    assert r.code == 1
    assert "nothing was changed" in r.err
    r = await xbusctl("account", "delete", name, stdin="y\nn\n")
    assert r.code == 1
    assert "It has 1 actor(s)" in r.err
    assert (await xbusctl("account", "get", name)).code == 0
    r = await xbusctl("account", "delete", name, stdin="y\ny\n")
    assert r.code == 0, r
    assert "and 1 actor(s)" in r.out
    r = await xbusctl("account", "get", name)
    assert r.code == 1
    assert "Not found (404)" in r.err


async def test_account_registrations(xbusctl: Run, client: httpx.AsyncClient, server: str) -> None:
    from tests.registrations.helpers import registration

    accepted = registration()
    rejected = registration()
    for body in (accepted, rejected):
        registered = await client.post("/api/v1/registrations", json=body)
        assert registered.status_code == 201, registered.text
    r = await xbusctl("account", "list", "--status", "pending", "--json")
    assert {a["name"] for a in json.loads(r.out)} == {accepted["name"], rejected["name"]}
    r = await xbusctl("account", "accept", accepted["name"], "--cert-expire-days", "30")
    assert r.code == 0, r
    assert f"{accepted['name']}: enabled, certificate" in r.out
    r = await xbusctl("account", "reject", rejected["name"])
    assert f"{rejected['name']}: rejected" in r.out
    r = await xbusctl("account", "reset-cert", accepted["name"], "--json")
    assert json.loads(r.out)["cert_reset"] is True
    r = await xbusctl("account", "accept", rejected["name"])
    assert r.code == 1
    assert "(409)" in r.err


async def test_actors(xbusctl: Run, bus: Bus) -> None:
    acct = await bus.account()
    name = new_name("co")
    r = await xbusctl(
        "actor", "create", name, "--kind", "consumer", "--account", acct.name,
        "--role", "printer", "--config", "batch.size=10", "--status", "pending",
    )  # fmt: skip
    assert r.code == 0, r
    r = await xbusctl("actor", "list", "--kind", "consumer")
    line = next(line for line in r.out.splitlines() if name in line)
    assert acct.name in line  # with the name of its account
    r = await xbusctl("actor", "accept", name, "--json")
    assert json.loads(r.out)[0]["status"] == "enabled"
    r = await xbusctl(
        "actor", "config", "set", name, "http.webhook.url=http://127.0.0.1:9/hook", "x.y=z"
    )
    assert r.code == 0, r
    r = await xbusctl("actor", "config", "unset", name, "batch.size", "--json")
    assert json.loads(r.out)["config"] == {
        "http.webhook.url": "http://127.0.0.1:9/hook",
        "x.y": "z",
    }
    r = await xbusctl("actor", "config", "set", name, "novalue")
    assert r.code == 2
    r = await xbusctl("actor", "config", "set", name, "Bad Key=1")
    assert r.code == 1
    assert "Unprocessable content (422)" in r.err
    r = await xbusctl("actor", "reject", name, "--json")
    assert json.loads(r.out)[0]["status"] == "rejected"
    r = await xbusctl("actor", "get", name)
    assert "rejected" in r.out
    assert "config x.y" in r.out
    r = await xbusctl("actor", "delete", name, "--yes")
    assert r.code == 0, r
    assert (await xbusctl("actor", "get", name)).code == 1


GRAPH = """\
# the billing pipeline
nodes:
  - id: source
    type: emitter
    actors: [{em}]
    sourcematch: {{eventtypes: [order.created]}}
  - id: sink
    type: consumer
    actors: [{co}]
edges:
  - source->sink
"""


async def test_pipelines(xbusctl: Run, bus: Bus, tmp_path: Path) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    source = tmp_path / "billing.yaml"
    source.write_text(GRAPH.format(em=em["name"], co="nobody"))
    before = (source.read_bytes(), source.stat().st_mtime_ns)

    r = await xbusctl("pipeline", "validate", str(source))
    assert r.code == 1
    assert "nobody" in r.err
    r = await xbusctl("pipeline", "save", str(source), "--version", "1")
    assert r.code == 1  # saved, but invalid
    assert "has errors" in r.err
    source.write_text(GRAPH.format(em=em["name"], co=co["name"]))
    before = (source.read_bytes(), source.stat().st_mtime_ns)
    r = await xbusctl("pipeline", "validate", str(source))
    assert r.code == 0, r
    r = await xbusctl("pipeline", "save", str(source), "--status", "active", "--json")
    assert r.code == 0, r
    saved = json.loads(r.out)
    assert (saved["name"], saved["version"], saved["status"]) == ("billing", "1", "active")
    # The file is never rewritten.
    assert (source.read_bytes(), source.stat().st_mtime_ns) == before
    r = await xbusctl("pipeline", "save", str(source))
    assert r.code == 1
    assert "only a draft can be edited" in r.err

    r = await xbusctl("pipeline", "list")
    assert "billing" in r.out
    assert "active" in r.out
    r = await xbusctl("pipeline", "get", "billing", "--source")
    assert r.out == source.read_text()
    r = await xbusctl("pipeline", "get", "billing:1", "--json")
    assert json.loads(r.out)["id"] == saved["id"]
    r = await xbusctl("pipeline", "graph", "billing")
    assert "source -> sink" in r.out
    assert f"consumer  {co['name']}" in r.out
    r = await xbusctl("pipeline", "graph", "billing", "--json")
    assert [n["id"] for n in json.loads(r.out)["nodes"]] == ["source", "sink"]
    r = await xbusctl("pipeline", "graph", saved["id"], "--format", "dot")
    assert r.out.startswith('digraph "billing 1" {')
    assert '"source" -> "sink";' in r.out
    r = await xbusctl("pipeline", "set-status", "billing:1", "inactive")
    assert r.code == 0, r
    assert "inactive" in r.out
    r = await xbusctl("pipeline", "set-status", "billing:1", "asleep")
    assert r.code == 2
    r = await xbusctl("pipeline", "get", "billing:9")
    assert r.code == 1
    assert "no pipeline 'billing:9'" in r.err


async def test_processes(xbusctl: Run, bus: Bus, tmp_path: Path) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    pipe = await bus.pipeline(chain(em["name"], ("consumer", co["name"])), name="orders")
    pids = []
    for _ in range(4):
        emitted = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        pids.append(emitted.json()["process_id"])
    # One fails: it lands in the postmortem list.
    job = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    failed = job["process_id"]
    await acct.http.post(
        f"/api/v1/requests/{job['request_id']}/state",
        json={"status": "error", "messages": [{"level": "error", "text": "printer on fire"}]},
    )

    r = await xbusctl("ps", "list", "--pipeline", "orders", "--status", "running")
    assert r.code == 0, r
    assert sum(pid in r.out for pid in pids) == 3
    r = await xbusctl("ps", "list", "--emitter", em["name"], "--json", "-n", "2")
    assert [p["id"] for p in json.loads(r.out)] == pids[::-1][:2]
    r = await xbusctl("ps", "show", failed, "--logs")
    assert "printer on fire" in r.out
    r = await xbusctl("ps", "logs", failed, "--json")
    assert any(e["text"] == "printer on fire" for e in json.loads(r.out))

    # Control, one and many.
    running = [pid for pid in pids if pid != failed]
    r = await xbusctl("ps", "pause", running[0])
    assert r.code == 0, r
    assert "paused" in r.out
    r = await xbusctl("ps", "pause", "--pipeline", "orders", "--status", "running", "--json")
    assert json.loads(r.out)["changed"] == 2
    r = await xbusctl("ps", "resume", "--all")
    assert "3 changed" in r.out
    r = await xbusctl("ps", "resume", running[0])
    assert r.code == 1
    assert f"Conflict (409): process {running[0]} is running" in r.err
    r = await xbusctl("ps", "cancel", running[0], running[1], "--dry-run")
    assert "2 matched, 0 changed" in r.out
    r = await xbusctl("ps", "cancel", running[0], running[1], stdin="n\n")
    assert r.code == 1
    r = await xbusctl("ps", "cancel", running[0], running[1], "--yes")
    assert "2 changed" in r.out, r
    r = await xbusctl("ps", "replay", running[0], "--on", "current", "--json")
    assert r.code == 0, r
    assert json.loads(r.out)["replay_of"] == running[0]
    r = await xbusctl("ps", "replay", "--status", "error", "--pipeline", pipe["id"], "--yes")
    assert "3 matched, 3 changed" in r.out, r
    r = await xbusctl("ps", "summary", "--json")
    summary = json.loads(r.out)
    assert summary["total"] == 8
    assert summary["by_status"] == {"error": 3, "running": 5}
    r = await xbusctl("ps", "summary")
    assert "orders 1" in r.out

    # Postmortem.
    r = await xbusctl("pm", "list")
    assert failed in r.out
    assert "printer on fire" in r.out
    r = await xbusctl("pm", "set", failed, "--status", "closed", "-m", "new printer")
    assert "error closed (new printer)" in r.out
    r = await xbusctl("pm", "list", "--level", "error", "--json")
    assert failed not in [i["process"]["id"] for i in json.loads(r.out)]
    r = await xbusctl("pm", "list", "--every", "--level", "error", "--json")
    assert failed in [i["process"]["id"] for i in json.loads(r.out)]
    r = await xbusctl("pm", "set", running[2], "--status", "closed")
    assert r.code == 1
    assert "no postmortem record" in r.err

    # Export: gzip file, parallel jobs, envelopes.
    out = tmp_path / "export.ndjson.gz"
    r = await xbusctl(
        "ps", "export", "-o", str(out), "--export-envelope", "--export-jobs", "3", "--quiet"
    )
    assert r.code == 0, r
    assert r.err == ""
    lines = [json.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert lines[0]["kind"] == "header"
    assert lines[0]["total"] == 8
    assert lines[0]["partitions"] == 3
    assert lines[-1] == {"kind": "end", "count": 8}
    exported_ids = [line["id"] for line in lines if line["kind"] == "process"]
    assert len(set(exported_ids)) == 8
    assert set(pids) <= set(exported_ids)
    assert {e["kind"] for e in lines} == {"header", "envelope", "process", "end"}
    r = await xbusctl("ps", "export", "--status", "error", "--export-envelope-size-limit", "1")
    exported = [json.loads(line) for line in r.out.splitlines()]
    assert exported[0]["total"] == 3
    assert "exported 3 process(es) to stdout" in r.err
    r = await xbusctl("ps", "export", "-o", str(out))
    assert r.code == 1
    assert "exists" in r.err

    # Envelopes.
    envelope_id = next(line for line in lines if line["kind"] == "envelope")["id"]
    r = await xbusctl("envelope", "get", envelope_id, "--items")
    assert "order.created" in r.out
    assert '{"id": 1}' in r.out
    r = await xbusctl("envelope", "get", envelope_id, "--items", "--json")
    assert json.loads(r.out)["events"][0]["items"] == [{"id": 1}, {"id": 2}]

    # Purges.
    r = await xbusctl("ps", "purge", "--status", "error", "--dry-run", "--json")
    assert json.loads(r.out)["matched"] == 3
    r = await xbusctl("ps", "purge", "--status", "error", stdin="y\n")
    assert r.code == 0, r
    assert "processes: 3 matched, deleted 3" in r.out
    r = await xbusctl("ps", "purge", "--status", "running", "--yes")
    assert r.code == 1
    assert "cancel them first" in r.err
    r = await xbusctl("envelope", "purge", "--unreferenced", "--yes")
    assert r.code == 0, r
    assert "envelopes: 0 matched" in r.out  # the replays still refer to them
    r = await xbusctl("logs", "purge", "--before", "2099-01-01", "--level", "warning", "--yes")
    assert "logs: 0 matched" in r.out
    r = await xbusctl("logs", "purge", "--before", "1s", "--yes", "--json")
    assert json.loads(r.out)["deleted"] > 0
    r = await xbusctl("stats", "--json")
    kinds = {k["kind"]: k for k in json.loads(r.out)["kinds"]}
    assert kinds["processes"]["rows"] == 5
