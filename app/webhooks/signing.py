"""Standard Webhooks headers of an outgoing request."""

from __future__ import annotations

import time

from app.webhooks.verify import sign


def signature_headers(
    secrets: list[bytes], msg_id: str, body: bytes, timestamp: int | None = None
) -> list[tuple[str, str]]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` (one `v1,` signature per
    secret, so a receiver holding the old or the new secret of a rotation accepts it)."""
    ts = int(time.time()) if timestamp is None else timestamp
    signatures = " ".join(sign(key, msg_id, ts, body) for key in secrets)
    return [
        ("webhook-id", msg_id),
        ("webhook-timestamp", str(ts)),
        ("webhook-signature", signatures),
    ]
