"""Pipelines: build, check and activate the graphs that route envelopes (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.core.deps import Admin, Session, SettingsDep
from app.core.errors import Problem
from app.models.enums import PipelineStatus
from app.pipelines import service
from app.pipelines.schemas import (
    GraphValidation,
    PipelineCreate,
    PipelinePage,
    PipelineRead,
    PipelineStatusChange,
    PipelineSummary,
    PipelineUpdate,
    PipelineValidate,
    ValidationMessageRead,
)

router = APIRouter(prefix="/api/v1")

PipelineId = Annotated[str, Path(description="The pipeline id (a UUID)")]


@router.post(
    "/pipelines",
    summary="Create a draft pipeline",
    description="The graph is checked against the current actors; a graph with problems is "
    "saved too (`valid` false, with every message). Only a valid graph can become active.",
    response_model=PipelineRead,
    status_code=201,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 409, 422),
)
async def create_pipeline(body: PipelineCreate, session: Session, _: Admin) -> PipelineRead:
    pipeline = await service.create_pipeline(session, body)
    return PipelineRead.model_validate(pipeline)


@router.get(
    "/pipelines",
    summary="List pipelines",
    description="In creation order, a page at a time; items leave `source` out.",
    response_model=PipelinePage,
    status_code=200,
    tags=["pipelines"],
    responses=Problem.of(400, 401, 403, 422),
)
async def list_pipelines(
    session: Session,
    settings: SettingsDep,
    _: Admin,
    name: Annotated[str | None, Query(description="Only this name")] = None,
    version: Annotated[str | None, Query(description="Only this version")] = None,
    status: Annotated[PipelineStatus | None, Query(description="Only this status")] = None,
    valid: Annotated[bool | None, Query(description="Only valid (or invalid) graphs")] = None,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size (default and maximum set by the server)")
    ] = None,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> PipelinePage:
    size = min(limit or settings.page_size_default, settings.page_size_max)
    pipelines, next_cursor = await service.list_pipelines(
        session,
        limit=size,
        cursor=cursor,
        name=name,
        version=version,
        status=status,
        valid=valid,
    )
    return PipelinePage(
        items=[PipelineSummary.model_validate(p) for p in pipelines], next_cursor=next_cursor
    )


@router.post(
    "/pipelines/validate",
    summary="Check a graph without saving it",
    description="Parses and validates the graph against the current actors; nothing is stored.",
    response_model=GraphValidation,
    status_code=200,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 422),
)
async def validate_graph(body: PipelineValidate, session: Session, _: Admin) -> GraphValidation:
    check = await service.check_graph_input(session, body.graph)
    return GraphValidation(
        valid=check.valid,
        validation_messages=[ValidationMessageRead.model_validate(m) for m in check.messages],
        graph=check.canonical,
    )


@router.get(
    "/pipelines/{pipeline_id}",
    summary="Get a pipeline",
    response_model=PipelineRead,
    status_code=200,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 404),
)
async def get_pipeline(pipeline_id: PipelineId, session: Session, _: Admin) -> PipelineRead:
    return PipelineRead.model_validate(await service.get_pipeline(session, pipeline_id))


@router.put(
    "/pipelines/{pipeline_id}",
    summary="Edit a draft pipeline",
    description="Only a draft can be edited (409 otherwise). Fields left out keep their value; "
    "the graph is checked again in any case.",
    response_model=PipelineRead,
    status_code=200,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def update_pipeline(
    pipeline_id: PipelineId, body: PipelineUpdate, session: Session, _: Admin
) -> PipelineRead:
    pipeline = await service.update_pipeline(session, pipeline_id, body)
    return PipelineRead.model_validate(pipeline)


@router.delete(
    "/pipelines/{pipeline_id}",
    summary="Delete a pipeline that is not active",
    description="Processes of the pipeline stay, without a pipeline.",
    response_class=Response,
    status_code=204,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 404, 409),
)
async def delete_pipeline(pipeline_id: PipelineId, session: Session, _: Admin) -> Response:
    await service.delete_pipeline(session, pipeline_id)
    return Response(status_code=204)


@router.post(
    "/pipelines/{pipeline_id}/status",
    summary="Activate, deactivate or return a pipeline to draft",
    description="`active` checks the graph against the current actors and refuses an invalid "
    "one (422 with `validation_messages`); it adds a warning when another active pipeline "
    "could match the same envelopes. `active` to `draft` is refused (set `inactive` first). "
    "Setting the current status changes nothing.",
    response_model=PipelineRead,
    status_code=200,
    tags=["pipelines"],
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def set_pipeline_status(
    pipeline_id: PipelineId, body: PipelineStatusChange, session: Session, _: Admin
) -> PipelineRead:
    pipeline = await service.set_status(session, pipeline_id, body.status)
    return PipelineRead.model_validate(pipeline)
