from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
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


# --- certificates (NATS accounts) --------------------------------------------------------

CSR_MAX_LENGTH = 16 * 1024
CERT_DAYS_MAX = 3650


class CsrOrigin(StrEnum):
    """Who sent the account's CSR (`Account.CSROrigin` of the protocol): a registration
    (anonymous) or the account itself, renewing its certificate."""

    ANONYMOUS = "anonymous"
    AUTHACCOUNT = "authaccount"


CertExpireDays = Annotated[
    int,
    Field(
        ge=1,
        le=CERT_DAYS_MAX,
        description="Lifetime of the signed certificate, in days (default 365).",
    ),
]
CsrPem = Annotated[
    str,
    Field(
        min_length=1,
        max_length=CSR_MAX_LENGTH,
        description="A PEM certificate signing request (`-----BEGIN CERTIFICATE REQUEST-----`).",
    ),
]


class AcceptRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cert_expire_days: CertExpireDays | None = None


class RenewCertificate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    csr: CsrPem
    cert_expire_days: CertExpireDays | None = Field(
        None,
        description="Lifetime in days (default 365). An account renewing its own certificate "
        "may ask for at most the default; the admin for up to 3650.",
    )
    signature: str | None = Field(
        None,
        max_length=4096,
        description="Without an API key: base64 signature of the `csr` text (UTF-8) made with "
        "the private key of the account's current, still valid certificate (ECDSA or RSA "
        "PKCS#1 v1.5 with SHA-256, or Ed25519). It proves the caller is the account.",
    )


class AccountCertificate(BaseModel):
    """An account's certificate state."""

    account_id: uuid.UUID
    account_name: str
    status: AccountStatus
    certificate: str | None = Field(description="The signed certificate (PEM), if any.")
    fingerprint: str | None = Field(description="SHA-256 of the certificate (DER), hex.")
    expires_at: datetime | None
    cert_reset: bool = Field(
        description="reset-cert was applied: the account may (and must) renew its certificate."
    )
    csr_origin: CsrOrigin | None = Field(
        description="Who sent the CSR behind the certificate: `anonymous` (a registration) or "
        "`authaccount` (a renewal)."
    )

    @classmethod
    def of(cls, account: Account) -> AccountCertificate:
        return cls(
            account_id=account.id,
            account_name=account.name,
            status=account.status,
            certificate=account.certificate,
            fingerprint=account.cert_fingerprint,
            expires_at=account.cert_not_after,
            cert_reset=account.cert_reset,
            csr_origin=CsrOrigin(account.csr_origin) if account.csr_origin else None,
        )


class CertificateRenewed(BaseModel):
    certificate: str = Field(description="The new certificate (PEM).")
    ca: str = Field(description="The bus CA certificate (PEM).")
    fingerprint: str
    expires_at: datetime
