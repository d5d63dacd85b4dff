"""xbusctl ps (processes), pm (postmortem), envelope and logs commands."""

from __future__ import annotations

import gzip
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from app.cli.ctl_client import (
    Client,
    CtlError,
    Output,
    cell,
    confirm,
    ctl,
    parse_duration,
    parse_when,
    size,
)

ps = typer.Typer(help="Processes: list, show, export, purge, pause, resume, cancel, replay.")
pm = typer.Typer(help="Postmortem: failed and warned processes to look into.")
envelope = typer.Typer(help="Envelopes: get one, purge old or unreferenced ones.")
logs = typer.Typer(help="Log entries: purge old ones.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Count what would be done; change nothing.")
]
StatusOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        "-s",
        help="Process status (repeat for several): initial, running, paused, done, error.",
    ),
]
PipelineOpt = Annotated[
    str | None,
    typer.Option(
        "--pipeline",
        "-p",
        help="Pipeline: id, NAME:VERSION, or NAME (its active version, or its only one).",
    ),
]
EmitterOpt = Annotated[str | None, typer.Option("--emitter", "-e", help="Emitter: id or name.")]
EnvelopeOpt = Annotated[str | None, typer.Option("--envelope", help="Trigger envelope id.")]
GroupOpt = Annotated[str | None, typer.Option("--group", help="Group id.")]
ReplayOfOpt = Annotated[str | None, typer.Option("--replay-of", help="Replays of this process.")]
AckedOpt = Annotated[
    bool | None, typer.Option("--acked/--not-acked", help="Result acknowledged or not.")
]
SinceOpt = Annotated[
    str | None,
    typer.Option("--since", help="Created at or after: a date/time, or a duration ago (7d)."),
]
UntilOpt = Annotated[
    str | None,
    typer.Option("--until", help="Created before: a date/time, or a duration ago (7d)."),
]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, help="Show at most this many.")]
AllPagesOpt = Annotated[bool, typer.Option("--all", help="Every match, page after page.")]


