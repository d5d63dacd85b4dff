"""Verify an Xbus webhook on the receiving side (Standard Webhooks signatures).

This module uses the standard library only: copy it into a receiver as it is, or import it
from the `xbus-server` package.

    from app.webhooks.verify import WebhookVerificationError, verify

    def handle(headers, body: bytes) -> None:
        try:
            verify("whsec_...", headers, body)  # the actor's `http.webhook.secret`
        except WebhookVerificationError as exc:
            ...  # answer 400 or 401: the request did not come from the bus

`headers` is any mapping of the request's headers (names in any case). The bus signs
`<webhook-id>.<webhook-timestamp>.<body>` with HMAC-SHA256 and sends
`webhook-signature: v1,<base64>`, one `v1,` signature per secret while secrets rotate
(space separated): a receiver holding either secret accepts the request. `webhook-id` is the
request id, the same on every retry of one request: use it to drop duplicates.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["WebhookVerificationError", "decode_secret", "sign", "verify"]

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(ValueError):
    """The request is not a valid, fresh webhook signed with the given secret."""


def decode_secret(secret: str | bytes) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (raw bytes are taken as they are)."""
    if isinstance(secret, bytes):
        return secret
    text = secret.strip()
    text = text.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from None


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64 HMAC-SHA256>` signature of `msg_id.timestamp.body`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    tolerance: float = 300,
    *,
    now: float | None = None,
) -> None:
    """Raise `WebhookVerificationError` unless `body` with these headers was signed with
    `secret` less than `tolerance` seconds ago (either way: clocks drift). Returns None."""
    msg_id = _header(headers, "webhook-id")
    raw_timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a whole number") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(current - timestamp)} s away from now "
            f"(tolerance {tolerance:g} s)"
        )
    expected = sign(decode_secret(secret), msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        if candidate.startswith("v1,") and hmac.compare_digest(candidate.encode(), expected):
            return
    raise WebhookVerificationError("no webhook-signature matches the secret")
