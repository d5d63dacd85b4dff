from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.actors import service
from app.actors.schemas import ActorCreate, ActorPage, ActorRead, ActorUpdate, ConfigValue
from app.core.deps import Admin, Caller, Session, SettingsDep
from app.core.errors import Problem
from app.models.enums import ActorKind, ActorStatus

router = APIRouter(prefix="/api/v1", tags=["actors"])

ActorRef = Annotated[str, Path(description="An actor id (UUID) or name.")]
ConfigKey = Annotated[str, Path(description="A config key, such as `http.webhook.url`.")]


def _read(view: service.ActorView) -> ActorRead:
    return ActorRead.of(view.actor, view.account_name)


@router.post(
    "/actors",
    summary="Create an actor for an account",
    response_model=ActorRead,
    status_code=201,
    responses=Problem.of(401, 403, 409, 422),
)
async def create_actor(
    body: ActorCreate, _: Admin, session: Session, settings: SettingsDep
) -> ActorRead:
    return _read(await service.create_actor(session, settings, body))


@router.get(
    "/actors",
    summary="List actors, oldest first: all of them for the admin, its own for an account",
    response_model=ActorPage,
    status_code=200,
    responses=Problem.of(400, 401, 403, 422),
)
async def list_actors(
    principal: Caller,
    session: Session,
    settings: SettingsDep,
    account_id: Annotated[
        str | None, Query(description="Only actors of this account (id or name).")
    ] = None,
    kind: Annotated[ActorKind | None, Query(description="Only actors of this kind.")] = None,
    status: Annotated[ActorStatus | None, Query(description="Only actors in this status.")] = None,
    role: Annotated[str | None, Query(description="Only actors playing this role.")] = None,
    name: Annotated[str | None, Query(description="Only the actor with this name.")] = None,
    online: Annotated[bool | None, Query(description="Only actors (not) connected now.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum are configured).")
    ] = None,
) -> ActorPage:
    page = await service.list_actors(
        session,
        settings,
        principal,
        account=account_id,
        kind=kind,
        status=status,
        role=role,
        name=name,
        online=online,
        cursor=cursor,
        limit=limit,
    )
    return ActorPage(items=[_read(view) for view in page.items], next_cursor=page.next_cursor)


@router.get(
    "/actors/{id_or_name}",
    summary="An actor, by id or name",
    response_model=ActorRead,
    status_code=200,
    responses=Problem.of(401, 403, 404),
)
async def get_actor(id_or_name: ActorRef, principal: Caller, session: Session) -> ActorRead:
    return _read(await service.get_actor(session, principal, id_or_name))


@router.patch(
    "/actors/{id_or_name}",
    summary="Change an actor (an account: description and config of its own actors)",
    response_model=ActorRead,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def update_actor(
    id_or_name: ActorRef,
    body: ActorUpdate,
    principal: Caller,
    session: Session,
    settings: SettingsDep,
) -> ActorRead:
    return _read(await service.update_actor(session, settings, principal, id_or_name, body))


@router.delete(
    "/actors/{id_or_name}",
    summary="Delete an actor (what refers to it stays, unlinked)",
    response_model=None,
    status_code=204,
    responses=Problem.of(401, 403, 404),
)
async def delete_actor(id_or_name: ActorRef, principal: Caller, session: Session) -> None:
    await service.delete_actor(session, principal, id_or_name)


@router.put(
    "/actors/{id_or_name}/config/{key}",
    summary="Set one config entry of an actor",
    response_model=ActorRead,
    status_code=200,
    responses=Problem.of(401, 403, 404, 422),
)
async def set_config_entry(
    id_or_name: ActorRef,
    key: ConfigKey,
    body: ConfigValue,
    principal: Caller,
    session: Session,
    settings: SettingsDep,
) -> ActorRead:
    view = await service.set_config_entry(session, settings, principal, id_or_name, key, body.value)
    return _read(view)


@router.delete(
    "/actors/{id_or_name}/config/{key}",
    summary="Remove one config entry of an actor",
    response_model=None,
    status_code=204,
    responses=Problem.of(401, 403, 404, 422),
)
async def delete_config_entry(
    id_or_name: ActorRef,
    key: ConfigKey,
    principal: Caller,
    session: Session,
    settings: SettingsDep,
) -> None:
    await service.delete_config_entry(session, settings, principal, id_or_name, key)
