"""xbusctl pipeline commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.ctl_client import Client, CtlError, Output, confirm, ctl
from app.cli.ctl_ps import resolve_pipeline

pipeline = typer.Typer(help="Pipelines: the graphs that route envelopes from emitters.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
PipelineArg = Annotated[
    str, typer.Argument(help="The pipeline: id, NAME:VERSION, or NAME (its active version).")
]
GraphFile = Annotated[
    Path,
    typer.Argument(
        help="The graph file (YAML or JSON: nodes and edges). It is only read.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]
STATUSES = ("draft", "active", "inactive")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlError(f"cannot read {path}: {exc}", 2) from None


def _messages(out: Output, messages: list[dict[str, Any]]) -> None:
    for m in messages:
        node = f" [{m['node_id']}]" if m.get("node_id") else ""
        style = "red" if m["level"] == "error" else "yellow"
        out.err.print(f"[{style}]{m['level']}[/{style}]{node}: {m['text']}", highlight=False)


def _summary(p: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("name", p["name"]),
        ("version", p["version"]),
        ("id", p["id"]),
        ("status", p["status"]),
        ("valid", p["valid"]),
        ("description", p.get("description") or None),
        ("updated", p.get("updated_at")),
    ]


@pipeline.command("save")
def pipeline_save(
    ctx: typer.Context,
    graph_file: GraphFile,
    name: Annotated[
        str | None, typer.Option("--name", help="Pipeline name (default: the file name).")
    ] = None,
    version: Annotated[str, typer.Option("--version", "-v", help="Pipeline version.")] = "1",
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Then set this status (active, ...).")
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Save a pipeline from a graph file: create it, or update it while it is a draft. The
    file is never written to; name, version and status come from the options.

    Example: xbusctl pipeline save billing.yaml --name billing --version 2 --status active
    """
    c = ctl(ctx, json_output)
    if status is not None and status not in STATUSES:
        raise typer.BadParameter(f"--status is one of {', '.join(STATUSES)}")
    source = _read(graph_file)
    name = name or graph_file.stem
    found = list(c.client.pages("/api/v1/pipelines", {"name": name, "version": version}, 1))
    body: dict[str, Any] = {"graph": source}
    if description is not None:
        body["description"] = description
    if found:
        existing = found[0]
        if existing["status"] != "draft":
            raise CtlError(
                f"pipeline {name} {version} is {existing['status']}: only a draft can be "
                "edited; save it under another --version"
            )
        saved = c.client.call("PUT", f"/api/v1/pipelines/{existing['id']}", body=body)
    else:
        saved = c.client.call(
            "POST", "/api/v1/pipelines", body={**body, "name": name, "version": version}
        )
    if status is not None and status != saved["status"]:
        saved = c.client.call(
            "POST", f"/api/v1/pipelines/{saved['id']}/status", body={"status": status}
        )
    if c.output.json:
        c.output.print_json(saved)
    else:
        c.output.fields(_summary(saved))
        _messages(c.output, saved["validation_messages"])
    if not saved["valid"]:
        raise CtlError(f"pipeline {name} {version} was saved, but its graph has errors")


