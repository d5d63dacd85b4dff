"""The bootstrap admin: a `user` account whose key comes from XBUS_ADMIN_API_KEY or from
<data-dir>/admin.key (generated once, mode 0600)."""

from __future__ import annotations

import logging
import os

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import keys
from app.config import Settings
from app.models import Account
from app.models.enums import AccountStatus, AccountType

log = logging.getLogger(__name__)

ADMIN_NAME = "admin"


def _write_key_file(settings: Settings, key: str) -> None:
    path = settings.admin_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)


async def ensure_admin(session: AsyncSession, settings: Settings) -> None:
    await session.execute(sa.text("SELECT pg_advisory_xact_lock(727300002)"))
    admin = (
        await session.execute(
            sa.select(Account).where(Account.is_admin.is_(True), Account.name == ADMIN_NAME)
        )
    ).scalar_one_or_none()
    if admin is None:
        admin = Account(
            name=ADMIN_NAME,
            type=AccountType.USER,
            status=AccountStatus.ENABLED,
            is_admin=True,
            description="bootstrap administrator",
        )
        session.add(admin)

    key: str | None = None
    if settings.admin_api_key is not None:
        key = settings.admin_api_key.get_secret_value()
    elif settings.admin_key_file.exists():
        key = settings.admin_key_file.read_text().strip() or None
    if key is None:
        if admin.api_key_hash is not None:
            log.warning(
                "the admin account has a key but %s is missing; set XBUS_ADMIN_API_KEY to use it",
                settings.admin_key_file,
            )
            return
        key = keys.generate_key()
        _write_key_file(settings, key)
        log.warning(
            "generated the admin API key into %s (shown once): %s", settings.admin_key_file, key
        )

    digest = keys.digest(key)
    if admin.api_key_hash != digest.hash:
        admin.api_key_lookup = digest.lookup
        admin.api_key_hash = digest.hash
        admin.api_key_expires_at = None
    admin.status = AccountStatus.ENABLED
    await session.flush()
