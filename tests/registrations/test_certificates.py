"""Accept, reject, reset-cert and renew-cert over HTTP: who may, in which state, what is
stored, and the NATS layer told only after the commit."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from fastapi import FastAPI

from app.accounts.service import RESET_REQUIRED
from app.state import AppState
from tests.conftest import assert_problem, new_name, row_counts
from tests.registrations.helpers import ca_of, new_csr, register, register_and_accept, sign


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def account_row(db: asyncpg.Connection, account_id: str) -> dict[str, Any]:
    row = await db.fetchrow("SELECT * FROM accounts WHERE id = $1", uuid.UUID(account_id))
    assert row is not None
    return dict(row)


async def actor_statuses(db: asyncpg.Connection, account_id: str) -> set[str]:
    rows = await db.fetch("SELECT status FROM actors WHERE account_id = $1", uuid.UUID(account_id))
    return {r["status"] for r in rows}


# --- accept / reject -------------------------------------------------------------------------


async def test_accept_signs_the_csr_and_enables_account_and_actors(
    app: FastAPI, client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name = new_name("acc")
    key, csr = new_csr(name)
    reg = await register(client, name=name, csr=csr)
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/accept", json={"cert_expire_days": 30})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["account_id"] == reg["id"]
    assert body["account_name"] == name
    assert body["status"] == "enabled"
    assert body["cert_reset"] is False
    assert body["csr_origin"] == "anonymous"

    cert = ca_of(app).verify(body["certificate"])
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    assert cert.public_key() == key.public_key()
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=29) < lifetime <= timedelta(days=30)
    assert datetime.fromisoformat(body["expires_at"]) == cert.not_valid_after_utc

    row = await account_row(db, reg["id"])
    assert row["status"] == "enabled"
    assert row["certificate"] == body["certificate"]
    assert row["cert_fingerprint"] == body["fingerprint"]
    assert len(row["cert_fingerprint"]) == 64
    assert await actor_statuses(db, reg["id"]) == {"enabled"}


async def test_accept_defaults_to_a_year_and_takes_names(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    reg = await register(client)
    r = await admin.post(f"/api/v1/accounts/{reg['name']}/accept")
    assert r.status_code == 200, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(days=364) < lifetime <= timedelta(days=365)


async def test_reject_marks_account_and_pending_actors_rejected(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg = await register(client)
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/reject")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected"
    row = await account_row(db, reg["id"])
    assert row["status"] == "rejected"
    assert row["certificate"] is None
    assert await actor_statuses(db, reg["id"]) == {"rejected"}


async def test_accept_keeps_actors_the_admin_already_decided(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg = await register(client)
    emitter = reg["actors"][0]["name"]
    r = await admin.patch(f"/api/v1/actors/{emitter}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    assert (await admin.post(f"/api/v1/accounts/{reg['id']}/accept")).status_code == 200
    rows = await db.fetch(
        "SELECT name, status FROM actors WHERE account_id = $1", uuid.UUID(reg["id"])
    )
    assert {r["name"]: r["status"] for r in rows} == {
        emitter: "disabled",
        reg["actors"][1]["name"]: "enabled",
    }


async def test_decisions_only_on_pending_registrations(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    accepted = await register(client)
    assert (await admin.post(f"/api/v1/accounts/{accepted['id']}/accept")).status_code == 200
    rejected = await register(client)
    assert (await admin.post(f"/api/v1/accounts/{rejected['id']}/reject")).status_code == 200
    before = await row_counts(db)
    stored = [await account_row(db, accepted["id"]), await account_row(db, rejected["id"])]

    assert_problem(await admin.post(f"/api/v1/accounts/{accepted['id']}/accept"), 409, "accepted")
    assert_problem(await admin.post(f"/api/v1/accounts/{accepted['id']}/reject"), 409, "accepted")
    assert_problem(await admin.post(f"/api/v1/accounts/{rejected['id']}/accept"), 409, "rejected")
    assert_problem(await admin.post(f"/api/v1/accounts/{rejected['id']}/reject"), 409, "rejected")
    assert_problem(await admin.post("/api/v1/accounts/admin/accept"), 409, "bootstrap")
    assert_problem(await admin.post("/api/v1/accounts/no-such-account/accept"), 404)
    assert_problem(await admin.post("/api/v1/accounts/no-such-account/reject"), 404)

    assert await row_counts(db) == before
    assert [await account_row(db, accepted["id"]), await account_row(db, rejected["id"])] == stored


async def test_accept_without_a_csr_is_409(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    r = await admin.post(
        "/api/v1/accounts", json={"name": new_name("gw"), "type": "gateway", "status": "pending"}
    )
    account = r.json()
    stored = await account_row(db, account["id"])
    assert_problem(await admin.post(f"/api/v1/accounts/{account['id']}/accept"), 409, "no CSR")
    assert await account_row(db, account["id"]) == stored


@pytest.mark.parametrize("days", [0, -1, 3651, "ten"])
async def test_accept_with_a_bad_lifetime_is_422(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection, days: object
) -> None:
    reg = await register(client)
    stored = await account_row(db, reg["id"])
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/accept", json={"cert_expire_days": days})
    assert_problem(r, 422, "cert_expire_days")
    assert await account_row(db, reg["id"]) == stored


async def test_only_the_admin_decides(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg = await register(client)
    other = await admin.post("/api/v1/accounts", json={"name": new_name("gw"), "type": "gateway"})
    key = other.json()["api_key"]
    for action in ("accept", "reject", "reset-cert"):
        url = f"/api/v1/accounts/{reg['id']}/{action}"
        assert_problem(await client.post(url), 401)
        assert_problem(await client.post(url, headers=bearer(key)), 403)
    assert (await account_row(db, reg["id"]))["status"] == "pending"


async def test_enabling_a_registration_by_patch_is_refused(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    reg = await register(client)
    r = await admin.patch(f"/api/v1/accounts/{reg['id']}", json={"status": "enabled"})
    assert_problem(r, 409, "/accept")
    # Other changes stay possible.
    r = await admin.patch(f"/api/v1/accounts/{reg['id']}", json={"description": "shop actor"})
    assert r.status_code == 200, r.text


async def test_the_nats_layer_is_told_after_the_commit(
    app: FastAPI, client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    state: AppState = app.state.xbus
    seen: list[tuple[str, bool]] = []
    reg = await register(client)
    watched = [reg["id"]]

    async def hook() -> None:
        # A separate connection sees the change: it was committed before the call.
        row = await account_row(db, watched[-1])
        seen.append((row["status"], row["cert_reset"]))

    state.accounts_changed_hooks.append(hook)
    assert (await admin.post(f"/api/v1/accounts/{reg['id']}/accept")).status_code == 200
    assert (await admin.post(f"/api/v1/accounts/{reg['id']}/reset-cert")).status_code == 200
    csr = new_csr(reg["name"])[1]
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/renew-cert", json={"csr": csr})
    assert r.status_code == 200, r.text
    other = await register(client)
    watched.append(other["id"])
    assert (await admin.post(f"/api/v1/accounts/{other['id']}/reject")).status_code == 200
    assert seen == [("enabled", False), ("enabled", True), ("enabled", False), ("rejected", False)]
    # Refused requests change nothing and tell nobody.
    assert_problem(await admin.post(f"/api/v1/accounts/{other['id']}/accept"), 409)
    assert len(seen) == 4


async def test_a_failing_hook_does_not_fail_the_committed_change(
    app: FastAPI, client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async def broken() -> None:
        raise RuntimeError("NATS is down")

    app.state.xbus.accounts_changed_hooks.append(broken)
    reg = await register(client)
    assert (await admin.post(f"/api/v1/accounts/{reg['id']}/accept")).status_code == 200
    assert (await account_row(db, reg["id"]))["status"] == "enabled"


# --- reset-cert / renew-cert -----------------------------------------------------------------


async def test_renew_without_reset_is_409_with_a_clear_error(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg, key, _ = await register_and_accept(client, admin)
    stored = await account_row(db, reg["id"])
    csr = new_csr(reg["name"])[1]
    r = await client.post(
        f"/api/v1/accounts/{reg['id']}/renew-cert", json={"csr": csr, "signature": sign(key, csr)}
    )
    body = assert_problem(r, 409)
    assert body["detail"] == RESET_REQUIRED
    assert_problem(
        await admin.post(f"/api/v1/accounts/{reg['id']}/renew-cert", json={"csr": csr}), 409
    )
    assert await account_row(db, reg["id"]) == stored


async def test_reset_then_renew_with_the_current_certificate(
    app: FastAPI, client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg, old_key, old_cert = await register_and_accept(client, admin)
    r = await admin.post(f"/api/v1/accounts/{reg['id']}/reset-cert")
    assert r.status_code == 200, r.text
    assert r.json()["cert_reset"] is True
    # The current certificate stays until the renewal replaces it.
    assert r.json()["certificate"] is not None

    new_key, csr = new_csr(reg["name"])
    r = await client.post(
        f"/api/v1/accounts/{reg['name']}/renew-cert",
        json={"csr": csr, "signature": sign(old_key, csr)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"certificate", "ca", "fingerprint", "expires_at"}
    assert body["ca"] == ca_of(app).pem
    cert = ca_of(app).verify(body["certificate"])
    assert cert.public_key() == new_key.public_key()
    assert cert.serial_number != old_cert.serial_number
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == reg["name"]

    row = await account_row(db, reg["id"])
    assert row["cert_reset"] is False
    assert row["csr_origin"] == "authaccount"
    assert row["certificate"] == body["certificate"]
    assert row["cert_fingerprint"] == body["fingerprint"]
    # The registration shows the new certificate.
    r = await client.get(f"/api/v1/registrations/{reg['id']}")
    assert r.json()["certificate"] == body["certificate"]
    # Renewing once per reset.
    again = new_csr(reg["name"])[1]
    r = await client.post(
        f"/api/v1/accounts/{reg['id']}/renew-cert",
        json={"csr": again, "signature": sign(new_key, again)},
    )
    assert_problem(r, 409, "reset-cert")


async def test_renew_with_the_accounts_api_key(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg, _, _ = await register_and_accept(client, admin)
    key = (await admin.post(f"/api/v1/accounts/{reg['id']}/api-key")).json()["api_key"]
    await admin.post(f"/api/v1/accounts/{reg['id']}/reset-cert")
    csr = new_csr(reg["name"])[1]
    url = f"/api/v1/accounts/{reg['id']}/renew-cert"
    # An account may not pick a longer lifetime than the default.
    r = await client.post(url, json={"csr": csr, "cert_expire_days": 800}, headers=bearer(key))
    assert_problem(r, 403, "admin")
    r = await client.post(url, json={"csr": csr, "cert_expire_days": 90}, headers=bearer(key))
    assert r.status_code == 200, r.text
    # Its own certificate state.
    r = await client.get(f"/api/v1/accounts/{reg['id']}/certificate", headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["csr_origin"] == "authaccount"
    assert r.json()["cert_reset"] is False


async def test_admin_renews_for_an_account_even_without_a_certificate(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    # An account the admin created has no certificate: reset then renew gives it one.
    r = await admin.post("/api/v1/accounts", json={"name": new_name("gw"), "type": "gateway"})
    account = r.json()
    assert (await admin.post(f"/api/v1/accounts/{account['id']}/reset-cert")).status_code == 200
    csr = new_csr(account["name"])[1]
    r = await admin.post(
        f"/api/v1/accounts/{account['id']}/renew-cert",
        json={"csr": csr, "cert_expire_days": 2000},
    )
    assert r.status_code == 200, r.text
    cert = ca_of(app).verify(r.json()["certificate"])
    assert cert.not_valid_after_utc - datetime.now(UTC) > timedelta(days=1999)
    r = await admin.get(f"/api/v1/accounts/{account['id']}/certificate")
    assert r.json()["certificate"] is not None
    assert r.json()["csr_origin"] == "authaccount"


async def test_renew_refusals_change_nothing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    reg, key, _ = await register_and_accept(client, admin)
    await admin.post(f"/api/v1/accounts/{reg['id']}/reset-cert")
    other, other_key, _ = await register_and_accept(client, admin)
    other_api_key = (await admin.post(f"/api/v1/accounts/{other['id']}/api-key")).json()["api_key"]
    stored = await account_row(db, reg["id"])
    url = f"/api/v1/accounts/{reg['id']}/renew-cert"
    csr = new_csr(reg["name"])[1]

    # No credential at all.
    assert_problem(await client.post(url, json={"csr": csr}), 401, "signature")
    # A signature by another account's key, or over other text, or not base64.
    assert_problem(
        await client.post(url, json={"csr": csr, "signature": sign(other_key, csr)}), 401
    )
    assert_problem(
        await client.post(url, json={"csr": csr, "signature": sign(key, csr + "x")}), 401
    )
    assert_problem(await client.post(url, json={"csr": csr, "signature": "%%%"}), 401)
    # Another account's API key: as if the account did not exist.
    assert_problem(await client.post(url, json={"csr": csr}, headers=bearer(other_api_key)), 404)
    # A wrong key.
    assert_problem(await client.post(url, json={"csr": csr}, headers=bearer("xbk_nope")), 401)
    # A bad CSR, properly signed.
    assert_problem(
        await client.post(url, json={"csr": "junk", "signature": sign(key, "junk")}), 422, "csr"
    )
    # Unknown fields, missing CSR.
    assert_problem(await admin.post(url, json={"csr": csr, "extra": 1}), 422)
    assert_problem(await admin.post(url, json={}), 422)
    assert_problem(await admin.post("/api/v1/accounts/nobody/renew-cert", json={"csr": csr}), 404)
    # Without a key, an account that does not exist answers exactly as one that does (no
    # account names or ids leak).
    for ref in ("nobody", str(uuid.uuid4())):
        for body in ({"csr": csr}, {"csr": csr, "signature": sign(other_key, csr)}):
            known = await client.post(url, json=body)
            unknown = await client.post(f"/api/v1/accounts/{ref}/renew-cert", json=body)
            assert known.status_code == unknown.status_code == 401
            assert known.json()["detail"] == unknown.json()["detail"]

    assert await account_row(db, reg["id"]) == stored


async def test_renew_needs_an_enabled_account(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    reg, key, _ = await register_and_accept(client, admin)
    await admin.post(f"/api/v1/accounts/{reg['id']}/reset-cert")
    await admin.patch(f"/api/v1/accounts/{reg['id']}", json={"status": "disabled"})
    csr = new_csr(reg["name"])[1]
    r = await client.post(
        f"/api/v1/accounts/{reg['id']}/renew-cert", json={"csr": csr, "signature": sign(key, csr)}
    )
    assert_problem(r, 409, "disabled")


async def test_certificate_state_is_the_admins_or_the_accounts_own(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    reg, _, _ = await register_and_accept(client, admin)
    r = await admin.get(f"/api/v1/accounts/{reg['id']}/certificate")
    assert r.status_code == 200, r.text
    assert r.json()["account_name"] == reg["name"]
    other = await admin.post("/api/v1/accounts", json={"name": new_name("gw"), "type": "gateway"})
    key = other.json()["api_key"]
    assert_problem(
        await client.get(f"/api/v1/accounts/{reg['id']}/certificate", headers=bearer(key)), 404
    )
    assert_problem(await client.get(f"/api/v1/accounts/{reg['id']}/certificate"), 401)
    assert_problem(await admin.post("/api/v1/accounts/admin/reset-cert"), 409)
