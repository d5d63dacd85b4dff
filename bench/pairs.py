"""One bench, this tree against a git revision, run in alternating pairs.

    uv run python -m bench.pairs --against REV [--pairs N] [--json FILE] BENCH [OPTIONS...]

Single runs of an end-to-end bench drift by ±15-25% on a shared 2-core VM from one minute to
the next (the machine's other tenants, its CPU frequency, the page cache): a change of 5% is
invisible in one run of each tree. This runs `python -m bench.BENCH OPTIONS... --json F`
N times in this tree and N times in REV (checked out in a temporary git worktree, removed at
the end), back to back and in both orders (this, REV; REV, this; ...), so that both trees
meet the same drift, then prints each figure that says how fast (the ratios against the
bench's baseline, the rates, the CPU per unit of work and in all, latencies p50 and p99):
each tree's mean, its range, and the change of the means. A run that warned of other
processes on the machine is counted as disturbed and said so; it stays in the means (take
more pairs); so is a run that went wrong (errors, processes not completed, a round timed
out, problems in xbusd's log). The machine's speed drifts from one run to the next, the
rates and CPU seconds with it (two pairs of one commit against itself: the webhook drain
555 against 651 deliveries/s, xbusd's CPU per envelope +18%, the baseline's +12% in the
same runs; the ratios against each run's own baseline, 0.341 against 0.342, cancelled it
there, not always): a change of less than ~10% needs more than two pairs, or
`bench.request_cpu --against`. A Ctrl-C interrupts the run under way as its own Ctrl-C
would (it stops its servers by pid); the worktree is removed.

BENCH is any bench of this directory that writes its figures with `--json` (`http_bus`,
`webhooks`, `nats`, `batch_emit`); each run is the bench's own (its servers on 127.0.0.1,
stopped by pid). REV runs its own code of the bench and of the app, on this tree's virtual
environment: a revision whose dependencies differ is compared on this tree's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.http_bus import ROOT
from bench.request_cpu import worktree

BENCHES = ("http_bus", "webhooks", "nats", "batch_emit")
# The figures compared: a path of the JSON document's keys, joined by dots.
_FIGURE = re.compile(
    r"^ratios\.|(?:^|\.|_)per_s$|_ms_per_|latency_ms\.p(?:50|99)$|^bus\.(?:.*\.)?cpu_s\."
    r"(?:server|postgres)$"
)
# Left out: the generator's own CPU, and a rate the bench sets itself (the paced round's).
_NOT_FIGURE = re.compile(r"^options\.|loadgen_|client_cpu_|^bus\.paced\.per_s$")
# A run that went wrong, whatever its exit status: requests lost or refused, a round that
# timed out, problems in xbusd's log.
_PROBLEM = re.compile(r"(?:^|\.|_)(?:errors|timed_out|not_completed|log_problems)$")
_RUN_TIMEOUT = 1800.0
_STOP_GRACE = 60.0


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a bench's JSON document with its key path (keys joined by dots); the
    value of a problem's key whole (a count, or a mapping of errors by kind)."""
    if isinstance(value, dict) and not _PROBLEM.search(path):
        for key, inner in value.items():
            yield from leaves(inner, f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def figures(document: dict[str, Any]) -> dict[str, float]:
    """The numbers of a bench's JSON document that say how fast, by their key path."""
    return {
        path: float(value)
        for path, value in leaves(document)
        if isinstance(value, int | float)
        and not isinstance(value, bool)
        and _FIGURE.search(path)
        and not _NOT_FIGURE.search(path)
    }


def problems(document: dict[str, Any]) -> list[str]:
    """What went wrong in a run, by key path: errors counted, a round that timed out,
    processes not completed, problems in xbusd's log (an empty or zero value is none)."""
    return [path for path, value in leaves(document) if _PROBLEM.search(path) and value]


def run_once(tree: Path, bench: str, options: list[str], out: Path) -> tuple[dict[str, Any], bool]:
    """One run of the bench in `tree`: its JSON document, and whether it warned of other
    processes on the machine. Its output goes to `out` with a .txt suffix."""
    document = out.with_suffix(".json")
    with out.with_suffix(".txt").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"bench.{bench}", *options, "--json", str(document)],
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # Out of the terminal's process group: a Ctrl-C reaches this tool alone, which
            # interrupts the bench once (a second SIGINT could cut its cleanup short).
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=_RUN_TIMEOUT)
        except BaseException:
            # A run past its time, or Ctrl-C here: the bench is interrupted as by Ctrl-C,
            # which stops its servers by pid; killed only if it does not end in time.
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    text = out.with_suffix(".txt").read_text(errors="replace")
    if returncode != 0 or not document.exists():
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"bench.{bench} failed in {tree} (exit {returncode}):\n{tail}")
    disturbed = "WARNING: other processes" in text
    return json.loads(document.read_text()), disturbed


