"""Per-actor webhook settings, read from the actor's `http.webhook.*` config entries.

Config keys are `http.webhook.<entry>`. An actor is a webhook actor when its config has
`http.webhook.url`; every other entry is optional and falls back to its default. Entries are
checked when the actor's config is saved, so delivery code can rely on
`parse_webhook_settings` succeeding.

| entry             | value                                                 | default            |
|-------------------|-------------------------------------------------------|--------------------|
| `url`             | `http://` or `https://` URL, no `user:pass@`          | none: no webhook   |
| `content-type`    | `application/json` or `application/x-protobuf`        | `application/json` |
| `success-codes`   | codes and ranges that mean "delivered"                | `200-299`          |
| `reattempt-codes` | codes and ranges that mean "try later"; may be empty  | see below          |
| `timeout`         | seconds one attempt may take, 0.1-300                 | `10`               |
| `max-attempts`    | attempts of one request, 1-1000                       | `10`               |
| `max-age`         | seconds after which no more attempts, 1-2592000       | `86400`            |
| `backoff-initial` | seconds before the 1st reattempt, 0.01-86400, <= cap  | `1`                |
| `backoff-factor`  | delay growth per further reattempt, 1-100             | `2.0`              |
| `backoff-cap`     | longest delay (seconds), 0.01-86400                   | `3600`             |
| `backoff-jitter`  | fraction of the delay added or removed at random, 0-1 | `0.2`              |
| `secret`          | `whsec_` + base64 of >= 24 bytes; several: see below  | none: unsigned     |
| `concurrency`     | requests in flight to the actor at once, 1-256        | `4`                |
| `rate-limit`      | requests per second, 0 (unlimited) to 100000          | `0`                |

The default reattempt codes are `408,425,429,500,502,503,504`.

Code lists read like `200-299,304`: codes and inclusive ranges, each within 100-599. A code
may not be both a success and a reattempt code. Numbers are plain decimals (`10`, `2.5`).
Several secrets are a rotation: each listed secret signs (Standard Webhooks
`webhook-signature` carries one signature per secret), so a receiver that holds either the
old or the new secret accepts the request.

`check_url_allowed` is the server-side request forgery guard: unless the server allows
private targets (`XBUS_WEBHOOK_ALLOW_PRIVATE`), a URL whose host resolves to a loopback,
private, link-local, multicast, reserved, unspecified or cloud-metadata address is refused.
Delivery should check again before it connects, since DNS answers change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

PREFIX = "http.webhook."
URL_KEY = PREFIX + "url"
CONTENT_TYPE_KEY = PREFIX + "content-type"
SUCCESS_CODES_KEY = PREFIX + "success-codes"
REATTEMPT_CODES_KEY = PREFIX + "reattempt-codes"
TIMEOUT_KEY = PREFIX + "timeout"
MAX_ATTEMPTS_KEY = PREFIX + "max-attempts"
MAX_AGE_KEY = PREFIX + "max-age"
BACKOFF_INITIAL_KEY = PREFIX + "backoff-initial"
BACKOFF_FACTOR_KEY = PREFIX + "backoff-factor"
BACKOFF_CAP_KEY = PREFIX + "backoff-cap"
BACKOFF_JITTER_KEY = PREFIX + "backoff-jitter"
SECRET_KEY = PREFIX + "secret"
CONCURRENCY_KEY = PREFIX + "concurrency"
RATE_LIMIT_KEY = PREFIX + "rate-limit"

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
CONTENT_TYPES = (JSON, PROTOBUF)

SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES = 24
URL_MAX_LENGTH = 2048
RESOLVE_TIMEOUT = 5.0

DEFAULT_SUCCESS_CODES = frozenset(range(200, 300))
DEFAULT_REATTEMPT_CODES = frozenset({408, 425, 429, 500, 502, 503, 504})

# Instance metadata services hand out cloud credentials: never a webhook target.
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)


class WebhookSettingsError(ValueError):
    """A webhook config entry that cannot be used: `key` names it, `message` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """An actor's webhook settings, parsed and checked, defaults filled in."""

    url: str
    content_type: str = JSON
    success_codes: frozenset[int] = DEFAULT_SUCCESS_CODES
    reattempt_codes: frozenset[int] = DEFAULT_REATTEMPT_CODES
    timeout: float = 10.0
    max_attempts: int = 10
    max_age: float = 86400.0
    backoff_initial: float = 1.0
    backoff_factor: float = 2.0
    backoff_cap: float = 3600.0
    backoff_jitter: float = 0.2
    # Decoded secret keys, the signing one first. Kept out of repr so it never reaches a log.
    secrets: list[bytes] = field(default_factory=list, repr=False, hash=False)
    concurrency: int = 4
    rate_limit: float = 0.0  # requests per second; 0 means unlimited

    @property
    def signed(self) -> bool:
        return bool(self.secrets)

    def backoff_delay(self, failures: int, rand: float = 0.5) -> float:
        """Seconds to wait after `failures` failed attempts (1 or more): `backoff-initial`
        times `backoff-factor` per further failure, at most `backoff-cap`, then moved by up
        to +/- `backoff-jitter` of itself. `rand` is a uniform draw in [0, 1); 0.5 means no
        jitter."""
        steps = max(failures, 1) - 1
        base = self.backoff_initial
        if self.backoff_factor > 1 and steps:
            # Compare exponents rather than compute factor**steps, which overflows.
            if steps * math.log(self.backoff_factor) >= math.log(
                self.backoff_cap / self.backoff_initial
            ):
                base = self.backoff_cap
            else:
                base = self.backoff_initial * self.backoff_factor**steps
        base = min(base, self.backoff_cap)
        spread = base * self.backoff_jitter * (2 * rand - 1)
        return max(0.0, min(self.backoff_cap, base + spread))


