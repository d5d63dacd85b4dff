"""openapi/openapi.json is generated from the app; this fails when it is stale."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

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


def test_the_document_is_valid_openapi_3_1_with_the_delivery_webhook() -> None:
    spec = generate()
    validate(spec)  # OpenAPI 3.1, every $ref resolved
    assert spec["openapi"].startswith("3.1")
    delivery = spec["webhooks"]["request-delivery"]["post"]
    body = delivery["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ActorRequestRead"}
    headers = {p["name"] for p in delivery["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    answer = delivery["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer == {"$ref": "#/components/schemas/RequestStateIn"}
    assert {"200", "410", "429"} <= set(delivery["responses"])
    assert "422" not in delivery["responses"]


def test_every_json_body_has_an_example_that_fits_its_schema() -> None:
    spec = generate()
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            media = op.get("requestBody", {}).get("content", {}).get("application/json")
            where = f"{method.upper()} {path}"
            if media is not None:
                assert "example" in media, f"{where} has no request example"
                _fits(spec, media["schema"], media["example"], where)
                checked += 1
            for status, response in op["responses"].items():
                answer = response.get("content", {}).get("application/json", {})
                if "example" in answer:
                    _fits(spec, answer["schema"], answer["example"], f"{where} {status}")
                    checked += 1
    assert checked > 30


def _fits(spec: dict[str, Any], schema: dict[str, Any], example: Any, where: str) -> None:
    validator = Draft202012Validator({**schema, "components": spec["components"]})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(example)]
    assert not errors, f"{where}: {errors}"