def _uuid(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise typer.BadParameter(f"{what} must be an id (UUID), got {value!r}") from None


def resolve_pipeline(client: Client, ref: str) -> str:
    """A pipeline id from an id, NAME:VERSION or NAME."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        pass
    name, _, version = ref.partition(":")
    found = list(
        client.pages("/api/v1/pipelines", {"name": name, "version": version or None}, None)
    )
    if not found:
        raise CtlError(f"no pipeline {ref!r}")
    if len(found) > 1:
        active = [p for p in found if p["status"] == "active"]
        if len(active) == 1:
            return str(active[0]["id"])
        versions = ", ".join(sorted(p["version"] for p in found))
        raise CtlError(f"pipeline {name!r} has versions {versions}: say which, as NAME:VERSION")
    return str(found[0]["id"])


def selection(
    client: Client,
    *,
    status: list[str] | None,
    pipeline: str | None,
    emitter: str | None,
    envelope_id: str | None,
    group: str | None,
    replay_of: str | None,
    acked: bool | None,
    since: str | None,
    until: str | None,
) -> dict[str, Any]:
    """The process filters, named as the API names them."""
    chosen = {
        "status": status or None,
        "pipeline_id": resolve_pipeline(client, pipeline) if pipeline else None,
        "emitter": emitter,
        "envelope_id": _uuid(envelope_id, "--envelope"),
        "group_id": _uuid(group, "--group"),
        "replay_of": _uuid(replay_of, "--replay-of"),
        "result_acked": acked,
        "created_after": parse_when(since) if since else None,
        "created_before": parse_when(until) if until else None,
    }
    return {k: v for k, v in chosen.items() if v is not None}


PROCESS_COLUMNS = [
    ("ID", lambda p: p["id"]),
    ("STATUS", lambda p: p["status"]),
    (
        "PIPELINE",
        lambda p: (
            f"{p['pipeline_name']} {p['pipeline_version']}" if p.get("pipeline_name") else None
        ),
    ),
    ("EMITTER", lambda p: p.get("emitter_name")),
    ("CREATED", lambda p: p["created_at"]),
    ("ENDED", lambda p: p.get("ended_at")),
    ("ACKED", lambda p: p.get("result_acked")),
    ("REASON", lambda p: p.get("status_reason")),
]


@ps.command("list")
def ps_list(
    ctx: typer.Context,
    status: StatusOpt = None,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    envelope_id: EnvelopeOpt = None,
    group: GroupOpt = None,
    replay_of: ReplayOfOpt = None,
    acked: AckedOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    limit: LimitOpt = 50,
    all_pages: AllPagesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """List processes, newest first.

    Example: xbusctl ps list --status error --pipeline billing --since 1d
    """
    c = ctl(ctx, json_output)
    flt = selection(
        c.client,
        status=status,
        pipeline=pipeline,
        emitter=emitter,
        envelope_id=envelope_id,
        group=group,
        replay_of=replay_of,
        acked=acked,
        since=since,
        until=until,
    )
    items = list(c.client.pages("/api/v1/processes", flt, None if all_pages else limit))
    if c.output.json:
        c.output.print_json(items)
        return
    c.output.table(PROCESS_COLUMNS, items)
    c.output.note(f"{len(items)} process(es)")


@ps.command("show")
def ps_show(
    ctx: typer.Context,
    process_id: Annotated[str, typer.Argument(help="The process id.")],
    with_logs: Annotated[bool, typer.Option("--logs", help="Show its log too.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """A process with its nodes and requests.

    Example: xbusctl ps show 0b5e...-... --logs
    """
    c = ctl(ctx, json_output)
    pid = _uuid(process_id, "the process id")
    process = c.client.call("GET", f"/api/v1/processes/{pid}")
    entries = list(c.client.pages(f"/api/v1/processes/{pid}/logs", {}, None)) if with_logs else []
    if c.output.json:
        c.output.print_json({**process, "logs": entries} if with_logs else process)
        return
    _show_process(c.output, process)
    if with_logs:
        _show_logs(c.output, entries)


def _show_process(out: Output, p: dict[str, Any]) -> None:
    pm_record = p.get("postmortem")
    out.fields(
        [
            ("id", p["id"]),
            ("status", p["status"]),
            ("reason", p.get("status_reason")),
            ("pipeline", f"{p.get('pipeline_name')} {p.get('pipeline_version')}"),
            ("emitter", p.get("emitter_name")),
            ("trigger envelope", p.get("trigger_envelope_id")),
            ("replay of", p.get("replay_of")),
            ("created", p["created_at"]),
            ("ended", p.get("ended_at")),
            ("acked", p.get("result_acked")),
            (
                "postmortem",
                f"{pm_record['level']} {pm_record['status']}"
                + (f": {pm_record['comment']}" if pm_record.get("comment") else "")
                if pm_record
                else None,
            ),
        ]
    )
    rows = [
        {**node, "request": request}
        for node in p.get("nodes", [])
        for request in (node["requests"] or [None])
    ]
    if rows:
        out.table(
            [
                ("NODE", lambda r: r["node_id"]),
                ("TYPE", lambda r: r.get("type")),
                ("STATUS", lambda r: r["status"]),
                ("ACTOR", lambda r: r["request"] and r["request"]["actor_name"]),
                ("REQUEST", lambda r: r["request"] and r["request"]["status"]),
                ("ATTEMPTS", lambda r: r["request"] and r["request"]["attempts"]),
                ("ERROR", lambda r: r["request"] and r["request"]["last_error"]),
            ],
            rows,
        )


def _show_logs(out: Output, entries: list[dict[str, Any]]) -> None:
    out.table(
        [
            ("TIME", lambda e: e["time"]),
            ("LEVEL", lambda e: e["level"]),
            ("NODE", lambda e: e.get("node_id")),
            ("TEXT", lambda e: e["text"]),
        ],
        entries,
    )


@ps.command("logs")
def ps_logs(
    ctx: typer.Context,
    process_id: Annotated[str, typer.Argument(help="The process id.")],
    json_output: JsonOpt = False,
) -> None:
    """The log of a process, oldest first.

    Example: xbusctl ps logs 0b5e...-...
    """
    c = ctl(ctx, json_output)
    pid = _uuid(process_id, "the process id")
    entries = list(c.client.pages(f"/api/v1/processes/{pid}/logs", {}, None))
    if c.output.json:
        c.output.print_json(entries)
    else:
        _show_logs(c.output, entries)


@ps.command("summary")
def ps_summary(
    ctx: typer.Context,
    status: StatusOpt = None,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Process counts by status, pipeline and emitter (for dashboards).

    Example: xbusctl ps summary --since 1d
    """
    c = ctl(ctx, json_output)
    flt = selection(
        c.client,
        status=status,
        pipeline=pipeline,
        emitter=emitter,
        envelope_id=None,
        group=None,
        replay_of=None,
        acked=None,
        since=since,
        until=until,
    )
    summary = c.client.call("GET", "/api/v1/stats/processes", params=flt)
    if c.output.json:
        c.output.print_json(summary)
        return
    out = c.output
    out.fields(
        [
            ("total", summary["total"]),
            ("by status", summary["by_status"]),
            ("acked", summary["acked"]),
            ("not acked", summary["not_acked"]),
            (
                "postmortem",
                {level: cell(counts) for level, counts in summary["postmortem"].items()},
            ),
        ]
    )
    out.table(
        [
            ("PIPELINE", lambda r: f"{r['name']} {r['version']}" if r["name"] else None),
            ("TOTAL", lambda r: r["total"]),
            ("BY STATUS", lambda r: r["by_status"]),
        ],
        summary["by_pipeline"],
    )
    out.table(
        [
            ("EMITTER", lambda r: r["name"]),
            ("TOTAL", lambda r: r["total"]),
            ("BY STATUS", lambda r: r["by_status"]),
        ],
        summary["by_emitter"],
    )


# ---------------------------------------------------------------------------- export
@contextmanager
def _sink(output: Path | None, force: bool) -> Iterator[IO[bytes]]:
    if output is None:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    if output.exists() and not force:
        raise CtlError(f"{output} exists; use --force to replace it")
    opener = gzip.open if output.suffix == ".gz" else open
    with opener(output, "wb") as handle:
        yield handle  # type: ignore[misc]


class _Export:
    """Partitions streamed in parallel into one file: one header, every partition's lines,
    one end line; each line is written whole."""

    def __init__(self, client: Client, body: dict[str, Any], jobs: int, sink: IO[bytes]) -> None:
        self.client = client
        self.body = body
        self.jobs = jobs
        self.sink = sink
        self.lock = threading.Lock()
        self.headers: list[dict[str, Any]] = []
        self.ends: list[int] = []
        self.done = 0
        self.barrier = threading.Barrier(jobs, action=self._write_header)

    @property
    def total(self) -> int:
        return sum(h["total"] for h in self.headers)

    def _write_header(self) -> None:
        header = {**self.headers[0], "total": self.total}
        header.get("selection", {}).pop("partition_index", None)
        header.get("selection", {}).pop("partition_count", None)
        header["partitions"] = self.jobs
        self.sink.write(json.dumps(header).encode() + b"\n")

    def run(self, index: int, on_progress: Any) -> None:
        body = dict(self.body)
        if self.jobs > 1:
            body.update(partition_index=index, partition_count=self.jobs)
        ended = False
        try:
            with self.client.stream(
                "POST", "/api/v1/processes/export", body=body, headers={"Accept-Encoding": "gzip"}
            ) as response:
                lines = response.iter_lines()
                header = json.loads(next(lines))
                if header.get("kind") != "header":
                    raise CtlError(f"unexpected first line from the server: {header}")
                with self.lock:
                    self.headers.append(header)
                self.barrier.wait()
                on_progress()
                for text in lines:
                    if not text:
                        continue
                    if text.startswith('{"kind":"process"'):
                        with self.lock:
                            self.sink.write(text.encode() + b"\n")
                            self.done += 1
                        on_progress()
                    elif text.startswith('{"kind":"envelope"'):
                        with self.lock:
                            self.sink.write(text.encode() + b"\n")
                    else:
                        line = json.loads(text)
                        if line.get("kind") == "end":
                            with self.lock:
                                self.ends.append(int(line["count"]))
                            ended = True
                        elif line.get("kind") == "error":
                            raise CtlError(f"the export failed on the server: {line['detail']}")
        except threading.BrokenBarrierError:
            raise CtlError("another export job failed") from None
        except BaseException:
            self.barrier.abort()
            raise
        if not ended:
            raise CtlError("the export stream was cut short (no end line)")


@ps.command("export")
def ps_export(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to this file (gzip when it ends in .gz); default: stdout.",
            dir_okay=False,
        ),
    ] = None,
    export_envelope: Annotated[
        bool, typer.Option("--export-envelope", help="Export the envelopes too.")
    ] = False,
    export_envelope_size_limit: Annotated[
        int,
        typer.Option(
            "--export-envelope-size-limit",
            min=0,
            help="Larger envelopes (bytes) are exported as metadata only.",
        ),
    ] = 1024 * 1024,
    export_jobs: Annotated[
        int, typer.Option("--export-jobs", "-j", min=1, max=64, help="Parallel streams.")
    ] = 1,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar, no messages.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file.")] = False,
    status: StatusOpt = None,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    envelope_id: EnvelopeOpt = None,
    group: GroupOpt = None,
    replay_of: ReplayOfOpt = None,
    acked: AckedOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these processes.")] = None,
) -> None:
    """Export processes with their logs, requests and (optionally) envelopes as NDJSON.

    Example: xbusctl ps export --status error --since 7d --export-envelope -j 4 -o errors.ndjson.gz
    """
    c = ctl(ctx, quiet=quiet)
    body: dict[str, Any] = selection(
        c.client,
        status=status,
        pipeline=pipeline,
        emitter=emitter,
        envelope_id=envelope_id,
        group=group,
        replay_of=replay_of,
        acked=acked,
        since=since,
        until=until,
    )
    if ids:
        body["ids"] = [_uuid(i, "--id") for i in ids]
    body.update(envelopes=export_envelope, envelope_size_limit=export_envelope_size_limit)
    with _sink(output, force) as sink, c.output.progress("exporting", None) as bar:
        job = _Export(c.client, body, export_jobs, sink)

        def on_progress() -> None:
            bar.update(completed=job.done, total=job.total)

        with ThreadPoolExecutor(export_jobs) as pool:
            futures = [pool.submit(job.run, n, on_progress) for n in range(export_jobs)]
            errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            first = errors[0]
            raise first if isinstance(first, CtlError) else CtlError(str(first))
        sink.write(json.dumps({"kind": "end", "count": sum(job.ends)}).encode() + b"\n")
    where = output or "stdout"
    c.output.note(f"exported {sum(job.ends)} process(es) to {where}")


