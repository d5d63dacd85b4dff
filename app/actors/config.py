"""Actor config entries: free key/value strings such as `http.webhook.url`, checked when they
are saved so that whatever reads them later can trust them.

Keys are lower-case (`^[a-z0-9][a-z0-9._-]{0,127}$`), values are strings of at most 64 KiB
(UTF-8) without NUL characters. Keys under `http.webhook.` must be webhook settings with valid
values (see app/webhooks/settings.py). A key ending in `secret` holds a secret: reads show
`********` in its place, and saving `********` back over an existing secret keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from app.webhooks.settings import WebhookSettings, WebhookSettingsError, parse_webhook_settings

KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
VALUE_MAX_BYTES = 64 * 1024
MASK = "********"


class ConfigEntryError(ValueError):
    """A config entry that cannot be saved: `key` names it, `message` says why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def is_secret(key: str) -> bool:
    return key.endswith("secret")


def masked(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as callers may see it: secret values replaced by `********`."""
    return {key: MASK if is_secret(key) else str(value) for key, value in config.items()}


def keep_secrets(new: Mapping[str, str], old: Mapping[str, Any]) -> dict[str, str]:
    """`new` with every `********` that stands for an existing secret replaced by that secret,
    so that a config read, edited and written back does not overwrite its secrets."""
    return {
        key: str(old[key]) if value == MASK and is_secret(key) and key in old else value
        for key, value in new.items()
    }


def printable(key: str) -> str:
    """A key fit for an error message, however broken it is."""
    return key[:200].encode("utf-8", "backslashreplace").decode("utf-8")


def check_key(key: str) -> None:
    if not KEY_PATTERN.fullmatch(key):
        raise ConfigEntryError(
            printable(key),
            "keys are 1-128 characters of a-z, 0-9 and `._-`, starting with a letter or digit",
        )


def check_value(key: str, value: str) -> None:
    if "\x00" in value:
        raise ConfigEntryError(key, "the value must not contain NUL characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ConfigEntryError(key, "the value must be valid Unicode (no surrogates)") from None
    if size > VALUE_MAX_BYTES:
        raise ConfigEntryError(
            key, f"the value is {size} bytes long; at most {VALUE_MAX_BYTES} are allowed"
        )


def validate_config(config: Mapping[str, str]) -> WebhookSettings | None:
    """Check a whole config as it would be stored; returns its webhook settings (None when
    it has no webhook url). Raises ConfigEntryError naming the first bad entry."""
    for key in sorted(config):
        check_key(key)
        check_value(key, config[key])
    try:
        return parse_webhook_settings(config)
    except WebhookSettingsError as exc:
        raise ConfigEntryError(exc.key, exc.message) from None
