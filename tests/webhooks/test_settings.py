"""Webhook settings from actor config: defaults, parsing, refusals, and the guard that keeps
webhooks off loopback, private and metadata addresses.

This module runs with `webhook_allow_private` off, as production does. No request is sent
and no external name is resolved: the guard is fed IP literals and `localhost`."""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import httpx
import pytest

from app.webhooks.settings import (
    DEFAULT_REATTEMPT_CODES,
    DEFAULT_SUCCESS_CODES,
    WebhookSettings,
    WebhookSettingsError,
    check_url_allowed,
    parse_webhook_settings,
)
from tests.conftest import assert_problem, new_name, row_counts

URL = "https://receiver.example/hook"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"webhook_allow_private": False}


def secret(raw: bytes) -> str:
    return "whsec_" + base64.b64encode(raw).decode()


def refused(config: dict[str, str], key: str, contains: str = "") -> WebhookSettingsError:
    with pytest.raises(WebhookSettingsError) as info:
        parse_webhook_settings(config)
    assert info.value.key == key, info.value
    assert contains.lower() in info.value.message.lower(), info.value.message
    return info.value


# --- parsing ------------------------------------------------------------------------------


def test_no_url_means_no_webhook() -> None:
    assert parse_webhook_settings({}) is None
    assert parse_webhook_settings({"team": "ops", "http.other": "x"}) is None
    assert parse_webhook_settings({"http.webhook.timeout": "5"}) is None


def test_defaults() -> None:
    parsed = parse_webhook_settings({"http.webhook.url": URL, "team": "ops"})
    assert parsed == WebhookSettings(url=URL)
    assert parsed is not None
    assert parsed.content_type == "application/json"
    assert parsed.success_codes == frozenset(range(200, 300)) == DEFAULT_SUCCESS_CODES
    assert parsed.reattempt_codes == frozenset({408, 425, 429, 500, 502, 503, 504})
    assert parsed.reattempt_codes == DEFAULT_REATTEMPT_CODES
    assert parsed.timeout == 10.0
    assert parsed.max_attempts == 10
    assert parsed.max_age == 86400.0
    assert parsed.backoff_initial == 1.0
    assert parsed.backoff_factor == 2.0
    assert parsed.backoff_cap == 3600.0
    assert parsed.backoff_jitter == 0.2
    assert parsed.secrets == []
    assert parsed.signed is False
    assert parsed.concurrency == 4
    assert parsed.rate_limit == 0.0


def test_every_setting() -> None:
    one, two = b"a" * 24, b"b" * 64
    parsed = parse_webhook_settings(
        {
            "http.webhook.url": "http://receiver.example:8080/x?y=1",
            "http.webhook.content-type": "application/x-protobuf",
            "http.webhook.success-codes": "200-204, 304",
            "http.webhook.reattempt-codes": "429,500-599",
            "http.webhook.timeout": "2.5",
            "http.webhook.max-attempts": "3",
            "http.webhook.max-age": "600",
            "http.webhook.backoff-initial": "0.5",
            "http.webhook.backoff-factor": "3",
            "http.webhook.backoff-cap": "60",
            "http.webhook.backoff-jitter": "0",
            "http.webhook.secret": f"{secret(one)}  {secret(two)}",
            "http.webhook.concurrency": "16",
            "http.webhook.rate-limit": "12.5",
        }
    )
    assert parsed == WebhookSettings(
        url="http://receiver.example:8080/x?y=1",
        content_type="application/x-protobuf",
        success_codes=frozenset({200, 201, 202, 203, 204, 304}),
        reattempt_codes=frozenset({429, *range(500, 600)}),
        timeout=2.5,
        max_attempts=3,
        max_age=600.0,
        backoff_initial=0.5,
        backoff_factor=3.0,
        backoff_cap=60.0,
        backoff_jitter=0.0,
        secrets=[one, two],
        concurrency=16,
        rate_limit=12.5,
    )
    assert parsed.signed is True


def test_secrets_never_show_in_repr() -> None:
    raw = b"top-secret-bytes-0123456789"
    parsed = parse_webhook_settings({"http.webhook.url": URL, "http.webhook.secret": secret(raw)})
    assert parsed is not None
    assert parsed.secrets == [raw]
    assert "top-secret" not in repr(parsed)
    assert base64.b64encode(raw).decode() not in repr(parsed)


def test_webhook_keys_are_checked_without_a_url() -> None:
    refused({"http.webhook.timeout": "0"}, "http.webhook.timeout", "between 0.1 and 300")


