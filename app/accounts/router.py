from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.accounts import service
from app.accounts.schemas import (
    AccountBrief,
    AccountCreate,
    AccountCreated,
    AccountPage,
    AccountRead,
    AccountUpdate,
    ApiKeyCreate,
    ApiKeyRead,
    WhoAmI,
)
from app.core.deps import Admin, AnyKey, Session, SettingsDep
from app.core.errors import Problem
from app.models.enums import AccountStatus, AccountType

router = APIRouter(prefix="/api/v1", tags=["accounts"])

AccountRef = Annotated[str, Path(description="An account id (UUID) or name.")]


@router.get(
    "/whoami",
    summary="The account behind the presented API key",
    response_model=WhoAmI,
    status_code=200,
    responses=Problem.of(401),
)
async def whoami(principal: AnyKey) -> WhoAmI:
    return WhoAmI(
        account=AccountBrief(
            id=principal.account_id,
            name=principal.name,
            type=principal.type,
            status=principal.status,
        ),
        admin=principal.admin,
    )


@router.post(
    "/accounts",
    summary="Create an account and its API key (shown once)",
    response_model=AccountCreated,
    status_code=201,
    responses=Problem.of(401, 403, 409, 422),
)
async def create_account(body: AccountCreate, _: Admin, session: Session) -> AccountCreated:
    account, key = await service.create_account(session, body)
    return AccountCreated.with_key(account, key)


@router.get(
    "/accounts",
    summary="List accounts, oldest first",
    response_model=AccountPage,
    status_code=200,
    responses=Problem.of(400, 401, 403, 422),
)
async def list_accounts(
    _: Admin,
    session: Session,
    settings: SettingsDep,
    type: Annotated[AccountType | None, Query(description="Only accounts of this type.")] = None,
    status: Annotated[
        AccountStatus | None, Query(description="Only accounts with this status.")
    ] = None,
    name: Annotated[str | None, Query(description="Only the account with this name.")] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum are configured).")
    ] = None,
) -> AccountPage:
    page = await service.list_accounts(
        session, settings, type=type, status=status, name=name, cursor=cursor, limit=limit
    )
    return AccountPage(
        items=[AccountRead.of(account) for account in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/accounts/{id}",
    summary="An account, by id or name",
    response_model=AccountRead,
    status_code=200,
    responses=Problem.of(401, 403, 404),
)
async def get_account(id: AccountRef, _: Admin, session: Session) -> AccountRead:
    return AccountRead.of(await service.load_account(session, id))


@router.patch(
    "/accounts/{id}",
    summary="Rename, describe, enable or disable an account",
    response_model=AccountRead,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def update_account(
    id: AccountRef, body: AccountUpdate, _: Admin, session: Session
) -> AccountRead:
    return AccountRead.of(await service.update_account(session, id, body))


@router.delete(
    "/accounts/{id}",
    summary="Delete an account (and, with confirm=true, its actors)",
    response_model=None,
    status_code=204,
    responses=Problem.of(401, 403, 404, 409),
)
async def delete_account(
    id: AccountRef,
    _: Admin,
    session: Session,
    confirm: Annotated[
        bool, Query(description="Required when the account has actors: they are deleted too.")
    ] = False,
) -> None:
    await service.delete_account(session, id, confirm=confirm)


@router.post(
    "/accounts/{id}/api-key",
    summary="Replace an account's API key; the old key stops working",
    response_model=ApiKeyRead,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def new_api_key(
    id: AccountRef, _: Admin, session: Session, body: ApiKeyCreate | None = None
) -> ApiKeyRead:
    expires_at = body.expires_at if body is not None else None
    key, expires = await service.new_api_key(session, id, expires_at)
    return ApiKeyRead(api_key=key, expires_at=expires)
