"""The README documents every setting (its environment variable is in the table)."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_readme() -> None:
    text = README.read_text(encoding="utf-8")
    missing = [
        f"XBUS_{name.upper()}"
        for name in Settings.model_fields
        if f"`XBUS_{name.upper()}`" not in text
    ]
    assert not missing, f"document these settings in the README table: {', '.join(missing)}"
