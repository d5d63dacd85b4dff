"""The garbage collector set for a server that runs one app for its whole life.

CPython's cyclic collector runs a young collection every 700 net allocations of container
objects, and now and then a full one that walks every object the process holds. xbusd's
modules (FastAPI, pydantic, SQLAlchemy, asyncpg, protobuf) leave 100,000-200,000 objects
alive after start, few of them ever garbage: a full collection walked them all (~150 ms
each, 35 in a 50,000-envelope batch run), and the collector took 30% of xbusd's CPU under
batch emission, 6-7% under single requests (docs/benchmarks.md).

`settle()`, once the app has started, collects once, then moves every object alive to the
permanent generation (`gc.freeze`), which no collection walks again. Objects are still
freed by reference counting; only reference cycles among the frozen start-up objects are
never collected: most live as long as the process anyway, and those replaced later (say,
a pool's first connections after a database restart) stay once, a bounded amount; what is
made after the start is collected as before. The young threshold stays
CPython's: raised (2,000 to 50,000), it helped batches but cost single requests 1-8%. Not
for processes that create and drop apps (the tests): what is frozen there would stay.

Full passes are made rarer too: CPython 3.11-3.13 runs one after every 10 collections of
the middle generation (once the objects not frozen have grown by a quarter since the last),
and under a batch of envelopes what is not frozen is mostly the batches in flight, a
hundred thousand young objects or more that a full pass walks for nothing: 27 passes of
~50 ms in a 50,000-envelope `bench.batch_emit` run, 13% of the worker's CPU. After 100
collections of the middle generation instead (`FULL_EVERY`), 3 passes. Cyclic garbage old
enough to reach the oldest generation waits that much longer to be freed; what dies young,
most of it, is collected as before. (Python 3.14's incremental collector ignores the
setting.)"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

# Collections of the middle generation between two full passes (CPython's default: 10).
FULL_EVERY = 100


def settle() -> None:
    """Collect once, then freeze what is alive: no later collection walks it again; full
    passes every `FULL_EVERY` collections of the middle generation."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_EVERY)
    log.info("heap settled: %d objects frozen", gc.get_freeze_count())
