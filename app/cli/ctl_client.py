"""xbusctl plumbing: configuration, the HTTP client, errors and output.

The CLI speaks only HTTP to the bus (it imports nothing of the server), so it starts fast and
works against any xbusd it can reach."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

DEFAULT_URL = "http://127.0.0.1:8000"
NDJSON = "application/x-ndjson"


class CtlError(Exception):
    """A failure to report on stderr, with the exit code to leave with."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# ---------------------------------------------------------------------------- configuration
@dataclass(frozen=True, slots=True)
class CtlConfig:
    url: str
    api_key: str | None
    source: str


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtlError(f"config file {path} not found", 2) from None
    except OSError as exc:
        raise CtlError(f"cannot read config file {path}: {exc.strerror}", 2) from None
    except yaml.YAMLError as exc:
        raise CtlError(f"config file {path} is not valid YAML: {exc}", 2) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise CtlError(f"config file {path} must hold a mapping (url, api-key)", 2)
    # `api-key`, `api_key` and `apikey` all name the key; other entries (a client
    # configuration exported by `account export` has some) are ignored.
    return {str(k).replace("_", "-").lower(): v for k, v in raw.items()}


def load_config(path: Path | None) -> CtlConfig:
    """The file (--config) first, then XBUS_URL / XBUS_API_KEY over it."""
    values = read_config_file(path) if path is not None else {}
    url = os.environ.get("XBUS_URL") or values.get("url") or DEFAULT_URL
    key = os.environ.get("XBUS_API_KEY") or values.get("api-key") or values.get("apikey")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise CtlError(f"the bus url must be an http(s) URL, got {url!r}", 2)
    if key is not None and not isinstance(key, str):
        raise CtlError("the api-key must be a string", 2)
    return CtlConfig(url.rstrip("/"), key, str(path) if path else "environment")


# ---------------------------------------------------------------------------- output
def console_for(stream: Any) -> Console:
    # Pipes and files get wide, uncoloured tables: ids must not wrap.
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 250, no_color=not tty, soft_wrap=not tty)


@dataclass
class Output:
    json: bool = False
    quiet: bool = False
    out: Console = field(default_factory=lambda: console_for(sys.stdout))
    err: Console = field(default_factory=lambda: console_for(sys.stderr))

    def print_json(self, obj: Any) -> None:
        sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    def note(self, text: str) -> None:
        """A message for people (stderr), silent with --quiet or --json."""
        if not self.quiet and not self.json:
            self.err.print(text, highlight=False)

    def table(
        self,
        columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]],
        rows: Sequence[dict[str, Any]],
        *,
        title: str | None = None,
    ) -> None:
        table = Table(title=title, show_edge=False, header_style="bold")
        for header, _ in columns:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*[cell(get(row)) for _, get in columns])
        self.out.print(table)

    def fields(self, pairs: Sequence[tuple[str, Any]]) -> None:
        table = Table(show_header=False, show_edge=False, box=None, padding=(0, 2, 0, 0))
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, value in pairs:
            table.add_row(name, cell(value))
        self.out.print(table)

    @contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[ProgressBar]:
        if self.quiet or self.json:
            yield ProgressBar(None, None)
            return
        bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=True,
        )
        with bar:
            yield ProgressBar(bar, bar.add_task(description, total=total))


class ProgressBar:
    def __init__(self, bar: Progress | None, task: Any) -> None:
        self.bar = bar
        self.task = task

    def update(self, *, completed: int | None = None, total: int | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, total=total)

    def advance(self, amount: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, amount)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    text = str(value)
    if _TIME.fullmatch(text):
        return text[:19].replace("T", " ")
    return text


_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)?")


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


