"""Account rules: unique names, keys shown once, the bootstrap admin kept usable, deleting
an account's actors only when asked to; and certificates: accepting or rejecting a
registration, reset-cert and renew-cert. Free of FastAPI: the NATS front end calls these too."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import keys
from app.accounts import repository as repo
from app.accounts.schemas import CSR_MAX_LENGTH, AccountCreate, AccountUpdate, CsrOrigin
from app.certs.pki import CertificateAuthority, CertificateError, IssuedCertificate, load_csr
from app.config import Settings
from app.core.exceptions import Conflict, Forbidden, NotFound, Unauthorized, Unprocessable
from app.models import Account
from app.models.enums import AccountStatus, AccountType, ActorStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_limit(limit: int | None, settings: Settings) -> int:
    """The page size asked for, or the default, never more than the configured maximum."""
    return min(limit or settings.page_size_default, settings.page_size_max)


def make_page(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, uuid.UUID]]
) -> Page[T]:
    """`rows` holds up to `limit + 1` rows (see repository.keyset)."""
    items = list(rows[:limit])
    if len(rows) > limit and items:
        return Page(items, repo.page_cursor(*position(items[-1])))
    return Page(items, None)


def violated_constraint(exc: IntegrityError) -> str:
    """The name of the constraint a failed statement broke ("" when the driver hides it)."""
    cause = getattr(exc.orig, "__cause__", None)
    return str(getattr(cause, "constraint_name", None) or "")


def check_future(value: datetime | None, field: str) -> None:
    if value is not None and value <= datetime.now(UTC):
        raise Unprocessable(f"{field} must be in the future (got {value.isoformat()})")


async def load_account(session: AsyncSession, ref: str, *, for_update: bool = False) -> Account:
    account = await repo.find_account(session, ref, for_update=for_update)
    if account is None:
        raise NotFound(f"no account {ref!r}")
    return account


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"an account named {name!r} already exists")


async def _flush_named(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        # A concurrent request took the name between our check and our write.
        if violated_constraint(exc) in ("", "uq_accounts_name"):
            raise _name_conflict(name) from exc
        raise Conflict("a concurrent change conflicts with this one; try again") from exc


async def create_account(session: AsyncSession, data: AccountCreate) -> tuple[Account, str]:
    """The new account and its API key (which only its digest remembers)."""
    check_future(data.api_key_expires_at, "api_key_expires_at")
    if await repo.name_taken(session, data.name):
        raise _name_conflict(data.name)
    key = keys.generate_key()
    digest = keys.digest(key)
    account = Account(
        name=data.name,
        type=AccountType(data.type),
        status=AccountStatus(data.status),
        description=data.description,
        is_admin=False,
        api_key_lookup=digest.lookup,
        api_key_hash=digest.hash,
        api_key_expires_at=data.api_key_expires_at,
    )
    session.add(account)
    await _flush_named(session, data.name)
    return account, key


async def list_accounts(
    session: AsyncSession,
    settings: Settings,
    *,
    type: AccountType | None = None,
    status: AccountStatus | None = None,
    name: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[Account]:
    size = page_limit(limit, settings)
    if name is not None and not repo.storable_ref(name):
        return Page([], None)
    rows = await repo.list_accounts(
        session, type=type, status=status, name=name, cursor=cursor, limit=size
    )
    return make_page(rows, size, lambda a: (a.created_at, a.id))


async def update_account(session: AsyncSession, ref: str, data: AccountUpdate) -> Account:
    account = await load_account(session, ref, for_update=True)
    fields = data.model_fields_set
    new_name = data.name if "name" in fields and data.name != account.name else None
    if account.is_admin:
        if new_name is not None:
            raise Conflict("the bootstrap admin account cannot be renamed")
        if data.status is not None and data.status != "enabled":
            raise Conflict(f"the bootstrap admin account cannot be made {data.status}")
    if (
        data.status == "enabled"
        and account.status != AccountStatus.ENABLED
        and account.csr is not None
        and account.certificate is None
    ):
        raise Conflict(
            f"account {account.name!r} registered with a CSR: accept it with "
            f"POST /api/v1/accounts/{account.id}/accept, which signs its certificate"
        )
    if new_name is not None:
        if await repo.name_taken(session, new_name):
            raise _name_conflict(new_name)
        account.name = new_name
    if data.description is not None:
        account.description = data.description
    if data.status is not None:
        account.status = AccountStatus(data.status)
    await _flush_named(session, account.name)
    return account


async def delete_account(session: AsyncSession, ref: str, *, confirm: bool) -> None:
    # The row lock also holds back actors being added to the account meanwhile (their
    # foreign key check needs a share lock on it).
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        raise Conflict("the bootstrap admin account cannot be deleted")
    actors = await repo.count_actors(session, account.id)
    if actors and not confirm:
        noun = "actor" if actors == 1 else "actors"
        raise Conflict(
            f"account {account.name!r} has {actors} {noun}; deleting the account deletes "
            f"{'it' if actors == 1 else 'them'} too: repeat with ?confirm=true",
            extra={"actors": actors},
        )
    await repo.delete_account(session, account.id)


async def new_api_key(
    session: AsyncSession, ref: str, expires_at: datetime | None
) -> tuple[str, datetime | None]:
    """Replace the account's API key: the old one stops working when this commits."""
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        # ensure_admin would put the configured key back at the next start.
        raise Conflict(
            "the bootstrap admin's key comes from XBUS_ADMIN_API_KEY or <data-dir>/admin.key; "
            "change it there and restart"
        )
    check_future(expires_at, "expires_at")
    key = keys.generate_key()
    digest = keys.digest(key)
    account.api_key_lookup = digest.lookup
    account.api_key_hash = digest.hash
    account.api_key_expires_at = expires_at
    try:
        await session.flush()
    except IntegrityError as exc:  # a lookup prefix collision: astronomically unlikely
        raise Conflict("could not store a new key; try again") from exc
    return key, expires_at