# --- parsing -----------------------------------------------------------------------------

_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?|\.[0-9]+")
_CODE_ITEM = re.compile(r"([0-9]+)(?:\s*-\s*([0-9]+))?")


def _integer(key: str, value: str, low: int, high: int) -> int:
    text = value.strip()
    if not _INTEGER.fullmatch(text):
        raise WebhookSettingsError(key, f"{value!r} is not a whole number")
    number = int(text)
    if not low <= number <= high:
        raise WebhookSettingsError(key, f"must be between {low} and {high} (got {number})")
    return number


def _shown(number: float) -> str:
    return str(int(number)) if number == int(number) else str(number)


def _decimal(key: str, value: str, low: float, high: float) -> float:
    text = value.strip()
    if not _DECIMAL.fullmatch(text):
        raise WebhookSettingsError(key, f"{value!r} is not a number")
    number = float(text)
    if not low <= number <= high:
        raise WebhookSettingsError(
            key, f"must be between {_shown(low)} and {_shown(high)} (got {text})"
        )
    return number


def _codes(key: str, value: str, *, allow_empty: bool) -> frozenset[int]:
    text = value.strip()
    if not text:
        if allow_empty:
            return frozenset()
        raise WebhookSettingsError(key, "needs at least one status code")
    codes: set[int] = set()
    for raw in text.split(","):
        item = raw.strip()
        match = _CODE_ITEM.fullmatch(item)
        if match is None:
            raise WebhookSettingsError(
                key, f"{item!r} is not a status code or a range such as 200-299"
            )
        low = int(match[1])
        high = int(match[2]) if match[2] is not None else low
        for code in (low, high):
            if not 100 <= code <= 599:
                raise WebhookSettingsError(key, f"{code} is not an HTTP status code (100-599)")
        if low > high:
            raise WebhookSettingsError(key, f"range {item!r} ends before it starts")
        codes.update(range(low, high + 1))
    return frozenset(codes)


def _content_type(key: str, value: str) -> str:
    if value not in CONTENT_TYPES:
        raise WebhookSettingsError(key, f"must be {JSON} or {PROTOBUF} (got {value!r})")
    return value


