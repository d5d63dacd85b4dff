"""Registration end to end: register over HTTP (as xbus-client does), an admin accepts, the
actor connects over NATS with its new certificate, asks SvcRegistration.Update for its status
and renews its certificate after a reset-cert."""

from __future__ import annotations

from typing import Any

import httpx
import nrpc
import pytest
from xbus import client as xbus_client
from xbus import xbus_nrpc, xbus_pb2

from app.certs.pki import key_pem, make_csr, new_key
from tests.conftest import new_name
from tests.nats_api.conftest import NatsBus


async def test_register_accept_connect_update_renew(nats_bus: NatsBus) -> None:
    name = new_name("reg")
    key = new_key()
    csr = make_csr(name, key).decode()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=nats_bus.app), base_url="http://t"
    ) as anon:
        r = await anon.post(
            "/api/v1/registrations",
            json={
                "name": name,
                "type": "actor",
                "csr": csr,
                "actors": [{"name": f"{name}.emitter", "kind": "emitter"}],
            },
        )
    assert r.status_code == 201, r.text
    account_id = r.json()["id"]
    assert (
        await nats_bus.admin.post(
            f"/api/v1/accounts/{account_id}/accept", json={"cert_expire_days": 30}
        )
    ).status_code == 200
    status = (await nats_bus.admin.get(f"/api/v1/registrations/{account_id}")).json()
    assert status["status"] == "accepted"

    conf: dict[str, Any] = {
        "account-name": name,
        "nats-url": nats_bus.tls_nats.url,
        "no-reconnect": True,
        "tls": {
            "private-key": key_pem(key).decode(),
            "certificate": status["certificate"],
            "csr": csr,
            "rootca": status["ca"],
        },
        "actors": {f"{name}.emitter": {"kind": "emitter"}},
    }
    client = xbus_client.Client(conf, str(nats_bus.tmp))
    await client.connect()
    nats_bus.clients_xbus.append(client)
    assert client.get_actor(f"{name}.emitter").id is not None

    registration = xbus_nrpc.SvcRegistrationClient(client.clientconn())
    view = await registration.Update(account_id, xbus_pb2.RegistrationRequest())
    assert view.registrationStatus == xbus_pb2.Registration.ACCEPTED
    assert view.signedCertificate == status["certificate"]
    assert [a.name for a in view.actorList] == [f"{name}.emitter"]

    # Renewing without a reset is refused with a clear error ...
    new_csr = make_csr(name, new_key()).decode()
    with pytest.raises(nrpc.exc.ClientError, match="reset-cert"):
        await registration.Update(account_id, xbus_pb2.RegistrationRequest(csr=new_csr))
    # ... and works after one.
    assert (
        await nats_bus.admin.post(f"/api/v1/accounts/{account_id}/reset-cert")
    ).status_code == 200
    renewed = await registration.Update(account_id, xbus_pb2.RegistrationRequest(csr=new_csr))
    assert renewed.signedCertificate
    assert renewed.signedCertificate != status["certificate"]
