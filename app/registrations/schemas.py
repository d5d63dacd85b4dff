from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.accounts.schemas import CsrPem, Name
from app.actors.schemas import Roles
from app.models.enums import ActorKind

MAX_ACTORS = 100


class RegistrationStatus(StrEnum):
    """`Registration.Status` of the protocol."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class RegistrationActor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: ActorKind
    roles: Roles = Field(default_factory=list)


class RegistrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="The account name asked for (the certificate's CN).")
    type: Literal["actor", "gateway"]
    csr: CsrPem
    actors: list[RegistrationActor] = Field(
        default_factory=list,
        max_length=MAX_ACTORS,
        description=f"The actors wanted (names unique on the bus); at least one for an "
        f"`actor` account, at most {MAX_ACTORS}.",
    )


class RegistrationCreated(BaseModel):
    id: uuid.UUID = Field(description="The new account's id: poll GET /api/v1/registrations/{id}.")
    status: RegistrationStatus


class RegistrationRead(BaseModel):
    id: uuid.UUID
    status: RegistrationStatus
    certificate: str | None = Field(
        None, description="The signed certificate (PEM), once accepted."
    )
    ca: str | None = Field(None, description="The bus CA certificate (PEM), once accepted.")
