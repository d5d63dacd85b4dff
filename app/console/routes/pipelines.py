"""Pipelines (admin, as in the API): the list, a pipeline's graph drawn, its validation
messages and versions; activate, deactivate, clone to a new draft."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.console.views import graph_elements
from app.console.web import PREFIX, FormUser, User, back_to, render
from app.core.deps import Session, SettingsDep, require_admin
from app.core.exceptions import Unprocessable
from app.models.enums import PipelineStatus
from app.pipelines import service
from app.pipelines.graphs import pipeline_graph
from app.pipelines.schemas import PipelineCreate

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/pipelines")
async def pipelines_page(
    request: Request,
    session: Session,
    settings: SettingsDep,
    user: User,
    cursor: str | None = None,
) -> Response:
    await require_admin(user.principal)
    pipelines, next_cursor = await service.list_pipelines(
        session, limit=settings.page_size_default, cursor=cursor or None
    )
    return render(
        request,
        "pipelines.html",
        {"pipelines": pipelines, "next_cursor": next_cursor},
        user=user,
    )


@router.get("/pipelines/{pipeline_id}")
async def pipeline_page(
    request: Request, pipeline_id: str, session: Session, settings: SettingsDep, user: User
) -> Response:
    await require_admin(user.principal)
    pipeline = await service.get_pipeline(session, pipeline_id)
    graph = pipeline_graph(pipeline)
    versions, _ = await service.list_pipelines(
        session, limit=settings.page_size_default, name=pipeline.name
    )
    return render(
        request,
        "pipeline.html",
        {
            "pipeline": pipeline,
            "elements": graph_elements(graph) if graph is not None else [],
            "versions": versions,
        },
        user=user,
    )


@router.post("/pipelines/{pipeline_id}/status")
async def pipeline_status(
    pipeline_id: str, session: Session, user: FormUser, status: Annotated[PipelineStatus, Form()]
) -> Response:
    await require_admin(user.principal)
    pipeline = await service.set_status(session, pipeline_id, status)
    return back_to(f"{PREFIX}/pipelines/{pipeline.id}")


@router.post("/pipelines/{pipeline_id}/clone")
async def pipeline_clone(
    pipeline_id: str, session: Session, user: FormUser, version: Annotated[str, Form()]
) -> Response:
    """A new draft with the same name, description and graph source, under `version`."""
    await require_admin(user.principal)
    source = await service.get_pipeline(session, pipeline_id)
    try:
        data = PipelineCreate(
            name=source.name,
            version=version.strip(),
            description=source.description,
            graph=source.source,
        )
    except ValidationError as exc:
        raise Unprocessable(f"version: {exc.errors()[0]['msg']}") from None
    clone = await service.create_pipeline(session, data)
    return back_to(f"{PREFIX}/pipelines/{clone.id}")
