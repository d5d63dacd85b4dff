"""An absurd age is a 422, not a date overflow (found by schemathesis)."""

from __future__ import annotations

import asyncpg
import httpx

from tests.conftest import assert_problem, row_counts


async def test_purge_older_than_out_of_range_is_422(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    r = await admin.post(
        "/api/v1/processes/purge", json={"all": True, "older_than": "P4771Y967M796D"}
    )
    assert_problem(r, 422, "older_than")
    assert await row_counts(db) == before
