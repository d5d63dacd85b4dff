"""The OpenAPI document against a live `xbusd serve` on 127.0.0.1: a client generated from
openapi/openapi.json by openapi-python-client runs the bus's main scenario, and schemathesis
finds no 5xx and no response that breaks the document."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.openapi import DEFAULT_PATH
from tests.conftest import ADMIN_KEY
from tests.production.servers import Cluster, Xbusd

pytestmark = pytest.mark.timeout(300)

BIN = Path(sys.executable).parent
CLIENT_CONFIG = DEFAULT_PATH.parent / "client-config.yaml"


@pytest.fixture
def live(cluster: Cluster) -> Xbusd:
    # Long-polls capped short: generated requests may ask for any ?wait=.
    server = cluster.server("live", env={"XBUS_LONG_POLL_MAX": "0.5"}).start()
    server.wait_ready()
    return server


@pytest.fixture
def xbus_client(tmp_path: Path) -> Iterator[Any]:
    """The generated client package, importable as `xbus_client`."""
    out = subprocess.run(
        [
            str(BIN / "openapi-python-client"),
            "generate",
            "--path",
            str(DEFAULT_PATH),
            "--config",
            str(CLIENT_CONFIG),
            "--meta",
            "none",
            "--output-path",
            str(tmp_path / "xbus_client"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # Every operation is generated: nothing skipped with a warning.
    assert "Warning" not in out.stdout + out.stderr, out.stdout + out.stderr
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("xbus_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "xbus_client" or m.startswith("xbus_client.")]:
            del sys.modules[name]


def _call(module: str, **kwargs: Any) -> Any:
    """`xbus_client.api.<module>.sync_detailed(**kwargs)`: the response, parsed."""
    api = importlib.import_module(f"xbus_client.api.{module}")
    return api.sync_detailed(**kwargs)


def _ok(response: Any, status: int) -> Any:
    assert response.status_code == status, (response.status_code, response.content)
    return response.parsed


def test_generated_client_smoke(live: Xbusd, xbus_client: Any) -> None:
    models = importlib.import_module("xbus_client.models")
    admin = xbus_client.AuthenticatedClient(base_url=live.url, token=ADMIN_KEY, timeout=30)
    suffix = uuid.uuid4().hex[:6]

    account = _ok(
        _call(
            "accounts.create_account",
            client=admin,
            body=models.AccountCreate.from_dict({"name": f"shop-{suffix}", "type": "gateway"}),
        ),
        201,
    )
    gateway = xbus_client.AuthenticatedClient(base_url=live.url, token=account.api_key, timeout=30)
    whoami = _ok(_call("accounts.whoami", client=gateway), 200)
    assert whoami.account.name == f"shop-{suffix}"

    names = {}
    for kind in ("emitter", "worker", "consumer"):
        actor = _ok(
            _call(
                "actors.create_actor",
                client=admin,
                body=models.ActorCreate.from_dict(
                    {"name": f"{kind}-{suffix}", "kind": kind, "account_id": str(account.id)}
                ),
            ),
            201,
        )
        names[kind] = actor.name
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [names["emitter"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "enrich", "type": "worker", "actors": [names["worker"]]},
            {"id": "store", "type": "consumer", "actors": [names["consumer"]]},
        ],
        "edges": ["emit->enrich", "enrich->store"],
    }
    pipeline = _ok(
        _call(
            "pipelines.create_pipeline",
            client=admin,
            body=models.PipelineCreate.from_dict(
                {"name": f"orders-{suffix}", "version": "1", "graph": graph}
            ),
        ),
        201,
    )
    assert pipeline.valid, pipeline.validation_messages
    active = _ok(
        _call(
            "pipelines.set_pipeline_status",
            pipeline_id=str(pipeline.id),
            client=admin,
            body=models.PipelineStatusChange.from_dict({"status": "active"}),
        ),
        200,
    )
    assert active.status.value == "active"

    envelope = models.EnvelopeIn.from_dict(
        {"events": [{"type": "order.created", "encoding": "json", "items": [{"id": 1}]}]}
    )
    emission = _ok(
        _call("envelopes.output", emitter=names["emitter"], client=gateway, body=envelope), 202
    )

    job = _ok(_call("requests.lease_request", actor=names["worker"], client=gateway, wait=5), 200)
    assert str(job.process_id) == str(emission.process_id)
    assert job.inputs[0].envelope["events"][0]["items"] == [{"id": 1}]
    state = models.RequestStateIn.from_dict(
        {
            "status": "success",
            "messages": [{"level": "notice", "text": "enriched"}],
            "outputs": {"default": {"events": [{"type": "order.enriched", "items": ["ok"]}]}},
        }
    )
    _ok(_call("requests.report_state", request_id=job.request_id, client=gateway, body=state), 200)

    job = _ok(_call("requests.lease_request", actor=names["consumer"], client=gateway, wait=5), 200)
    done = models.RequestStateIn.from_dict({"status": "success"})
    _ok(_call("requests.report_state", request_id=job.request_id, client=gateway, body=done), 200)

    process = _ok(
        _call("processes.get_process", process_id=emission.process_id, client=gateway, wait=5),
        200,
    )
    assert process.status.value == "done"
    assert [n.status.value for n in process.nodes] == ["done", "done", "done"]
    logs = _ok(_call("processes.get_logs", process_id=emission.process_id, client=gateway), 200)
    assert "enriched" in [entry.text for entry in logs.items]

    # Errors come back as the documented problem model.
    missing = _call("processes.get_process", process_id=uuid.uuid4(), client=gateway)
    assert missing.status_code == 404
    assert missing.parsed.status == 404


def test_schemathesis_finds_no_server_error(live: Xbusd, tmp_path: Path) -> None:
    started = time.monotonic()
    out = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{live.url}/openapi.json",
            # ignored_auth: each operation the document says needs a key is also sent without
            # it (and with a wrong one) and must refuse.
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,"
            "status_code_conformance,ignored_auth",
            "--header",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--phases",
            "examples,coverage,fuzzing",
            # Bounded: about a minute on this machine. One worker: hypothesis's lambda
            # introspection is not thread-safe (runtime errors with two).
            "--max-examples",
            "5",
            "--seed",
            "7301",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    took = time.monotonic() - started
    print(out.stdout[-3000:])
    assert out.returncode == 0, out.stdout[-20000:] + out.stderr[-5000:]
    assert live.proc is not None
    assert live.proc.poll() is None, live.output()
    assert took < 180


TYPESCRIPT = DEFAULT_PATH.parent.parent / "clients" / "typescript"


def _run(args: list[str], cwd: Path) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=cwd)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_typescript_client_walkthrough(live: Xbusd, tmp_path: Path) -> None:
    """openapi-typescript's types of openapi/openapi.json, type-checked by tsc with the
    README walkthrough written against them (openapi-fetch), which then runs on a live bus:
    a stale or wrong document fails the type check or the run."""
    node_modules = TYPESCRIPT / "node_modules"
    assert node_modules.is_dir(), "run ./scripts/test (it installs clients/typescript's packages)"
    work = tmp_path / "ts"
    work.mkdir()
    for name in ("package.json", "tsconfig.json"):
        shutil.copy(TYPESCRIPT / name, work / name)
    shutil.copytree(TYPESCRIPT / "src", work / "src", ignore=shutil.ignore_patterns("schema.d.ts"))
    (work / "node_modules").symlink_to(node_modules)
    bin_dir = node_modules / ".bin"
    _run(
        [
            str(bin_dir / "openapi-typescript"),
            str(DEFAULT_PATH),
            "--default-non-nullable",
            "false",
            "-o",
            "src/schema.d.ts",
        ],
        work,
    )
    _run([str(bin_dir / "tsc")], work)
    out = _run(["node", "dist/walkthrough.js", live.url, ADMIN_KEY], work)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "done"
    assert result["log_lines"] >= 2
    assert result["without_key"] == 401
