"""`xbusctl`: operate an Xbus over its HTTP API (accounts, actors, pipelines, processes,
postmortem, envelopes, logs, statistics).

Configuration: `--config FILE` (YAML with `url` and `api-key`), then the environment
(`XBUS_URL`, `XBUS_API_KEY`) over it. Tables by default, `--json` on every command; a failure
prints the server's problem detail on stderr and exits non-zero."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from app.cli.ctl_accounts import account, actor
from app.cli.ctl_client import Ctl, CtlError, Output, ctl, size
from app.cli.ctl_pipelines import pipeline
from app.cli.ctl_ps import envelope, logs, pm, ps

cli = typer.Typer(
    name="xbusctl",
    help="Operate an Xbus: accounts, actors, pipelines, processes (ps), postmortem (pm), "
    "envelopes, logs and statistics, over the HTTP API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cli.add_typer(account, name="account")
cli.add_typer(actor, name="actor")
cli.add_typer(pipeline, name="pipeline")
cli.add_typer(ps, name="ps")
cli.add_typer(pm, name="pm")
cli.add_typer(envelope, name="envelope")
cli.add_typer(logs, name="logs")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


@cli.callback()
def options(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML file with `url` and `api-key` (XBUS_URL and XBUS_API_KEY override it).",
            dir_okay=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of tables, for every command.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars nor messages on stderr.")
    ] = False,
) -> None:
    """Operate an Xbus over its HTTP API."""
    ctx.obj = Ctl(config, Output(json=json_output, quiet=quiet))


@cli.command("whoami")
def whoami(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """The account behind the API key in use.

    Example: xbusctl whoami
    """
    c = ctl(ctx, json_output)
    me = c.client.call("GET", "/api/v1/whoami")
    if c.output.json:
        c.output.print_json(me)
        return
    account_ = me["account"]
    c.output.fields(
        [
            ("url", c.client.config.url),
            ("account", account_["name"]),
            ("id", account_["id"]),
            ("type", account_["type"]),
            ("status", account_["status"]),
            ("admin", me["admin"]),
        ]
    )


@cli.command("stats")
def stats(ctx: typer.Context, json_output: JsonOpt = False) -> None:
    """Storage statistics: rows and size per kind of stored thing (`~`: an estimate).

    Example: xbusctl stats
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", "/api/v1/stats")
    if c.output.json:
        c.output.print_json(found)
        return

    def rows(item: dict[str, object]) -> str:
        return f"{'' if item['exact'] else '~'}{item['rows']}"

    c.output.table(
        [
            ("KIND", lambda k: k["kind"]),
            ("ROWS", rows),
            ("SIZE", lambda k: size(k["bytes"])),
            ("TABLES", lambda k: ", ".join(f"{t['table']} {rows(t)}" for t in k["tables"])),
        ],
        found["kinds"],
    )
    c.output.note(f"database size: {size(found['database_bytes'])}")


def main() -> None:
    try:
        cli()
    except CtlError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