def test_unknown_webhook_setting_is_refused() -> None:
    error = refused(
        {"http.webhook.url": URL, "http.webhook.retries": "3"},
        "http.webhook.retries",
        "not a webhook setting",
    )
    assert "http.webhook.max-attempts" in error.message


@pytest.mark.parametrize(
    ("value", "contains"),
    [
        ("ftp://receiver.example/", "http:// or https://"),
        ("receiver.example/hook", "http:// or https://"),
        ("https://", "no host"),
        ("https:///path", "no host"),
        ("https://user:pass@receiver.example/", "credentials"),
        ("https://token@receiver.example/", "credentials"),
        ("https://receiver.example:99999/", "not a valid url"),
        ("https://receiver.example:0/", "port 0"),
        ("https://[::1/", "not a valid url"),
        ("https://receiver.example/a b", "spaces"),
        (" https://receiver.example/", "spaces"),
        ("https://receiver.example/\n", "spaces"),
        ("https://receiver.example/" + "a" * 2048, "longer than 2048"),
    ],
)
def test_bad_urls(value: str, contains: str) -> None:
    refused({"http.webhook.url": value}, "http.webhook.url", contains)


@pytest.mark.parametrize(
    ("key", "value", "contains"),
    [
        ("content-type", "application/xml", "must be application/json"),
        ("content-type", "Application/JSON", "must be application/json"),
        ("timeout", "0.05", "between 0.1 and 300"),
        ("timeout", "301", "between 0.1 and 300"),
        ("timeout", "ten", "not a number"),
        ("timeout", "-1", "not a number"),
        ("timeout", "nan", "not a number"),
        ("timeout", "1e3", "not a number"),
        ("max-attempts", "0", "between 1 and 1000"),
        ("max-attempts", "1001", "between 1 and 1000"),
        ("max-attempts", "2.5", "whole number"),
        ("max-age", "0", "between 1 and"),
        ("backoff-initial", "0", "between 0.01 and 86400"),
        ("backoff-factor", "0.5", "between 1 and 100"),
        ("backoff-cap", "100000", "between 0.01 and 86400"),
        ("backoff-jitter", "1.5", "between 0 and 1"),
        ("concurrency", "0", "between 1 and 256"),
        ("concurrency", "257", "between 1 and 256"),
        ("rate-limit", "-5", "not a number"),
        ("rate-limit", "1000000", "between 0 and 100000"),
        ("success-codes", "", "at least one"),
        ("success-codes", "2xx", "not a status code"),
        ("success-codes", "200,,201", "not a status code"),
        ("success-codes", "99", "not an HTTP status code"),
        ("success-codes", "200-600", "600 is not an HTTP status code"),
        ("success-codes", "299-200", "ends before it starts"),
        ("reattempt-codes", "5000", "not an HTTP status code"),
        ("reattempt-codes", "200", "200 cannot be both"),
    ],
)
def test_bad_values(key: str, value: str, contains: str) -> None:
    full = f"http.webhook.{key}"
    refused({"http.webhook.url": URL, full: value}, full, contains)


def test_code_overlap_blames_the_entry_that_was_written() -> None:
    # Only success-codes was written: the clash with the default reattempt codes is its.
    refused(
        {"http.webhook.url": URL, "http.webhook.success-codes": "200-299,503"},
        "http.webhook.success-codes",
        "503 cannot be both",
    )
    # Moving 503 out of the reattempt codes makes the same success codes fine.
    parsed = parse_webhook_settings(
        {
            "http.webhook.url": URL,
            "http.webhook.success-codes": "200-299,503",
            "http.webhook.reattempt-codes": "429",
        }
    )
    assert parsed is not None
    assert 503 in parsed.success_codes
    # An empty reattempt list is allowed: no status code is reattempted.
    parsed = parse_webhook_settings({"http.webhook.url": URL, "http.webhook.reattempt-codes": ""})
    assert parsed is not None
    assert parsed.reattempt_codes == frozenset()


def test_backoff_initial_may_not_exceed_the_cap() -> None:
    refused(
        {"http.webhook.url": URL, "http.webhook.backoff-initial": "7200"},
        "http.webhook.backoff-initial",
        "longer than backoff-cap",
    )
    refused(
        {"http.webhook.url": URL, "http.webhook.backoff-cap": "0.5"},
        "http.webhook.backoff-cap",
        "longer than backoff-cap",
    )


