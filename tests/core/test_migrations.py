"""Migrations: upgrade -> downgrade -> upgrade on a scratch database, and the models match."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from app import migrations
from app.models import Base
from tests.conftest import _plain, _recreate_database, _with_database


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(_plain(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r["tablename"] for r in rows}


def test_upgrade_downgrade_upgrade(pg_server_url: str) -> None:
    asyncio.run(_recreate_database(pg_server_url, "xbus_migrations"))
    url = _with_database(pg_server_url, "xbus_migrations")
    expected = {t.name for t in Base.metadata.sorted_tables}

    migrations.upgrade(url)
    assert expected <= asyncio.run(_tables(url))
    migrations.downgrade(url, "base")
    assert asyncio.run(_tables(url)) == {"alembic_version"}
    migrations.upgrade(url)
    assert expected <= asyncio.run(_tables(url))


def test_models_match_migrations(database_url: str) -> None:
    """A model change without its migration fails here."""

    async def diff() -> list[object]:
        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            result = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        await engine.dispose()
        return list(result)

    assert asyncio.run(diff()) == []
