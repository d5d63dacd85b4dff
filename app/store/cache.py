"""A cache of what the hot paths read on every call and what rarely changes: API keys'
principals, actors by name, the active pipelines, the actors of each node.

Any committed change of an account, a session token, an actor or a pipeline raises the
notifier's generation (`app.bus.notify`: here at once, on the other replicas through the
doorbell), which drops every entry; entries also expire after `ttl` seconds, the bound on
staleness should a doorbell be lost. Only found values are kept: what was missing is read
again next time (a new actor is seen at once).

Concurrent misses of one key share one load: when an entry expires under load, the requests
that arrive while it is read wait for that read instead of each making their own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

DEFAULT_TTL = 2.0
_MAX_ENTRIES = 10_000
# What a shared load hands its waiters when it did not end with a value: each loads itself.
_NOT_LOADED: Any = object()


class Generation(Protocol):
    generation: int


class Cache:
    def __init__(self, source: Generation | None, ttl: float = DEFAULT_TTL) -> None:
        self.source = source
        self.ttl = ttl
        self._entries: dict[Hashable, Any] = {}
        self._generation = -1
        self._expires = 0.0
        # Loads in flight: key -> (the generation they were started in, their outcome).
        self._loading: dict[Hashable, tuple[int, asyncio.Future[Any]]] = {}

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
        values are not kept: what is missing now may be there at the next call. A load of
        `key` already in flight in this generation is waited for rather than made again
        (not with `fresh`); should it end without a value (an error, a cancellation), each
        waiter loads on its own."""
        entries = self._current()
        if key in entries and not fresh:
            return entries[key]  # type: ignore[no-any-return]
        generation = self._generation
        if not fresh:
            pending = self._loading.get(key)
            if pending is not None and pending[0] == generation:
                shared = await asyncio.shield(pending[1])
                if shared is not _NOT_LOADED:
                    return shared  # type: ignore[no-any-return]
        outcome: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = (generation, outcome)
        value: Any = _NOT_LOADED
        try:
            value = await load()
        finally:
            outcome.set_result(value)
            current = self._loading.get(key)
            if current is not None and current[1] is outcome:
                del self._loading[key]
        # Not kept when a change came while it was read: it may predate that change.
        if value and generation == self._generation and entries is self._entries:
            if len(entries) >= _MAX_ENTRIES:
                entries.clear()
            entries[key] = value
        return value  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._entries = {}
        self._loading = {}
