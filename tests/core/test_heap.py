"""`app.heap.settle`: what a serving process does to its collector once started (the serving
processes themselves are checked in tests/runtime/test_serve.py and test_workers.py)."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from app import heap


@pytest.fixture
def collector() -> Iterator[None]:
    """The test process's collector as it was, afterwards."""
    frozen = gc.get_freeze_count()
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    if frozen:
        gc.freeze()


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


def test_settle_freezes_what_is_alive(collector: None) -> None:
    gc.unfreeze()
    kept = Node()
    heap.settle()
    assert gc.get_freeze_count() > 1000  # the modules' objects, and `kept`
    tracked = {id(o) for o in gc.get_objects()}
    assert id(kept) not in tracked  # frozen: no collection walks it again
    assert id(kept.__dict__) not in tracked

    # What is created afterwards is collected as before.
    garbage = Node()
    gone = weakref.ref(garbage)
    del garbage
    assert gone() is not None  # a cycle: reference counting alone does not free it
    gc.collect()
    assert gone() is None


@pytest.mark.skipif(
    sys.version_info >= (3, 14), reason="the incremental collector has no third threshold"
)
def test_settle_makes_full_passes_rarer(collector: None) -> None:
    """A full pass after 100 collections of the middle generation, not 10: what it would walk
    is mostly the batches in flight (app/heap.py); the young threshold stays CPython's."""
    gc.set_threshold(700, 10, 10)
    heap.settle()
    assert gc.get_threshold() == (700, 10, heap.FULL_EVERY)
    assert heap.FULL_EVERY == 100
