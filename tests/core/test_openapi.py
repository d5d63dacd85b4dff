"""openapi/openapi.json is generated from the app; this fails when it is stale."""

from __future__ import annotations

from app.openapi import DEFAULT_PATH, generate, render


def test_openapi_file_is_current() -> None:
    assert DEFAULT_PATH.exists(), "run: uv run python -m app.openapi"
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render(), (
        "openapi/openapi.json is stale: run `uv run python -m app.openapi`"
    )


def test_every_operation_is_documented() -> None:
    spec = generate()
    operation_ids = set()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            assert op.get("tags"), f"{method.upper()} {path} has no tags"
            assert op["operationId"] not in operation_ids
            operation_ids.add(op["operationId"])
            if path.startswith("/api/v1") and path != "/api/v1/info":
                responses = op["responses"]
                errors = [code for code in responses if code.startswith("4")]
                assert errors, f"{method.upper()} {path} documents no error response"
                for code in errors:
                    content = responses[code].get("content", {})
                    assert "application/problem+json" in content, f"{method.upper()} {path} {code}"
