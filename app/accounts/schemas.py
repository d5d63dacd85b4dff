from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

from app.models import Account
from app.models.enums import AccountStatus, AccountType

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,254}$"
DESCRIPTION_MAX_LENGTH = 4096


def storable_text(value: str) -> str:
    """PostgreSQL text holds neither NUL characters nor lone surrogates: refuse them here
    (422) rather than fail in the database (500)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def not_a_uuid(value: str) -> str:
    """Accounts and actors are reached by id or by name: a name that reads as a UUID could
    not be told from an id."""
    try:
        uuid.UUID(value)
    except ValueError:
        return value
    raise ValueError("must not be a UUID (names and ids share the same URLs)")


Name = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        description="Letters, digits and `._@-`, starting with a letter or digit; 1-255; "
        "not a UUID.",
        examples=["billing-gateway"],
    ),
    AfterValidator(not_a_uuid),
]
Description = Annotated[
    str, Field(max_length=DESCRIPTION_MAX_LENGTH), AfterValidator(storable_text)
]
# `rejected` is where a refused registration ends; an operator sets the other three.
SettableAccountStatus = Literal["pending", "enabled", "disabled"]


class PatchModel(BaseModel):
    """A PATCH body: every field optional, unknown fields refused, and `null` refused for
    fields that have no null value (leave the field out to keep it)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            nulls = sorted(k for k, v in data.items() if v is None and k in cls.model_fields)
            if nulls:
                raise ValueError(
                    f"{', '.join(nulls)}: may not be null (leave a field out to keep it)"
                )
        return data


class AccountBrief(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    type: AccountType
    status: AccountStatus


class WhoAmI(BaseModel):
    account: AccountBrief
    admin: bool


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    type: AccountType
    description: Description = ""
    status: SettableAccountStatus = "enabled"
    api_key_expires_at: AwareDatetime | None = Field(
        None, description="When the API key stops working (RFC 3339, in the future)."
    )


class AccountUpdate(PatchModel):
    name: Name | None = None
    description: Description | None = None
    status: SettableAccountStatus | None = None


class AccountRead(BaseModel):
    id: uuid.UUID
    name: str
    type: AccountType
    status: AccountStatus
    description: str
    admin: bool = Field(description="The bootstrap administrator.")
    api_key_expires_at: datetime | None
    has_api_key: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, account: Account) -> AccountRead:
        return cls(
            id=account.id,
            name=account.name,
            type=account.type,
            status=account.status,
            description=account.description,
            admin=account.is_admin,
            api_key_expires_at=account.api_key_expires_at,
            has_api_key=account.api_key_hash is not None,
            created_at=account.created_at,
            updated_at=account.updated_at,
        )


class AccountCreated(AccountRead):
    api_key: str = Field(description="The account's API key. It is shown this once only.")

    @classmethod
    def with_key(cls, account: Account, api_key: str) -> AccountCreated:
        return cls(**AccountRead.of(account).model_dump(), api_key=api_key)


class AccountPage(BaseModel):
    items: list[AccountRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_at: AwareDatetime | None = Field(
        None, description="When the new key stops working (RFC 3339, in the future)."
    )


class ApiKeyRead(BaseModel):
    api_key: str = Field(description="The new API key, shown this once only.")
    expires_at: datetime | None