# --- certificates ---------------------------------------------------------------------------

DEFAULT_CERT_DAYS = 365
RESET_REQUIRED = (
    "reset-cert was not applied to this account; ask an administrator to run reset-cert first"
)
_CURVES = frozenset({"secp256r1", "secp384r1", "secp521r1"})


def checked_csr(pem: str) -> x509.CertificateSigningRequest:
    """A CSR the CA will sign: PEM, self-signature valid, a key NATS clients can use.
    Unprocessable (422) otherwise."""
    if not pem.strip():
        raise Unprocessable("csr: a PEM certificate signing request is required")
    if len(pem) > CSR_MAX_LENGTH:
        raise Unprocessable(f"csr: longer than {CSR_MAX_LENGTH} characters")
    try:
        csr = load_csr(pem)
        key = csr.public_key()
    except (CertificateError, UnsupportedAlgorithm, ValueError) as exc:
        raise Unprocessable(f"csr: {exc}") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise Unprocessable(f"csr: an RSA key needs 2048 bits at least, not {key.key_size}")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVES:
            raise Unprocessable(f"csr: curve {key.curve.name} is not one of P-256, P-384, P-521")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise Unprocessable("csr: the key must be RSA, ECDSA (P-256/384/521) or Ed25519")
    return csr


def csr_text(csr: x509.CertificateSigningRequest) -> str:
    """The CSR as stored: re-encoded, so no text around the PEM block reaches the database."""
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _store_certificate(
    account: Account, csr: str, origin: CsrOrigin, issued: IssuedCertificate
) -> None:
    account.csr = csr
    account.csr_origin = origin.value
    account.certificate = issued.pem
    account.cert_fingerprint = issued.fingerprint
    account.cert_not_after = issued.not_after
    account.cert_reset = False


def _sign(ca: CertificateAuthority, csr: str, account: Account, days: int) -> IssuedCertificate:
    try:
        return ca.sign_csr(csr, account.name, days)
    except CertificateError as exc:
        raise Unprocessable(str(exc)) from None


async def _decidable(session: AsyncSession, ref: str, action: str) -> Account:
    """A pending account, locked, that an admin may accept or reject."""
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        raise Conflict(f"the bootstrap admin account cannot be {action}ed")
    if account.status == AccountStatus.REJECTED:
        raise Conflict(
            f"account {account.name!r} was rejected; delete it and let it register again"
        )
    if account.status != AccountStatus.PENDING:
        state = "accepted" if account.certificate else account.status.value
        raise Conflict(
            f"account {account.name!r} is {state}; only a pending account can be {action}ed"
        )
    return account