# ---------------------------------------------------------------------------- purge, control
@ps.command("purge")
def ps_purge(
    ctx: typer.Context,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Created longer ago than (30d, 12h).")
    ] = None,
    status: StatusOpt = None,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    envelope_id: EnvelopeOpt = None,
    group: GroupOpt = None,
    replay_of: ReplayOfOpt = None,
    acked: AckedOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these processes.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every ended process.")] = False,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete ended processes (done, error) with their logs and requests.

    Example: xbusctl ps purge --older-than 90d --yes
    """
    c = ctl(ctx, json_output)
    body: dict[str, Any] = selection(
        c.client,
        status=status,
        pipeline=pipeline,
        emitter=emitter,
        envelope_id=envelope_id,
        group=group,
        replay_of=replay_of,
        acked=acked,
        since=since,
        until=until,
    )
    if ids:
        body["ids"] = [_uuid(i, "--id") for i in ids]
    if older_than:
        body["older_than"] = parse_duration(older_than).total_seconds()
    if all_:
        body["all"] = True
    _purge(c, "/api/v1/processes/purge", body, "ended process(es) with their logs", yes, dry_run)


def _purge(c: Any, path: str, body: dict[str, Any], what: str, yes: bool, dry_run: bool) -> None:
    counted = c.client.call("POST", path, body={**body, "dry_run": True}, timeout=None)
    if dry_run:
        _print_purge(c.output, counted)
        return
    if counted["matched"] == 0:
        _print_purge(c.output, counted)
        return
    confirm(f"Purge {counted['matched']} {what}?", yes)
    _print_purge(c.output, c.client.progress_lines(path, body, c.output, "purging"))


def _print_purge(out: Output, result: dict[str, Any]) -> None:
    if out.json:
        out.print_json(result)
        return
    verb = "would delete" if result["dry_run"] else "deleted"
    out.out.print(
        f"{result['kind']}: {result['matched']} matched, {verb} "
        f"{result['matched'] if result['dry_run'] else result['deleted']}"
        + ("" if result["dry_run"] else f" in {result['seconds']:.1f} s ({result['jobs']} jobs)"),
        highlight=False,
    )


def _control(
    ctx: typer.Context,
    action: str,
    process_ids: list[str] | None,
    flt: dict[str, Any],
    all_: bool,
    yes: bool,
    dry_run: bool,
    json_output: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    c = ctl(ctx, json_output)
    ids = [_uuid(i, "a process id") for i in process_ids or []]
    extra = extra or {}
    if len(ids) == 1 and not flt and not all_ and not dry_run:
        process = c.client.call("POST", f"/api/v1/processes/{ids[0]}/{action}", body=extra or None)
        if c.output.json:
            c.output.print_json(process)
        else:
            _show_process(c.output, process)
        return
    if not ids and not flt and not all_:
        raise CtlError(f"say which processes to {action}: ids, filters, or --all", 2)
    body = {**flt, **extra, **({"ids": ids} if ids else {}), **({"all": True} if all_ else {})}
    path = f"/api/v1/processes/{action}"
    if dry_run or (action in ("cancel", "replay") and not yes):
        counted = c.client.call("POST", path, body={**body, "dry_run": True}, timeout=None)
        if dry_run:
            _print_batch(c.output, counted)
            return
        confirm(f"{action.capitalize()} {counted['matched']} process(es)?", yes)
    result = c.client.progress_lines(path, body, c.output, f"{action}")
    _print_batch(c.output, result)
    if result["failed"]:
        raise CtlError(f"{result['failed']} process(es) failed")


def _print_batch(out: Output, result: dict[str, Any]) -> None:
    if out.json:
        out.print_json(result)
        return
    out.out.print(
        f"{result['action']}: {result['matched']} matched, {result['changed']} changed, "
        f"{result['skipped']} skipped, {result['failed']} failed"
        + (" (dry run)" if result["dry_run"] else ""),
        highlight=False,
    )
    for error in result["errors"]:
        out.err.print(f"  {error['process_id']}: {error['detail']}", highlight=False)


IdsArg = Annotated[
    list[str] | None, typer.Argument(help="Process ids; or select with the filters.")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every process (when no id nor filter).")]


def _control_command(action: str, doc: str) -> Any:
    def command(
        ctx: typer.Context,
        process_ids: IdsArg = None,
        status: StatusOpt = None,
        pipeline: PipelineOpt = None,
        emitter: EmitterOpt = None,
        envelope_id: EnvelopeOpt = None,
        group: GroupOpt = None,
        replay_of: ReplayOfOpt = None,
        acked: AckedOpt = None,
        since: SinceOpt = None,
        until: UntilOpt = None,
        all_: AllOpt = False,
        yes: YesOpt = False,
        dry_run: DryRunOpt = False,
        json_output: JsonOpt = False,
    ) -> None:
        c = ctl(ctx, json_output)
        flt = selection(
            c.client,
            status=status,
            pipeline=pipeline,
            emitter=emitter,
            envelope_id=envelope_id,
            group=group,
            replay_of=replay_of,
            acked=acked,
            since=since,
            until=until,
        )
        _control(ctx, action, process_ids, flt, all_, yes, dry_run, json_output)

    command.__doc__ = doc
    return command


ps.command("pause")(
    _control_command(
        "pause",
        "Pause running processes: nothing more of them is dispatched.\n\n"
        "Example: xbusctl ps pause --pipeline billing --status running",
    )
)
ps.command("resume")(
    _control_command(
        "resume",
        "Resume paused processes.\n\nExample: xbusctl ps resume --status paused",
    )
)
ps.command("cancel")(
    _control_command(
        "cancel",
        "Cancel processes: they end in error (canceled), open requests withdrawn.\n\n"
        "Example: xbusctl ps cancel 0b5e...-...",
    )
)


@ps.command("replay")
def ps_replay(
    ctx: typer.Context,
    process_ids: IdsArg = None,
    on: Annotated[
        str,
        typer.Option(
            "--on",
            help="same: the pipeline version the process ran on; current: "
            "the pipeline that takes the envelope today.",
        ),
    ] = "same",
    status: StatusOpt = None,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    envelope_id: EnvelopeOpt = None,
    group: GroupOpt = None,
    replay_of: ReplayOfOpt = None,
    acked: AckedOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    all_: AllOpt = False,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Replay ended processes: new processes on the same trigger envelopes (replay_of set).

    Example: xbusctl ps replay --status error --since 1d --on current
    """
    if on not in ("same", "current"):
        raise typer.BadParameter("--on is same or current")
    c = ctl(ctx, json_output)
    flt = selection(
        c.client,
        status=status,
        pipeline=pipeline,
        emitter=emitter,
        envelope_id=envelope_id,
        group=group,
        replay_of=replay_of,
        acked=acked,
        since=since,
        until=until,
    )
    _control(ctx, "replay", process_ids, flt, all_, yes, dry_run, json_output, {"pipeline": on})


