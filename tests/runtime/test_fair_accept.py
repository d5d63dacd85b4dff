"""The workers' shared account of their connections (`app.cli.fair_accept.Loads`), between
real processes: a worker lets one that serves fewer connections take a waiting one, unless
that one's event loop has stopped beating; a dead worker's slot is taken again."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from app.cli.fair_accept import STALE_MS, Loads

SPAWN = multiprocessing.get_context("spawn")


def _worker(loads: Loads, connections: int, ready: Any, stop: Any) -> None:
    loads.take()
    loads.serving(connections)
    ready.set()
    stop.wait(60)


def _start(loads: Loads, connections: int) -> tuple[Any, Any]:
    ready, stop = SPAWN.Event(), SPAWN.Event()
    process = SPAWN.Process(target=_worker, args=(loads, connections, ready, stop))
    process.start()
    assert ready.wait(60)
    return process, stop


def test_a_worker_defers_to_a_live_beating_worker_that_serves_fewer() -> None:
    loads = Loads(2)
    other, stop = _start(loads, 2)
    try:
        loads.take()
        loads.beat()
        assert not loads.defer(1)
        assert not loads.defer(2)  # as many: whoever is first
        assert loads.defer(3)
        # The other's loop beat once, when it took its slot: once that is stale, it is not
        # waited for (stopped, or hung in a long computation).
        time.sleep(STALE_MS / 1000 + 0.2)
        assert not loads.defer(3)
    finally:
        stop.set()
        other.join(30)
    loads.free()


def test_the_slot_of_a_dead_worker_is_taken_again() -> None:
    loads = Loads(2)
    dead, stop = _start(loads, 0)
    stop.set()
    dead.join(30)
    live, stop = _start(loads, 0)
    try:
        # Two slots: this process has one only if one of the live worker and this process
        # took the dead worker's.
        loads.take()
        assert loads.defer(1)
        loads.free()
        assert not loads.defer(1)  # without a slot, a worker takes what comes
    finally:
        stop.set()
        live.join(30)
