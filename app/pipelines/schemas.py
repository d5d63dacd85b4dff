"""Request and response bodies of the pipeline API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from app.models.enums import PipelineStatus

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
DESCRIPTION_MAX = 10_000
# A graph is a handful of nodes; a cap keeps YAML parsing and validation (which run on
# the event loop) short.
GRAPH_SOURCE_MAX = 1024 * 1024


def _storable(value: Any) -> Any:
    """Refuse text PostgreSQL cannot store (NUL characters, lone surrogates), anywhere in a
    string or in a JSON structure, so that bad input is a 422 and not a database error."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise ValueError("text must not contain NUL characters")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text must be valid Unicode (no lone surrogates)") from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


PipelineName = Annotated[
    str,
    StringConstraints(strict=True, pattern=NAME_PATTERN),
    Field(description="1 to 255 letters, digits, `.`, `_` or `-`, starting with a letter or digit"),
]
PipelineVersion = Annotated[
    str,
    StringConstraints(strict=True, pattern=VERSION_PATTERN),
    Field(
        description="1 to 64 letters, digits, `.`, `_`, `+` or `-`, starting with a letter or digit"
    ),
]
Description = Annotated[
    str,
    StringConstraints(strict=True, max_length=DESCRIPTION_MAX),
    AfterValidator(_storable),
]
GraphInput = Annotated[
    dict[str, Any] | Annotated[str, StringConstraints(strict=True, max_length=GRAPH_SOURCE_MAX)],
    AfterValidator(_storable),
    Field(
        description="The pipeline graph: a JSON object, or a YAML (or JSON) document as a string, "
        "with `nodes` and `edges`. A document that is not a mapping is refused (422); a graph "
        "with problems is saved and reported in `validation_messages`."
    ),
]


class PipelineCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: PipelineName
    version: PipelineVersion
    description: Description | None = None
    graph: GraphInput


class PipelineUpdate(BaseModel):
    """Every field is optional; a field left out keeps its value. Only a draft can be edited."""

    model_config = ConfigDict(extra="forbid")

    name: PipelineName | None = None
    version: PipelineVersion | None = None
    description: Description | None = Field(None, description="null clears it")
    graph: GraphInput | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> PipelineUpdate:
        for name in ("name", "version", "graph"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null; leave it out to keep it")
        return self


class PipelineStatusChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: PipelineStatus


class PipelineValidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    graph: GraphInput


class ValidationMessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    level: Literal["error", "warning"]
    text: str
    node_id: str | None = Field(description="The node the message is about, if any")


class PipelineSummary(BaseModel):
    """A pipeline as listed: everything but `source` (the graph as sent), left out for brevity;
    `GET /api/v1/pipelines/{id}` has it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    version: str
    description: str
    status: PipelineStatus
    valid: bool = Field(description="Whether the graph had no error when last checked")
    validation_messages: list[ValidationMessageRead] = Field(
        description="Errors and warnings from the last check (save, edit or status change)"
    )
    graph: dict[str, Any] | None = Field(
        description="The canonical graph (every field explicit), or null when the document "
        "could not be read at all (a YAML syntax error)"
    )
    created_at: datetime
    updated_at: datetime
    status_changed_at: datetime | None


class PipelineRead(PipelineSummary):
    source: str = Field(
        description="The graph as sent: the YAML text, or the JSON object serialised"
    )


class PipelinePage(BaseModel):
    items: list[PipelineSummary] = Field(description="Pipelines, without `source`")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at end")


class GraphValidation(BaseModel):
    valid: bool
    validation_messages: list[ValidationMessageRead]
    graph: dict[str, Any] | None = Field(
        description="The canonical graph, or null when the document could not be read"
    )
