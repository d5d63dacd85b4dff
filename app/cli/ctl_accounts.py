"""xbusctl account and actor commands."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from app.cli.ctl_client import Client, CtlError, Output, confirm, ctl, key_values, parse_when

account = typer.Typer(help="Accounts: who connects (actors, users, gateways) and their keys.")
actor = typer.Typer(help="Actors: the named endpoints of accounts.")
actor_config = typer.Typer(help="An actor's config entries (such as http.webhook.url).")
actor.add_typer(actor_config, name="config")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
AccountArg = Annotated[str, typer.Argument(help="The account: id or name.")]
ActorArg = Annotated[str, typer.Argument(help="The actor: id or name.")]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many.")]
AllPagesOpt = Annotated[bool, typer.Option("--all", help="Every match, page after page.")]
ExpiresAtOpt = Annotated[
    str | None,
    typer.Option("--expires-at", help="The key stops working then (date/time, UTC)."),
]
ExpiresInOpt = Annotated[
    int | None, typer.Option("--expires-in", min=1, help="The key stops working in N days.")
]

ACCOUNT_COLUMNS = [
    ("NAME", lambda a: a["name"]),
    ("ID", lambda a: a["id"]),
    ("TYPE", lambda a: a["type"]),
    ("STATUS", lambda a: a["status"]),
    ("ADMIN", lambda a: a.get("admin")),
    ("KEY EXPIRES", lambda a: a.get("api_key_expires_at")),
    ("CREATED", lambda a: a["created_at"]),
]


def _print(out: Output, obj: Any, pairs: list[tuple[str, Any]]) -> None:
    if out.json:
        out.print_json(obj)
    else:
        out.fields(pairs)


def _account_fields(a: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("name", a["name"]),
        ("id", a["id"]),
        ("type", a["type"]),
        ("status", a["status"]),
        ("description", a.get("description") or None),
        ("admin", a.get("admin")),
        ("has api key", a.get("has_api_key")),
        ("key expires", a.get("api_key_expires_at")),
        ("created", a.get("created_at")),
    ]


@account.command("list")
def account_list(
    ctx: typer.Context,
    type_: Annotated[str | None, typer.Option("--type", help="actor, user or gateway.")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, enabled, disabled, rejected.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only this name.")] = None,
    limit: LimitOpt = 100,
    all_pages: AllPagesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """List accounts.

    Example: xbusctl account list --status pending
    """
    c = ctl(ctx, json_output)
    params = {"type": type_, "status": status, "name": name}
    items = list(c.client.pages("/api/v1/accounts", params, None if all_pages else limit))
    if c.output.json:
        c.output.print_json(items)
    else:
        c.output.table(ACCOUNT_COLUMNS, items)


@account.command("get")
def account_get(ctx: typer.Context, ref: AccountArg, json_output: JsonOpt = False) -> None:
    """Show an account.

    Example: xbusctl account get billing-gateway
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/accounts/{ref}")
    _print(c.output, found, _account_fields(found))


@account.command("create")
def account_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The account name.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="actor, user or gateway.")],
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    status: Annotated[str, typer.Option("--status", help="pending, enabled, disabled.")] = (
        "enabled"
    ),
    expires_at: ExpiresAtOpt = None,
    expires_in: ExpiresInOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Create an account; its API key is printed this once.

    Example: xbusctl account create billing-gateway --type gateway
    """
    c = ctl(ctx, json_output)
    body: dict[str, Any] = {"name": name, "type": type_, "description": description}
    body["status"] = status
    expiry = _expiry(expires_at, expires_in)
    if expiry:
        body["api_key_expires_at"] = expiry
    created = c.client.call("POST", "/api/v1/accounts", body=body)
    _print(c.output, created, [*_account_fields(created), ("api key", created["api_key"])])
    c.output.note("The API key is shown this once: keep it now.")


def _expiry(expires_at: str | None, expires_in: int | None) -> str | None:
    if expires_at and expires_in:
        raise typer.BadParameter("give --expires-at or --expires-in, not both")
    if expires_in:
        return (datetime.now(UTC) + timedelta(days=expires_in)).isoformat()
    return parse_when(expires_at) if expires_at else None


@account.command("accept")
def account_accept(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Accounts (id or name) to accept.")],
    cert_expire_days: Annotated[
        int | None, typer.Option("--cert-expire-days", min=1, help="Certificate lifetime.")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Accept registrations: sign their CSR, enable them and their pending actors.

    Example: xbusctl account accept demo-actors --cert-expire-days 365
    """
    c = ctl(ctx, json_output)
    body = {"cert_expire_days": cert_expire_days} if cert_expire_days else None
    done = [c.client.call("POST", f"/api/v1/accounts/{ref}/accept", body=body) for ref in refs]
    if c.output.json:
        c.output.print_json(done)
        return
    for cert in done:
        c.output.out.print(
            f"{cert['account_name']}: {cert['status']}, certificate {cert.get('fingerprint')} "
            f"until {cert.get('expires_at')}",
            highlight=False,
        )


