"""Row ids are UUIDv7: version 7, RFC variant, increasing in the order they are made."""

from __future__ import annotations

import os
import pickle
import time
import uuid

from app.models.ids import new_id, uuid_of_int


def test_ids_are_version_7_and_increase() -> None:
    ids = [new_id() for _ in range(20_000)]  # many within one millisecond
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_ids_carry_their_time() -> None:
    before = time.time_ns() // 1_000_000
    made = new_id()
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after + 1


def test_an_id_built_from_its_integer_is_a_whole_uuid() -> None:
    made = new_id()
    plain = uuid.UUID(int=made.int)
    assert made == plain
    assert hash(made) == hash(plain)
    assert str(made) == str(plain)
    assert made.bytes == plain.bytes
    assert made.is_safe == plain.is_safe
    assert pickle.loads(pickle.dumps(made)) == plain
    assert uuid_of_int(made.int) == made


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    """The random bits are drawn 512 ids at a time: a child that kept its parent's draw would
    make the ids the parent makes next, bit for bit, within the same millisecond."""
    new_id()  # the pool holds what is left of a draw
    low = (1 << 62) - 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, (new_id().int & low).to_bytes(8))
        finally:
            os._exit(0)
    os.close(write)
    parents = new_id().int & low
    with os.fdopen(read, "rb") as pipe:
        childs = int.from_bytes(pipe.read())
    os.waitpid(pid, 0)
    assert childs != parents
