"""Accounts over HTTP: create (key shown once), list, read, change, delete, new keys; the
bootstrap admin kept usable; bad input changing nothing; only the admin allowed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from app.accounts import keys
from app.config import Settings
from app.main import create_app
from tests.conftest import assert_problem, new_name, row_counts


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def future(**delta: float) -> str:
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


async def create_account(admin: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"name": new_name("acct"), "type": "gateway", **fields}
    r = await admin.post("/api/v1/accounts", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def account_row(db: asyncpg.Connection, name: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM accounts WHERE name = $1", name)
    return dict(row) if row is not None else None


# --- create --------------------------------------------------------------------------------


async def test_create_returns_the_key_once_and_stores_only_its_digest(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name = new_name("gw")
    r = await admin.post("/api/v1/accounts", json={"name": name, "type": "gateway"})
    assert r.status_code == 201, r.text
    body = r.json()
    key = body["api_key"]
    assert key.startswith(keys.KEY_PREFIX)
    assert body["name"] == name
    assert body["type"] == "gateway"
    assert body["status"] == "enabled"
    assert body["description"] == ""
    assert body["admin"] is False
    assert body["has_api_key"] is True
    assert body["api_key_expires_at"] is None
    assert set(body) == {
        "id",
        "name",
        "type",
        "status",
        "description",
        "admin",
        "api_key_expires_at",
        "has_api_key",
        "created_at",
        "updated_at",
        "api_key",
    }

    row = await account_row(db, name)
    assert row is not None
    assert str(row["id"]) == body["id"]
    assert row["api_key_hash"] == keys.digest(key).hash
    assert key not in [str(v) for v in row.values()]

    who = await client.get("/api/v1/whoami", headers=bearer(key))
    assert who.status_code == 200
    assert who.json() == {
        "account": {"id": body["id"], "name": name, "type": "gateway", "status": "enabled"},
        "admin": False,
    }

    # The key is never shown again.
    again = await admin.get(f"/api/v1/accounts/{body['id']}")
    assert again.status_code == 200
    assert "api_key" not in again.json()
    assert key not in again.text
    assert row["api_key_hash"] not in again.text


async def test_create_with_every_field(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> None:
    expires = future(days=3)
    body = await create_account(
        admin,
        type="user",
        description="the night shift",
        status="pending",
        api_key_expires_at=expires,
    )
    assert body["type"] == "user"
    assert body["description"] == "the night shift"
    assert body["status"] == "pending"
    assert datetime.fromisoformat(body["api_key_expires_at"]) == datetime.fromisoformat(expires)
    # A pending account's key authenticates but may not act.
    who = await client.get("/api/v1/whoami", headers=bearer(body["api_key"]))
    assert who.json()["account"]["status"] == "pending"
    assert_problem(await client.get("/api/v1/actors", headers=bearer(body["api_key"])), 403)


async def test_names_may_hold_dots_at_and_dashes(admin: httpx.AsyncClient) -> None:
    for name in ("ops@example.org", "a", "A.b_c-d", "9" * 255):
        body = await create_account(admin, name=name)
        assert body["name"] == name


async def test_duplicate_name_is_409_and_changes_nothing(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    first = await create_account(admin)
    before = await row_counts(db)
    stored = await account_row(db, first["name"])
    r = await admin.post(
        "/api/v1/accounts", json={"name": first["name"], "type": "user", "description": "x"}
    )
    assert_problem(r, 409, "already exists")
    assert await row_counts(db) == before
    assert await account_row(db, first["name"]) == stored


N1 = {"name": "n1", "type": "gateway"}


async def test_concurrent_creates_of_one_name_make_one_account(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    name = new_name("race")
    responses = await asyncio.gather(
        *(admin.post("/api/v1/accounts", json={"name": name, "type": "user"}) for _ in range(4))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409], [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "already exists")
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 1


BAD_CREATES: list[tuple[str, Any]] = [
    ("no name", {"type": "gateway"}),
    ("no type", {"name": "n1"}),
    ("empty name", {**N1, "name": ""}),
    ("name starts with a dash", {**N1, "name": "-abc"}),
    ("name with a space", {**N1, "name": "a b"}),
    ("name with a slash", {**N1, "name": "a/b"}),
    ("name too long", {**N1, "name": "a" * 256}),
    ("name is a UUID", {**N1, "name": "6f1c1b4e-8f5a-4d0e-9a57-0e9e8f7b6a5c"}),
    ("name is not a string", {**N1, "name": 42}),
    ("unknown type", {**N1, "type": "robot"}),
    ("status rejected", {**N1, "status": "rejected"}),
    ("unknown status", {**N1, "status": "asleep"}),
    ("unknown field", {**N1, "admin": True}),
    ("expiry in the past", {**N1, "api_key_expires_at": "2001-01-01T00:00:00Z"}),
    ("expiry without zone", {**N1, "api_key_expires_at": "2999-01-01T00:00:00"}),
    ("expiry not a time", {**N1, "api_key_expires_at": "soon"}),
    ("description with NUL", {**N1, "description": "a\x00b"}),
    ("description too long", {**N1, "description": "x" * 5000}),
    ("body is a list", [N1]),
    ("body is null", None),
]


@pytest.mark.parametrize(("case", "body"), BAD_CREATES, ids=[c for c, _ in BAD_CREATES])
async def test_bad_create_is_422_and_stores_nothing(
    admin: httpx.AsyncClient, db: asyncpg.Connection, case: str, body: Any
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.post("/api/v1/accounts", json=body), 422)
    assert await row_counts(db) == before


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "n1", "type": ', b"not json", b"", b'{"name": "n1", "type": "gateway"}}'],
)
async def test_malformed_json_is_422_and_stores_nothing(
    admin: httpx.AsyncClient, db: asyncpg.Connection, raw: bytes
) -> None:
    before = await row_counts(db)
    r = await admin.post(
        "/api/v1/accounts", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 422)
    assert await row_counts(db) == before


async def test_lone_surrogate_in_description_is_422(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    raw = b'{"name": "n1", "type": "gateway", "description": "\\ud800"}'
    r = await admin.post(
        "/api/v1/accounts", content=raw, headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 422)
    assert await row_counts(db) == before


# --- who may ------------------------------------------------------------------------------


async def test_only_the_admin_manages_accounts(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    other = await create_account(admin)
    key = other["api_key"]
    target = other["id"]
    before = await row_counts(db)
    stored = await account_row(db, other["name"])
    calls = [
        ("POST", "/api/v1/accounts", {"name": new_name(), "type": "user"}),
        ("GET", "/api/v1/accounts", None),
        ("GET", f"/api/v1/accounts/{target}", None),
        ("PATCH", f"/api/v1/accounts/{target}", {"description": "mine now"}),
        ("DELETE", f"/api/v1/accounts/{target}", None),
        ("POST", f"/api/v1/accounts/{target}/api-key", None),
    ]
    for method, url, body in calls:
        assert_problem(
            await client.request(method, url, json=body, headers=bearer(key)), 403, "admin"
        )
        assert_problem(await client.request(method, url, json=body), 401)
    assert await row_counts(db) == before
    assert await account_row(db, other["name"]) == stored


# --- list ---------------------------------------------------------------------------------


async def test_list_filters(admin: httpx.AsyncClient) -> None:
    gw = await create_account(admin, type="gateway")
    user = await create_account(admin, type="user", status="disabled")
    actor = await create_account(admin, type="actor", status="pending")

    async def names(**params: Any) -> list[str]:
        r = await admin.get("/api/v1/accounts", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["next_cursor"] is None
        return [a["name"] for a in r.json()["items"]]

    assert await names() == ["admin", gw["name"], user["name"], actor["name"]]
    assert await names(type="gateway") == [gw["name"]]
    assert await names(type="user") == ["admin", user["name"]]
    assert await names(status="disabled") == [user["name"]]
    assert await names(status="pending", type="actor") == [actor["name"]]
    assert await names(status="pending", type="user") == []
    assert await names(name=gw["name"]) == [gw["name"]]
    assert await names(name=gw["name"].upper()) == []
    assert await names(name="no\x00such") == []

    listed = (await admin.get("/api/v1/accounts", params={"name": "admin"})).json()["items"][0]
    assert listed["admin"] is True
    assert "api_key" not in listed


async def test_list_pages_with_a_cursor(admin: httpx.AsyncClient) -> None:
    made = [(await create_account(admin))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        r = await admin.get("/api/v1/accounts", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        seen += [a["id"] for a in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3  # admin + 5 accounts, 2 a page
    assert seen[1:] == made
    assert len(set(seen)) == 6


async def test_list_page_size_default_and_cap(settings: Settings, clean_db: None) -> None:
    small = settings.model_copy(update={"page_size_default": 2, "page_size_max": 3})
    app = create_app(small)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://t",
            headers=bearer(small.admin_api_key.get_secret_value() if small.admin_api_key else ""),
        ) as c,
    ):
        for _ in range(4):
            await create_account(c)
        default = (await c.get("/api/v1/accounts")).json()
        assert len(default["items"]) == 2
        assert default["next_cursor"] is not None
        capped = (await c.get("/api/v1/accounts", params={"limit": 500})).json()
        assert len(capped["items"]) == 3
        assert capped["next_cursor"] is not None


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"cursor": "garbage!"}, 400),
        ({"cursor": "WyJ4Il0"}, 400),  # a valid encoding of the wrong shape
        ({"cursor": "WyJub3QgYSB0aW1lIiwibm90IGEgdXVpZCJd"}, 400),  # ["not a time", ...]
        ({"limit": 0}, 422),
        ({"limit": "many"}, 422),
        ({"type": "robot"}, 422),
        ({"status": "asleep"}, 422),
    ],
)
async def test_bad_list_queries(
    admin: httpx.AsyncClient, db: asyncpg.Connection, params: dict[str, Any], status: int
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.get("/api/v1/accounts", params=params), status)
    assert await row_counts(db) == before


# --- read ---------------------------------------------------------------------------------


async def test_get_by_id_or_name(admin: httpx.AsyncClient) -> None:
    made = await create_account(admin, description="d")
    by_id = await admin.get(f"/api/v1/accounts/{made['id']}")
    by_name = await admin.get(f"/api/v1/accounts/{made['name']}")
    assert by_id.status_code == by_name.status_code == 200
    assert by_id.json() == by_name.json()
    expected = {k: v for k, v in made.items() if k != "api_key"}
    assert by_id.json() == expected


@pytest.mark.parametrize(
    "ref", ["nobody", "6f1c1b4e-8f5a-4d0e-9a57-0e9e8f7b6a5c", "x%00y", "a" * 300]
)
async def test_get_unknown_is_404(
    admin: httpx.AsyncClient, db: asyncpg.Connection, ref: str
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.get(f"/api/v1/accounts/{ref}"), 404, "no account")
    assert await row_counts(db) == before


# --- change -------------------------------------------------------------------------------


async def test_patch_renames_describes_and_disables(
    admin: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    made = await create_account(admin)
    key = made["api_key"]
    new = new_name("renamed")
    r = await admin.patch(
        f"/api/v1/accounts/{made['name']}",
        json={"name": new, "description": "moved", "status": "disabled"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["description"], body["status"]) == (new, "moved", "disabled")
    assert body["id"] == made["id"]
    assert datetime.fromisoformat(body["updated_at"]) >= datetime.fromisoformat(made["updated_at"])
    assert_problem(await admin.get(f"/api/v1/accounts/{made['name']}"), 404)

    # A disabled account's key authenticates but is refused.
    assert_problem(await client.get("/api/v1/actors", headers=bearer(key)), 403, "disabled")
    r = await admin.patch(f"/api/v1/accounts/{made['id']}", json={"status": "enabled"})
    assert r.json()["status"] == "enabled"
    assert (await client.get("/api/v1/actors", headers=bearer(key))).status_code == 200

    # An empty patch changes nothing.
    same = await admin.patch(f"/api/v1/accounts/{made['id']}", json={})
    assert same.status_code == 200
    assert same.json()["name"] == new


async def test_patch_to_a_taken_name_is_409(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    one = await create_account(admin)
    two = await create_account(admin)
    stored = await account_row(db, two["name"])
    r = await admin.patch(f"/api/v1/accounts/{two['id']}", json={"name": one["name"]})
    assert_problem(r, 409, "already exists")
    assert await account_row(db, two["name"]) == stored
    # Its own name is no conflict.
    r = await admin.patch(f"/api/v1/accounts/{two['id']}", json={"name": two["name"]})
    assert r.status_code == 200


BAD_PATCHES: list[tuple[str, Any]] = [
    ("null name", {"name": None}),
    ("null status", {"status": None}),
    ("bad name", {"name": "no spaces please"}),
    ("name is a UUID", {"name": "6f1c1b4e8f5a4d0e9a570e9e8f7b6a5c"}),
    ("status rejected", {"status": "rejected"}),
    ("type is fixed", {"type": "user"}),
    ("unknown field", {"colour": "blue"}),
    ("api key fields are not patched", {"api_key_expires_at": "2999-01-01T00:00:00Z"}),
    ("description not text", {"description": ["a"]}),
    ("not an object", ["name"]),
]


@pytest.mark.parametrize(("case", "body"), BAD_PATCHES, ids=[c for c, _ in BAD_PATCHES])
async def test_bad_patch_is_422_and_changes_nothing(
    admin: httpx.AsyncClient, db: asyncpg.Connection, case: str, body: Any
) -> None:
    made = await create_account(admin)
    before = await row_counts(db)
    stored = await account_row(db, made["name"])
    assert_problem(await admin.patch(f"/api/v1/accounts/{made['id']}", json=body), 422)
    assert await row_counts(db) == before
    assert await account_row(db, made["name"]) == stored


async def test_patch_unknown_account_is_404(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.patch("/api/v1/accounts/nobody", json={"description": "x"}), 404)
    assert await row_counts(db) == before


# --- the bootstrap admin ----------------------------------------------------------------------


async def test_bootstrap_admin_stays_usable(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    stored = await account_row(db, "admin")
    assert_problem(await admin.delete("/api/v1/accounts/admin?confirm=true"), 409, "cannot be")
    for status in ("disabled", "pending"):
        r = await admin.patch("/api/v1/accounts/admin", json={"status": status})
        assert_problem(r, 409, "cannot be made")
    assert_problem(
        await admin.patch("/api/v1/accounts/admin", json={"name": "root"}), 409, "renamed"
    )
    assert_problem(
        await admin.patch("/api/v1/accounts/admin", json={"name": "root", "description": "x"}),
        409,
    )
    assert_problem(await admin.post("/api/v1/accounts/admin/api-key"), 409, "XBUS_ADMIN_API_KEY")
    assert await row_counts(db) == before
    assert await account_row(db, "admin") == stored

    # What does not lock the admin out is allowed.
    r = await admin.patch(
        "/api/v1/accounts/admin",
        json={"name": "admin", "status": "enabled", "description": "the operator"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "the operator"
    assert r.json()["admin"] is True
    assert (await admin.get("/api/v1/whoami")).json()["admin"] is True


# --- delete -------------------------------------------------------------------------------


async def test_delete_account_without_actors(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await create_account(admin)
    r = await admin.delete(f"/api/v1/accounts/{made['name']}")
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert await account_row(db, made["name"]) is None
    assert_problem(await admin.get(f"/api/v1/accounts/{made['id']}"), 404)
    assert_problem(await client.get("/api/v1/whoami", headers=bearer(made["api_key"])), 401)
    before = await row_counts(db)
    assert_problem(await admin.delete(f"/api/v1/accounts/{made['id']}"), 404)
    assert_problem(await admin.delete("/api/v1/accounts/nobody?confirm=true"), 404)
    assert await row_counts(db) == before


async def test_delete_account_with_actors_needs_confirm(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await create_account(admin)
    keep = await create_account(admin)
    for owner in (made, made, keep):
        r = await admin.post(
            "/api/v1/actors",
            json={"name": new_name("actor"), "kind": "worker", "account_id": owner["id"]},
        )
        assert r.status_code == 201, r.text

    before = await row_counts(db)
    body = assert_problem(await admin.delete(f"/api/v1/accounts/{made['id']}"), 409, "2 actors")
    assert "confirm=true" in body["detail"]
    assert body["actors"] == 2
    assert_problem(await admin.delete(f"/api/v1/accounts/{made['id']}?confirm=false"), 409)
    assert_problem(await admin.delete(f"/api/v1/accounts/{made['id']}?confirm=maybe"), 422)
    assert await row_counts(db) == before

    r = await admin.delete(f"/api/v1/accounts/{made['id']}", params={"confirm": "true"})
    assert r.status_code == 204, r.text
    after = await row_counts(db)
    assert after["accounts"] == before["accounts"] - 1
    assert after["actors"] == before["actors"] - 2
    owners = await db.fetch("SELECT DISTINCT account_id FROM actors")
    assert [str(r["account_id"]) for r in owners] == [keep["id"]]


# --- new API keys ---------------------------------------------------------------------------


async def test_new_api_key_replaces_the_old_one(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    made = await create_account(admin)
    old = made["api_key"]
    r = await admin.post(f"/api/v1/accounts/{made['id']}/api-key")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expires_at"] is None
    new = body["api_key"]
    assert new != old
    assert_problem(await client.get("/api/v1/whoami", headers=bearer(old)), 401)
    assert (await client.get("/api/v1/whoami", headers=bearer(new))).status_code == 200
    row = await account_row(db, made["name"])
    assert row is not None
    assert row["api_key_hash"] == keys.digest(new).hash

    expires = future(hours=2)
    r = await admin.post(f"/api/v1/accounts/{made['name']}/api-key", json={"expires_at": expires})
    assert r.status_code == 200, r.text
    assert datetime.fromisoformat(r.json()["expires_at"]) == datetime.fromisoformat(expires)
    read = (await admin.get(f"/api/v1/accounts/{made['id']}")).json()
    assert datetime.fromisoformat(read["api_key_expires_at"]) == datetime.fromisoformat(expires)
    assert_problem(await client.get("/api/v1/whoami", headers=bearer(new)), 401)

    # A key can lose its expiry again.
    r = await admin.post(f"/api/v1/accounts/{made['id']}/api-key", json={})
    assert r.json()["expires_at"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"expires_at": "2001-01-01T00:00:00Z"},
        {"expires_at": "2999-01-01T00:00:00"},
        {"expires_at": "tomorrow"},
        {"expires": "2999-01-01T00:00:00Z"},
        ["2999-01-01T00:00:00Z"],
    ],
)
async def test_bad_new_api_key_is_422_and_keeps_the_old_key(
    admin: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection, body: Any
) -> None:
    made = await create_account(admin)
    before = await row_counts(db)
    stored = await account_row(db, made["name"])
    assert_problem(await admin.post(f"/api/v1/accounts/{made['id']}/api-key", json=body), 422)
    assert await row_counts(db) == before
    assert await account_row(db, made["name"]) == stored
    assert (await client.get("/api/v1/whoami", headers=bearer(made["api_key"]))).status_code == 200


async def test_new_api_key_for_unknown_account_is_404(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.post("/api/v1/accounts/nobody/api-key"), 404)
    assert await row_counts(db) == before
