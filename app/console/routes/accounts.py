"""Accounts (admin): list, create, rotate a key (shown once), accept / reject registrations."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.accounts import service
from app.accounts.schemas import AccountCreate
from app.console.web import PREFIX, FormUser, User, back_to, render
from app.core.deps import Session, SettingsDep, State, require_admin
from app.core.exceptions import ServiceUnavailable, Unprocessable
from app.models.enums import AccountStatus, AccountType

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/accounts")
async def accounts_page(
    request: Request,
    session: Session,
    settings: SettingsDep,
    user: User,
    cursor: str | None = None,
) -> Response:
    await require_admin(user.principal)
    page = await service.list_accounts(session, settings, cursor=cursor or None)
    pending = await service.list_accounts(session, settings, status=AccountStatus.PENDING)
    return render(
        request,
        "accounts.html",
        {
            "page": page,
            "pending": pending.items,
            "types": [t.value for t in AccountType],
        },
        user=user,
    )


@router.post("/accounts")
async def account_create(
    request: Request,
    session: Session,
    user: FormUser,
    name: Annotated[str, Form()],
    type: Annotated[str, Form()],
    description: Annotated[str, Form()] = "",
) -> Response:
    await require_admin(user.principal)
    try:
        data = AccountCreate(name=name.strip(), type=type, description=description)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise Unprocessable(f"{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    account, key = await service.create_account(session, data)
    return render(request, "key.html", {"account": account, "key": key, "created": True}, user=user)


@router.post("/accounts/{ref}/api-key")
async def account_rotate_key(
    request: Request, ref: str, session: Session, user: FormUser
) -> Response:
    await require_admin(user.principal)
    key, _ = await service.new_api_key(session, ref, None)
    account = await service.load_account(session, ref)
    return render(
        request, "key.html", {"account": account, "key": key, "created": False}, user=user
    )


@router.post("/accounts/{ref}/accept")
async def account_accept(ref: str, session: Session, state: State, user: FormUser) -> Response:
    await require_admin(user.principal)
    if state.ca is None:
        raise ServiceUnavailable("the certificate authority is not loaded yet; try again")
    await service.accept_registration(session, state.ca, ref)
    await state.commit_and_announce(session)
    return back_to(f"{PREFIX}/accounts")


@router.post("/accounts/{ref}/reject")
async def account_reject(ref: str, session: Session, state: State, user: FormUser) -> Response:
    await require_admin(user.principal)
    await service.reject_registration(session, ref)
    await state.commit_and_announce(session)
    return back_to(f"{PREFIX}/accounts")
