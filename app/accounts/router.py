from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from app.accounts import service
from app.accounts.principal import Principal
from app.accounts.schemas import (
    AcceptRegistration,
    AccountBrief,
    AccountCertificate,
    AccountCreate,
    AccountCreated,
    AccountPage,
    AccountRead,
    AccountUpdate,
    ApiKeyCreate,
    ApiKeyRead,
    CertificateRenewed,
    RenewCertificate,
    WhoAmI,
)
from app.certs.pki import CertificateAuthority
from app.core.deps import (
    Admin,
    AnyKey,
    Caller,
    Session,
    SettingsDep,
    State,
    authenticate,
    require_enabled,
)
from app.core.errors import Problem
from app.core.exceptions import ServiceUnavailable
from app.models.enums import AccountStatus, AccountType
from app.state import AppState

log = logging.getLogger(__name__)

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


# --- certificates ---------------------------------------------------------------------------


def _ca(state: AppState) -> CertificateAuthority:
    if state.ca is None:
        raise ServiceUnavailable("the certificate authority is not loaded yet; try again")
    return state.ca


async def optional_key(request: Request) -> Principal | None:
    """The presented API key's account (401 when wrong), or None when no key is presented."""
    if request.headers.get("authorization") or request.headers.get("xbus-api-key"):
        return await authenticate(request)
    return None


OptionalKey = Annotated[Principal | None, Depends(optional_key)]


@router.post(
    "/accounts/{id}/accept",
    summary="Accept a registration: sign its CSR, enable the account and its pending actors",
    response_model=AccountCertificate,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409, 422, 503),
)
async def accept_account(
    id: AccountRef,
    _: Admin,
    session: Session,
    state: State,
    body: AcceptRegistration | None = None,
) -> AccountCertificate:
    days = body.cert_expire_days if body is not None else None
    account = await service.accept_registration(session, _ca(state), id, days)
    await state.commit_and_announce(session)
    return AccountCertificate.of(account)


@router.post(
    "/accounts/{id}/reject",
    summary="Reject a registration: the account and its pending actors become rejected",
    response_model=AccountRead,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409),
)
async def reject_account(id: AccountRef, _: Admin, session: Session, state: State) -> AccountRead:
    account = await service.reject_registration(session, id)
    await state.commit_and_announce(session)
    return AccountRead.of(account)


@router.post(
    "/accounts/{id}/reset-cert",
    summary="Allow (and require) an account to renew its certificate with a new CSR",
    response_model=AccountCertificate,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409),
)
async def reset_account_cert(
    id: AccountRef, _: Admin, session: Session, state: State
) -> AccountCertificate:
    account = await service.reset_certificate(session, id)
    await state.commit_and_announce(session)
    return AccountCertificate.of(account)


@router.post(
    "/accounts/{id}/renew-cert",
    summary="Renew an account's certificate from a new CSR (after reset-cert)",
    description="The caller is the admin, the account itself (its API key), or, with no key, "
    "whoever signs the CSR with the key of the account's current certificate (`signature`). "
    "Without a prior reset-cert the answer is 409.",
    response_model=CertificateRenewed,
    status_code=200,
    responses=Problem.of(401, 403, 404, 409, 422, 503),
)
async def renew_account_cert(
    id: AccountRef,
    body: RenewCertificate,
    principal: OptionalKey,
    session: Session,
    state: State,
) -> CertificateRenewed:
    if principal is not None and not principal.admin:
        principal = await require_enabled(principal)
    ca = _ca(state)
    _, issued = await service.renew_certificate(
        session,
        ca,
        id,
        body.csr,
        days=body.cert_expire_days,
        as_admin=principal is not None and principal.admin,
        as_account=principal.account_id if principal is not None else None,
        signature=body.signature,
    )
    await state.commit_and_announce(session)
    return CertificateRenewed(
        certificate=issued.pem,
        ca=ca.pem,
        fingerprint=issued.fingerprint,
        expires_at=issued.not_after,
    )


@router.get(
    "/accounts/{id}/certificate",
    summary="An account's certificate state: the admin any account's, an account its own",
    response_model=AccountCertificate,
    status_code=200,
    responses=Problem.of(401, 403, 404),
)
async def get_account_cert(
    id: AccountRef, principal: Caller, session: Session
) -> AccountCertificate:
    account = await service.account_certificate(
        session, id, as_admin=principal.admin, as_account=principal.account_id
    )
    return AccountCertificate.of(account)
