"""Registration over HTTP: anonymous, a CSR and the actors wanted make a pending account;
its status is polled until an admin accepts (certificate and CA handed out) or rejects it.
Bad input stores nothing."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import CertificateSigningRequestBuilder, Name, NameAttribute
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from app.registrations import service
from tests.conftest import assert_problem, new_name, row_counts
from tests.registrations.helpers import ca_of, new_csr, register, registration


async def test_register_creates_a_pending_account_and_pending_actors(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    body = registration()
    r = await client.post("/api/v1/registrations", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert set(created) == {"id", "status"}
    assert created["status"] == "pending"

    account = await db.fetchrow("SELECT * FROM accounts WHERE name = $1", body["name"])
    assert account is not None
    assert str(account["id"]) == created["id"]
    assert account["status"] == "pending"
    assert account["type"] == "actor"
    assert account["csr_origin"] == "anonymous"
    assert "BEGIN CERTIFICATE REQUEST" in account["csr"]
    assert account["certificate"] is None
    assert account["api_key_hash"] is None
    actors = await db.fetch(
        "SELECT name, kind, status, roles FROM actors WHERE account_id = $1 ORDER BY name",
        account["id"],
    )
    assert [dict(a) for a in actors] == [
        {"name": f"{body['name']}.emitter", "kind": "emitter", "status": "pending", "roles": []},
        {
            "name": f"{body['name']}.worker",
            "kind": "worker",
            "status": "pending",
            "roles": ["relay"],
        },
    ]
    after = await row_counts(db)
    assert after["accounts"] == before["accounts"] + 1
    assert after["actors"] == before["actors"] + 2


async def test_pending_registration_has_no_certificate_yet(client: httpx.AsyncClient) -> None:
    reg = await register(client)
    r = await client.get(f"/api/v1/registrations/{reg['id']}")
    assert r.status_code == 200, r.text
    assert r.json() == {"id": reg["id"], "status": "pending"}


async def test_gateway_may_register_without_actors(client: httpx.AsyncClient) -> None:
    reg = await register(client, type="gateway", actors=[])
    assert reg["status"] == "pending"


async def test_accept_hands_out_the_certificate_and_the_ca(
    app: FastAPI, client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg = await register(client)
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/accept")
    assert r.status_code == 200, r.text
    r = await client.get(f"/api/v1/registrations/{reg['id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "accepted"
    ca = ca_of(app)
    assert body["ca"] == ca.pem
    cert = ca.verify(body["certificate"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == reg["name"]
    statuses = await db.fetch(
        "SELECT status FROM actors WHERE account_id = $1", uuid.UUID(reg["id"])
    )
    assert {s["status"] for s in statuses} == {"enabled"}


async def test_rejected_registration_says_so(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    reg = await register(client)
    assert (await admin.post(f"/api/v1/accounts/{reg['id']}/reject")).status_code == 200
    r = await client.get(f"/api/v1/registrations/{reg['id']}")
    assert r.json() == {"id": reg["id"], "status": "rejected"}


async def test_unknown_registration_is_404(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    assert_problem(
        await client.get("/api/v1/registrations/00000000-0000-4000-8000-000000000000"), 404
    )
    # An account the admin created did not register: not a registration.
    r = await admin.post("/api/v1/accounts", json={"name": new_name("gw"), "type": "gateway"})
    assert_problem(await client.get(f"/api/v1/registrations/{r.json()['id']}"), 404)
    # The bootstrap admin neither.
    who = (await admin.get("/api/v1/whoami")).json()
    assert_problem(await client.get(f"/api/v1/registrations/{who['account']['id']}"), 404)
    assert_problem(await client.get("/api/v1/registrations/not-a-uuid"), 422)


def _small_rsa_csr(name: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        CertificateSigningRequestBuilder()
        .subject_name(Name([NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _tampered_csr(name: str) -> str:
    """A CSR whose self-signature no longer matches: another key's CSR with this subject."""
    _, good = new_csr(name)
    lines = good.splitlines()
    body = list("".join(lines[1:-1]))
    body[-12] = "A" if body[-12] != "A" else "B"  # inside the signature
    text = "".join(body)
    return "\n".join([lines[0], *[text[i : i + 64] for i in range(0, len(text), 64)], lines[-1]])


BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("garbage csr", {"csr": "not a csr"}, "csr"),
    ("empty csr", {"csr": ""}, "csr"),
    ("tampered csr", {"csr": "TAMPERED"}, "csr"),
    ("small rsa key", {"csr": "SMALL_RSA"}, "2048"),
    ("certificate instead of csr", {"csr": "CA_CERT"}, "csr"),
    ("bad name", {"name": "-starts-with-dash"}, "name"),
    ("uuid name", {"name": "5f0c8f43-7d1e-4d0e-9a87-0d4c6f0f4a11"}, "uuid"),
    ("user type", {"type": "user"}, "type"),
    ("no actors", {"actors": []}, "at least one actor"),
    ("bad kind", {"actors": [{"name": "x-actor", "kind": "printer"}]}, "kind"),
    (
        "duplicate actor names",
        {"actors": [{"name": "dup-a", "kind": "emitter"}, {"name": "dup-a", "kind": "worker"}]},
        "repeated",
    ),
    ("bad actor name", {"actors": [{"name": "a b", "kind": "emitter"}]}, "name"),
    ("bad role", {"actors": [{"name": "x-actor", "kind": "emitter", "roles": ["a b"]}]}, "roles"),
    (
        "too many actors",
        {"actors": [{"name": f"many-{i}", "kind": "emitter"} for i in range(101)]},
        "actors",
    ),
    ("unknown field", {"api_key": "xbk_mine"}, "api_key"),
    ("missing csr", {"csr": None}, "csr"),
]


@pytest.mark.parametrize(("case", "fields", "detail"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_registration_is_422_and_stores_nothing(
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    case: str,
    fields: dict[str, Any],
    detail: str,
) -> None:
    body = registration()
    special = {
        "TAMPERED": _tampered_csr(body["name"]),
        "SMALL_RSA": _small_rsa_csr(body["name"]),
        "CA_CERT": ca_of(app).pem,
    }
    for key, value in fields.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = special.get(value, value) if isinstance(value, str) else value
    before = await row_counts(db)
    r = await client.post("/api/v1/registrations", json=body)
    assert_problem(r, 422, detail)
    assert await row_counts(db) == before


async def test_taken_names_are_409_and_store_nothing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await register(client)
    before = await row_counts(db)
    assert_problem(
        await client.post("/api/v1/registrations", json=registration(name=first["name"])),
        409,
        "already exists",
    )
    # A new account name, but one of its actors is taken.
    other = registration()
    other["actors"].append({"name": first["actors"][1]["name"], "kind": "consumer"})
    assert_problem(await client.post("/api/v1/registrations", json=other), 409, "already exist")
    # A name the admin gave an account.
    gw = new_name("gw")
    await admin.post("/api/v1/accounts", json={"name": gw, "type": "gateway"})
    before = await row_counts(db)
    assert_problem(await client.post("/api/v1/registrations", json=registration(name=gw)), 409)
    assert await row_counts(db) == before


async def test_concurrent_registrations_of_one_name_make_one_account(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name = new_name("race")
    responses = await asyncio.gather(
        *(client.post("/api/v1/registrations", json=registration(name=name)) for _ in range(4))
    )
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 409, 409, 409], [r.text for r in responses]
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 1
    assert await db.fetchval("SELECT count(*) FROM actors WHERE name LIKE $1", f"{name}.%") == 2


async def test_pending_registrations_are_capped(
    client: httpx.AsyncClient, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "MAX_PENDING_REGISTRATIONS", 2)
    await register(client)
    await register(client)
    before = await row_counts(db)
    assert_problem(
        await client.post("/api/v1/registrations", json=registration()), 429, "administrator"
    )
    assert await row_counts(db) == before


async def test_registration_is_anonymous_and_ignores_keys(client: httpx.AsyncClient) -> None:
    # Registration needs no key; presenting a wrong one does not matter either.
    r = await client.post(
        "/api/v1/registrations", json=registration(), headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 201, r.text
