"""Registering over HTTP the way `xbus-client register` does."""

from __future__ import annotations

import base64
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from app.certs.pki import CertificateAuthority, make_csr, new_key
from tests.conftest import new_name


def ca_of(app: FastAPI) -> CertificateAuthority:
    ca = app.state.xbus.ca
    assert isinstance(ca, CertificateAuthority)
    return ca


def new_csr(name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = new_key()
    return key, make_csr(name, key).decode()


def sign(key: ec.EllipticCurvePrivateKey, text: str) -> str:
    return base64.b64encode(key.sign(text.encode(), ec.ECDSA(hashes.SHA256()))).decode()


def registration(name: str | None = None, **fields: Any) -> dict[str, Any]:
    name = name or new_name("reg")
    body: dict[str, Any] = {
        "name": name,
        "type": "actor",
        "csr": new_csr(name)[1],
        "actors": [
            {"name": f"{name}.emitter", "kind": "emitter"},
            {"name": f"{name}.worker", "kind": "worker", "roles": ["relay"]},
        ],
    }
    body.update(fields)
    return body


async def register(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = registration(**fields)
    r = await client.post("/api/v1/registrations", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return {**body, **created}


async def register_and_accept(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, **fields: Any
) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A registered, accepted account: (its registration, its key, its certificate)."""
    name = fields.pop("name", None) or new_name("reg")
    key, csr = new_csr(name)
    reg = await register(client, name=name, csr=csr, **fields)
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/accept", json={})
    assert r.status_code == 200, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    return reg, key, cert