async def accept_registration(
    session: AsyncSession, ca: CertificateAuthority, ref: str, days: int | None = None
) -> Account:
    """Sign the pending account's CSR (CN = the account name), then enable the account and
    its pending actors."""
    account = await _decidable(session, ref, "accept")
    if not account.csr:
        raise Conflict(
            f"account {account.name!r} has no CSR to sign (it did not register); enable it "
            f"with PATCH /api/v1/accounts/{account.id} instead"
        )
    issued = _sign(ca, account.csr, account, days or DEFAULT_CERT_DAYS)
    _store_certificate(account, account.csr, CsrOrigin(account.csr_origin or "anonymous"), issued)
    account.status = AccountStatus.ENABLED
    await repo.set_pending_actors_status(session, account.id, ActorStatus.ENABLED)
    await session.flush()
    return account


async def reject_registration(session: AsyncSession, ref: str) -> Account:
    """Refuse a pending account: it and its pending actors become `rejected`."""
    account = await _decidable(session, ref, "reject")
    account.status = AccountStatus.REJECTED
    await repo.set_pending_actors_status(session, account.id, ActorStatus.REJECTED)
    await session.flush()
    return account


async def reset_certificate(session: AsyncSession, ref: str) -> Account:
    """reset-cert: allow (and require) the account to renew its certificate with a new CSR.
    The current certificate stays as it is until the renewal replaces it."""
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        raise Conflict("the bootstrap admin account has no certificate")
    account.cert_reset = True
    await session.flush()
    return account


def _signed_by_certificate(
    ca: CertificateAuthority, account: Account, data: bytes, signature: str
) -> bool:
    """Whether `signature` (base64) over `data` was made with the key of the account's
    current certificate, itself issued by this CA and still valid."""
    if not account.certificate:
        return False
    try:
        raw = base64.b64decode(signature, validate=True)
        cert = ca.verify(account.certificate)
    except (binascii.Error, ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    if cert.not_valid_after_utc <= datetime.now(UTC):
        return False
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(raw, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(raw, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(raw, data)
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


async def renew_certificate(
    session: AsyncSession,
    ca: CertificateAuthority,
    ref: str,
    csr: str,
    *,
    days: int | None = None,
    as_admin: bool = False,
    as_account: uuid.UUID | None = None,
    signature: str | None = None,
) -> tuple[Account, IssuedCertificate]:
    """renew-cert: sign a new CSR for an account that reset-cert was applied to.

    The caller is the admin (`as_admin`), the account itself (`as_account`: its API key, or
    its NATS connection), or whoever holds the key of the account's current certificate
    (`signature` over the CSR text). A caller with no key gets the same 401 for an account
    that does not exist as for a signature that does not match: no account names leak."""
    unsigned = Unauthorized(
        "renewing a certificate needs the account's API key, the admin key, or a "
        "signature of the CSR made with the account's current certificate"
    )
    missigned = Unauthorized(
        "the signature was not made with the key of the account's current, valid certificate"
    )
    try:
        account = await load_account(session, ref, for_update=True)
    except NotFound:
        if as_admin or as_account is not None:
            raise
        raise (unsigned if signature is None else missigned) from None
    if not (as_admin or as_account == account.id):
        if as_account is not None:
            raise NotFound(f"no account {ref!r}")  # another account's: as if it did not exist
        if signature is None:
            raise unsigned
        if not _signed_by_certificate(ca, account, csr.encode("utf-8"), signature):
            raise missigned
    if days is not None and days > DEFAULT_CERT_DAYS and not as_admin:
        raise Forbidden(f"only the admin may ask for more than {DEFAULT_CERT_DAYS} days")
    if account.is_admin:
        raise Conflict("the bootstrap admin account has no certificate")
    if account.status != AccountStatus.ENABLED:
        raise Conflict(
            f"account {account.name!r} is {account.status.value}; only an enabled account "
            "renews its certificate"
        )
    if not account.cert_reset:
        raise Conflict(RESET_REQUIRED)
    stored = csr_text(checked_csr(csr))
    issued = _sign(ca, stored, account, days or DEFAULT_CERT_DAYS)
    _store_certificate(account, stored, CsrOrigin.AUTHACCOUNT, issued)
    await session.flush()
    return account, issued


async def account_certificate(
    session: AsyncSession, ref: str, *, as_admin: bool, as_account: uuid.UUID | None
) -> Account:
    """The account, for reading its certificate state: the admin any, an account its own."""
    account = await repo.find_account(session, ref)
    if account is None or not (as_admin or account.id == as_account):
        raise NotFound(f"no account {ref!r}")
    return account
