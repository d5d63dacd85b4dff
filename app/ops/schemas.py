"""Bodies of the operations API: process selections for batch control, export and purge;
postmortem; summaries and storage statistics."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from app.accounts.schemas import storable_text
from app.bus.control import ReplayPipeline
from app.models.enums import LogLevel, PostmortemStatus, ProcessStatus
from app.processes.schemas import LogRead, ProcessRead

MiB = 1024 * 1024
IDS_MAX = 10_000
FINAL_STATUSES = (ProcessStatus.DONE, ProcessStatus.ERROR)

ActorRef = Annotated[
    str,
    Field(min_length=1, max_length=255, description="An actor id (UUID) or name."),
    AfterValidator(storable_text),
]


class ProcessSelection(BaseModel):
    """Which processes: the filters of `GET /api/v1/processes` (all of them must hold), and
    optionally a list of ids."""

    model_config = ConfigDict(extra="forbid")

    ids: list[uuid.UUID] | None = Field(
        None, max_length=IDS_MAX, description=f"Only these processes (at most {IDS_MAX})."
    )
    status: list[ProcessStatus] | None = Field(None, description="Any of these statuses.")
    pipeline_id: uuid.UUID | None = None
    emitter: ActorRef | None = Field(None, description="The emitter actor, by id or name.")
    envelope_id: uuid.UUID | None = Field(None, description="The trigger envelope.")
    group_id: uuid.UUID | None = None
    replay_of: uuid.UUID | None = None
    result_acked: bool | None = None
    created_after: AwareDatetime | None = None
    created_before: AwareDatetime | None = None

    def criteria(self) -> list[str]:
        return [
            name
            for name in ProcessSelection.model_fields
            if getattr(self, name) is not None and getattr(self, name) != []
        ]


class _Guarded(ProcessSelection):
    all: bool = Field(
        False, description="Required to select every process when no id or filter is given."
    )
    dry_run: bool = Field(False, description="Count what would be done; change nothing.")

    @model_validator(mode="after")
    def _something_selected(self) -> _Guarded:
        if self.ids == []:
            raise ValueError("ids is empty: give at least one id, or leave ids out")
        if not self.criteria() and not self.all:
            raise ValueError(
                "select processes with ids or filters, or say `all: true` for every process"
            )
        return self


class ProcessBatch(_Guarded):
    """Pause, resume or cancel every selected process (those whose status does not allow it
    are skipped and counted)."""


class ReplayBatch(_Guarded):
    pipeline: ReplayPipeline = Field(
        ReplayPipeline.SAME,
        description="`same`: the pipeline version the original ran on; `current`: the active "
        "pipeline that takes the envelope today.",
    )


class ReplayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: ReplayPipeline = Field(
        ReplayPipeline.SAME,
        description="`same`: the pipeline version the original ran on; `current`: the active "
        "pipeline that takes the envelope today.",
    )


class BatchError(BaseModel):
    process_id: uuid.UUID
    status: int
    detail: str


class BatchResult(BaseModel):
    action: Literal["pause", "resume", "cancel", "replay"]
    dry_run: bool
    matched: int = Field(description="Processes the selection matched.")
    changed: int = Field(description="Processes changed (for replay: new processes started).")
    skipped: int = Field(description="Processes whose status does not allow the action.")
    failed: int = Field(description="Processes the action failed on (see `errors`).")
    errors: list[BatchError] = Field(description="The first failures, at most 20.")


# Ages beyond this reach before year 1 (an OverflowError); nothing stored is that old.
MAX_AGE = timedelta(days=365 * 100)


class ProcessPurge(_Guarded):
    """Delete ended processes (`done`, `error`) with their nodes, logs, requests and delivery
    attempts. Their envelopes stay until an envelope purge."""

    older_than: timedelta | None = Field(
        None,
        description="Only processes created longer ago than this (seconds, or ISO 8601 "
        "duration such as `P30D`).",
    )

    def criteria(self) -> list[str]:
        return [*super().criteria(), *(["older_than"] if self.older_than is not None else [])]

    @model_validator(mode="after")
    def _ended_only(self) -> ProcessPurge:
        if self.older_than is not None and self.older_than < timedelta(0):
            raise ValueError("older_than must not be negative")
        if self.older_than is not None and self.older_than > MAX_AGE:
            raise ValueError(f"older_than must be at most {MAX_AGE.days} days")
        active = sorted(s.value for s in self.status or () if s not in FINAL_STATUSES)
        if active:
            raise ValueError(
                f"status {', '.join(active)}: only ended processes (done, error) are purged; "
                "cancel them first"
            )
        return self


class EnvelopePurge(BaseModel):
    """Delete envelopes with their events and items. Envelopes that a running or paused
    process still needs, and uploads still receiving, are always kept."""

    model_config = ConfigDict(extra="forbid")

    before: AwareDatetime | None = Field(None, description="Only envelopes created before.")
    unreferenced: bool = Field(
        False, description="Only envelopes no stored process refers to any more."
    )
    dry_run: bool = False

    @model_validator(mode="after")
    def _something_selected(self) -> EnvelopePurge:
        if self.before is None and not self.unreferenced:
            raise ValueError("give `before`, `unreferenced: true`, or both")
        return self


class LogPurge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before: AwareDatetime = Field(description="Delete log entries older than this.")
    level: list[LogLevel] | None = Field(None, description="Only entries of these levels.")
    dry_run: bool = False


class PurgeResult(BaseModel):
    kind: Literal["processes", "envelopes", "logs"]
    dry_run: bool
    matched: int = Field(description="Rows the selection matched when the purge started.")
    deleted: int = Field(description="Rows deleted (dependent rows not counted).")
    jobs: int = Field(description="Parallel transactions used.")
    seconds: float


class ExportRequest(ProcessSelection):
    """An NDJSON stream: a `header` line (with `total`), then per batch the `envelope` lines
    its processes refer to (when asked) and one `process` line per process (with nodes, logs,
    requests and their delivery attempts), and an `end` line with the count exported (a
    stream without it was cut short)."""

    envelopes: bool = Field(False, description="Export the envelopes of the processes too.")
    envelope_size_limit: int = Field(
        1 * MiB,
        ge=0,
        description="Envelopes larger than this (item bytes) are exported as metadata only.",
    )
    gzip: bool = Field(
        False,
        description="Answer a gzip file (`application/gzip`). Without it the stream is still "
        "compressed on the wire when the client sends `Accept-Encoding: gzip`.",
    )
    partition_index: int | None = Field(
        None, ge=0, description="With partition_count: export only this share (0-based)."
    )
    partition_count: int | None = Field(
        None, ge=1, le=64, description="Split the selection into this many disjoint shares."
    )

    @model_validator(mode="after")
    def _partition(self) -> ExportRequest:
        if (self.partition_index is None) != (self.partition_count is None):
            raise ValueError("partition_index and partition_count go together")
        if (
            self.partition_index is not None
            and self.partition_count is not None
            and self.partition_index >= self.partition_count
        ):
            raise ValueError("partition_index must be less than partition_count")
        return self


# ---------------------------------------------------------------------------- postmortem
class PostmortemEntry(BaseModel):
    process: ProcessRead
    logs: list[LogRead] = Field(description="The process log, oldest first, up to `logs`.")
    logs_truncated: bool


class PostmortemPage(BaseModel):
    items: list[PostmortemEntry]
    next_cursor: str | None


Comment = Annotated[str, Field(max_length=10_000), AfterValidator(storable_text)]


class PostmortemUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: PostmortemStatus | None = None
    comment: Comment | None = Field(None, description='Replaces the comment; `""` clears it.')

    @model_validator(mode="after")
    def _something(self) -> PostmortemUpdate:
        if self.status is None and self.comment is None:
            raise ValueError("give a status, a comment, or both")
        return self


# ---------------------------------------------------------------------------- statistics
class CountByStatus(BaseModel):
    total: int
    by_status: dict[str, int]


class PipelineCount(CountByStatus):
    pipeline_id: uuid.UUID | None
    name: str | None
    version: str | None


class EmitterCount(CountByStatus):
    emitter_id: uuid.UUID | None
    name: str | None


class ProcessSummary(BaseModel):
    total: int
    by_status: dict[str, int]
    acked: int = Field(description="Processes whose result the emitter acknowledged.")
    not_acked: int
    by_pipeline: list[PipelineCount]
    by_emitter: list[EmitterCount]
    postmortem: dict[str, dict[str, int]] = Field(
        description="Processes with a postmortem record: {level: {status: count}}."
    )


class TableStats(BaseModel):
    table: str
    rows: int
    exact: bool = Field(description="False when `rows` is PostgreSQL's estimate.")
    bytes: int = Field(description="Table, indexes and TOAST.")


class KindStats(BaseModel):
    kind: str
    rows: int = Field(description="Rows of the kind's main table.")
    exact: bool
    bytes: int = Field(description="Every table of the kind.")
    tables: list[TableStats]


class StorageStats(BaseModel):
    computed_at: datetime
    database_bytes: int
    kinds: list[KindStats]
