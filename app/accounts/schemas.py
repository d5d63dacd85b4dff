from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from app.models.enums import AccountStatus, AccountType


class AccountBrief(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    type: AccountType
    status: AccountStatus


class WhoAmI(BaseModel):
    account: AccountBrief
    admin: bool


class ApiKeyRead(BaseModel):
    api_key: str
    expires_at: datetime | None
