from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, now_column, str_enum, updated_column, uuid_pk
from app.models.enums import PipelineStatus


class Pipeline(Base):
    __tablename__ = "pipelines"
    __table_args__ = (sa.UniqueConstraint("name", "version", name="uq_pipelines_name_version"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(sa.String(255))
    version: Mapped[str] = mapped_column(sa.String(64))
    description: Mapped[str] = mapped_column(sa.Text, default="", server_default="")
    status: Mapped[PipelineStatus] = mapped_column(
        str_enum(PipelineStatus, "pipeline_status"), index=True
    )
    # The graph as the client sent it (YAML or JSON text), and its parsed canonical form.
    source: Mapped[str] = mapped_column(sa.Text)
    graph: Mapped[dict[str, Any] | None]
    valid: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    validation_messages: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    created_at: Mapped[datetime] = now_column()
    updated_at: Mapped[datetime] = updated_column()
    status_changed_at: Mapped[datetime | None]