# ---------------------------------------------------------------------------- postmortem
@pm.command("list")
def pm_list(
    ctx: typer.Context,
    level: Annotated[
        list[str] | None, typer.Option("--level", "-l", help="notice, warning, error (repeat).")
    ] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(
            "--status", "-s", help="new, opened, closed (repeat); default new and opened."
        ),
    ] = None,
    every: Annotated[bool, typer.Option("--every", help="Any postmortem status.")] = False,
    pipeline: PipelineOpt = None,
    emitter: EmitterOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    log_lines: Annotated[
        int, typer.Option("--logs", min=0, max=1000, help="Log lines per process.")
    ] = 5,
    limit: LimitOpt = 50,
    all_pages: AllPagesOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Failed and warned processes to look into, newest first, with their first log lines.

    Example: xbusctl pm list --level error
    """
    c = ctl(ctx, json_output)
    statuses = None if every else (status or ["new", "opened"])
    params = {
        "level": level,
        "status": statuses,
        "pipeline_id": resolve_pipeline(c.client, pipeline) if pipeline else None,
        "emitter": emitter,
        "created_after": parse_when(since) if since else None,
        "created_before": parse_when(until) if until else None,
        "logs": log_lines,
    }
    items = list(c.client.pages("/api/v1/postmortems", params, None if all_pages else limit))
    if c.output.json:
        c.output.print_json(items)
        return
    rows = [
        {
            **item["process"],
            "pm": item["process"]["postmortem"],
            "first": next(
                (e["text"] for e in item["logs"] if e["level"] == "error"),
                item["process"].get("status_reason"),
            ),
        }
        for item in items
    ]
    c.output.table(
        [
            ("ID", lambda r: r["id"]),
            ("LEVEL", lambda r: r["pm"]["level"]),
            ("PM", lambda r: r["pm"]["status"]),
            ("STATUS", lambda r: r["status"]),
            ("PIPELINE", lambda r: r.get("pipeline_name")),
            ("EMITTER", lambda r: r.get("emitter_name")),
            ("CREATED", lambda r: r["created_at"]),
            ("COMMENT", lambda r: r["pm"].get("comment")),
            ("FIRST ERROR", lambda r: r["first"]),
        ],
        rows,
    )
    c.output.note(f"{len(items)} process(es)")


@pm.command("set")
def pm_set(
    ctx: typer.Context,
    process_ids: Annotated[list[str], typer.Argument(help="Process ids.")],
    status: Annotated[
        str | None, typer.Option("--status", "-s", help="new, opened or closed.")
    ] = None,
    comment: Annotated[
        str | None, typer.Option("--comment", "-m", help='The comment ("" clears it).')
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Set the postmortem status and/or comment of processes.

    Example: xbusctl pm set 0b5e...-... --status closed -m "fixed in billing 2.3"
    """
    c = ctl(ctx, json_output)
    if status is None and comment is None:
        raise CtlError("give --status, --comment, or both", 2)
    body = {k: v for k, v in (("status", status), ("comment", comment)) if v is not None}
    changed = [
        c.client.call(
            "PATCH", f"/api/v1/processes/{_uuid(pid, 'a process id')}/postmortem", body=body
        )
        for pid in process_ids
    ]
    if c.output.json:
        c.output.print_json(changed)
        return
    for process in changed:
        record = process["postmortem"]
        c.output.out.print(
            f"{process['id']}: {record['level']} {record['status']}"
            + (f" ({record['comment']})" if record.get("comment") else ""),
            highlight=False,
        )


