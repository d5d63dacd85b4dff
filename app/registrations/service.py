"""Registration rules, shared by the HTTP API and the NATS SvcRegistration service: the same
names as the accounts and actors APIs, a valid CSR, everything stored in one transaction or
nothing at all."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import repository as accounts_repo
from app.accounts.schemas import NAME_PATTERN, CsrOrigin
from app.accounts.service import checked_csr, csr_text, violated_constraint
from app.actors.schemas import ROLE_PATTERN, ROLES_MAX
from app.certs.pki import CertificateAuthority
from app.core.exceptions import Conflict, NotFound, Unprocessable, XbusError
from app.models import Account, Actor
from app.models.enums import AccountStatus, AccountType, ActorKind, ActorStatus
from app.registrations import repository as repo
from app.registrations.schemas import MAX_ACTORS, RegistrationStatus

# Registration is anonymous: past this many undecided registrations, new ones wait for an
# administrator to accept or reject some.
MAX_PENDING_REGISTRATIONS = 1000
REGISTRABLE_TYPES = (AccountType.ACTOR, AccountType.GATEWAY)

_NAME = re.compile(NAME_PATTERN)
_ROLE = re.compile(ROLE_PATTERN)


class TooManyRegistrations(XbusError):
    status, code, title = 429, "too-many-registrations", "Too many pending registrations"


@dataclass(frozen=True, slots=True)
class ActorRequest:
    """An actor a registration asks for."""

    name: str
    kind: ActorKind | str
    roles: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RegistrationView:
    """What `GET /registrations/{id}` and `SvcRegistration.Update` answer."""

    id: uuid.UUID
    status: RegistrationStatus
    certificate: str | None
    ca: str | None
    actors: list[Actor] = field(default_factory=list)


def _check_name(value: str, where: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise Unprocessable(
            f"{where}: {value!r} is not a valid name (letters, digits and `._@-`, starting "
            "with a letter or digit, 1-255 characters)"
        )
    try:
        uuid.UUID(value)
    except ValueError:
        return
    raise Unprocessable(f"{where}: must not be a UUID (names and ids share the same URLs)")


def _checked_actors(actors: Sequence[ActorRequest]) -> list[Actor]:
    if len(actors) > MAX_ACTORS:
        raise Unprocessable(f"actors: at most {MAX_ACTORS} actors per registration")
    built = []
    for index, wanted in enumerate(actors):
        where = f"actors[{index}]"
        _check_name(wanted.name, f"{where}.name")
        try:
            kind = ActorKind(wanted.kind)
        except ValueError:
            kinds = ", ".join(k.value for k in ActorKind)
            raise Unprocessable(f"{where}.kind: {wanted.kind!r} is not one of {kinds}") from None
        roles = list(wanted.roles)
        if len(roles) > ROLES_MAX:
            raise Unprocessable(f"{where}.roles: at most {ROLES_MAX} roles")
        for role in roles:
            if not isinstance(role, str) or not _ROLE.fullmatch(role):
                raise Unprocessable(f"{where}.roles: {role!r} is not a valid role")
        repeated = sorted(r for r, n in Counter(roles).items() if n > 1)
        if repeated:
            raise Unprocessable(f"{where}.roles: repeated {', '.join(repeated)}")
        built.append(Actor(name=wanted.name, kind=kind, status=ActorStatus.PENDING, roles=roles))
    repeated = sorted(n for n, count in Counter(a.name for a in built).items() if count > 1)
    if repeated:
        raise Unprocessable(f"actors: each actor name once; repeated: {', '.join(repeated)}")
    return built


async def register(
    session: AsyncSession,
    name: str,
    type: AccountType | str,
    csr: str,
    actors: Sequence[ActorRequest],
) -> Account:
    """Create a pending account (its CSR stored, origin anonymous) and its pending actors.
    `account.actors` holds them. Raises Unprocessable (422: names, kinds, roles, CSR),
    Conflict (409: an account or actor name taken), TooManyRegistrations (429). Nothing is
    written unless everything is valid; the caller commits."""
    _check_name(name, "name")
    try:
        account_type = AccountType(type)
    except ValueError:
        account_type = None
    if account_type not in REGISTRABLE_TYPES:
        raise Unprocessable(f"type: {str(type)!r} cannot register; use 'actor' or 'gateway'")
    built = _checked_actors(actors)
    if account_type == AccountType.ACTOR and not built:
        raise Unprocessable("actors: an actor account registers at least one actor")
    stored_csr = csr_text(checked_csr(csr))

    if await repo.count_pending_registrations(session) >= MAX_PENDING_REGISTRATIONS:
        raise TooManyRegistrations(
            f"{MAX_PENDING_REGISTRATIONS} registrations are waiting for an administrator; "
            "try again later"
        )
    if await accounts_repo.name_taken(session, name):
        raise Conflict(f"an account named {name!r} already exists")
    taken = await repo.taken_actor_names(session, [a.name for a in built])
    if taken:
        noun = "an actor" if len(taken) == 1 else "actors"
        raise Conflict(f"{noun} named {', '.join(map(repr, taken))} already exist(s)")

    account = Account(
        name=name,
        type=account_type,
        status=AccountStatus.PENDING,
        is_admin=False,
        csr=stored_csr,
        csr_origin=CsrOrigin.ANONYMOUS.value,
        actors=built,
    )
    try:
        await repo.add_registration(session, account)
    except IntegrityError as exc:
        # A concurrent request took a name between the checks and this write.
        if violated_constraint(exc) == "uq_accounts_name":
            raise Conflict(f"an account named {name!r} already exists") from exc
        raise Conflict("an account or actor name was taken meanwhile; try again") from exc
    return account


def _status(account: Account) -> RegistrationStatus:
    if account.status == AccountStatus.REJECTED:
        return RegistrationStatus.REJECTED
    if account.certificate and account.status in (AccountStatus.ENABLED, AccountStatus.DISABLED):
        return RegistrationStatus.ACCEPTED
    return RegistrationStatus.PENDING


async def registration_status(
    session: AsyncSession, account_id: uuid.UUID | str, ca: CertificateAuthority | None
) -> RegistrationView:
    """Where a registration stands; once accepted, the certificate and the CA (PEM). Only
    accounts that registered are found (NotFound otherwise)."""
    ident = account_id if isinstance(account_id, uuid.UUID) else accounts_repo.as_uuid(account_id)
    account = await repo.find_registration(session, ident) if ident is not None else None
    if account is None:
        raise NotFound(f"no registration {str(account_id)!r}")
    status = _status(account)
    accepted = status == RegistrationStatus.ACCEPTED
    return RegistrationView(
        id=account.id,
        status=status,
        certificate=account.certificate if accepted else None,
        ca=ca.pem if accepted and ca is not None else None,
        actors=await repo.account_actors(session, account.id),
    )
