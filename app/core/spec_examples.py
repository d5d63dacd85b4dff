"""Examples in the OpenAPI document, taken from the README walkthrough (the shop, its order
emitter and invoicing consumer): every JSON request body has one, and so do the main
answers, so the generated docs read like the README. tests/core/test_openapi.py checks each
against its schema."""

from __future__ import annotations

from typing import Any

ACCOUNT_ID = "0193a7c2-5f1e-7d3a-9c41-2b8e4f6a1d07"
ACTOR_ID = "0193a7c2-6a20-7b11-8f02-c3d4e5f60718"
PIPELINE_ID = "0193a7c2-7b31-7c22-a013-d4e5f6071829"
ENVELOPE_ID = "0193a7c2-8c42-7d33-b124-e5f60718293a"
EVENT_ID = "0193a7c2-8c42-7d33-b124-e5f60718293b"
PROCESS_ID = "0193a7c2-9d53-7e44-8235-f60718293a4b"
REQUEST_ID = "0193a7c2-ae64-7f55-9346-0718293a4b5c"
AT = "2026-12-03T09:30:00Z"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIC...\n-----END CERTIFICATE REQUEST-----\n"

ORDER = {"type": "order.created", "encoding": "json", "items": [{"id": 1, "total": 42}]}
ENVELOPE = {"events": [ORDER]}
GRAPH = {
    "nodes": [
        {
            "id": "orders",
            "type": "emitter",
            "actors": ["shop.orders"],
            "sourcematch": {"eventtypes": ["order.created"]},
        },
        {"id": "invoicing", "type": "consumer", "actors": ["shop.invoicing"]},
    ],
    "edges": ["orders->invoicing"],
}
SELECTION = {"status": ["error"], "emitter": "shop.orders", "created_after": AT, "dry_run": True}

# operationId -> the JSON request body
REQUESTS: dict[str, Any] = {
    "create_account": {"name": "shop", "type": "gateway", "description": "The shop's apps"},
    "update_account": {"description": "The shop's applications"},
    "new_api_key": {"expires_at": "2027-12-31T00:00:00Z"},
    "accept_account": {"cert_expire_days": 365},
    "renew_account_cert": {"csr": CSR},
    "create_registration": {
        "name": "warehouse",
        "type": "actor",
        "csr": CSR,
        "actors": [{"name": "warehouse.stock", "kind": "consumer"}],
    },
    "create_actor": {"name": "shop.orders", "kind": "emitter", "account_id": "shop"},
    "update_actor": {"description": "Orders of the web shop"},
    "set_config_entry": {"value": "https://invoicing.example.org/xbus"},
    "create_pipeline": {"name": "orders", "version": "1", "graph": GRAPH},
    "validate_graph": {"graph": GRAPH},
    "update_pipeline": {"version": "2", "graph": GRAPH},
    "set_pipeline_status": {"status": "active"},
    "output": ENVELOPE,
    "outputs": [ENVELOPE, {**ENVELOPE, "idempotency_key": "order-2"}],
    "open_upload": {"events": [{"type": "order.created", "encoding": "json"}]},
    "append_items": {"items": [{"id": 1, "total": 42}, {"id": 2, "total": 7}]},
    "report_state": {"status": "success", "messages": [{"text": "invoice 1 created"}]},
    "report_states": {
        "states": [{"request_id": REQUEST_ID, "status": "success", "messages": [{"text": "done"}]}]
    },
    "replay_process": {"pipeline": "current"},
    "pause_processes": SELECTION,
    "resume_processes": {**SELECTION, "status": ["paused"]},
    "cancel_processes": {**SELECTION, "status": ["paused"]},
    "replay_processes": {**SELECTION, "pipeline": "current"},
    "export_processes": {"status": ["done"], "created_after": AT, "envelopes": True},
    "purge_processes": {"status": ["done"], "older_than": "P30D", "dry_run": True},
    "purge_envelopes": {"unreferenced": True, "dry_run": True},
    "purge_logs": {"before": AT, "level": ["notice"], "dry_run": True},
    "update_postmortem": {"status": "closed", "comment": "invoicing was down; replayed"},
}