@account.command("reject")
def account_reject(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Accounts (id or name) to reject.")],
    json_output: JsonOpt = False,
) -> None:
    """Reject registrations: they and their pending actors become rejected.

    Example: xbusctl account reject unknown-actors
    """
    c = ctl(ctx, json_output)
    done = [c.client.call("POST", f"/api/v1/accounts/{ref}/reject") for ref in refs]
    if c.output.json:
        c.output.print_json(done)
        return
    for found in done:
        c.output.out.print(f"{found['name']}: {found['status']}", highlight=False)


@account.command("delete")
def account_delete(
    ctx: typer.Context, ref: AccountArg, yes: YesOpt = False, json_output: JsonOpt = False
) -> None:
    """Delete an account (asks first; its actors go too, after a second question).

    Example: xbusctl account delete old-gateway
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/accounts/{ref}")
    actors = list(c.client.pages("/api/v1/actors", {"account_id": found["id"]}, None))
    confirm(f"Delete account {found['name']!r}?", yes)
    if actors:
        names = ", ".join(a["name"] for a in actors[:10]) + (" ..." if len(actors) > 10 else "")
        confirm(f"It has {len(actors)} actor(s) ({names}); delete them too?", yes)
    c.client.call("DELETE", f"/api/v1/accounts/{found['id']}", params={"confirm": bool(actors)})
    if c.output.json:
        c.output.print_json({"deleted": found["id"], "actors_deleted": len(actors)})
    else:
        c.output.out.print(
            f"deleted account {found['name']}" + (f" and {len(actors)} actor(s)" if actors else ""),
            highlight=False,
        )


@account.command("export")
def account_export(
    ctx: typer.Context,
    ref: AccountArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (default: stdout).", dir_okay=False
        ),
    ] = None,
    renew_key: Annotated[
        bool, typer.Option("--renew-key", help="Put a new API key in (the old one stops).")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Write the configuration as JSON.")
    ] = False,
) -> None:
    """Write a client configuration for an account (url, account, api-key, actors).

    Example: xbusctl account export billing-gateway --renew-key -o billing.yaml
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/accounts/{ref}")
    actors = list(c.client.pages("/api/v1/actors", {"account_id": found["id"]}, None))
    key = f"<the API key of {found['name']}; renew it with xbusctl account renew-apikey>"
    if renew_key:
        key = c.client.call("POST", f"/api/v1/accounts/{found['id']}/api-key")["api_key"]
    config = {
        "url": c.client.config.url,
        "account": found["name"],
        "api-key": key,
        "actors": {a["name"]: {"kind": a["kind"], "id": a["id"]} for a in actors},
    }
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    if c.output.json:
        text = json.dumps(config, indent=2) + "\n"
    else:
        text = f"# Xbus client configuration of account {found['name']}, exported {stamp}\n"
        text += yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
    if output is None:
        c.output.out.file.write(text)
        return
    if output.exists() and not force:
        raise CtlError(f"{output} exists; use --force to replace it")
    # The file may hold a key: readable by its owner only.
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    c.output.note(f"wrote {output}")


