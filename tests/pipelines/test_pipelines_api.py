"""The pipeline API: drafts from YAML or JSON, checks against the actors, the draft/active/
inactive life cycle, overlap warnings, deletion, the validate endpoint, lists."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.accounts import keys
from app.pipelines import graphs
from tests.conftest import assert_problem, new_name, row_counts

URL = "/api/v1/pipelines"


# --------------------------------------------------------------------------- helpers


async def make_actor(
    db: asyncpg.Connection,
    name: str,
    kind: str,
    roles: list[str] | None = None,
    status: str = "enabled",
) -> str:
    account_id = await db.fetchval(
        "INSERT INTO accounts (id, name, type, status) VALUES (gen_random_uuid(), $1, 'actor',"
        " 'enabled') RETURNING id",
        new_name("acct"),
    )
    actor_id = await db.fetchval(
        "INSERT INTO actors (id, account_id, name, kind, status, roles)"
        " VALUES (gen_random_uuid(), $1, $2, $3, $4, $5) RETURNING id",
        account_id,
        name,
        kind,
        status,
        roles or [],
    )
    return str(actor_id)


class Actors:
    """A set of actors a valid graph can use: an emitter by name, a worker and a consumer by
    role."""

    def __init__(self) -> None:
        self.emitter = new_name("emitter")
        self.worker_role = new_name("relayer")
        self.consumer_role = new_name("printer")

    async def create(self, db: asyncpg.Connection) -> Actors:
        await make_actor(db, self.emitter, "emitter")
        await make_actor(db, new_name("worker"), "worker", [self.worker_role])
        await make_actor(db, new_name("consumer"), "consumer", [self.consumer_role])
        return self


@pytest.fixture
async def actors(db: asyncpg.Connection) -> Actors:
    return await Actors().create(db)


def graph_yaml(actors: Actors, eventtypes: str = "demo.hello") -> str:
    return f"""\
nodes:
  - id: source
    type: emitter
    actors: [{actors.emitter}]
    sourcematch:
      eventtypes: [{eventtypes}]
  - id: relay
    type: worker
    roles: [{actors.worker_role}]
    outputs: [default, errors]
  - id: sink
    type: consumer
    roles: [{actors.consumer_role}]
    rolebroadcast: true
edges:
  - source->relay
  - relay->sink
  - relay.errors->sink