_POLLED = {
    "request_id": REQUEST_ID,
    "process_id": PROCESS_ID,
    "node_id": "invoicing",
    "actor_id": ACTOR_ID,
    "attempt": 1,
    "lease_expires_at": AT,
    "inputs": [
        {
            "name": "default",
            "envelope_id": ENVELOPE_ID,
            "envelope_url": f"/api/v1/envelopes/{ENVELOPE_ID}",
            "size_bytes": 19,
            "item_count": 1,
            "inline": True,
            "envelope": {
                "id": ENVELOPE_ID,
                "events": [{"id": EVENT_ID, **ORDER}],
            },
        }
    ],
}

_SHOP = {
    "id": ACCOUNT_ID,
    "name": "shop",
    "type": "gateway",
    "status": "enabled",
    "description": "The shop's apps",
    "admin": False,
    "api_key_expires_at": None,
    "has_api_key": True,
    "created_at": AT,
    "updated_at": AT,
}

# operationId -> (status, the JSON answer)
RESPONSES: dict[str, tuple[str, Any]] = {
    "create_account": ("201", {**_SHOP, "api_key": "xbk_3q5Wl0sVnJ2bVtq4c8u1Yf6H"}),
    "whoami": (
        "200",
        {
            "account": {"id": ACCOUNT_ID, "name": "shop", "type": "gateway", "status": "enabled"},
            "admin": False,
        },
    ),
    "create_actor": (
        "201",
        {
            "id": ACTOR_ID,
            "name": "shop.orders",
            "description": "",
            "kind": "emitter",
            "status": "enabled",
            "account_id": ACCOUNT_ID,
            "account_name": "shop",
            "roles": [],
            "config": {},
            "online": False,
            "unresponsive": False,
            "last_seen": None,
            "created_at": AT,
            "updated_at": AT,
        },
    ),
    "create_pipeline": (
        "201",
        {
            "id": PIPELINE_ID,
            "name": "orders",
            "version": "1",
            "description": "",
            "status": "draft",
            "valid": True,
            "validation_messages": [],
            "graph": GRAPH,
            "created_at": AT,
            "updated_at": AT,
            "status_changed_at": None,
            "source": '{"nodes": [...], "edges": ["orders->invoicing"]}',
        },
    ),
    "get_logs": (
        "200",
        {
            "items": [
                {
                    "id": 1,
                    "time": AT,
                    "level": "notice",
                    "text": "process started by shop.orders",
                    "node_id": None,
                    "actor_id": None,
                    "envelope_id": ENVELOPE_ID,
                    "request_id": None,
                },
                {
                    "id": 2,
                    "time": AT,
                    "level": "notice",
                    "text": "invoice 1 created",
                    "node_id": "invoicing",
                    "actor_id": ACTOR_ID,
                    "envelope_id": None,
                    "request_id": REQUEST_ID,
                },
            ],
            "next_cursor": None,
        },
    ),
    "output": ("202", {"envelope_id": ENVELOPE_ID, "process_id": PROCESS_ID, "status": "running"}),
    "lease_request": ("200", _POLLED),
    "report_state": (
        "200",
        {"request_id": REQUEST_ID, "status": "success", "lease_expires_at": None},
    ),
}


def add_examples(schema: dict[str, Any]) -> None:
    """Put the examples above in the document (JSON bodies and answers)."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            name = operation.get("operationId")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None and name in REQUESTS:
                body["example"] = REQUESTS[name]
            if name in RESPONSES:
                status, example = RESPONSES[name]
                content = operation["responses"][status].setdefault("content", {})
                content.setdefault("application/json", {})["example"] = example
