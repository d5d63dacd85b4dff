"""The service functions the NATS SvcRegistration handlers call: the same rules without
pydantic in front, one transaction, and the status view Update answers."""

from __future__ import annotations

import asyncpg
import pytest
from fastapi import FastAPI

from app.accounts import service as accounts_service
from app.core.exceptions import Conflict, NotFound, Unprocessable
from app.models.enums import AccountStatus, AccountType, ActorKind, ActorStatus
from app.registrations import service
from app.registrations.schemas import RegistrationStatus
from app.state import AppState
from tests.conftest import new_name, row_counts
from tests.registrations.helpers import ca_of, new_csr


def _state(app: FastAPI) -> AppState:
    state: AppState = app.state.xbus
    return state


async def test_register_then_status_through_the_service(app: FastAPI) -> None:
    state = _state(app)
    name = new_name("nats")
    async with state.db.session() as session:
        account = await service.register(
            session,
            name,
            AccountType.ACTOR,
            new_csr(name)[1],
            [
                service.ActorRequest(f"{name}.a", ActorKind.EMITTER),
                service.ActorRequest(f"{name}.b", "consumer", ["sink"]),
            ],
        )
        assert account.status == AccountStatus.PENDING
        assert [a.name for a in account.actors] == [f"{name}.a", f"{name}.b"]
        assert {a.status for a in account.actors} == {ActorStatus.PENDING}
        account_id = account.id

    async with state.db.session() as session:
        view = await service.registration_status(session, account_id, state.ca)
    assert view.status == RegistrationStatus.PENDING
    assert view.certificate is None
    assert view.ca is None
    assert sorted(a.name for a in view.actors) == [f"{name}.a", f"{name}.b"]

    async with state.db.session() as session:
        await accounts_service.accept_registration(session, ca_of(app), str(account_id), 30)
    async with state.db.session() as session:
        view = await service.registration_status(session, str(account_id), state.ca)
    assert view.status == RegistrationStatus.ACCEPTED
    assert view.ca == ca_of(app).pem
    assert view.certificate is not None
    ca_of(app).verify(view.certificate)
    assert {a.status for a in view.actors} == {ActorStatus.ENABLED}


@pytest.mark.parametrize(
    ("name", "type_", "actors", "detail"),
    [
        ("bad name!", "actor", [("ok-actor", "emitter")], "name"),
        ("", "actor", [("ok-actor", "emitter")], "name"),
        ("ok-name", "user", [("ok-actor", "emitter")], "type"),
        ("ok-name", "nothing", [("ok-actor", "emitter")], "type"),
        ("ok-name", "actor", [], "at least one"),
        ("ok-name", "actor", [("ok-actor", "printer")], "kind"),
        ("ok-name", "actor", [("bad actor", "emitter")], "actors[0].name"),
        ("ok-name", "actor", [("x", "emitter")] * 2, "repeated"),
        ("ok-name", "actor", [(f"a{i}", "emitter") for i in range(101)], "at most 100"),
    ],
)
async def test_service_checks_what_pydantic_checks_over_http(
    app: FastAPI,
    db: asyncpg.Connection,
    name: str,
    type_: str,
    actors: list[tuple[str, str]],
    detail: str,
) -> None:
    before = await row_counts(db)
    wanted = [service.ActorRequest(n, k) for n, k in actors]
    with pytest.raises(Unprocessable) as caught:
        async with _state(app).db.session() as session:
            await service.register(session, name, type_, new_csr("x")[1], wanted)
    assert detail.lower() in caught.value.detail.lower()
    assert await row_counts(db) == before


async def test_service_refuses_a_bad_csr_and_taken_names(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    state = _state(app)
    name = new_name("nats")
    actors = [service.ActorRequest(f"{name}.a", "worker")]
    with pytest.raises(Unprocessable):
        async with state.db.session() as session:
            await service.register(session, name, "actor", "-----BEGIN junk", actors)
    async with state.db.session() as session:
        await service.register(session, name, "actor", new_csr(name)[1], actors)
    before = await row_counts(db)
    with pytest.raises(Conflict):
        async with state.db.session() as session:
            await service.register(session, name, "gateway", new_csr(name)[1], [])
    with pytest.raises(Conflict):
        async with state.db.session() as session:
            await service.register(session, new_name("other"), "actor", new_csr(name)[1], actors)
    assert await row_counts(db) == before


async def test_status_of_an_unknown_or_unregistered_account_is_not_found(app: FastAPI) -> None:
    async with _state(app).db.session() as session:
        with pytest.raises(NotFound):
            await service.registration_status(session, "nope", None)
        with pytest.raises(NotFound):
            await service.registration_status(session, "00000000-0000-4000-8000-000000000000", None)
