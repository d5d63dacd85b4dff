"""The hot paths' cache: dropped when the notifier's generation moves (a committed change of
accounts, actors or pipelines, here or on another replica) and after its time to live."""

from __future__ import annotations

import asyncio

from app.bus.notify import CONFIG, Notifier
from app.store.cache import Cache


async def test_a_change_drops_every_entry() -> None:
    notifier = Notifier()
    cache = Cache(notifier, ttl=60)
    loads: list[str] = []

    async def load(value: str) -> str:
        loads.append(value)
        return value

    assert await cache.get("a", lambda: load("a1")) == "a1"
    assert await cache.get("a", lambda: load("a2")) == "a1"  # held
    notifier.wake_local(["actor.x"])  # not a change of configuration
    assert await cache.get("a", lambda: load("a3")) == "a1"
    notifier.wake_local([CONFIG])
    assert await cache.get("a", lambda: load("a4")) == "a4"
    assert loads == ["a1", "a4"]


async def test_entries_expire() -> None:
    cache = Cache(Notifier(), ttl=0.05)
    assert await cache.get("k", lambda: asyncio.sleep(0, "v1")) == "v1"
    assert await cache.get("k", lambda: asyncio.sleep(0, "v2")) == "v1"
    await asyncio.sleep(0.06)
    assert await cache.get("k", lambda: asyncio.sleep(0, "v3")) == "v3"


async def test_missing_values_are_read_again() -> None:
    cache = Cache(Notifier(), ttl=60)
    nothing: str | None = None
    assert await cache.get("none", lambda: asyncio.sleep(0, nothing)) is None
    assert await cache.get("none", lambda: asyncio.sleep(0, "found")) == "found"
    assert await cache.get("empty", lambda: asyncio.sleep(0, [])) == []
    assert await cache.get("empty", lambda: asyncio.sleep(0, ["x"])) == ["x"]
    assert await cache.get("empty", lambda: asyncio.sleep(0, ["y"])) == ["x"]
    assert await cache.get("empty", lambda: asyncio.sleep(0, ["z"]), fresh=True) == ["z"]


async def test_a_value_read_across_a_change_is_not_kept() -> None:
    notifier = Notifier()
    cache = Cache(notifier, ttl=60)

    async def slow() -> str:
        notifier.wake_local([CONFIG])  # committed while this read was under way
        return "old"

    assert await cache.get("k", slow) == "old"
    assert await cache.get("k", lambda: asyncio.sleep(0, "new")) == "new"
