"""A TLS nats-server with certificate-mapped users (as the embedded default runs it), an app
wired to it, and python-xbus clients, used unchanged, for accounts whose certificates the
bus's CA signed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from xbus import client as xbus_client

from app.certs.pki import (
    CertificateAuthority,
    cert_pem,
    ensure_server_tls,
    key_pem,
    make_csr,
    new_key,
)
from app.runtime.nats import EmbeddedNats
from tests.bus.conftest import Bus
from tests.conftest import new_name


@dataclass
class TlsNats:
    url: str
    data_dir: Path
    ca: CertificateAuthority
    server: EmbeddedNats


@pytest.fixture(scope="session")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNats]:
    data_dir = tmp_path_factory.mktemp("tlsnats")
    ca = CertificateAuthority.load_or_create(data_dir / "pki")
    tls = ensure_server_tls(ca, data_dir / "pki", ["localhost", "127.0.0.1"])
    server = EmbeddedNats(data_dir, "127.0.0.1", 0, tls)
    url = server.start()
    try:
        yield TlsNats(url, data_dir, ca, server)
    finally:
        server.stop()


@pytest.fixture
def settings_overrides(tls_nats: TlsNats) -> dict[str, Any]:
    pki = tls_nats.data_dir / "pki"
    return {
        "nats_url": tls_nats.url,
        "data_dir": tls_nats.data_dir,
        "nats_tls_ca": pki / "ca.crt",
        "nats_tls_cert": pki / "xbusd-client.crt",
        "nats_tls_key": pki / "xbusd-client.key",
        "nats_auth_file": tls_nats.server.auth_file,
        "nats_pid_file": tls_nats.server.pid_file,
        "nats_monitor_url": tls_nats.server.monitor_url,
        "nats_survey_interval": 0.5,
    }


@dataclass
class NatsAccount:
    id: str
    name: str
    key: str
    http: httpx.AsyncClient
    conf: dict[str, Any]


class NatsBus(Bus):
    def __init__(
        self, app: FastAPI, admin: httpx.AsyncClient, tls_nats: TlsNats, tmp: Path
    ) -> None:
        super().__init__(app, admin)
        self.tls_nats = tls_nats
        self.tmp = tmp
        self.clients_xbus: list[xbus_client.Client] = []

    async def nats_account(
        self, actors: dict[str, dict[str, Any]], ca: CertificateAuthority | None = None
    ) -> NatsAccount:
        acct = await self.account(new_name("nacct"), type_="actor")
        for name, spec in actors.items():
            await self.actor(acct, spec["kind"], name=name, roles=spec.get("roles"))
        key = new_key()
        csr = make_csr(acct.name, key)
        issued = (ca or self.tls_nats.ca).sign_csr(csr, acct.name, 30)
        # Accept the account the way the admin API does: certificate stored, NATS told.
        from app.models import Account

        state = self.app.state.xbus
        async with state.db.session() as session:
            account = await session.get(Account, uuid.UUID(acct.id))
            assert account is not None
            account.csr = csr.decode()
            account.certificate = issued.pem
            account.cert_fingerprint = issued.fingerprint
        await state.accounts_changed()
        conf = {
            "account-name": acct.name,
            "nats-url": self.tls_nats.url,
            "no-reconnect": True,
            "tls": {
                "private-key": key_pem(key).decode(),
                "certificate": issued.pem,
                "csr": csr.decode(),
                "rootca": cert_pem(self.tls_nats.ca.cert).decode(),
            },
            "actors": {name: {"kind": spec["kind"]} for name, spec in actors.items()},
        }
        return NatsAccount(acct.id, acct.name, acct.key, acct.http, conf)

    async def connect(self, account: NatsAccount) -> xbus_client.Client:
        client = xbus_client.Client(dict(account.conf), str(self.tmp))
        await client.connect()
        self.clients_xbus.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients_xbus:
            try:
                await client.shutdown()
                await client.close()
            except Exception:
                pass
        await super().close()


@pytest.fixture
async def nats_bus(
    app: FastAPI, admin: httpx.AsyncClient, tls_nats: TlsNats, tmp_path: Path
) -> AsyncIterator[NatsBus]:
    bus = NatsBus(app, admin, tls_nats, tmp_path)
    # The NATS services subscribe once the app's own connection is up.
    await asyncio.wait_for(app.state.xbus.nats_api_ready.wait(), 10)
    yield bus
    await bus.close()
