"""The bus on a 3-node NATS cluster (tests/nats_api/cluster.py): two xbusd replicas on one
database, the test's own (given nodes 0 and 1) and an `xbusd serve` process on node 1, and a
python-xbus 0.4.0 actor on node 2."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.bus.conftest import chain
from tests.nats_api.cluster import NatsCluster
from tests.nats_api.conftest import NatsBus, TlsNats
from tests.production.servers import Xbusd

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path_factory.mktemp("cluster"))
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


@pytest.fixture
def tls_nats(cluster: NatsCluster) -> TlsNats:
    node = cluster.nodes[0]
    return TlsNats(node.url(), cluster.root, cluster.ca, node)


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any], cluster: NatsCluster) -> dict[str, Any]:
    # xbusd knows two of the nodes (XBUS_NATS_URL with several servers); an answer lost to a
    # reconnection costs nats_actor_timeout before the request goes out again.
    urls = ",".join(node.url() for node in cluster.nodes[:2])
    return {**settings_overrides, "nats_url": urls, "nats_actor_timeout": 3.0}


def second_replica(nats_bus: NatsBus, cluster: NatsCluster, tmp_path: Path) -> Xbusd:
    """`xbusd serve` on node 1, on the test app's database: a replica that shares the work
    (its dispatcher claims requests too) and signals node 1 when it writes the auth file."""
    node = cluster.nodes[1]
    tls = cluster.tls
    settings = nats_bus.app.state.xbus.settings
    replica = Xbusd(
        tmp_path / "replica",
        settings.database_url,
        node.url(),
        env={
            "XBUS_NATS_TLS_CA": str(tls.ca_file),
            "XBUS_NATS_TLS_CERT": str(tls.client_cert),
            "XBUS_NATS_TLS_KEY": str(tls.client_key),
            "XBUS_NATS_AUTH_FILE": str(cluster.auth_file),
            "XBUS_NATS_PID_FILE": str(node.pid_file),
            "XBUS_NATS_MONITOR_URL": node.monitor_url,
            "XBUS_PKI_DIR": str(cluster.root / "pki"),
            "XBUS_NATS_ACTOR_TIMEOUT": "3",
        },
    )
    replica.start().wait_ready()
    return replica


class Actor:
    """python-xbus 0.4.0, unchanged, in a process of its own (tests/nats_api/consumer_actor.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log

    @classmethod
    async def start(cls, conf: dict[str, Any], url: str, workdir: Path, n: int) -> Actor:
        spec = {
            "conf": {**conf, "nats-url": url, "no-reconnect": False},
            "workdir": str(workdir),
            "consumer": "c.consumer",
        }
        (workdir / f"spec{n}.json").write_text(json.dumps(spec))
        log = workdir / f"actor{n}.log"
        with log.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.nats_api.consumer_actor",
                str(workdir / f"spec{n}.json"),
                cwd=Path(__file__).resolve().parents[2],
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        actor = cls(proc, log)
        assert await actor.line() == {"ready": True}
        return actor

    async def line(self, timeout: float = 30) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if not raw:
                raise AssertionError(f"the actor exited ({await self.proc.wait()})")
            if raw.startswith(b"{"):
                return dict(json.loads(raw))

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        print(self.log.read_text()[-3000:])  # shown when the test fails


async def test_the_node_of_an_actor_dies(
    nats_bus: NatsBus, cluster: NatsCluster, tmp_path: Path
) -> None:
    """The actor's node is killed; an envelope comes meanwhile. python-xbus reconnects to
    another node by itself, or (its own reconnection is unreliable, docs/nats.md) its
    supervisor restarts it on another node: either way its open request is delivered
    again, ends once, and nothing acknowledged is lost."""
    account = await nats_bus.nats_account(
        {"c.emitter": {"kind": "emitter"}, "c.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("c.emitter", ("consumer", "c.consumer")))
    replica = second_replica(nats_bus, cluster, tmp_path)
    actors = [await Actor.start(account.conf, cluster.nodes[2].url(), tmp_path, 0)]

    async def emit(text: str) -> str:
        body = {"events": [{"type": "order.created", "items": [text]}]}
        r = await account.http.post("/api/v1/actors/c.emitter/output", json=body)
        assert r.status_code == 202, r.text
        return str(r.json()["process_id"])

    try:
        first = await emit("before")
        assert await actors[0].line() == {"items": ["before"]}
        # Its answer reached the bus (the node is killed while the actor is idle).
        r = await account.http.get(f"/api/v1/processes/{first}", params={"wait": 10})
        assert r.json()["status"] == "done"
        node = cluster.nodes[2]
        assert node.process is not None
        os.kill(node.process.pid, signal.SIGKILL)
        second = await emit("during")
        try:
            got = await actors[0].line(15)  # python-xbus reconnected by itself
        except TimeoutError:
            # It did not: its supervisor restarts it, on another node.
            await actors[0].kill()
            actors.append(await Actor.start(account.conf, cluster.nodes[1].url(), tmp_path, 1))
            got = await actors[1].line(30)
        assert got == {"items": ["during"]}
        for pid in (first, second):
            detail = (
                await account.http.get(f"/api/v1/processes/{pid}", params={"wait": 30})
            ).json()
            assert detail["status"] == "done", detail["nodes"]
            [request] = detail["nodes"][1]["requests"]
            # Ended once; an answer lost to the reconnection cost one attempt at most.
            assert request["status"] == "success", request
            assert request["attempts"] <= 2, request
        assert (await account.http.get("/api/v1/actors/c.consumer")).json()["online"]
        # The other replica, on a node that stayed up, served throughout.
        ready = (await asyncio.to_thread(httpx.get, replica.url + "/readyz")).json()
        assert ready["status"] == "ready", ready
    finally:
        for actor in actors:
            await actor.kill()
        replica.kill()
