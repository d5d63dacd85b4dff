"""`xbus-fullenv`: set up and pilot a whole Xbus test environment from one file: the bus,
accounts, actors (HTTP and NATS), pipelines, the NATS actors' processes, and a batch of
envelopes whose outcome is checked. See docs/fullenv.md."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from app.cli.client_files import BlockDumper
from app.cli.ctl_client import console_for
from app.cli.fullenv_config import EnvFileError, Environment, load, parse_vars
from app.version import version

EXIT_FILE = 2  # the environment file (or a --var) is wrong: nothing was started

cli = typer.Typer(
    rich_markup_mode="markdown",
    name="xbus-fullenv",
    help="Set up and pilot Xbus test environments from a single configuration file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FileArg = Annotated[
    Path,
    typer.Argument(
        help="The environment file (YAML).", dir_okay=False, show_default=False, metavar="FILE"
    ),
]
VarOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--var",
        help="NAME=VALUE for ${NAME} in the file (repeatable; before the environment).",
        show_default=False,
    ),
]


def _version_cb(value: bool) -> None:
    if value:
        typer.echo(f"xbus-fullenv {version()}")
        raise typer.Exit


@cli.callback()
def main_options(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_cb, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Xbus test environments from one file."""


def _load(path: Path, var: list[str] | None) -> Environment:
    try:
        return load(path, parse_vars(var or []), os.environ)
    except EnvFileError as exc:
        err = console_for(sys.stderr)
        for problem in exc.problems:
            err.print(f"error: {problem}", style="red", highlight=False, markup=False)
        raise typer.Exit(EXIT_FILE) from None


def _warn(env: Environment) -> None:
    err = console_for(sys.stderr)
    for warning in env.warnings:
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)


@cli.command()
def check(
    file: FileArg,
    var: VarOpt = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON, not YAML.")] = False,
    show_secrets: Annotated[
        bool, typer.Option(help="Print the admin key and *secret config values.")
    ] = False,
    strict: Annotated[bool, typer.Option(help="Warnings are errors too.")] = False,
) -> None:
    """Check an environment file without starting anything; print it resolved.

    Checks the variables, every key, names and references, each pipeline graph (with the
    bus's own validation, against the file's actors) and each envelope to emit. Exit code 2
    when the file is wrong (every problem is listed), 0 otherwise."""
    env = _load(file, var)
    resolved = env.resolved(show_secrets)
    if json_output:
        sys.stdout.write(json.dumps(resolved, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(
            yaml.dump(resolved, Dumper=BlockDumper, sort_keys=False, allow_unicode=True)
        )
    _warn(env)
    spec = env.spec
    actors = sum(len(a.actors) for a in spec.accounts)
    summary = (
        f"{file}: {len(spec.accounts)} account(s), {actors} actor(s), "
        f"{len(spec.pipelines)} pipeline(s), {len(spec.emit)} envelope(s) to emit"
    )
    if strict and env.warnings:
        typer.secho(f"{summary}: {len(env.warnings)} warning(s) (--strict)", err=True, fg="red")
        raise typer.Exit(EXIT_FILE)
    typer.echo(f"{summary}: OK", err=True)


@cli.command()
def run(
    file: FileArg,
    var: VarOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            "-d",
            help="The environment directory (xbusd's data, clients/, logs/, env.json); "
            "overrides xbusd.data-dir. Default: a temporary one, removed at exit.",
            file_okay=False,
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option(help="Keep the temporary directory at exit (and say where).")
    ] = False,
    auto_startup: Annotated[
        bool,
        typer.Option(
            "--auto-startup/--no-auto-startup",
            help="Run `xbus-client serve` for each NATS account with actor services.",
        ),
    ] = True,
    batch: Annotated[
        bool,
        typer.Option(
            help="Once up, emit the `emit` envelopes, check each process ends as expected, "
            "stop everything; exit 0 when all matched, 1 otherwise."
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(min=0, help="--batch: seconds the processes have to reach their status."),
    ] = 60.0,
    startup_timeout: Annotated[
        float,
        typer.Option(min=1, help="Seconds xbusd and the NATS actors have to be ready."),
    ] = 120.0,
    no_prompt: Annotated[
        bool,
        typer.Option(
            "--no-prompt",
            help="Command mode for programs (python-xbus's xbus.fullenv.Fullenv): commands on "
            "stdin, one reply line each on stdout (`< OK`, `< OK: VALUE`, `< ERR: MESSAGE`), "
            "no prompt; the environment starts at `startup` (or --up).",
        ),
    ] = False,
    shell: Annotated[
        bool,
        typer.Option(
            "--shell", help="Command mode for people: the same commands and replies, a prompt."
        ),
    ] = False,
    up: Annotated[
        bool,
        typer.Option(
            "--up", help="Command mode: start the environment at launch (before the first reply)."
        ),
    ] = False,
) -> None:
    """Start the environment; run until Ctrl-C/SIGTERM, run the batch (--batch), or take
    commands on stdin (--no-prompt, --shell; `help` lists them).

    Starts xbusd (or reaches the bus at xbusd.url), creates or updates the accounts, actors
    and pipelines, registers the NATS accounts and writes their client configurations, and
    starts `xbus-client serve` for the NATS actors with a service.

    Exit codes: 0 done (batch: every expectation met; command mode: quit, end of input,
    Ctrl-C), 1 a step failed (batch: an expectation was not met), 2 the file or the options
    are wrong (nothing started), 130 interrupted."""
    from app.cli.fullenv_run import FullEnv, RunOptions
    from app.cli.fullenv_shell import CommandShell

    commands = no_prompt or shell
    if commands and batch:
        typer.secho(
            "error: --batch and command mode (--no-prompt, --shell) exclude each other",
            err=True,
            fg="red",
        )
        raise typer.Exit(EXIT_FILE)
    if up and not commands:
        typer.secho("error: --up is for command mode (--no-prompt or --shell)", err=True, fg="red")
        raise typer.Exit(EXIT_FILE)
    env = _load(file, var)
    _warn(env)
    if batch and not env.spec.emit:
        typer.secho("warning: --batch with no `emit` steps: nothing to check", err=True)
    options = RunOptions(
        data_dir=data_dir.resolve() if data_dir is not None else None,
        keep=keep,
        auto_startup=auto_startup,
        batch=batch,
        timeout=timeout,
        startup_timeout=startup_timeout,
        commands=commands,
        prompt=shell and not no_prompt,
        up=up,
    )
    # In command mode stdout carries the replies only: the summary and tables go to stderr.
    out = console_for(sys.stderr if commands else sys.stdout)
    code = FullEnv(env, options, out, console_for(sys.stderr)).run(
        lambda fe: CommandShell(fe).loop()
    )
    raise typer.Exit(code)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
