"""Who may connect to NATS and what each account may publish and subscribe: rendered from the
accounts into the nats-server authorization file, reloaded with SIGHUP.

A connection is mapped to its account by its client certificate (`verify_and_map`): the
subject `CN=<account name>,O=xbus`. An account may publish only on its own subjects and
subscribe only to its own inboxes (`_INBOX.<accountID>.>`) and its own actors' `actoragent`
subjects, so one account can neither read nor impersonate another."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.certs.pki import ORGANIZATION, SERVER_CLIENT_NAME
from app.models import Account, Actor
from app.models.enums import AccountStatus, ActorStatus

log = logging.getLogger(__name__)

PREFIX = "xbus.default"
# Inbox prefix of xbusd's requests to an actor (ActorAgent.Process): the actor may answer
# there and listen to the heartbeats there, and nowhere else.
SERVER_INBOX = "_INBOX.xbusd"


def server_inbox_prefix(actor_id: uuid.UUID | str) -> str:
    return f"{SERVER_INBOX}.{actor_id}."


@dataclass(frozen=True)
class AccountGrant:
    account_id: uuid.UUID
    name: str
    actor_ids: tuple[uuid.UUID, ...]


def permissions(grant: AccountGrant) -> dict[str, object]:
    account = grant.account_id
    publish = [
        f"{PREFIX}.client.whoami.{grant.name}",
        f"{PREFIX}.client.{account}.>",
        f"{PREFIX}.registration.update.{account}",
        f"{PREFIX}.sentinel.listactors",
        f"_INBOX.{account}.>",
    ]
    subscribe = [
        f"_INBOX.{account}.>",
        f"{PREFIX}.client.whoami.{grant.name}.reply",
        f"{PREFIX}.sentinel.survey",
    ]
    for actor in grant.actor_ids:
        publish += [
            f"{PREFIX}.director.*.{actor}",
            f"{PREFIX}.envelopestorage.retrieve.actor.{actor}",
            f"{PREFIX}.processstate.*.{actor}",
            f"{PREFIX}.broker.{actor}.output",
            f"{PREFIX}.sentinel.actorready.{actor}",
            f"{PREFIX}.sentinel.actorleaving.{actor}",
            f"{SERVER_INBOX}.{actor}.>",
        ]
        subscribe += [
            f"{PREFIX}.actoragent.{actor}.>",
            f"{SERVER_INBOX}.{actor}.>",
            f"{PREFIX}.processstate.envelopestates.{actor}.>",
        ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}


def render(grants: Iterable[AccountGrant]) -> str:
    users = [
        {
            "user": f"CN={SERVER_CLIENT_NAME},O={ORGANIZATION}",
            "permissions": {"publish": ">", "subscribe": ">"},
        }
    ]
    for grant in sorted(grants, key=lambda g: g.name):
        users.append(
            {"user": f"CN={grant.name},O={ORGANIZATION}", "permissions": permissions(grant)}
        )
    lines = [
        "# written by xbusd from its accounts; edits are overwritten",
        "authorization {",
        "  users = [",
    ]
    lines += [f"    {json.dumps(user)}" for user in users]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


async def load_grants(session: AsyncSession) -> list[AccountGrant]:
    """Enabled accounts holding a certificate, with their enabled actors."""
    accounts = (
        await session.execute(
            sa.select(Account.id, Account.name).where(
                Account.status == AccountStatus.ENABLED,
                Account.certificate.is_not(None),
            )
        )
    ).all()
    actors = (
        await session.execute(
            sa.select(Actor.account_id, Actor.id).where(
                Actor.status == ActorStatus.ENABLED,
                Actor.account_id.in_([a.id for a in accounts]),
            )
        )
    ).all()
    by_account: dict[uuid.UUID, list[uuid.UUID]] = {}
    for account_id, actor_id in actors:
        by_account.setdefault(account_id, []).append(actor_id)
    return [AccountGrant(a.id, a.name, tuple(sorted(by_account.get(a.id, [])))) for a in accounts]


class AuthFile:
    """Keeps the nats-server authorization file in step with the accounts."""

    def __init__(self, path: Path, pid_file: Path | None) -> None:
        self.path = path
        self.pid_file = pid_file
        self._digest: str | None = None

    def write(self, content: str) -> bool:
        digest = hashlib.sha256(content.encode()).hexdigest()
        if digest == self._digest:
            return False
        if self.path.exists() and self.path.read_text() == content:
            self._digest = digest
            return False
        # A temporary file of this process's own: the workers of one xbusd write it too.
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(content)
        os.replace(tmp, self.path)
        self._digest = digest
        self.reload()
        log.debug("nats authorization now:\n%s", content)
        return True

    def reload(self) -> None:
        if self.pid_file is None:
            return
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            log.warning("cannot read the nats-server pid from %s: auth not reloaded", self.pid_file)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
            log.info("nats-server authorization reloaded")
