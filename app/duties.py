"""Background duties the lifespan runs (and cancels, in reverse order, at shutdown). Each is
a coroutine factory taking the app state; add a duty here, not in main.py."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from app.bus.supervisor import supervise
from app.state import AppState

Duty = Callable[[AppState], Coroutine[Any, Any, None]]


async def _supervisor(state: AppState) -> None:
    await supervise(state.db, state.director, state.settings.envelope_stall_timeout)


DUTIES: list[tuple[str, Duty]] = [
    ("supervisor", _supervisor),
]
