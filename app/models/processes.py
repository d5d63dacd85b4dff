from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_column, str_enum, uuid_pk
from app.models.enums import LogLevel, NodeStatus, PostmortemStatus, ProcessStatus


class Process(Base):
    __tablename__ = "processes"
    __table_args__ = (
        # Cursor pagination walks (created_at, id); each filter has an index that keeps it.
        sa.Index("ix_processes_created_at_id", "created_at", "id"),
        sa.Index("ix_processes_status_created_at", "status", "created_at"),
        sa.Index("ix_processes_pipeline_id_created_at", "pipeline_id", "created_at"),
        sa.Index("ix_processes_emitter_id_created_at", "emitter_id", "created_at"),
        sa.Index(
            "ix_processes_pm",
            "pm_status",
            "pm_level",
            "created_at",
            postgresql_where=sa.text("pm_level IS NOT NULL"),
        ),
        # Processes in error still to report to Sentry (app/sentry.py), oldest first.
        sa.Index(
            "ix_processes_sentry_unreported",
            "ended_at",
            postgresql_where=sa.text("status = 'error' AND sentry_reported_at IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    pipeline_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("pipelines.id", ondelete="SET NULL")
    )
    trigger_envelope_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    emitter_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("actors.id", ondelete="SET NULL")
    )
    group_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    replay_of: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("processes.id", ondelete="SET NULL"), index=True
    )
    status: Mapped[ProcessStatus] = mapped_column(str_enum(ProcessStatus, "process_status"))
    status_reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = now_column()
    status_changed_at: Mapped[datetime] = now_column()
    nodes_state_changed_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    result_acked: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    # Postmortem: set when a process ends in error or with warnings.
    pm_level: Mapped[LogLevel | None] = mapped_column(str_enum(LogLevel, "pm_level"))
    pm_status: Mapped[PostmortemStatus | None] = mapped_column(
        str_enum(PostmortemStatus, "pm_status")
    )
    pm_comment: Mapped[str | None] = mapped_column(sa.Text)
    pm_changed_at: Mapped[datetime | None]
    # When this process's error went to Sentry (NULL: not yet, or Sentry is not configured).
    sentry_reported_at: Mapped[datetime | None]


class ProcessNode(Base):
    __tablename__ = "process_nodes"

    process_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("processes.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    status: Mapped[NodeStatus] = mapped_column(str_enum(NodeStatus, "node_status"))
    # {input port: envelope id} received so far
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    # {output port: envelope id} produced (workers)
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = now_column()
    started_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]


class LogEntry(Base):
    __tablename__ = "log_entries"
    __table_args__ = (sa.Index("ix_log_entries_process_id_id", "process_id", "id"),)

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    time: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now(), index=True
    )
    level: Mapped[LogLevel] = mapped_column(str_enum(LogLevel, "log_level"))
    text: Mapped[str] = mapped_column(sa.Text)
    process_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("processes.id", ondelete="CASCADE")
    )
    node_id: Mapped[str | None] = mapped_column(sa.String(128))
    # Plain ids, no foreign keys: a log line never blocks deleting what it mentions.
    actor_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid, index=True)
    envelope_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    request_id: Mapped[uuid.UUID | None] = mapped_column(sa.Uuid)
    processing_error: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    details: Mapped[dict[str, Any] | None]


# Process counts kept beside the rows (migration 0008), so that the process summary does not
# scan the history. Statement-level triggers on `processes` append, for each statement that
# changes them, one row per key with the net change (+ inserted, - deleted, both for a key
# that changed); the process-counts duty folds those deltas into the totals. The counts are
# the sum of both tables by key: exact in any snapshot, since a delta commits with its change.
# Append-only deltas and no index: concurrent writers never wait for one another here.
# No foreign keys: a deleted pipeline or actor sets its processes' ids to NULL, and those
# updates move their counts like any other.
PROCESS_COUNT_KEY = ("pipeline_id", "emitter_id", "status", "result_acked", "pm_level", "pm_status")


def _count_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("pipeline_id", sa.Uuid),
        sa.Column("emitter_id", sa.Uuid),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result_acked", sa.Boolean, nullable=False),
        sa.Column("pm_level", sa.String(16)),
        sa.Column("pm_status", sa.String(16)),
        sa.Column("n", sa.BigInteger, nullable=False),  # processes (negative: removed)
    ]


process_counts = sa.Table("process_counts", Base.metadata, *_count_columns())
process_count_deltas = sa.Table("process_count_deltas", Base.metadata, *_count_columns())
