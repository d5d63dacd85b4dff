"""Row ids are UUIDv7: version 7, RFC variant, increasing in the order they are made."""

from __future__ import annotations

import time
import uuid

from app.models.ids import new_id


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
