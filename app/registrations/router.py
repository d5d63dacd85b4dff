from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path

from app.core.deps import Session, State
from app.core.errors import Problem
from app.registrations import service
from app.registrations.schemas import (
    RegistrationCreate,
    RegistrationCreated,
    RegistrationRead,
    RegistrationStatus,
)

router = APIRouter(prefix="/api/v1", tags=["registrations"])


@router.post(
    "/registrations",
    summary="Register: ask for a pending account and actors, with a CSR (no key needed)",
    description="An administrator then accepts (`POST /api/v1/accounts/{id}/accept`) or "
    "rejects the registration; poll `GET /api/v1/registrations/{id}` for the certificate.",
    response_model=RegistrationCreated,
    status_code=201,
    responses=Problem.of(409, 422, 429),
)
async def create_registration(body: RegistrationCreate, session: Session) -> RegistrationCreated:
    actors = [service.ActorRequest(a.name, a.kind, a.roles) for a in body.actors]
    account = await service.register(session, body.name, body.type, body.csr, actors)
    return RegistrationCreated(id=account.id, status=RegistrationStatus.PENDING)


@router.get(
    "/registrations/{id}",
    summary="A registration's status; once accepted, the signed certificate and the CA",
    response_model=RegistrationRead,
    response_model_exclude_none=True,
    status_code=200,
    responses=Problem.of(404, 422),
)
async def get_registration(
    id: Annotated[uuid.UUID, Path(description="The id answered by POST /registrations.")],
    session: Session,
    state: State,
) -> RegistrationRead:
    view = await service.registration_status(session, id, state.ca)
    return RegistrationRead(
        id=view.id, status=view.status, certificate=view.certificate, ca=view.ca
    )