@pipeline.command("get")
def pipeline_get(
    ctx: typer.Context,
    ref: PipelineArg,
    source: Annotated[bool, typer.Option("--source", help="Print the graph as saved.")] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write the graph as saved to this file.", dir_okay=False
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Show a pipeline (and its graph source).

    Example: xbusctl pipeline get billing:2 --source
    """
    c = ctl(ctx, json_output)
    found = c.client.call("GET", f"/api/v1/pipelines/{resolve_pipeline(c.client, ref)}")
    if output is not None:
        if output.exists() and not force:
            raise CtlError(f"{output} exists; use --force to replace it")
        output.write_text(found["source"], encoding="utf-8")
        c.output.note(f"wrote {output}")
    if c.output.json:
        c.output.print_json(found)
        return
    if source:
        c.output.out.file.write(found["source"].rstrip("\n") + "\n")
        return
    c.output.fields(_summary(found))
    _messages(c.output, found["validation_messages"])


@pipeline.command("list")
def pipeline_list(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option("--name", help="Only this name.")] = None,
    status: Annotated[str | None, typer.Option("--status", help="draft, active, inactive.")] = (
        None
    ),
    valid: Annotated[bool | None, typer.Option("--valid/--invalid")] = None,
    json_output: JsonOpt = False,
) -> None:
    """List pipelines.

    Example: xbusctl pipeline list --status active
    """
    c = ctl(ctx, json_output)
    items = list(
        c.client.pages("/api/v1/pipelines", {"name": name, "status": status, "valid": valid}, None)
    )
    if c.output.json:
        c.output.print_json(items)
        return
    c.output.table(
        [
            ("NAME", lambda p: p["name"]),
            ("VERSION", lambda p: p["version"]),
            ("STATUS", lambda p: p["status"]),
            ("VALID", lambda p: p["valid"]),
            ("ID", lambda p: p["id"]),
            ("UPDATED", lambda p: p["updated_at"]),
        ],
        items,
    )


@pipeline.command("validate")
def pipeline_validate(
    ctx: typer.Context, graph_file: GraphFile, json_output: JsonOpt = False
) -> None:
    """Check a graph file against the current actors, without saving it.

    Example: xbusctl pipeline validate billing.yaml
    """
    c = ctl(ctx, json_output)
    check = c.client.call("POST", "/api/v1/pipelines/validate", body={"graph": _read(graph_file)})
    if c.output.json:
        c.output.print_json(check)
    else:
        _messages(c.output, check["validation_messages"])
        c.output.out.print("valid" if check["valid"] else "invalid", highlight=False)
    if not check["valid"]:
        raise CtlError(f"{graph_file}: the graph has errors")


@pipeline.command("set-status")
def pipeline_set_status(
    ctx: typer.Context,
    ref: PipelineArg,
    status: Annotated[str, typer.Argument(help="draft, active or inactive.")],
    json_output: JsonOpt = False,
) -> None:
    """Activate, deactivate or return a pipeline to draft.

    Example: xbusctl pipeline set-status billing:2 active
    """
    c = ctl(ctx, json_output)
    if status not in STATUSES:
        raise typer.BadParameter(f"status is one of {', '.join(STATUSES)}")
    pid = resolve_pipeline(c.client, ref)
    saved = c.client.call("POST", f"/api/v1/pipelines/{pid}/status", body={"status": status})
    if c.output.json:
        c.output.print_json(saved)
    else:
        c.output.fields(_summary(saved))
        _messages(c.output, saved["validation_messages"])


@pipeline.command("delete")
def pipeline_delete(
    ctx: typer.Context,
    ref: PipelineArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_output: JsonOpt = False,
) -> None:
    """Delete a pipeline that is not active (its processes stay).

    Example: xbusctl pipeline delete billing:1 --yes
    """
    c = ctl(ctx, json_output)
    pid = resolve_pipeline(c.client, ref)
    confirm(f"Delete pipeline {ref}?", yes)
    c.client.call("DELETE", f"/api/v1/pipelines/{pid}")
    if c.output.json:
        c.output.print_json({"deleted": pid})
    else:
        c.output.out.print(f"deleted pipeline {ref}", highlight=False)


@pipeline.command("graph")
def pipeline_graph(
    ctx: typer.Context,
    ref: PipelineArg,
    format_: Annotated[str, typer.Option("--format", "-f", help="text or dot.")] = "text",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the canonical graph as JSON.")
    ] = False,
) -> None:
    """Print a pipeline's graph, as text or as Graphviz DOT.

    Example: xbusctl pipeline graph billing:2 --format dot | dot -Tsvg > billing.svg
    """
    c = ctl(ctx, json_output)
    if format_ not in ("text", "dot"):
        raise typer.BadParameter("--format is text or dot")
    found = _load(c.client, ref)
    graph = found.get("graph")
    if not graph:
        raise CtlError(f"pipeline {found['name']} {found['version']} has no readable graph")
    if c.output.json:
        c.output.print_json(graph)
        return
    render = graph_dot if format_ == "dot" else graph_text
    c.output.out.file.write(render(found["name"], found["version"], graph))


def _load(client: Client, ref: str) -> dict[str, Any]:
    found: dict[str, Any] = client.call("GET", f"/api/v1/pipelines/{resolve_pipeline(client, ref)}")
    return found


def _edge(text: str) -> tuple[str, str, str, str]:
    source, _, target = text.partition("->")
    a, _, ap = source.partition(".")
    b, _, bp = target.partition(".")
    return a, ap or "default", b, bp or "default"


def _node_refs(node: dict[str, Any]) -> str:
    refs = [*node.get("actors", []), *(f"role {r}" for r in node.get("roles", []))]
    if node.get("rolebroadcast"):
        refs.append("(broadcast)")
    return ", ".join(refs)


def graph_text(name: str, version: str, graph: dict[str, Any]) -> str:
    lines = [f"pipeline {name} {version}", "nodes:"]
    for node in graph.get("nodes", []):
        extra = []
        types = node.get("sourcematch", {}).get("eventtypes") or []
        if types:
            extra.append(f"events: {', '.join(types)}")
        if node.get("inputs") and node["inputs"] != ["default"]:
            extra.append(f"inputs: {', '.join(node['inputs'])}")
        if node.get("outputs") and node["outputs"] != ["default"]:
            extra.append(f"outputs: {', '.join(node['outputs'])}")
        lines.append(
            f"  {node['id']:<16} {node['type']:<9} {_node_refs(node)}"
            + (f"  [{'; '.join(extra)}]" if extra else "")
        )
    lines.append("edges:")
    for text in graph.get("edges", []):
        a, ap, b, bp = _edge(text)
        left = a if ap == "default" else f"{a}.{ap}"
        right = b if bp == "default" else f"{b}.{bp}"
        lines.append(f"  {left} -> {right}")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _q(text: str) -> str:
    return f'"{_escape(text)}"'


SHAPES = {"emitter": "invhouse", "worker": "box", "consumer": "house"}


def graph_dot(name: str, version: str, graph: dict[str, Any]) -> str:
    lines = [f"digraph {_q(f'{name} {version}')} {{", "  rankdir=LR;"]
    for node in graph.get("nodes", []):
        parts = [node["id"], node["type"]]
        if _node_refs(node):
            parts.append(_node_refs(node))
        label = "\\n".join(_escape(part) for part in parts)  # DOT's line break: \n
        shape = SHAPES.get(node["type"], "box")
        lines.append(f'  {_q(node["id"])} [shape={shape}, label="{label}"];')
    for text in graph.get("edges", []):
        a, ap, b, bp = _edge(text)
        attrs = "" if ap == bp == "default" else f" [label={_q(f'{ap} -> {bp}')}]"
        lines.append(f"  {_q(a)} -> {_q(b)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"
