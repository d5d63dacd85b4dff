"""Long operations (batch control, purges) report as they go: a `start` step with the total,
`progress` steps with how much is done, and an `end` step with the result. The HTTP layer
answers either the result alone or every step as an NDJSON line (a CLI progress bar)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Step(Generic[R]):
    event: Literal["start", "progress", "end"]
    total: int
    done: int
    result: R | None = None

    def line(self) -> dict[str, Any]:
        body: dict[str, Any] = {"event": self.event, "total": self.total, "done": self.done}
        if self.result is not None:
            body["result"] = self.result.model_dump(mode="json")
        return body