"""


def graph_dict(
    emitter: str, consumer_role: str, eventtypes: list[str] | None = None
) -> dict[str, Any]:
    return {
        "nodes": [
            {
                "id": "source",
                "type": "emitter",
                "actors": [emitter],
                "sourcematch": {"eventtypes": eventtypes or ["demo.hello"]},
            },
            {"id": "sink", "type": "consumer", "roles": [consumer_role]},
        ],
        "edges": ["source->sink"],
    }


async def create(admin: httpx.AsyncClient, graph: Any, **fields: Any) -> dict[str, Any]:
    body = {"name": new_name("pipe"), "version": "1", "graph": graph, **fields}
    r = await admin.post(URL, json=body)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def set_status(admin: httpx.AsyncClient, pipeline_id: str, status: str) -> httpx.Response:
    return await admin.post(f"{URL}/{pipeline_id}/status", json={"status": status})


async def activate(admin: httpx.AsyncClient, pipeline_id: str) -> dict[str, Any]:
    r = await set_status(admin, pipeline_id, "active")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "active"
    return body


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def texts(body: dict[str, Any], level: str | None = None) -> list[str]:
    return [m["text"] for m in body["validation_messages"] if level is None or m["level"] == level]


async def stored(db: asyncpg.Connection, pipeline_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM pipelines WHERE id = $1", uuid.UUID(pipeline_id))
    assert row is not None
    return row


# --------------------------------------------------------------------------- create and read


async def test_create_from_yaml_is_a_valid_draft(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    source = graph_yaml(actors)
    r = await admin.post(
        URL,
        json={"name": "orders.sync", "version": "1.0.0+b1", "description": "d", "graph": source},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "orders.sync"
    assert body["version"] == "1.0.0+b1"
    assert body["description"] == "d"
    assert body["status"] == "draft"
    assert body["valid"] is True
    assert body["validation_messages"] == []
    assert body["source"] == source
    assert body["graph"]["edges"] == [
        "source.default->relay.default",
        "relay.default->sink.default",
        "relay.errors->sink.default",
    ]
    assert body["graph"]["nodes"][2] == {
        "id": "sink",
        "type": "consumer",
        "actors": [],
        "roles": [actors.consumer_role],
        "rolebroadcast": True,
        "inputs": ["default"],
        "outputs": [],
        "sourcematch": {"eventtypes": []},
    }
    for key in ("created_at", "updated_at", "status_changed_at"):
        assert body[key]
    uuid.UUID(body["id"])

    got = await admin.get(f"{URL}/{body['id']}")
    assert got.status_code == 200
    assert got.json() == body
    row = await stored(db, body["id"])
    assert row["source"] == source
    assert row["status"] == "draft"


async def test_create_from_json_object(admin: httpx.AsyncClient, actors: Actors) -> None:
    graph = graph_dict(actors.emitter, actors.consumer_role)
    body = await create(admin, graph)
    assert body["valid"] is True, body["validation_messages"]
    assert body["description"] == ""
    assert json.loads(body["source"]) == graph
    assert [n["id"] for n in body["graph"]["nodes"]] == ["source", "sink"]
    assert body["graph"]["edges"] == ["source.default->sink.default"]


async def test_actors_by_id_and_a_json_string_graph(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    emitter_id = await make_actor(db, new_name("em"), "emitter")
    role = new_name("sink")
    await make_actor(db, new_name("cons"), "consumer", [role])
    source = json.dumps(graph_dict(emitter_id, role))
    body = await create(admin, source)
    assert body["valid"] is True, body["validation_messages"]
    assert body["source"] == source


async def test_invalid_graph_is_saved_with_every_message(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    graph = graph_dict("nobody", actors.consumer_role)
    graph["nodes"][1]["roles"] = [actors.worker_role]  # a role only a worker has
    graph["nodes"].append({"id": "lost", "type": "consumer", "roles": [actors.consumer_role]})
    body = await create(admin, graph)
    assert body["status"] == "draft"
    assert body["valid"] is False
    assert texts(body, "error") == [
        'node "source": unknown actor "nobody"',
        f'node "sink": no consumer actor has the role "{actors.worker_role}" '
        "(only worker actors do)",
        'node "lost" is not reachable from any emitter (it has no incoming edge)',
    ]
    assert {m["node_id"] for m in body["validation_messages"]} == {"source", "sink", "lost"}
    assert body["graph"] is not None
    row = await stored(db, body["id"])
    assert row["valid"] is False
    assert json.loads(row["validation_messages"]) == body["validation_messages"]


async def test_yaml_syntax_error_is_saved_with_a_null_graph(admin: httpx.AsyncClient) -> None:
    source = "nodes: [\n  - id: a\n"
    body = await create(admin, source)
    assert body["valid"] is False
    assert body["graph"] is None
    assert body["source"] == source
    assert len(body["validation_messages"]) == 1
    assert body["validation_messages"][0]["text"].startswith("invalid YAML at line")


async def test_deeply_nested_document_is_saved_and_checked_again(
    admin: httpx.AsyncClient,
) -> None:
    depth = 5000
    source = '{"nodes": ' + "[" * depth + "]" * depth + "}"
    body = await create(admin, source)
    assert body["graph"] is None
    assert texts(body) == ["invalid YAML: the document is nested too deeply"]
    r = await admin.put(f"{URL}/{body['id']}", json={})
    assert r.status_code == 200, r.text
    assert r.json()["source"] == source
    problem = assert_problem(await set_status(admin, body["id"], "active"), 422)
    assert problem["validation_messages"] == body["validation_messages"]


async def test_same_name_two_versions(admin: httpx.AsyncClient, actors: Actors) -> None:
    name = new_name("pipe")
    first = await create(admin, graph_yaml(actors), name=name, version="1")
    second = await create(admin, graph_yaml(actors), name=name, version="2")
    assert first["id"] != second["id"]
    r = await admin.get(URL, params={"name": name})
    assert [p["version"] for p in r.json()["items"]] == ["1", "2"]


async def test_same_name_and_version_is_409(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    name = new_name("pipe")
    await create(admin, graph_yaml(actors), name=name, version="1")
    before = await row_counts(db)
    r = await admin.post(URL, json={"name": name, "version": "1", "graph": graph_yaml(actors)})
    assert_problem(r, 409, "already exists")
    assert await row_counts(db) == before


async def test_concurrent_creates_of_one_name_and_version(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    body = {"name": new_name("pipe"), "version": "1", "graph": graph_yaml(actors)}
    responses = await asyncio.gather(*(admin.post(URL, json=body) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]
    for r in responses:
        if r.status_code == 409:
            assert_problem(r, 409, "already exists")
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 1


def _many_nodes() -> dict[str, Any]:
    return {"nodes": [{"id": f"n{i}", "type": "worker"} for i in range(1001)], "edges": []}


BAD_CREATE_BODIES: list[tuple[str, Any, str | None]] = [
    ("graph is a list", {"graph": [1, 2]}, "graph"),
    ("graph is a number", {"graph": 12}, "graph"),
    ("graph is null", {"graph": None}, "graph"),
    ("graph is missing", {"graph": "<absent>"}, "graph"),
    ("YAML list", {"graph": "- a\n- b\n"}, "mapping"),
    ("YAML scalar", {"graph": "just text"}, "mapping"),
    ("empty YAML", {"graph": "   \n"}, "empty"),
    ("unknown field", {"colour": "red"}, "colour"),
    ("bad name", {"name": "-starts-with-dash"}, "name"),
    ("name with a slash", {"name": "a/b"}, "name"),
    ("name too long", {"name": "a" * 256}, "name"),
    ("bad version", {"version": "1 0"}, "version"),
    ("version is a number", {"version": 1}, "version"),
    ("NUL in description", {"description": "a\x00b"}, "NUL"),
    ("NUL in a graph string", {"graph": {"nodes": [{"id": "a\x00"}]}}, "NUL"),
    ("NUL in YAML", {"graph": "nodes: []\x00"}, "NUL"),
    ("too many nodes", {"graph": _many_nodes()}, "at most 1000"),
]


@pytest.mark.parametrize(
    ("change", "contains"),
    [(change, contains) for _, change, contains in BAD_CREATE_BODIES],
    ids=[label for label, _, _ in BAD_CREATE_BODIES],
)
async def test_bad_create_input_is_422_and_changes_nothing(
    admin: httpx.AsyncClient,
    actors: Actors,
    db: asyncpg.Connection,
    change: dict[str, Any],
    contains: str | None,
) -> None:
    body: dict[str, Any] = {"name": new_name("pipe"), "version": "1", "graph": graph_yaml(actors)}
    body.update(change)
    body = {k: v for k, v in body.items() if v != "<absent>"}
    before = await row_counts(db)
    assert_problem(await admin.post(URL, json=body), 422, contains)
    assert await row_counts(db) == before


async def test_malformed_json_and_wrong_body_are_422(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    headers = {"content-type": "application/json"}
    assert_problem(await admin.post(URL, content=b'{"name": "x",', headers=headers), 422)
    assert_problem(await admin.post(URL, content=b"[1, 2]", headers=headers), 422)
    assert_problem(await admin.post(URL, content=b"", headers=headers), 422)
    assert await row_counts(db) == before


async def test_yaml_non_mapping_problem_lists_the_message(admin: httpx.AsyncClient) -> None:
    r = await admin.post(URL, json={"name": new_name(), "version": "1", "graph": "[1, 2]"})
    body = assert_problem(r, 422, "must be a mapping")
    assert body["validation_messages"][0]["level"] == "error"


@pytest.mark.parametrize("pipeline_id", [str(uuid.uuid4()), "not-a-uuid", "1"])
async def test_unknown_or_malformed_id_is_404(
    admin: httpx.AsyncClient, db: asyncpg.Connection, pipeline_id: str
) -> None:
    before = await row_counts(db)
    assert_problem(await admin.get(f"{URL}/{pipeline_id}"), 404, "no pipeline")
    assert_problem(await admin.put(f"{URL}/{pipeline_id}", json={}), 404, "no pipeline")
    assert_problem(await admin.delete(f"{URL}/{pipeline_id}"), 404, "no pipeline")
    assert_problem(await set_status(admin, pipeline_id, "active"), 404, "no pipeline")
    assert await row_counts(db) == before


# --------------------------------------------------------------------------- authentication


ENDPOINTS = [
    ("POST", URL),
    ("GET", URL),
    ("POST", f"{URL}/validate"),
    ("GET", f"{URL}/{uuid.UUID(int=1)}"),
    ("PUT", f"{URL}/{uuid.UUID(int=1)}"),
    ("DELETE", f"{URL}/{uuid.UUID(int=1)}"),
    ("POST", f"{URL}/{uuid.UUID(int=1)}/status"),
]


async def _account_key(db: asyncpg.Connection) -> str:
    key = keys.generate_key()
    digest = keys.digest(key)
    await db.execute(
        "INSERT INTO accounts (id, name, type, status, api_key_lookup, api_key_hash)"
        " VALUES (gen_random_uuid(), $1, 'gateway', 'enabled', $2, $3)",
        new_name("gw"),
        digest.lookup,
        digest.hash,
    )
    return key


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_no_key_is_401_and_account_key_is_403(
    client: httpx.AsyncClient, db: asyncpg.Connection, method: str, path: str
) -> None:
    key = await _account_key(db)
    body = {"name": "p", "version": "1", "graph": {"nodes": []}}
    if path.endswith("/status"):
        body = {"status": "active"}
    before = await row_counts(db)
    kwargs: dict[str, Any] = {"json": body} if method in ("POST", "PUT") else {}
    assert_problem(await client.request(method, path, **kwargs), 401)
    r = await client.request(method, path, headers={"Xbus-Api-Key": key}, **kwargs)
    assert_problem(r, 403, "admin")
    assert await row_counts(db) == before


# --------------------------------------------------------------------------- life cycle


async def test_activate_a_valid_pipeline(
    admin: httpx.AsyncClient, actors: Actors, app: FastAPI, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    body = await activate(admin, created["id"])
    assert body["valid"] is True
    assert body["validation_messages"] == []
    assert ts(body["status_changed_at"]) > ts(created["status_changed_at"])
    assert ts(body["updated_at"]) > ts(created["updated_at"])
    assert (await stored(db, created["id"]))["status"] == "active"

    async with app.state.xbus.db.session() as session:
        active = await graphs.active_pipelines(session)
    assert [(p.name, sorted(g.nodes)) for p, g in active] == [
        (created["name"], ["relay", "sink", "source"])
    ]


async def test_same_status_is_a_no_op(admin: httpx.AsyncClient, actors: Actors) -> None:
    created = await create(admin, graph_yaml(actors))
    r = await set_status(admin, created["id"], "draft")
    assert r.status_code == 200
    assert r.json() == created
    active = await activate(admin, created["id"])
    r = await set_status(admin, created["id"], "active")
    assert r.status_code == 200
    assert r.json() == active


async def test_activating_an_invalid_graph_is_422_with_the_messages(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_dict("ghost", actors.consumer_role))
    assert created["valid"] is False
    before = await row_counts(db)
    row_before = await stored(db, created["id"])
    r = await set_status(admin, created["id"], "active")
    problem = assert_problem(r, 422, "cannot become active")
    assert 'unknown actor "ghost"' in problem["detail"]
    assert problem["validation_messages"] == [
        {"level": "error", "text": 'node "source": unknown actor "ghost"', "node_id": "source"}
    ]
    assert await row_counts(db) == before
    assert await stored(db, created["id"]) == row_before


async def test_activation_checks_the_actors_as_they_are_now(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    assert created["valid"] is True
    # The only worker with the role is disabled since: the role has no actor left.
    await db.execute(
        "UPDATE actors SET status = 'disabled' WHERE $1 = ANY(roles)", actors.worker_role
    )
    before = await row_counts(db)
    problem = assert_problem(await set_status(admin, created["id"], "active"), 422)
    assert [m["text"] for m in problem["validation_messages"]] == [
        f'node "relay": no actor has the role "{actors.worker_role}"'
    ]
    assert await row_counts(db) == before
    assert (await stored(db, created["id"]))["status"] == "draft"

    # A pending actor counts for its role.
    await make_actor(db, new_name("worker"), "worker", [actors.worker_role], status="pending")
    await activate(admin, created["id"])


async def test_a_pipeline_that_became_invalid_can_be_deactivated(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    await activate(admin, created["id"])
    await db.execute("DELETE FROM actors WHERE name = $1", actors.emitter)
    r = await set_status(admin, created["id"], "inactive")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "inactive"
    assert body["valid"] is False
    assert texts(body, "error") == [f'node "source": unknown actor "{actors.emitter}"']


async def test_status_transitions(admin: httpx.AsyncClient, actors: Actors) -> None:
    created = await create(admin, graph_yaml(actors))
    pid = created["id"]
    await activate(admin, pid)
    assert_problem(await set_status(admin, pid, "draft"), 409, "inactive")
    r = await set_status(admin, pid, "inactive")
    assert r.status_code == 200
    assert r.json()["status"] == "inactive"
    await activate(admin, pid)  # inactive -> active
    await set_status(admin, pid, "inactive")
    r = await set_status(admin, pid, "draft")
    assert r.status_code == 200
    assert r.json()["status"] == "draft"
    assert ts(r.json()["status_changed_at"]) > ts(created["status_changed_at"])


async def test_bad_status_bodies_are_422(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    before = await row_counts(db)
    path = f"{URL}/{created['id']}/status"
    for body in ({"status": "paused"}, {"status": None}, {}, {"status": "active", "x": 1}):
        assert_problem(await admin.post(path, json=body), 422)
    assert await row_counts(db) == before
    assert (await stored(db, created["id"]))["status"] == "draft"


# --------------------------------------------------------------------------- editing


async def test_edit_only_in_draft(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    pid = created["id"]
    await activate(admin, pid)
    row = await stored(db, pid)
    assert_problem(await admin.put(f"{URL}/{pid}", json={"description": "x"}), 409, "draft")
    await set_status(admin, pid, "inactive")
    problem = assert_problem(await admin.put(f"{URL}/{pid}", json={"description": "x"}), 409)
    assert "set its status to draft first" in problem["detail"]
    assert (await stored(db, pid))["description"] == row["description"]

    await set_status(admin, pid, "draft")
    r = await admin.put(f"{URL}/{pid}", json={"description": "now editable"})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "now editable"
    assert r.json()["source"] == created["source"]
    assert r.json()["graph"] == created["graph"]


async def test_edit_graph_name_and_version(admin: httpx.AsyncClient, actors: Actors) -> None:
    created = await create(admin, graph_yaml(actors), description="keep me")
    pid = created["id"]
    new_graph = graph_dict(actors.emitter, actors.consumer_role, ["a", "b"])
    r = await admin.put(f"{URL}/{pid}", json={"graph": new_graph, "version": "2", "name": "n2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["version"], body["description"]) == ("n2", "2", "keep me")
    assert json.loads(body["source"]) == new_graph
    assert body["graph"]["nodes"][0]["sourcematch"] == {"eventtypes": ["a", "b"]}
    assert body["valid"] is True
    assert ts(body["updated_at"]) > ts(created["updated_at"])
    assert body["created_at"] == created["created_at"]

    # A graph with problems is saved too.
    r = await admin.put(f"{URL}/{pid}", json={"graph": graph_dict("ghost", actors.consumer_role)})
    assert r.status_code == 200
    assert r.json()["valid"] is False

    r = await admin.put(f"{URL}/{pid}", json={"description": None})
    assert r.json()["description"] == ""


async def test_edit_checks_the_graph_again(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_dict("late-emitter", actors.consumer_role))
    assert texts(created, "error") == ['node "source": unknown actor "late-emitter"']
    await make_actor(db, "late-emitter", "emitter")
    r = await admin.put(f"{URL}/{created['id']}", json={})
    assert r.status_code == 200
    assert r.json()["valid"] is True
    assert r.json()["validation_messages"] == []
    assert r.json()["source"] == created["source"]


async def test_bad_edits_change_nothing(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    taken = await create(admin, graph_yaml(actors), name="taken", version="1")
    created = await create(admin, graph_yaml(actors), name="mine", version="1")
    path = f"{URL}/{created['id']}"
    row = await stored(db, created["id"])
    before = await row_counts(db)
    assert_problem(await admin.put(path, json={"name": "taken"}), 409, "already exists")
    for body in (
        {"name": None},
        {"version": None},
        {"graph": None},
        {"graph": "- not\n- a mapping\n"},
        {"graph": ["x"]},
        {"name": "bad name"},
        {"status": "active"},
        {"description": 5},
    ):
        assert_problem(await admin.put(path, json=body), 422)
    assert_problem(
        await admin.put(path, content=b"{", headers={"content-type": "application/json"}), 422
    )
    assert await row_counts(db) == before
    assert await stored(db, created["id"]) == row
    assert (await stored(db, taken["id"]))["name"] == "taken"


# --------------------------------------------------------------------------- overlap


async def test_activation_warns_of_an_overlapping_active_pipeline(
    admin: httpx.AsyncClient, actors: Actors
) -> None:
    first = await create(admin, graph_yaml(actors, "a, b"), name="first")
    assert (await activate(admin, first["id"]))["validation_messages"] == []

    # Other event types: no overlap.
    apart = await create(admin, graph_yaml(actors, "c"), name="apart")
    assert (await activate(admin, apart["id"]))["validation_messages"] == []

    second = await create(admin, graph_yaml(actors, "b, d"), name="second")
    assert second["validation_messages"] == []  # only activation looks at other pipelines
    body = await activate(admin, second["id"])
    assert body["valid"] is True
    assert body["validation_messages"] == [
        {
            "level": "warning",
            "text": f'node "source": the active pipeline "first" version "1" ({first["id"]}, '
            f'node "source") can also match envelopes from actor "{actors.emitter}" with '
            'event type(s) "b"; the bus refuses such envelopes as ambiguous',
            "node_id": "source",
        }
    ]
    # Deactivating drops the warning, which concerns active pipelines only.
    r = await set_status(admin, second["id"], "inactive")
    assert r.json()["validation_messages"] == []


async def test_overlap_through_a_role(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    emitter_role = new_name("front")
    await make_actor(db, new_name("em"), "emitter", [emitter_role])
    by_role = graph_dict("unused", actors.consumer_role)
    by_role["nodes"][0] = {
        "id": "in",
        "type": "emitter",
        "roles": [emitter_role],
        "sourcematch": {"eventtypes": ["x"]},
    }
    by_role["edges"] = ["in->sink"]
    first = await create(admin, by_role, name="by-role")
    await activate(admin, first["id"])

    # An emitter node naming an actor that has the role overlaps.
    other = new_name("em2")
    await make_actor(db, other, "emitter", [emitter_role])
    second = await create(admin, graph_dict(other, actors.consumer_role, ["x"]), name="named")
    body = await activate(admin, second["id"])
    [warning] = body["validation_messages"]
    assert warning["level"] == "warning"
    assert '"by-role"' in warning["text"]
    assert f'actor "{other}"' in warning["text"]


# --------------------------------------------------------------------------- delete


async def test_delete_rules(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    created = await create(admin, graph_yaml(actors))
    pid = created["id"]
    await activate(admin, pid)
    process_id = await db.fetchval(
        "INSERT INTO processes (id, pipeline_id, status) VALUES (gen_random_uuid(), $1, 'done')"
        " RETURNING id",
        uuid.UUID(pid),
    )
    before = await row_counts(db)
    assert_problem(await admin.delete(f"{URL}/{pid}"), 409, "active")
    assert await row_counts(db) == before

    await set_status(admin, pid, "inactive")
    r = await admin.delete(f"{URL}/{pid}")
    assert r.status_code == 204
    assert r.content == b""
    assert await db.fetchval("SELECT count(*) FROM pipelines WHERE id = $1", uuid.UUID(pid)) == 0
    # The process stays, without its pipeline.
    assert await db.fetchval("SELECT pipeline_id FROM processes WHERE id = $1", process_id) is None
    assert_problem(await admin.delete(f"{URL}/{pid}"), 404)


async def test_delete_a_draft(admin: httpx.AsyncClient, actors: Actors) -> None:
    created = await create(admin, graph_yaml(actors))
    assert (await admin.delete(f"{URL}/{created['id']}")).status_code == 204
    assert_problem(await admin.get(f"{URL}/{created['id']}"), 404)


# --------------------------------------------------------------------------- validate


async def test_validate_stores_nothing(
    admin: httpx.AsyncClient, actors: Actors, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    r = await admin.post(f"{URL}/validate", json={"graph": graph_yaml(actors)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["validation_messages"] == []
    assert body["graph"]["nodes"][0]["id"] == "source"

    r = await admin.post(
        f"{URL}/validate", json={"graph": graph_dict("ghost", actors.consumer_role)}
    )
    assert r.status_code == 200
    assert r.json()["valid"] is False
    assert texts(r.json()) == ['node "source": unknown actor "ghost"']

    r = await admin.post(f"{URL}/validate", json={"graph": "nodes: [oops"})
    assert r.status_code == 200
    assert r.json()["graph"] is None
    assert r.json()["valid"] is False
    assert await row_counts(db) == before


async def test_validate_bad_input_is_422(admin: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await row_counts(db)
    for body in ({}, {"graph": 3}, {"graph": "- a"}, {"graph": {}, "name": "x"}):
        assert_problem(await admin.post(f"{URL}/validate", json=body), 422)
    assert await row_counts(db) == before


# --------------------------------------------------------------------------- lists


async def test_pagination_with_a_cursor(admin: httpx.AsyncClient, actors: Actors) -> None:
    ids = [(await create(admin, graph_yaml(actors)))["id"] for _ in range(5)]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = await admin.get(URL, params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= 2
        assert all("source" not in item for item in page["items"])
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3

    everything = (await admin.get(URL)).json()
    assert [p["id"] for p in everything["items"]] == ids
    assert everything["next_cursor"] is None


async def test_list_filters(admin: httpx.AsyncClient, actors: Actors) -> None:
    good = await create(admin, graph_yaml(actors), name="alpha", version="1")
    bad = await create(admin, graph_dict("ghost", actors.consumer_role), name="alpha", version="2")
    other = await create(admin, graph_yaml(actors, "other"), name="beta")
    await activate(admin, other["id"])

    async def ids(**params: Any) -> list[str]:
        r = await admin.get(URL, params=params)
        assert r.status_code == 200, r.text
        return [p["id"] for p in r.json()["items"]]

    assert await ids(name="alpha") == [good["id"], bad["id"]]
    assert await ids(name="alpha", version="2") == [bad["id"]]
    assert await ids(status="active") == [other["id"]]
    assert await ids(status="draft") == [good["id"], bad["id"]]
    assert await ids(valid="false") == [bad["id"]]
    assert await ids(valid="true", status="draft") == [good["id"]]
    assert await ids(name="nothing") == []


async def test_bad_list_parameters(admin: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await row_counts(db)
    assert_problem(await admin.get(URL, params={"cursor": "garbage!"}), 400, "cursor")
    assert_problem(await admin.get(URL, params={"cursor": "WyJ4IiwieSJd"}), 400, "cursor")
    assert_problem(await admin.get(URL, params={"limit": 0}), 422)
    assert_problem(await admin.get(URL, params={"limit": "many"}), 422)
    assert_problem(await admin.get(URL, params={"status": "paused"}), 422)
    assert_problem(await admin.get(URL, params={"valid": "perhaps"}), 422)
    assert await row_counts(db) == before


class TestPageSizeCap:
    @pytest.fixture
    def settings_overrides(self) -> dict[str, Any]:
        return {"page_size_default": 2, "page_size_max": 3}

    async def test_default_and_maximum_page_size(
        self, admin: httpx.AsyncClient, actors: Actors
    ) -> None:
        for _ in range(4):
            await create(admin, graph_yaml(actors))
        assert len((await admin.get(URL)).json()["items"]) == 2
        page = (await admin.get(URL, params={"limit": 1000})).json()
        assert len(page["items"]) == 3
        assert page["next_cursor"] is not None


# --------------------------------------------------------------------------- for the bus core


async def test_active_pipelines_reuse_parsed_graphs(
    admin: httpx.AsyncClient, actors: Actors, app: FastAPI
) -> None:
    created = await create(admin, graph_yaml(actors))
    await activate(admin, created["id"])
    db = app.state.xbus.db
    async with db.session() as session:
        [(pipeline, graph)] = await graphs.active_pipelines(session)
    async with db.session() as session:
        [(_, again)] = await graphs.active_pipelines(session)
    assert again is graph
    assert graph.matches("source", ["demo.hello"])
    assert str(pipeline.id) == created["id"]

    # A new activation (new updated_at) parses again; an inactive pipeline is left out.
    await set_status(admin, created["id"], "inactive")
    async with db.session() as session:
        assert await graphs.active_pipelines(session) == []
    await activate(admin, created["id"])
    async with db.session() as session:
        [(_, fresh)] = await graphs.active_pipelines(session)
    assert fresh is not graph
    assert fresh == graph
