"""A decision's write leaves out the parts that have nothing to do (`store._save`): every
variant is one PostgreSQL takes, with the same parameter types as the whole statement, so a
decision's arguments fit whichever parts it needs."""

from __future__ import annotations

import itertools

import asyncpg

from app.store import processes as store

FLAGS = (
    "changed",
    "guarded",
    "skip_locked",
    "nodes",
    "requests",
    "request",
    "cancel",
    "logs",
    "envelope",
)


async def test_every_variant_takes_the_same_parameters(db: asyncpg.Connection) -> None:
    whole = await db.prepare(store._save(new=False, **dict.fromkeys(FLAGS, True)))
    expected = [t.name for t in whole.get_parameters()]
    assert len(expected) == len(store._SAVE_TYPES)
    seen = set()
    for new, *values in itertools.product((False, True), *[(False, True)] * len(FLAGS)):
        flags = dict(zip(FLAGS, values, strict=True))
        sql = store._save(new=new, **flags)
        seen.add(sql)
        statement = await db.prepare(sql)
        assert [t.name for t in statement.get_parameters()] == expected, (new, flags)
        parts = sql.split("\nSELECT (SELECT go FROM ok)")[0]
        assert ("canceled AS" in parts) is flags["cancel"]
        assert ("guard AS" in parts) is flags["guarded"]
        assert ("SKIP LOCKED" in parts) is (flags["guarded"] and flags["skip_locked"])
    # The process's row: new, changed or touched; the guard: none, waiting or skipping.
    assert len(seen) == 3 * 3 * 2**6
