"""Actors over HTTP: create, list, read, change, delete, single config entries; an account
reaching only its own actors; config checked before it is stored; secrets masked; deleting
an actor never blocked by what refers to it."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import assert_problem, new_name, row_counts

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef01234567").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"x" * 32).decode()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Account:
    def __init__(self, client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        self.id: str = body["id"]
        self.name: str = body["name"]
        self.key: str = body["api_key"]
        self._client = client

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await self._client.request(method, url, headers=bearer(self.key), **kwargs)


@pytest.fixture
async def alice(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> Account:
    r = await admin.post("/api/v1/accounts", json={"name": new_name("alice"), "type": "gateway"})
    assert r.status_code == 201, r.text
    return Account(client, r.json())


@pytest.fixture
async def bob(admin: httpx.AsyncClient, client: httpx.AsyncClient) -> Account:
    r = await admin.post("/api/v1/accounts", json={"name": new_name("bob"), "type": "gateway"})
    assert r.status_code == 201, r.text
    return Account(client, r.json())


async def create_actor(admin: httpx.AsyncClient, owner: Account, **fields: Any) -> dict[str, Any]:
    body = {"name": new_name("actor"), "kind": "worker", "account_id": owner.id, **fields}
    r = await admin.post("/api/v1/actors", json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def actor_row(db: asyncpg.Connection, actor_id: str) -> dict[str, Any] | None:
    row = await db.fetchrow("SELECT * FROM actors WHERE id = $1", uuid.UUID(actor_id))
    if row is None:
        return None
    out = dict(row)
    out["config"] = json.loads(out["config"])
    return out


# --- create --------------------------------------------------------------------------------


async def test_create_actor(admin: httpx.AsyncClient, alice: Account) -> None:
    name = new_name("billing")
    r = await admin.post(
        "/api/v1/actors",
        json={
            "name": name,
            "kind": "consumer",
            "account_id": alice.id,
            "roles": ["billing", "eu:west"],
            "config": {"http.webhook.url": "https://receiver.example/hook", "team": "ops"},
            "description": "books invoices",
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == name
    assert body["kind"] == "consumer"
    assert body["status"] == "enabled"
    assert body["account_id"] == alice.id
    assert body["account_name"] == alice.name
    assert body["roles"] == ["billing", "eu:west"]
    assert body["config"] == {"http.webhook.url": "https://receiver.example/hook", "team": "ops"}
    assert body["description"] == "books invoices"
    assert body["online"] is False
    assert body["unresponsive"] is False
    assert body["last_seen"] is None
    assert set(body) == {
        "id",
        "name",
        "description",
        "kind",
        "status",
        "account_id",
        "account_name",
        "roles",
        "config",
        "online",
        "unresponsive",
        "last_seen",
        "created_at",
        "updated_at",
    }


async def test_create_actor_by_account_name_with_defaults(
    admin: httpx.AsyncClient, alice: Account
) -> None:
    body = await create_actor(admin, alice, account_id=alice.name, kind="emitter", status="pending")
    assert body["account_id"] == alice.id
    assert body["status"] == "pending"
    assert body["roles"] == []
    assert body["config"] == {}
    assert body["description"] == ""


async def test_actor_names_are_unique_across_accounts(
    admin: httpx.AsyncClient, alice: Account, bob: Account, db: asyncpg.Connection
) -> None:
    first = await create_actor(admin, alice)
    before = await row_counts(db)
    r = await admin.post(
        "/api/v1/actors",
        json={"name": first["name"], "kind": "worker", "account_id": bob.id},
    )
    assert_problem(r, 409, "already exists")
    assert await row_counts(db) == before


def webhook(entry: str, value: str) -> dict[str, Any]:
    return {"config": {f"http.webhook.{entry}": value}}


async def test_concurrent_creates_of_one_name_make_one_actor(
    admin: httpx.AsyncClient, alice: Account, bob: Account, db: asyncpg.Connection
) -> None:
    name = new_name("race")
    responses = await asyncio.gather(
        *(
            admin.post(
                "/api/v1/actors", json={"name": name, "kind": "worker", "account_id": owner.id}
            )
            for owner in (alice, bob, alice, bob)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201, 409, 409, 409], [r.text for r in responses]
    assert await db.fetchval("SELECT count(*) FROM actors WHERE name = $1", name) == 1


BAD_CREATES: list[tuple[str, dict[str, Any], str | None]] = [
    ("no name", {"name": None}, None),
    ("bad name", {"name": "two words"}, None),
    ("name is a UUID", {"name": str(uuid.uuid4())}, None),
    ("name too long", {"name": "a" * 256}, None),
    ("unknown kind", {"kind": "router"}, None),
    ("unknown status", {"status": "asleep"}, None),
    ("unknown account", {"account_id": "nobody"}, "no account"),
    ("unknown account id", {"account_id": str(uuid.uuid4())}, "no account"),
    ("empty account", {"account_id": ""}, None),
    ("unknown field", {"owner": "x"}, None),
    ("roles not a list", {"roles": "billing"}, None),
    ("repeated role", {"roles": ["a", "b", "a"]}, "repeated: a"),
    ("bad role", {"roles": ["ok", "not ok"]}, None),
    ("role too long", {"roles": ["r" * 256]}, None),
    ("config not a map", {"config": ["a"]}, None),
    ("config value not a string", {"config": {"retries": 3}}, None),
    ("config value null", {"config": {"team": None}}, None),
    ("upper-case config key", {"config": {"Team": "ops"}}, "config key 'Team'"),
    ("config key with a space", {"config": {"my key": "v"}}, "config key 'my key'"),
    ("config key too long", {"config": {"k" * 129: "v"}}, "1-128"),
    ("config value too big", {"config": {"blob": "x" * (64 * 1024 + 1)}}, "config key 'blob'"),
    ("config value with NUL", {"config": {"team": "a\x00b"}}, "NUL"),
    ("webhook url not http", webhook("url", "ftp://x.example/"), "config key 'http.webhook.url'"),
    ("webhook url with credentials", webhook("url", "https://u:p@x.example/"), "credentials"),
    ("webhook url without host", webhook("url", "https:///path"), "no host"),
    ("unknown webhook setting", webhook("timout", "5"), "config key 'http.webhook.timout'"),
    ("webhook timeout too long", webhook("timeout", "301"), "config key 'http.webhook.timeout'"),
    ("webhook secret too short", webhook("secret", "whsec_c2hvcnQ="), "'http.webhook.secret'"),
    ("overlapping codes", webhook("success-codes", "200-599"), "'http.webhook.success-codes'"),
    ("bad content type", webhook("content-type", "text/xml"), "content-type"),
    ("description not text", {"description": 5}, None),
]


@pytest.mark.parametrize(
    ("case", "fields", "detail"), BAD_CREATES, ids=[c for c, _, _ in BAD_CREATES]
)
async def test_bad_create_is_422_and_stores_nothing(
    admin: httpx.AsyncClient,
    alice: Account,
    db: asyncpg.Connection,
    case: str,
    fields: dict[str, Any],
    detail: str | None,
) -> None:
    body = {"name": new_name("actor"), "kind": "worker", "account_id": alice.id, **fields}
    body = {k: v for k, v in body.items() if v is not None or k != "name"}
    before = await row_counts(db)
    problem = assert_problem(await admin.post("/api/v1/actors", json=body), 422, detail)
    if detail is not None and detail.startswith(("config key", "'")):
        assert problem["key"] == detail.split("'")[1]
    assert await row_counts(db) == before


async def test_malformed_json_is_422_and_stores_nothing(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    for raw in (b'{"name": "a", "kind": "worker", ', b"[", b"\xff\xfe"):
        r = await admin.post(
            "/api/v1/actors", content=raw, headers={"Content-Type": "application/json"}
        )
        assert_problem(r, 422)
    assert await row_counts(db) == before


async def test_lone_surrogate_in_config_is_422(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    for config in ('{"team": "\\udc00"}', '{"\\ud800": "v"}'):
        raw = f'{{"name": "s1", "kind": "worker", "account_id": "{alice.id}", "config": {config}}}'
        r = await admin.post(
            "/api/v1/actors", content=raw.encode(), headers={"Content-Type": "application/json"}
        )
        assert_problem(r, 422)
    assert await row_counts(db) == before


# --- secrets --------------------------------------------------------------------------------


async def test_secrets_are_masked_but_stored(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    config = {"http.webhook.url": "https://r.example/", "http.webhook.secret": SECRET}
    config["vendor.api-secret"] = "hunter2"
    made = await create_actor(admin, alice, config=config)
    shown = {
        "http.webhook.url": "https://r.example/",
        "http.webhook.secret": "********",
        "vendor.api-secret": "********",
    }
    assert made["config"] == shown
    assert (await admin.get(f"/api/v1/actors/{made['id']}")).json()["config"] == shown
    assert (await alice.request("GET", f"/api/v1/actors/{made['name']}")).json()["config"] == shown
    listed = (await admin.get("/api/v1/actors", params={"name": made["name"]})).json()
    assert listed["items"][0]["config"] == shown
    assert SECRET not in (await admin.get("/api/v1/actors")).text
    row = await actor_row(db, made["id"])
    assert row is not None
    assert row["config"] == config


async def test_writing_the_mask_back_keeps_the_secret(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    made = await create_actor(
        admin,
        alice,
        config={"http.webhook.url": "https://r.example/", "http.webhook.secret": SECRET},
    )
    edited = dict(made["config"], **{"http.webhook.timeout": "5"})
    r = await alice.request("PATCH", f"/api/v1/actors/{made['id']}", json={"config": edited})
    assert r.status_code == 200, r.text
    row = await actor_row(db, made["id"])
    assert row is not None
    assert row["config"]["http.webhook.secret"] == SECRET
    assert row["config"]["http.webhook.timeout"] == "5"

    r = await alice.request(
        "PUT", f"/api/v1/actors/{made['id']}/config/http.webhook.secret", json={"value": "********"}
    )
    assert r.status_code == 200, r.text
    row = await actor_row(db, made["id"])
    assert row is not None
    assert row["config"]["http.webhook.secret"] == SECRET

    # Rotation: old and new secret side by side.
    rotated = f"{OTHER_SECRET} {SECRET}"
    r = await alice.request(
        "PUT", f"/api/v1/actors/{made['id']}/config/http.webhook.secret", json={"value": rotated}
    )
    assert r.status_code == 200, r.text
    row = await actor_row(db, made["id"])
    assert row is not None
    assert row["config"]["http.webhook.secret"] == rotated


# --- list -----------------------------------------------------------------------------------


async def test_admin_lists_all_an_account_its_own(
    admin: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    a1 = await create_actor(admin, alice)
    a2 = await create_actor(admin, alice)
    b1 = await create_actor(admin, bob)

    everything = await admin.get("/api/v1/actors")
    assert everything.status_code == 200
    assert [a["id"] for a in everything.json()["items"]] == [a1["id"], a2["id"], b1["id"]]

    mine = await alice.request("GET", "/api/v1/actors")
    assert [a["id"] for a in mine.json()["items"]] == [a1["id"], a2["id"]]
    theirs = await bob.request("GET", "/api/v1/actors")
    assert [a["id"] for a in theirs.json()["items"]] == [b1["id"]]

    # Asking for another account's actors finds none, by id or by name.
    for ref in (bob.id, bob.name):
        r = await alice.request("GET", "/api/v1/actors", params={"account_id": ref})
        assert r.json() == {"items": [], "next_cursor": None}
    r = await alice.request("GET", "/api/v1/actors", params={"name": b1["name"]})
    assert r.json()["items"] == []


async def test_list_filters(
    admin: httpx.AsyncClient, alice: Account, bob: Account, db: asyncpg.Connection
) -> None:
    emitter = await create_actor(admin, alice, kind="emitter", roles=["front", "eu"])
    worker = await create_actor(admin, alice, kind="worker", roles=["eu"], status="disabled")
    consumer = await create_actor(admin, bob, kind="consumer", roles=["back"])
    await db.execute("UPDATE actors SET online = true WHERE id = $1", uuid.UUID(worker["id"]))

    async def ids(**params: Any) -> list[str]:
        r = await admin.get("/api/v1/actors", params=params)
        assert r.status_code == 200, r.text
        return [a["id"] for a in r.json()["items"]]

    assert await ids(kind="emitter") == [emitter["id"]]
    assert await ids(status="disabled") == [worker["id"]]
    assert await ids(role="eu") == [emitter["id"], worker["id"]]
    assert await ids(role="back") == [consumer["id"]]
    assert await ids(role="nobody") == []
    assert await ids(name=consumer["name"]) == [consumer["id"]]
    assert await ids(online="true") == [worker["id"]]
    assert await ids(online="false") == [emitter["id"], consumer["id"]]
    assert await ids(account_id=alice.id) == [emitter["id"], worker["id"]]
    assert await ids(account_id=bob.name) == [consumer["id"]]
    assert await ids(account_id="nobody") == []
    assert await ids(account_id=alice.id, role="eu", kind="worker") == [worker["id"]]
    assert await ids(name="x\x00") == []
    listed = (await admin.get("/api/v1/actors", params={"online": True})).json()["items"][0]
    assert listed["online"] is True
    assert listed["account_name"] == alice.name


async def test_list_pages_with_a_cursor(admin: httpx.AsyncClient, alice: Account) -> None:
    made = [(await create_actor(admin, alice))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await alice.request("GET", "/api/v1/actors", params=params)).json()
        assert len(page["items"]) <= 2
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"cursor": "nope"}, 400),
        ({"limit": 0}, 422),
        ({"kind": "router"}, 422),
        ({"status": "asleep"}, 422),
        ({"online": "perhaps"}, 422),
    ],
)
async def test_bad_list_queries(
    admin: httpx.AsyncClient, db: asyncpg.Connection, params: dict[str, Any], status: int
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.get("/api/v1/actors", params=params), status)
    assert await row_counts(db) == before


# --- read ---------------------------------------------------------------------------------


async def test_get_by_id_or_name(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    made = await create_actor(admin, alice, roles=["r1"])
    for ref in (made["id"], made["name"]):
        for caller in (admin.get, lambda url: alice.request("GET", url)):
            r = await caller(f"/api/v1/actors/{ref}")
            assert r.status_code == 200, r.text
            assert r.json() == made
    before = await row_counts(db)
    assert_problem(await admin.get("/api/v1/actors/nobody"), 404, "no actor")
    assert_problem(await admin.get(f"/api/v1/actors/{uuid.uuid4()}"), 404)
    assert_problem(await admin.get("/api/v1/actors/a%00b"), 404)
    assert_problem(await admin.get("/api/v1/actors/" + "a" * 300), 404)
    assert await row_counts(db) == before


# --- an account reaches only its own actors --------------------------------------------------


async def test_another_accounts_actor_is_404_and_untouched(
    admin: httpx.AsyncClient, alice: Account, bob: Account, db: asyncpg.Connection
) -> None:
    theirs = await create_actor(admin, bob, config={"team": "b"})
    before = await row_counts(db)
    stored = await actor_row(db, theirs["id"])
    for ref in (theirs["id"], theirs["name"]):
        base = f"/api/v1/actors/{ref}"
        calls: list[tuple[str, str, Any]] = [
            ("GET", base, None),
            ("PATCH", base, {"description": "mine"}),
            ("PATCH", base, {"config": {}}),
            ("DELETE", base, None),
            ("PUT", f"{base}/config/team", {"value": "a"}),
            ("DELETE", f"{base}/config/team", None),
        ]
        for method, url, body in calls:
            r = await alice.request(method, url, json=body)
            assert_problem(r, 404, "no actor")
    assert await row_counts(db) == before
    assert await actor_row(db, theirs["id"]) == stored


async def test_admin_only_operations_are_403_for_an_account(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    mine = await create_actor(admin, alice)
    before = await row_counts(db)
    stored = await actor_row(db, mine["id"])
    r = await alice.request(
        "POST",
        "/api/v1/actors",
        json={"name": new_name(), "kind": "worker", "account_id": alice.id},
    )
    assert_problem(r, 403, "admin")
    for field, value in (
        ("name", new_name()),
        ("kind", "emitter"),
        ("status", "disabled"),
        ("roles", ["boss"]),
    ):
        r = await alice.request("PATCH", f"/api/v1/actors/{mine['id']}", json={field: value})
        assert_problem(r, 403, f"only the admin may change {field}")
    r = await alice.request(
        "PATCH",
        f"/api/v1/actors/{mine['id']}",
        json={"description": "fine", "status": "enabled", "roles": []},
    )
    assert_problem(r, 403, "roles, status")
    assert await row_counts(db) == before
    assert await actor_row(db, mine["id"]) == stored


async def test_an_account_edits_description_and_config_of_its_actor(
    admin: httpx.AsyncClient, alice: Account
) -> None:
    mine = await create_actor(admin, alice, config={"a": "1", "b": "2"})
    r = await alice.request(
        "PATCH",
        f"/api/v1/actors/{mine['name']}",
        json={"description": "runs at night", "config": {"c": "3"}},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["description"] == "runs at night"
    assert body["config"] == {"c": "3"}  # replaced, not merged
    assert body["name"] == mine["name"]
    assert body["updated_at"] >= mine["updated_at"]

    r = await alice.request("DELETE", f"/api/v1/actors/{mine['id']}")
    assert r.status_code == 204, r.text
    assert_problem(await alice.request("GET", f"/api/v1/actors/{mine['id']}"), 404)


async def test_disabled_account_cannot_reach_its_actors(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    mine = await create_actor(admin, alice)
    await admin.patch(f"/api/v1/accounts/{alice.id}", json={"status": "disabled"})
    before = await row_counts(db)
    assert_problem(await alice.request("GET", "/api/v1/actors"), 403, "disabled")
    assert_problem(await alice.request("GET", f"/api/v1/actors/{mine['id']}"), 403)
    assert_problem(await alice.request("DELETE", f"/api/v1/actors/{mine['id']}"), 403)
    assert await row_counts(db) == before


async def test_no_key_is_401(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await row_counts(db)
    assert_problem(await client.get("/api/v1/actors"), 401)
    assert_problem(await client.get("/api/v1/actors/x"), 401)
    assert_problem(await client.delete("/api/v1/actors/x"), 401)
    assert_problem(await client.put("/api/v1/actors/x/config/a", json={"value": "v"}), 401)
    assert await row_counts(db) == before


# --- change (admin) ---------------------------------------------------------------------------


async def test_admin_patches_every_field(admin: httpx.AsyncClient, alice: Account) -> None:
    made = await create_actor(admin, alice, config={"a": "1"})
    new = new_name("renamed")
    r = await admin.patch(
        f"/api/v1/actors/{made['id']}",
        json={
            "name": new,
            "description": "d",
            "kind": "consumer",
            "status": "rejected",
            "roles": ["x", "y"],
            "config": {},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["kind"], body["status"]) == (new, "consumer", "rejected")
    assert body["roles"] == ["x", "y"]
    assert body["config"] == {}
    assert body["description"] == "d"
    assert (await admin.get(f"/api/v1/actors/{new}")).json() == body


async def test_patch_to_a_taken_name_is_409(
    admin: httpx.AsyncClient, alice: Account, bob: Account, db: asyncpg.Connection
) -> None:
    one = await create_actor(admin, alice)
    two = await create_actor(admin, bob)
    stored = await actor_row(db, two["id"])
    r = await admin.patch(f"/api/v1/actors/{two['id']}", json={"name": one["name"]})
    assert_problem(r, 409, "already exists")
    assert await actor_row(db, two["id"]) == stored


BAD_PATCHES: list[tuple[str, Any]] = [
    ("null name", {"name": None}),
    ("null config", {"config": None}),
    ("bad name", {"name": "a b"}),
    ("bad kind", {"kind": "router"}),
    ("repeated roles", {"roles": ["a", "a"]}),
    ("account is fixed", {"account_id": "someone"}),
    ("unknown field", {"online": True}),
    ("bad config key", {"config": {"A": "1"}}),
    ("bad webhook value", {"config": {"http.webhook.max-attempts": "0"}}),
    ("not an object", "description"),
]


@pytest.mark.parametrize(("case", "body"), BAD_PATCHES, ids=[c for c, _ in BAD_PATCHES])
async def test_bad_patch_is_422_and_changes_nothing(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection, case: str, body: Any
) -> None:
    made = await create_actor(admin, alice, config={"keep": "me"})
    before = await row_counts(db)
    stored = await actor_row(db, made["id"])
    for caller in (admin.patch, lambda url, json: alice.request("PATCH", url, json=json)):
        assert_problem(await caller(f"/api/v1/actors/{made['id']}", json=body), 422)
    assert await row_counts(db) == before
    assert await actor_row(db, made["id"]) == stored


# --- single config entries ------------------------------------------------------------------


async def test_put_and_delete_config_entries(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    made = await create_actor(admin, alice, config={"a": "1"})
    base = f"/api/v1/actors/{made['name']}/config"
    r = await alice.request("PUT", f"{base}/http.webhook.url", json={"value": "http://r.example/"})
    assert r.status_code == 200, r.text
    assert r.json()["config"] == {"a": "1", "http.webhook.url": "http://r.example/"}
    r = await admin.put(f"{base}/a", json={"value": "2"})
    assert r.json()["config"]["a"] == "2"

    r = await alice.request("DELETE", f"{base}/a")
    assert r.status_code == 204, r.text
    row = await actor_row(db, made["id"])
    assert row is not None
    assert row["config"] == {"http.webhook.url": "http://r.example/"}

    before = await row_counts(db)
    assert_problem(await alice.request("DELETE", f"{base}/a"), 404, "no config key 'a'")
    assert_problem(await admin.delete(f"{base}/never"), 404)
    assert_problem(await admin.delete("/api/v1/actors/nobody/config/a"), 404, "no actor")
    assert await row_counts(db) == before


@pytest.mark.parametrize(
    ("key", "body", "detail"),
    [
        ("Upper", {"value": "v"}, "config key 'Upper'"),
        ("-dash", {"value": "v"}, "config key '-dash'"),
        ("http.webhook.timeout", {"value": "forever"}, "http.webhook.timeout"),
        ("http.webhook.nope", {"value": "1"}, "not a webhook setting"),
        ("http.webhook.url", {"value": "https://user@r.example/"}, "credentials"),
        ("big", {"value": "x" * (64 * 1024 + 1)}, "bytes"),
        ("a", {"value": 1}, None),
        ("a", {"value": None}, None),
        ("a", {}, None),
        ("a", {"value": "v", "extra": 1}, None),
    ],
)
async def test_bad_config_entry_is_422_and_changes_nothing(
    admin: httpx.AsyncClient,
    alice: Account,
    db: asyncpg.Connection,
    key: str,
    body: dict[str, Any],
    detail: str | None,
) -> None:
    made = await create_actor(admin, alice, config={"a": "1"})
    before = await row_counts(db)
    stored = await actor_row(db, made["id"])
    r = await alice.request("PUT", f"/api/v1/actors/{made['id']}/config/{key}", json=body)
    assert_problem(r, 422, detail)
    assert await row_counts(db) == before
    assert await actor_row(db, made["id"]) == stored


async def test_deleting_an_entry_that_holds_the_rest_together_is_422(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    # 500 is a success code here only because the reattempt list leaves it out.
    config = {
        "http.webhook.url": "https://r.example/",
        "http.webhook.success-codes": "200-299,500",
        "http.webhook.reattempt-codes": "503",
    }
    made = await create_actor(admin, alice, config=config)
    stored = await actor_row(db, made["id"])
    r = await admin.delete(f"/api/v1/actors/{made['id']}/config/http.webhook.reattempt-codes")
    assert_problem(r, 422, "500 cannot be both")
    assert await actor_row(db, made["id"]) == stored


# --- delete ---------------------------------------------------------------------------------


async def test_deleting_an_actor_keeps_what_refers_to_it(
    admin: httpx.AsyncClient, alice: Account, db: asyncpg.Connection
) -> None:
    made = await create_actor(admin, alice, kind="emitter")
    actor_id = uuid.UUID(made["id"])
    envelope_id, process_id, request_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await db.execute(
        "INSERT INTO envelopes (id, emitter_id, status) VALUES ($1, $2, 'complete')",
        envelope_id,
        actor_id,
    )
    await db.execute(
        "INSERT INTO processes (id, emitter_id, trigger_envelope_id, status)"
        " VALUES ($1, $2, $3, 'done')",
        process_id,
        actor_id,
        envelope_id,
    )
    await db.execute(
        "INSERT INTO requests (id, process_id, node_id, actor_id, channel, status, inputs,"
        " max_attempts) VALUES ($1, $2, 'n1', $3, 'webhook', 'success', '[]', 5)",
        request_id,
        process_id,
        actor_id,
    )
    await db.execute(
        "INSERT INTO delivery_attempts (request_id, actor_id, attempt, outcome)"
        " VALUES ($1, $2, 1, 'success')",
        request_id,
        actor_id,
    )
    await db.execute(
        "INSERT INTO log_entries (level, text, process_id, actor_id, envelope_id)"
        " VALUES ('notice', 'hello', $1, $2, $3)",
        process_id,
        actor_id,
        envelope_id,
    )
    await db.execute(
        "INSERT INTO idempotency_keys (emitter_id, key, body_hash, status_code, response)"
        " VALUES ($1, 'k1', 'h', 202, '{}')",
        actor_id,
    )
    before = await row_counts(db)

    r = await admin.delete(f"/api/v1/actors/{made['name']}")
    assert r.status_code == 204, r.text

    after = await row_counts(db)
    assert after["actors"] == before["actors"] - 1
    # Idempotency keys belong to the emitter and go with it; nothing else is deleted.
    assert after["idempotency_keys"] == before["idempotency_keys"] - 1
    unchanged = {k for k in before if k not in ("actors", "idempotency_keys")}
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert await db.fetchval("SELECT emitter_id FROM envelopes WHERE id = $1", envelope_id) is None
    assert await db.fetchval("SELECT emitter_id FROM processes WHERE id = $1", process_id) is None
    assert await db.fetchval("SELECT actor_id FROM requests WHERE id = $1", request_id) is None
    # Plain ids keep naming the deleted actor, for the record.
    assert await db.fetchval("SELECT actor_id FROM log_entries") == actor_id
    assert await db.fetchval("SELECT actor_id FROM delivery_attempts") == actor_id
    assert_problem(await admin.get(f"/api/v1/actors/{made['id']}"), 404)
    assert_problem(await admin.delete(f"/api/v1/actors/{made['id']}"), 404)