# ---------------------------------------------------------------------------- times
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w`."""
    match = _RELATIVE.fullmatch(text.strip().lower())
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration such as 90s, 30m, 12h, 7d or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_when(text: str) -> str:
    """An RFC 3339 time for the API, from `2026-11-27`, `2026-11-27T10:00:00` (UTC unless a
    zone is given), or a duration ago (`7d`)."""
    if _RELATIVE.fullmatch(text.strip().lower()):
        return (datetime.now(UTC) - parse_duration(text)).isoformat()
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a date (2026-11-27, 2026-11-27T10:00:00Z) nor a duration ago (7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.isoformat()


# ---------------------------------------------------------------------------- HTTP
def problem_message(response: httpx.Response) -> str:
    """The server's problem detail (RFC 9457), or what there is."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        title = body.get("title") or response.reason_phrase
        lines = [f"{title} ({response.status_code}): {body['detail']}"]
        for error in body.get("errors") or []:
            where = ".".join(str(p) for p in error.get("loc", []))
            lines.append(f"  {where}: {error.get('msg')}")
        for message in body.get("validation_messages") or []:
            node = f" [{message.get('node_id')}]" if message.get("node_id") else ""
            lines.append(f"  {message.get('level')}{node}: {message.get('text')}")
        return "\n".join(lines)
    text = response.text.strip()[:500]
    return f"{response.status_code} {response.reason_phrase}" + (f": {text}" if text else "")


class Client:
    def __init__(self, config: CtlConfig) -> None:
        if not config.api_key:
            raise CtlError(
                "no API key: set XBUS_API_KEY, or api-key in the file given with --config", 2
            )
        self.config = config
        self.http = httpx.Client(
            base_url=config.url,
            headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": "xbusctl"},
            timeout=httpx.Timeout(60.0, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def response(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = 60.0,
    ) -> httpx.Response:
        try:
            response = self.http.request(
                method,
                path,
                params=_params(params),
                json=body,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=10.0),
            )
        except httpx.TransportError as exc:
            raise CtlError(f"cannot reach the bus at {self.config.url}: {exc}") from None
        if response.status_code >= 400:
            raise CtlError(problem_message(response))
        return response

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | list[tuple[str, Any]] | None = None,
        body: Any = None,
        timeout: float | None = 60.0,
    ) -> Any:
        response = self.response(method, path, params=params, body=body, timeout=timeout)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def pages(
        self, path: str, params: dict[str, Any] | list[tuple[str, Any]], limit: int | None
    ) -> Iterator[dict[str, Any]]:
        """Items of a cursor-paginated list, following `next_cursor` up to `limit` items
        (None: all of them)."""
        base = list(_params(params) or [])
        cursor = None
        seen = 0
        while True:
            page_size = 1000 if limit is None else min(1000, limit - seen)
            query = [*base, ("limit", page_size)]
            if cursor:
                query.append(("cursor", cursor))
            page = self.call("GET", path, params=query)
            for item in page["items"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    @contextmanager
    def stream(
        self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None
    ) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(
                method,
                path,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(None, connect=10.0),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CtlError(problem_message(response))
                yield response
        except httpx.TransportError as exc:
            raise CtlError(f"the connection to {self.config.url} failed: {exc}") from None

    def progress_lines(self, path: str, body: Any, out: Output, description: str) -> dict[str, Any]:
        """POST a long operation with NDJSON progress; a bar while it runs; its result."""
        result: dict[str, Any] | None = None
        with (
            self.stream("POST", path, body=body, headers={"Accept": NDJSON}) as response,
            out.progress(description, None) as bar,
        ):
            for raw in response.iter_lines():
                if not raw.strip():
                    continue
                step = json.loads(raw)
                if step.get("event") == "error":
                    raise CtlError(
                        f"failed after {result or 'the start'}: {step.get('detail')} "
                        f"({step.get('status')})"
                    )
                bar.update(completed=step.get("done", 0), total=step.get("total"))
                if step.get("event") == "end":
                    result = step["result"]
        if result is None:
            raise CtlError("the server stopped answering before the end of the operation")
        return result


def _params(
    params: dict[str, Any] | list[tuple[str, Any]] | None,
) -> list[tuple[str, Any]] | None:
    if params is None:
        return None
    items = params.items() if isinstance(params, dict) else params
    flat: list[tuple[str, Any]] = []
    for key, value in items:
        if value is None:
            continue
        if isinstance(value, list | tuple):
            flat.extend((key, _scalar(v)) for v in value)
        else:
            flat.append((key, _scalar(value)))
    return flat


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


# ---------------------------------------------------------------------------- context
@dataclass
class Ctl:
    """What every command gets: the output settings and, once asked for, the client."""

    config_path: Path | None
    output: Output
    _client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(load_config(self.config_path))
        return self._client


def ctl(ctx: typer.Context, json_output: bool = False, quiet: bool = False) -> Ctl:
    found = ctx.find_root().obj
    if not isinstance(found, Ctl):
        found = Ctl(None, Output())
        ctx.find_root().obj = found
    found.output.json = found.output.json or json_output
    found.output.quiet = found.output.quiet or quiet
    return found


def confirm(question: str, yes: bool) -> None:
    if not yes and not typer.confirm(question, default=False, err=True):
        raise CtlError("canceled; nothing was changed", 1)


def key_values(pairs: Sequence[str], what: str = "key=value") -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not {what}")
        result[key] = value
    return result
