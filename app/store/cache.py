"""A cache of what the hot paths read on every call and what rarely changes: API keys'
principals, actors by name, the active pipelines, the actors of each node.

Any committed change of an account, a session token, an actor or a pipeline raises the
notifier's generation (`app.bus.notify`: here at once, on the other replicas through the
doorbell), which drops every entry; entries also expire after `ttl` seconds, the bound on
staleness should a doorbell be lost. Only found values are kept: what was missing is read
again next time (a new actor is seen at once)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DEFAULT_TTL = 2.0
_MAX_ENTRIES = 10_000


class Generation(Protocol):
    generation: int


class Cache:
    def __init__(self, source: Generation | None, ttl: float = DEFAULT_TTL) -> None:
        self.source = source
        self.ttl = ttl
        self._entries: dict[Hashable, Any] = {}
        self._generation = -1
        self._expires = 0.0

    def _current(self) -> dict[Hashable, Any]:
        generation = self.source.generation if self.source is not None else 0
        now = time.monotonic()
        if generation != self._generation or now >= self._expires or self.ttl <= 0:
            self._entries = {}
            self._generation = generation
            self._expires = now + self.ttl
        return self._entries

    async def get(
        self, key: Hashable, load: Callable[[], Awaitable[T]], *, fresh: bool = False
    ) -> T:
        """The value for `key`, loaded when not held (or with `fresh`). None and empty
        values are not kept: what is missing now may be there at the next call."""
        entries = self._current()
        if key in entries and not fresh:
            return entries[key]  # type: ignore[no-any-return]
        generation = self._generation
        value = await load()
        # Not kept when a change came while it was read: it may predate that change.
        if value and generation == self._generation and entries is self._entries:
            if len(entries) >= _MAX_ENTRIES:
                entries.clear()
            entries[key] = value
        return value

    def clear(self) -> None:
        self._entries = {}
