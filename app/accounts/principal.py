"""Who a call acts for: the account its API key (or session token) belongs to. The HTTP
layer (`app.core.deps`) and the NATS services find it; the services' access rules read it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.models.enums import AccountStatus, AccountType


@dataclass(frozen=True, slots=True)
class Principal:
    account_id: uuid.UUID
    name: str
    type: AccountType
    status: AccountStatus
    admin: bool
