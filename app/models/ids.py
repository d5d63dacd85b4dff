"""Row ids: UUIDv7 (RFC 9562), time-ordered, so that new rows land at the right edge of
their primary-key index instead of on a random leaf (random UUIDv4 keys dirty a page of the
index at every insert once it outgrows memory, and multiply the WAL)."""

from __future__ import annotations

import os
import time
import uuid

_last = 0
_sequence = 0


def new_id() -> uuid.UUID:
    """A UUIDv7: 48 bits of Unix milliseconds, then random bits. Within one millisecond, ids
    of this process still increase: a 12-bit counter follows the time (RFC 9562, method 1)."""
    global _last, _sequence
    ms = time.time_ns() // 1_000_000
    if ms <= _last:
        _sequence += 1
        if _sequence > 0xFFF:  # 4096 ids in one millisecond: borrow the next one
            _last += 1
            _sequence = 0
        ms = _last
    else:
        _last = ms
        _sequence = int.from_bytes(os.urandom(2)) & 0x3FF  # room to count up
    rand = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (_sequence << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)