@account.command("get-apikey")
def account_get_apikey(ctx: typer.Context, ref: AccountArg, json_output: JsonOpt = False) -> None:
    """Whether an account has an API key, and until when (keys are stored hashed: a key is
    shown only when it is made).

    Example: xbusctl account get-apikey billing-gateway
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/accounts/{ref}")
    state = {
        "account": found["name"],
        "has_api_key": found["has_api_key"],
        "expires_at": found.get("api_key_expires_at"),
    }
    _print(c.output, state, list(state.items()))
    c.output.note("The key itself is never stored; `account renew-apikey` makes a new one.")


def _new_key(
    ctx: typer.Context, ref: str, expires_at: str | None, expires_in: int | None, json_output: bool
) -> None:
    c = ctl(ctx, json_output)
    expiry = _expiry(expires_at, expires_in)
    new = c.client.call(
        "POST", f"/api/v1/accounts/{ref}/api-key", body={"expires_at": expiry} if expiry else None
    )
    _print(c.output, new, [("api key", new["api_key"]), ("expires", new.get("expires_at"))])
    c.output.note("The old key no longer works. The new one is shown this once.")


@account.command("renew-apikey")
def account_renew_apikey(
    ctx: typer.Context,
    ref: AccountArg,
    expires_at: ExpiresAtOpt = None,
    expires_in: ExpiresInOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Replace an account's API key with a new one (printed once); the old one stops working.

    Example: xbusctl account renew-apikey billing-gateway --expires-in 365
    """
    _new_key(ctx, ref, expires_at, expires_in, json_output)


@account.command("set-apikey")
def account_set_apikey(
    ctx: typer.Context,
    ref: AccountArg,
    expires_at: ExpiresAtOpt = None,
    expires_in: ExpiresInOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Set a new API key with its expiry (the server makes the key, so it is always strong;
    printed once). Same as renew-apikey.

    Example: xbusctl account set-apikey billing-gateway --expires-at 2027-01-01
    """
    _new_key(ctx, ref, expires_at, expires_in, json_output)


@account.command("reset-cert")
def account_reset_cert(ctx: typer.Context, ref: AccountArg, json_output: JsonOpt = False) -> None:
    """Allow (and require) an account to renew its certificate with a new CSR.

    Example: xbusctl account reset-cert demo-actors
    """
    c = ctl(ctx, json_output)
    cert = c.client.call("POST", f"/api/v1/accounts/{ref}/reset-cert")
    _print(
        c.output,
        cert,
        [
            ("account", cert["account_name"]),
            ("cert reset", cert["cert_reset"]),
            ("certificate", cert.get("fingerprint")),
            ("expires", cert.get("expires_at")),
        ],
    )


# ---------------------------------------------------------------------------- actors
ACTOR_COLUMNS = [
    ("NAME", lambda a: a["name"]),
    ("ID", lambda a: a["id"]),
    ("KIND", lambda a: a["kind"]),
    ("STATUS", lambda a: a["status"]),
    ("ACCOUNT", lambda a: a["account_name"]),
    ("ROLES", lambda a: a["roles"]),
    ("ONLINE", lambda a: a["online"]),
    ("UNRESPONSIVE", lambda a: a["unresponsive"]),
    ("LAST SEEN", lambda a: a.get("last_seen")),
]


def _actor_fields(a: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("name", a["name"]),
        ("id", a["id"]),
        ("kind", a["kind"]),
        ("status", a["status"]),
        ("account", f"{a['account_name']} ({a['account_id']})"),
        ("roles", a["roles"]),
        ("online", a["online"]),
        ("unresponsive", a["unresponsive"]),
        ("last seen", a.get("last_seen")),
        ("description", a.get("description") or None),
        *[(f"config {k}", v) for k, v in sorted(a["config"].items())],
    ]


@actor.command("list")
def actor_list(
    ctx: typer.Context,
    account_ref: Annotated[
        str | None, typer.Option("--account", "-a", help="Account id or name.")
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="emitter, worker, consumer.")] = None,
    status: Annotated[str | None, typer.Option("--status")] = None,
    role: Annotated[str | None, typer.Option("--role")] = None,
    online: Annotated[bool | None, typer.Option("--online/--offline")] = None,
    limit: LimitOpt = 100,
    all_pages: AllPagesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """List actors, with the name of their account.

    Example: xbusctl actor list --kind consumer --account billing
    """
    c = ctl(ctx, json_output)
    params = {
        "account_id": account_ref,
        "kind": kind,
        "status": status,
        "role": role,
        "online": online,
    }
    items = list(c.client.pages("/api/v1/actors", params, None if all_pages else limit))
    if c.output.json:
        c.output.print_json(items)
    else:
        c.output.table(ACTOR_COLUMNS, items)


@actor.command("get")
def actor_get(ctx: typer.Context, ref: ActorArg, json_output: JsonOpt = False) -> None:
    """Show an actor and its config.

    Example: xbusctl actor get billing-consumer
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/actors/{ref}")
    _print(c.output, found, _actor_fields(found))


@actor.command("create")
def actor_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The actor name.")],
    kind: Annotated[str, typer.Option("--kind", "-k", help="emitter, worker or consumer.")],
    account_ref: Annotated[str, typer.Option("--account", "-a", help="Account id or name.")],
    role: Annotated[list[str] | None, typer.Option("--role", "-r", help="Repeat.")] = None,
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="key=value (repeat).")
    ] = None,
    status: Annotated[str, typer.Option("--status")] = "enabled",
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    json_output: JsonOpt = False,
) -> None:
    """Create an actor for an account.

    Example: xbusctl actor create billing-consumer --kind consumer --account billing
    -c http.webhook.url=https://billing.example/xbus
    """
    c = ctl(ctx, json_output)
    body = {
        "name": name,
        "kind": kind,
        "account_id": account_ref,
        "roles": role or [],
        "config": key_values(config or []),
        "status": status,
        "description": description,
    }
    created = c.client.call("POST", "/api/v1/actors", body=body)
    _print(c.output, created, _actor_fields(created))


