"""API keys: random, shown once, stored as SHA-256 only.

A key is found by a 16-hex-digit prefix of its digest (an index lookup that reveals nothing
useful about the key) and then checked against the whole digest in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

KEY_PREFIX = "xbk_"


@dataclass(frozen=True, slots=True)
class KeyDigest:
    lookup: str
    hash: str


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> KeyDigest:
    full = hashlib.sha256(key.encode()).hexdigest()
    return KeyDigest(lookup=full[:16], hash=full)


def matches(key: str, stored_hash: str | None) -> bool:
    if stored_hash is None:
        return False
    return hmac.compare_digest(digest(key).hash.encode(), stored_hash.encode())
