"""Actor rules: globally unique names, config checked before it is stored, and an account
that may edit only the description and config of its own actors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository as accounts_repo
from app.accounts.principal import Principal
from app.accounts.service import Page, make_page, page_limit, violated_constraint
from app.actors import repository as repo
from app.actors.access import load_owned_actor
from app.actors.config import (
    ConfigEntryError,
    keep_secrets,
    printable,
    validate_config,
)
from app.actors.schemas import ActorCreate, ActorUpdate
from app.config import Settings
from app.core.exceptions import Conflict, Forbidden, NotFound, Unprocessable
from app.models import Actor
from app.models.enums import ActorKind, ActorStatus
from app.webhooks.settings import URL_KEY, WebhookSettingsError, check_url_allowed

# What an account may change on its own actors; the rest of ActorUpdate needs the admin.
OWNER_FIELDS = frozenset({"description", "config"})


class ActorView(NamedTuple):
    actor: Actor
    account_name: str


def _config_problem(key: str, message: str) -> Unprocessable:
    return Unprocessable(f"config key {key!r}: {message}", extra={"key": key})


async def _checked_config(
    settings: Settings, new: Mapping[str, str], old: Mapping[str, Any]
) -> dict[str, str]:
    """The config to store in place of `old`, or 422 naming the first bad entry."""
    config = keep_secrets(new, old)
    try:
        webhook = validate_config(config)
    except ConfigEntryError as exc:
        raise _config_problem(exc.key, exc.message) from None
    # Resolving the host costs a DNS query (under the actor's row lock), so only a new or
    # changed URL is checked; DNS answers change, so delivery has to check again anyway.
    if webhook is not None and webhook.url != old.get(URL_KEY):
        try:
            await check_url_allowed(webhook.url, settings.webhook_allow_private)
        except WebhookSettingsError as exc:
            raise _config_problem(exc.key, exc.message) from None
    return config


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"an actor named {name!r} already exists")


async def _flush(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        # Lost a race for the name (or for the account, deleted meanwhile).
        constraint = violated_constraint(exc)
        if constraint in ("", "uq_actors_name"):
            raise _name_conflict(name) from exc
        raise Conflict("the actor's account was deleted meanwhile") from exc


async def create_actor(session: AsyncSession, settings: Settings, data: ActorCreate) -> ActorView:
    account = await accounts_repo.find_account(session, data.account_id)
    if account is None:
        raise Unprocessable(f"account_id: no account {data.account_id!r}")
    if await repo.name_taken(session, data.name):
        raise _name_conflict(data.name)
    config = await _checked_config(settings, data.config, {})
    actor = Actor(
        account_id=account.id,
        name=data.name,
        description=data.description,
        kind=ActorKind(data.kind),
        status=ActorStatus(data.status),
        roles=list(data.roles),
        config=config,
    )
    session.add(actor)
    await _flush(session, data.name)
    return ActorView(actor, account.name)


async def list_actors(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    *,
    account: str | None = None,
    kind: ActorKind | None = None,
    status: ActorStatus | None = None,
    role: str | None = None,
    name: str | None = None,
    online: bool | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[ActorView]:
    """The admin lists every actor, an account only its own."""
    size = page_limit(limit, settings)
    if any(v is not None and not accounts_repo.storable_ref(v) for v in (account, role, name)):
        return Page([], None)  # such a value names nothing that can be stored
    rows = await repo.list_actors(
        session,
        owner_id=None if principal.admin else principal.account_id,
        account=account,
        kind=kind,
        status=status,
        role=role,
        name=name,
        online=online,
        cursor=cursor,
        limit=size,
    )
    page = make_page(rows, size, lambda row: (row[0].created_at, row[0].id))
    return Page([ActorView(*row) for row in page.items], page.next_cursor)


async def _view(session: AsyncSession, actor: Actor) -> ActorView:
    return ActorView(actor, await repo.account_name(session, actor.account_id))


async def get_actor(session: AsyncSession, principal: Principal, ref: str) -> ActorView:
    return await _view(session, await load_owned_actor(session, principal, ref))


async def update_actor(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    ref: str,
    data: ActorUpdate,
) -> ActorView:
    actor = await load_owned_actor(session, principal, ref, for_update=True)
    fields = data.model_fields_set
    if not principal.admin:
        admin_only = sorted(fields - OWNER_FIELDS)
        if admin_only:
            raise Forbidden(
                f"only the admin may change {', '.join(admin_only)}; "
                f"an account may change {' and '.join(sorted(OWNER_FIELDS))} of its actors"
            )
    if data.name is not None and data.name != actor.name:
        if await repo.name_taken(session, data.name):
            raise _name_conflict(data.name)
        actor.name = data.name
    if data.config is not None:
        actor.config = await _checked_config(settings, data.config, actor.config)
    if data.description is not None:
        actor.description = data.description
    if data.kind is not None:
        actor.kind = ActorKind(data.kind)
    if data.status is not None:
        actor.status = ActorStatus(data.status)
    if data.roles is not None:
        actor.roles = list(data.roles)
    await _flush(session, actor.name)
    return await _view(session, actor)


async def delete_actor(session: AsyncSession, principal: Principal, ref: str) -> None:
    actor = await load_owned_actor(session, principal, ref, for_update=True)
    await repo.delete_actor(session, actor.id)


async def set_config_entry(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    ref: str,
    key: str,
    value: str,
) -> ActorView:
    actor = await load_owned_actor(session, principal, ref, for_update=True)
    actor.config = await _checked_config(settings, {**actor.config, key: value}, actor.config)
    await _flush(session, actor.name)
    return await _view(session, actor)


async def delete_config_entry(
    session: AsyncSession, settings: Settings, principal: Principal, ref: str, key: str
) -> None:
    actor = await load_owned_actor(session, principal, ref, for_update=True)
    if key not in actor.config:
        raise NotFound(f"actor {actor.name!r} has no config key {printable(key)!r}")
    remaining = {k: v for k, v in actor.config.items() if k != key}
    # What is left must still hold together (say, success codes against default reattempt
    # codes once the explicit reattempt list is gone).
    actor.config = await _checked_config(settings, remaining, actor.config)
    await _flush(session, actor.name)