def _set_status(client: Client, refs: list[str], status: str) -> list[dict[str, Any]]:
    return [client.call("PATCH", f"/api/v1/actors/{ref}", body={"status": status}) for ref in refs]


@actor.command("accept")
def actor_accept(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Actors (id or name).")],
    json_output: JsonOpt = False,
) -> None:
    """Accept actors: their status becomes enabled.

    Example: xbusctl actor accept demo-emitter demo-consumer
    """
    c = ctl(ctx, json_output)
    done = _set_status(c.client, refs, "enabled")
    if c.output.json:
        c.output.print_json(done)
    else:
        c.output.table(ACTOR_COLUMNS, done)


@actor.command("reject")
def actor_reject(
    ctx: typer.Context,
    refs: Annotated[list[str], typer.Argument(help="Actors (id or name).")],
    json_output: JsonOpt = False,
) -> None:
    """Reject actors: their status becomes rejected.

    Example: xbusctl actor reject rogue-emitter
    """
    c = ctl(ctx, json_output)
    done = _set_status(c.client, refs, "rejected")
    if c.output.json:
        c.output.print_json(done)
    else:
        c.output.table(ACTOR_COLUMNS, done)


@actor.command("delete")
def actor_delete(
    ctx: typer.Context, ref: ActorArg, yes: YesOpt = False, json_output: JsonOpt = False
) -> None:
    """Delete an actor (processes, envelopes and logs that mention it stay).

    Example: xbusctl actor delete old-consumer --yes
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/actors/{ref}")
    confirm(f"Delete actor {found['name']!r} of account {found['account_name']!r}?", yes)
    c.client.call("DELETE", f"/api/v1/actors/{found['id']}")
    if c.output.json:
        c.output.print_json({"deleted": found["id"]})
    else:
        c.output.out.print(f"deleted actor {found['name']}", highlight=False)


@actor_config.command("set")
def actor_config_set(
    ctx: typer.Context,
    ref: ActorArg,
    entries: Annotated[list[str], typer.Argument(help="key=value entries.")],
    json_output: JsonOpt = False,
) -> None:
    """Set config entries of an actor.

    Example: xbusctl actor config set billing-consumer http.webhook.url=https://b.example/x
    """
    c = ctl(ctx, json_output)
    found: dict[str, Any] = {}
    for key, value in key_values(entries).items():
        found = c.client.call("PUT", f"/api/v1/actors/{ref}/config/{key}", body={"value": value})
    _print(c.output, found, _actor_fields(found))


@actor_config.command("unset")
def actor_config_unset(
    ctx: typer.Context,
    ref: ActorArg,
    keys: Annotated[list[str], typer.Argument(help="Config keys to remove.")],
    json_output: JsonOpt = False,
) -> None:
    """Remove config entries of an actor.

    Example: xbusctl actor config unset billing-consumer http.webhook.secret
    """
    c = ctl(ctx, json_output)
    for key in keys:
        c.client.call("DELETE", f"/api/v1/actors/{ref}/config/{key}")
    found = c.client.call("GET", f"/api/v1/actors/{ref}")
    _print(c.output, found, _actor_fields(found))