def shared(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    """The figures every run has, in the order of the first run's document."""
    sides = list(runs.values())
    return [k for k in sides[0][0] if all(k in run for side in sides for run in side)]


def summary(runs: dict[str, list[dict[str, float]]], names: tuple[str, str]) -> list[list[str]]:
    """Rows: figure, each tree's mean (min-max), the change of the means."""
    rows = []
    for key in shared(runs):
        cells = [key]
        means = []
        for name in names:
            values = [run[key] for run in runs[name]]
            mean = statistics.fmean(values)
            means.append(mean)
            cells.append(f"{_number(mean)} ({_number(min(values))}-{_number(max(values))})")
        ours, other = means
        cells.append(f"{(ours - other) / other:+.0%}" if other else "n/a")
        rows.append(cells)
    return rows


def _number(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(header))]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pairs", description=__doc__)
    parser.add_argument("--against", metavar="REV", required=True, help="the git revision")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each tree [2]")
    parser.add_argument("--json", type=Path, default=None, help="also write every run here")
    parser.add_argument("--keep", type=Path, default=None, help="keep each run's output here")
    parser.add_argument("bench", choices=BENCHES)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the bench's own options")
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    if "--json" in args.options:
        parser.error("the bench's --json is this tool's: pass --json before BENCH")
    names = ("this tree", args.against)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    documents: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    disturbed = dict.fromkeys(names, 0)
    wrong: list[str] = []
    with contextlib.ExitStack() as stack:
        other = stack.enter_context(worktree(args.against))
        keep = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        keep.mkdir(parents=True, exist_ok=True)
        trees = {names[0]: ROOT, names[1]: other}
        for pair in range(args.pairs):
            order = names if pair % 2 == 0 else names[::-1]
            for name in order:
                label = "this" if name == names[0] else "against"
                print(f"pair {pair + 1}/{args.pairs}: bench.{args.bench} in {name} ...", flush=True)
                document, warned = run_once(
                    trees[name], args.bench, args.options, keep / f"{label}-{pair + 1}"
                )
                wrong += [f"{name} run {pair + 1}: {what}" for what in problems(document)]
                runs[name].append(figures(document))
                documents[name].append(document)
                disturbed[name] += warned
    header = ["figure", f"{names[0]} (mean, min-max)", f"{names[1]} (mean, min-max)", "change"]
    print()
    print(f"bench.{args.bench} {' '.join(args.options)}: {args.pairs} pairs, both orders")
    print(table(summary(runs, names), header))
    left_out = {k for side in runs.values() for run in side for k in run} - set(shared(runs))
    if left_out:
        print(f"figures not in every run, left out: {', '.join(sorted(left_out))}")
    print(
        f"runs disturbed by other processes: {names[0]} {disturbed[names[0]]}/{args.pairs}, "
        f"{names[1]} {disturbed[names[1]]}/{args.pairs}"
    )
    if wrong:
        print("runs that went wrong (in the means all the same):\n  " + "\n  ".join(wrong))
    if args.json is not None:
        args.json.write_text(
            json.dumps({"against": args.against, "runs": documents}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
