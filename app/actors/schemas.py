from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.accounts.schemas import Description, Name, PatchModel
from app.actors.config import masked
from app.models import Actor
from app.models.enums import ActorKind, ActorStatus

ROLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$"
ROLES_MAX = 256


def unique_roles(roles: list[str]) -> list[str]:
    repeated = sorted(role for role, count in Counter(roles).items() if count > 1)
    if repeated:
        raise ValueError(f"roles must be unique; repeated: {', '.join(repeated)}")
    return roles


Role = Annotated[str, Field(pattern=ROLE_PATTERN)]
Roles = Annotated[
    list[Role],
    Field(
        max_length=ROLES_MAX,
        description="Roles the actor plays (pipelines address actors by role); unique.",
    ),
    AfterValidator(unique_roles),
]
Config = Annotated[
    dict[str, str],
    Field(
        description="Config entries: keys `^[a-z0-9][a-z0-9._-]{0,127}$`, string values up to "
        "64 KiB; `http.webhook.*` keys are webhook settings. Values of keys ending in "
        "`secret` read back as `********`; writing `********` back keeps the stored secret.",
        examples=[{"http.webhook.url": "https://receiver.example/xbus"}],
    ),
]


class ActorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    kind: ActorKind
    account_id: str = Field(
        min_length=1, description="The owning account: its id (UUID) or its name."
    )
    roles: Roles = Field(default_factory=list)
    config: Config = Field(default_factory=dict)
    status: ActorStatus = ActorStatus.ENABLED
    description: Description = ""


class ActorUpdate(PatchModel):
    """An account may change `description` and `config` of its own actors; the other fields
    need the admin. `config` replaces the whole map."""

    name: Name | None = None
    description: Description | None = None
    kind: ActorKind | None = None
    status: ActorStatus | None = None
    roles: Roles | None = None
    config: Config | None = None


class ConfigValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(description="The entry's value (a string of at most 64 KiB).")


class ActorRead(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    kind: ActorKind
    status: ActorStatus
    account_id: uuid.UUID
    account_name: str
    roles: list[str]
    config: dict[str, str] = Field(description="Secret values (keys ending in `secret`) masked.")
    online: bool
    unresponsive: bool
    last_seen: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, actor: Actor, account_name: str) -> ActorRead:
        return cls(
            id=actor.id,
            name=actor.name,
            description=actor.description,
            kind=actor.kind,
            status=actor.status,
            account_id=actor.account_id,
            account_name=account_name,
            roles=list(actor.roles),
            config=masked(actor.config),
            online=actor.online,
            unresponsive=actor.unresponsive,
            last_seen=actor.last_seen,
            created_at=actor.created_at,
            updated_at=actor.updated_at,
        )


class ActorPage(BaseModel):
    items: list[ActorRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )
