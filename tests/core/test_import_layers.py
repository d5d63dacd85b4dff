"""The import layers (the `layers` contract in pyproject.toml, checked by `lint-imports` in
scripts/lint) name every module of app/: a module in no layer would escape the check."""

from __future__ import annotations

import tomllib
from pathlib import Path

import grimp

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_module_is_in_a_layer() -> None:
    contracts = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]
    [layers] = [c["layers"] for c in contracts["contracts"] if c["id"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    graph = grimp.build_graph("app", cache_dir=None)
    outside = sorted(
        module
        for module in graph.modules
        if not any(module == n or module.startswith(f"{n}.") for n in named)
        # a package holding listed modules (app.accounts holds app.accounts.router...)
        and not any(n.startswith(f"{module}.") for n in named)
    )
    assert not outside, f"put these modules in a layer of pyproject.toml: {', '.join(outside)}"
