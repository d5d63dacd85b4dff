"""A duty's loop waiting for its next wake-up stops when it is cancelled, even when the
wake-up comes at the same moment: with Python 3.11's `asyncio.wait_for` the wait returned
and the cancellation was lost, so the loop went round again after the shutdown (a webhook
dispatcher, seen in CI, kept going on the closed pool of an app that had stopped)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.bus.notify import Notifier, wait_set


async def _rounds_after_cancel(
    wait: Callable[[], Awaitable[bool]], wake: Callable[[], None]
) -> int:
    """Rounds a loop of `wait` makes after it was cancelled as `wake` came."""
    rounds = 0
    cancelled = False

    async def loop() -> None:
        nonlocal rounds
        while True:
            await wait()
            if cancelled:
                rounds += 1
                if rounds > 3:
                    return

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # the loop waits
    wake()
    task.cancel()
    cancelled = True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    return rounds


async def test_a_wait_cancelled_as_its_event_comes_ends_cancelled() -> None:
    for _ in range(50):
        event = asyncio.Event()

        async def wait(event: asyncio.Event = event) -> bool:
            found = await wait_set(event, 10)
            event.clear()
            return found

        assert await _rounds_after_cancel(wait, event.set) == 0


async def test_a_notifier_wait_cancelled_as_its_key_rings_ends_cancelled() -> None:
    notifier = Notifier()
    notifier.bind(asyncio.get_running_loop())
    for _ in range(50):
        rounds = await _rounds_after_cancel(
            lambda: notifier.wait("k", 10), lambda: notifier.wake_local(["k"])
        )
        assert rounds == 0


async def test_a_wait_times_out_unset_and_sees_a_set_event() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, 10) is True
