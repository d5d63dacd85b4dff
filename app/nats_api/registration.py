"""SvcRegistration over NATS: Register creates a pending account and actors from a CSR;
Update answers the status and, once accepted, the signed certificate and the CA — and, with
a CSR from the authenticated account itself (csrOrigin AUTHACCOUNT), renews its certificate
after an administrator's reset-cert. (NATS needs a client certificate, so a brand-new actor
registers over HTTP: `POST /api/v1/registrations`, the twin of Register.)"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import nrpc
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.accounts import service as accounts_service
from app.core.exceptions import XbusError
from app.models.enums import AccountType
from app.nats_api.convert import actor_pb
from app.registrations import service as registrations
from app.registrations.service import ActorRequest
from app.state import AppState

log = logging.getLogger(__name__)
pb: Any = xbus_pb2

_TYPES = {1: AccountType.ACTOR, 3: AccountType.GATEWAY}
_KINDS = {0: "consumer", 1: "emitter", 2: "worker"}
_STATUS = {"pending": 0, "accepted": 1, "rejected": 2}
AUTHACCOUNT = 1


class RegistrationServer:
    def __init__(self, state: AppState) -> None:
        self.state = state

    async def _view(self, account_id: uuid.UUID) -> Any:
        async with self.state.db.session() as session:
            view = await registrations.registration_status(session, account_id, self.state.ca)
        return pb.Registration(
            id=view.id.bytes,
            registrationStatus=_STATUS[view.status.value],
            signedCertificate=view.certificate or "",
            serverCA=view.ca or "",
            actorList=[actor_pb(a) for a in view.actors],
        )

    async def Register(self, req: Any) -> Any:
        account_type = _TYPES.get(req.type)
        if account_type is None:
            raise nrpc.exc.ClientError("a registration is for an ACTOR or GATEWAY account")
        actors = [
            ActorRequest(a.name, _KINDS.get(a.kind, "consumer"), tuple(a.roles))
            for a in req.actorList
        ]
        try:
            async with self.state.db.session() as session:
                account = await registrations.register(
                    session, req.name, account_type, req.csr, actors
                )
                account_id = account.id
        except XbusError as exc:
            raise nrpc.exc.ClientError(exc.detail) from None
        return await self._view(account_id)

    async def Update(self, accountID: str, req: Any) -> Any:
        try:
            account_id = uuid.UUID(accountID)
        except ValueError:
            raise nrpc.exc.ClientError(f"account {accountID!r} is not a UUID") from None
        try:
            if req.csr:
                # A new CSR from the account itself: renew-cert (after reset-cert).
                assert self.state.ca is not None
                async with self.state.db.session() as session:
                    await accounts_service.renew_certificate(
                        session, self.state.ca, str(account_id), req.csr, as_account=account_id
                    )
                await self.state.accounts_changed()
            return await self._view(account_id)
        except XbusError as exc:
            raise nrpc.exc.ClientError(exc.detail) from None