# ---------------------------------------------------------------------------- envelopes, logs
@envelope.command("get")
def envelope_get(
    ctx: typer.Context,
    envelope_id: Annotated[str, typer.Argument(help="The envelope id.")],
    items: Annotated[bool, typer.Option("--items", help="Print the items too.")] = False,
    max_items: Annotated[
        int, typer.Option("--max-items", min=1, help="Items per event, at most.")
    ] = 100,
    json_output: JsonOpt = False,
) -> None:
    """An envelope: status, sizes, events (and items).

    Example: xbusctl envelope get 5f0c...-... --items
    """
    c = ctl(ctx, json_output)
    eid = _uuid(envelope_id, "the envelope id")
    found = c.client.call("GET", f"/api/v1/envelopes/{eid}")
    if items:
        for event in found["events"]:
            event["items"] = [
                item
                for page in _item_pages(c.client, event["items_url"], max_items)
                for item in page
            ][:max_items]
    if c.output.json:
        c.output.print_json(found)
        return
    c.output.fields(
        [
            (name, found.get(name))
            for name in (
                "id",
                "status",
                "status_reason",
                "emitter_id",
                "process_id",
                "node_id",
                "output",
                "event_count",
                "item_count",
                "created_at",
                "completed_at",
            )
        ]
        + [("size", size(found.get("size_bytes")))]
    )
    c.output.table(
        [
            ("EVENT", lambda e: e["id"]),
            ("TYPE", lambda e: e["type"]),
            ("ENCODING", lambda e: e["encoding"]),
            ("ITEMS", lambda e: e["item_count"]),
            ("SIZE", lambda e: size(e["size_bytes"])),
        ],
        found["events"],
    )
    if items:
        for event in found["events"]:
            c.output.out.print(f"[bold]{event['type']}[/bold] ({event['id']})")
            for item in event["items"]:
                text = item if isinstance(item, str) else json.dumps(item)
                c.output.out.print(f"  {text}", highlight=False, markup=False)