def _secrets(key: str, value: str) -> list[bytes]:
    parts = value.split()
    if not parts:
        raise WebhookSettingsError(key, "is empty; delete the entry to send unsigned webhooks")
    secrets: list[bytes] = []
    for position, part in enumerate(parts, start=1):
        # Secret values never appear in messages: they are named by their position.
        which = "the secret" if len(parts) == 1 else f"secret #{position}"
        if not part.startswith(SECRET_PREFIX):
            raise WebhookSettingsError(key, f"{which} must start with {SECRET_PREFIX!r}")
        try:
            raw = base64.b64decode(part[len(SECRET_PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise WebhookSettingsError(
                key, f"{which} is not valid base64 after {SECRET_PREFIX!r}"
            ) from None
        if len(raw) < SECRET_MIN_BYTES:
            raise WebhookSettingsError(
                key, f"{which} holds {len(raw)} bytes; at least {SECRET_MIN_BYTES} are needed"
            )
        secrets.append(raw)
    return secrets


def _url(key: str, value: str) -> str:
    if len(value) > URL_MAX_LENGTH:
        raise WebhookSettingsError(key, f"is longer than {URL_MAX_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise WebhookSettingsError(key, "must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise WebhookSettingsError(key, f"is not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookSettingsError(key, "must be an http:// or https:// URL")
    if not parts.hostname:
        raise WebhookSettingsError(key, "has no host")
    if "@" in parts.netloc:
        raise WebhookSettingsError(
            key,
            "must not carry credentials (user:password@); "
            "sign requests with http.webhook.secret instead",
        )
    if port == 0:
        raise WebhookSettingsError(key, "port 0 is not a valid port")
    return value


def _bounded(low: float, high: float) -> Callable[[str, str], float]:
    return lambda key, value: _decimal(key, value, low, high)


def _whole(low: int, high: int) -> Callable[[str, str], int]:
    return lambda key, value: _integer(key, value, low, high)


# config key -> (WebhookSettings field, parser)
_FIELDS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    URL_KEY: ("url", _url),
    CONTENT_TYPE_KEY: ("content_type", _content_type),
    SUCCESS_CODES_KEY: ("success_codes", lambda k, v: _codes(k, v, allow_empty=False)),
    REATTEMPT_CODES_KEY: ("reattempt_codes", lambda k, v: _codes(k, v, allow_empty=True)),
    TIMEOUT_KEY: ("timeout", _bounded(0.1, 300)),
    MAX_ATTEMPTS_KEY: ("max_attempts", _whole(1, 1000)),
    MAX_AGE_KEY: ("max_age", _bounded(1, 30 * 86400)),
    BACKOFF_INITIAL_KEY: ("backoff_initial", _bounded(0.01, 86400)),
    BACKOFF_FACTOR_KEY: ("backoff_factor", _bounded(1, 100)),
    BACKOFF_CAP_KEY: ("backoff_cap", _bounded(0.01, 86400)),
    BACKOFF_JITTER_KEY: ("backoff_jitter", _bounded(0, 1)),
    SECRET_KEY: ("secrets", _secrets),
    CONCURRENCY_KEY: ("concurrency", _whole(1, 256)),
    RATE_LIMIT_KEY: ("rate_limit", _bounded(0, 100_000)),
}

KNOWN_KEYS = frozenset(_FIELDS)


def _code_list(codes: frozenset[int]) -> str:
    return ", ".join(str(code) for code in sorted(codes))


def parse_webhook_settings(config: Mapping[str, str]) -> WebhookSettings | None:
    """The webhook settings in an actor's config, or None when it has no `http.webhook.url`.

    Every `http.webhook.*` entry is checked, url or not (so a secret can be set before the
    url); other keys are ignored. Raises `WebhookSettingsError` naming the first bad entry.
    """
    values: dict[str, Any] = {}
    for key in sorted(config):
        if not key.startswith(PREFIX):
            continue
        spec = _FIELDS.get(key)
        if spec is None:
            known = ", ".join(sorted(KNOWN_KEYS))
            raise WebhookSettingsError(key, f"is not a webhook setting (known: {known})")
        name, parse = spec
        values[name] = parse(key, config[key])

    success = values.get("success_codes", DEFAULT_SUCCESS_CODES)
    reattempt = values.get("reattempt_codes", DEFAULT_REATTEMPT_CODES)
    overlap = success & reattempt
    if overlap:
        # Blame the entry the operator wrote, not a default.
        key = REATTEMPT_CODES_KEY if "reattempt_codes" in values else SUCCESS_CODES_KEY
        raise WebhookSettingsError(
            key,
            f"{_code_list(overlap)} cannot be both success and reattempt codes "
            f"(success: {SUCCESS_CODES_KEY}, reattempt: {REATTEMPT_CODES_KEY})",
        )
    initial = values.get("backoff_initial", 1.0)
    cap = values.get("backoff_cap", 3600.0)
    if initial > cap:
        key = BACKOFF_INITIAL_KEY if "backoff_initial" in values else BACKOFF_CAP_KEY
        raise WebhookSettingsError(
            key,
            f"backoff-initial ({_shown(initial)} s) is longer than backoff-cap ({_shown(cap)} s)",
        )

    if "url" not in values:
        return None
    return WebhookSettings(**values)


# --- where a webhook may point -------------------------------------------------------------


class UnresolvableHostError(WebhookSettingsError):
    """The URL's host did not resolve (or not in time): maybe a passing DNS failure, unlike
    a refused address."""


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused_address_reason(ip: IPAddress) -> str | None:
    """Why a webhook may not target this address, such as "loopback" (None: it may)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address written as IPv6 reaches the IPv4 address.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return refused_address_reason(embedded)
    if ip in METADATA_ADDRESSES:
        return "cloud metadata"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    )
    for reason, refused in checks:
        if refused:
            return reason
    return None


async def check_url_allowed(url: str, allow_private: bool) -> None:
    """Refuse a webhook URL whose host is, or resolves to, an address the server must not
    call on an actor's behalf. With `allow_private` only the URL's form is checked and no
    name is resolved."""
    _url(URL_KEY, url)
    if allow_private:
        return
    parts = urlsplit(url)
    host = parts.hostname
    assert host is not None  # _url checked it
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
    except TimeoutError:
        raise UnresolvableHostError(URL_KEY, f"resolving host {host!r} timed out") from None
    except (OSError, UnicodeError):
        raise UnresolvableHostError(URL_KEY, f"host {host!r} does not resolve") from None
    if not infos:
        raise UnresolvableHostError(URL_KEY, f"host {host!r} does not resolve")
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone index
        ip = ipaddress.ip_address(address)
        reason = refused_address_reason(ip)
        if reason is not None:
            shown = host if host == address else f"{host} ({address})"
            article = "an" if reason[0] in "aeiou" else "a"
            raise WebhookSettingsError(
                URL_KEY,
                f"{shown} is {article} {reason} address, which webhooks may not target "
                "unless the server sets XBUS_WEBHOOK_ALLOW_PRIVATE",
            )
