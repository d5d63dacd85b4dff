"""The hot paths' cache: dropped when the notifier's generation moves (a committed change of
accounts, actors or pipelines, here or on another replica) and after its time to live."""

from __future__ import annotations

import asyncio

import pytest

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


async def test_concurrent_misses_share_one_load() -> None:
    """Requests that miss a key while it is being read wait for that read: an entry that
    expires under load is read once, not once per request in flight."""
    cache = Cache(Notifier(), ttl=60)
    loads: list[int] = []
    release = asyncio.Event()

    async def load() -> str:
        loads.append(1)
        await release.wait()
        return "v"

    waiting = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
    await asyncio.sleep(0.01)
    release.set()
    assert await asyncio.gather(*waiting) == ["v"] * 10
    assert loads == [1]
    # `fresh` reads again, whatever is in flight or held.
    assert await cache.get("k", lambda: asyncio.sleep(0, "w"), fresh=True) == "w"


@pytest.mark.parametrize("ending", ["error", "cancel"])
async def test_a_shared_load_that_ends_without_a_value_leaves_each_waiter_to_load(
    ending: str,
) -> None:
    """A load that fails (the database down) or is canceled (its request gone) hands its
    waiters nothing: each makes its own load."""
    cache = Cache(Notifier(), ttl=60)
    started = asyncio.Event()

    async def shared() -> str:
        started.set()
        await asyncio.sleep(0.01 if ending == "error" else 10)
        raise RuntimeError("database down")

    first = asyncio.ensure_future(cache.get("k", shared))
    await started.wait()
    second = asyncio.ensure_future(cache.get("k", lambda: asyncio.sleep(0, "own")))
    if ending == "cancel":
        await asyncio.sleep(0.01)
        first.cancel()
        assert await second == "own"
        return
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    assert results[1] == "own"  # its own load, not the failed one's error


async def test_a_load_started_before_a_change_is_not_shared_after_it() -> None:
    notifier = Notifier()
    cache = Cache(notifier, ttl=60)
    release = asyncio.Event()

    async def old() -> str:
        await release.wait()
        return "old"

    first = asyncio.ensure_future(cache.get("k", old))
    await asyncio.sleep(0.01)
    notifier.wake_local([CONFIG])
    second = asyncio.ensure_future(cache.get("k", lambda: asyncio.sleep(0, "new")))
    assert await second == "new"
    release.set()
    assert await first == "old"
    assert await cache.get("k", lambda: asyncio.sleep(0, "x")) == "new"