def _item_pages(client: Client, url: str, most: int) -> Iterator[list[Any]]:
    cursor = None
    seen = 0
    while seen < most:
        page = client.call("GET", url, params={"cursor": cursor, "limit": min(most, 1000)})
        yield page["items"]
        seen += len(page["items"])
        cursor = page.get("next_cursor")
        if not cursor:
            return


@envelope.command("purge")
def envelope_purge(
    ctx: typer.Context,
    before: Annotated[
        str | None, typer.Option("--before", help="Created before: date/time or duration ago.")
    ] = None,
    unreferenced: Annotated[
        bool, typer.Option("--unreferenced", help="Only envelopes no process refers to.")
    ] = False,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete envelopes (running and paused processes keep theirs).

    Example: xbusctl envelope purge --before 30d --unreferenced --yes
    """
    c = ctl(ctx, json_output)
    body: dict[str, Any] = {"unreferenced": unreferenced}
    if before:
        body["before"] = parse_when(before)
    _purge(c, "/api/v1/envelopes/purge", body, "envelope(s)", yes, dry_run)


@logs.command("purge")
def logs_purge(
    ctx: typer.Context,
    before: Annotated[
        str, typer.Option("--before", help="Older than: date/time or duration ago (30d).")
    ],
    level: Annotated[
        list[str] | None, typer.Option("--level", "-l", help="Only these levels (repeat).")
    ] = None,
    yes: YesOpt = False,
    dry_run: DryRunOpt = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete log entries older than a date.

    Example: xbusctl logs purge --before 90d --level notice --yes
    """
    c = ctl(ctx, json_output)
    body: dict[str, Any] = {"before": parse_when(before)}
    if level:
        body["level"] = level
    _purge(c, "/api/v1/logs/purge", body, "log entr(ies)", yes, dry_run)