@pytest.mark.parametrize(
    ("value", "contains"),
    [
        ("", "is empty"),
        ("   ", "is empty"),
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "must start with 'whsec_'"),
        ("whsec_not*base64!", "not valid base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "23 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 32).decode() + " whsec_c2hvcnQ=", "secret #2"),
    ],
)
def test_bad_secrets(value: str, contains: str) -> None:
    error = refused({"http.webhook.url": URL, "http.webhook.secret": value}, "http.webhook.secret")
    assert contains.lower() in error.message.lower(), error.message


def test_backoff_delays() -> None:
    webhook = WebhookSettings(
        url=URL, backoff_initial=1, backoff_factor=2, backoff_cap=30, backoff_jitter=0.2
    )
    assert [webhook.backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert webhook.backoff_delay(10_000) == 30  # no overflow
    assert webhook.backoff_delay(3, rand=0.0) == pytest.approx(4 * 0.8)
    assert webhook.backoff_delay(3, rand=0.999999) == pytest.approx(4 * 1.2, rel=1e-4)
    assert webhook.backoff_delay(6, rand=0.999999) == 30  # never past the cap
    flat = WebhookSettings(url=URL, backoff_factor=1, backoff_jitter=0)
    assert flat.backoff_delay(50, rand=0.9) == 1


# --- where a webhook may point --------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.1.2.3:8080/x", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("https://192.168.1.10/", "private"),
        ("http://[fd12:3456::1]/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://224.0.0.1/", "multicast"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.64.0.1/", "non-public"),
    ],
)
async def test_private_targets_are_refused(url: str, reason: str) -> None:
    with pytest.raises(WebhookSettingsError) as info:
        await check_url_allowed(url, allow_private=False)
    assert info.value.key == "http.webhook.url"
    assert f" {reason} address" in info.value.message, info.value.message
    assert "XBUS_WEBHOOK_ALLOW_PRIVATE" in info.value.message
    # The server may allow them, and then resolves nothing.
    await check_url_allowed(url, allow_private=True)


@pytest.mark.parametrize(
    "url", ["http://93.184.215.14/", "https://8.8.8.8:8443/hook", "http://[2606:4700::1111]/"]
)
async def test_public_addresses_are_allowed(url: str) -> None:
    await check_url_allowed(url, allow_private=False)


async def test_bad_urls_are_refused_even_when_private_is_allowed() -> None:
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/"):
        with pytest.raises(WebhookSettingsError):
            await check_url_allowed(url, allow_private=True)


# --- the actor save path ----------------------------------------------------------------------


@pytest.fixture
async def account_id(admin: httpx.AsyncClient) -> str:
    r = await admin.post("/api/v1/accounts", json={"name": new_name("acct"), "type": "gateway"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://10.0.0.1/", "http://169.254.169.254/"]
)
async def test_saving_a_private_webhook_url_is_422(
    admin: httpx.AsyncClient, db: asyncpg.Connection, account_id: str, url: str
) -> None:
    before = await row_counts(db)
    r = await admin.post(
        "/api/v1/actors",
        json={
            "name": new_name("hook"),
            "kind": "consumer",
            "account_id": account_id,
            "config": {"http.webhook.url": url},
        },
    )
    body = assert_problem(r, 422, "config key 'http.webhook.url'")
    assert "XBUS_WEBHOOK_ALLOW_PRIVATE" in body["detail"]
    assert body["key"] == "http.webhook.url"
    assert await row_counts(db) == before

    r = await admin.post(
        "/api/v1/actors",
        json={"name": new_name("hook"), "kind": "consumer", "account_id": account_id},
    )
    assert r.status_code == 201, r.text
    actor = r.json()
    before = await row_counts(db)
    for response in (
        await admin.put(
            f"/api/v1/actors/{actor['id']}/config/http.webhook.url", json={"value": url}
        ),
        await admin.patch(
            f"/api/v1/actors/{actor['id']}", json={"config": {"http.webhook.url": url}}
        ),
    ):
        assert_problem(response, 422, "http.webhook.url")
    assert await row_counts(db) == before
    stored = await db.fetchval("SELECT config::text FROM actors WHERE id = $1", actor["id"])
    assert stored == "{}"


async def test_saving_a_public_webhook_url_works(admin: httpx.AsyncClient, account_id: str) -> None:
    r = await admin.post(
        "/api/v1/actors",
        json={
            "name": new_name("hook"),
            "kind": "consumer",
            "account_id": account_id,
            "config": {"http.webhook.url": "https://93.184.215.14/hook"},
        },
    )
    assert r.status_code == 201, r.text
    assert r.json()["config"] == {"http.webhook.url": "https://93.184.215.14/hook"}
