from __future__ import annotations

from fastapi import APIRouter

from app.accounts.schemas import AccountBrief, WhoAmI
from app.core.deps import AnyKey
from app.core.errors import Problem

router = APIRouter(prefix="/api/v1", tags=["accounts"])


@router.get(
    "/whoami",
    summary="The account behind the presented API key",
    response_model=WhoAmI,
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
