"""`python -m app.openapi [FILE]`: write the OpenAPI document of the app (openapi/openapi.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from app.config import Settings
from app.main import create_app

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def generate() -> dict[str, Any]:
    # Settings only shape the routes (e.g. /metrics); nothing is connected.
    app = create_app(Settings(database_url="postgresql://unused/unused", nats_url=None))
    return app.openapi()


def render() -> str:
    return json.dumps(generate(), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
