"""ActorProcessRequest for a request: each input's first fragment inline, a position from
which EnvelopeStorage.Retrieve streams the rest."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.envelopes import repository
from app.envelopes.codec import envelope_to_fragments
from app.models import ActorRequest

pb: Any = xbus_pb2


async def fragments_of(session: AsyncSession, envelope_id: uuid.UUID) -> list[Any]:
    data = await repository.load_envelope(session, envelope_id)
    if data is None:
        raise LookupError(f"no envelope {envelope_id}")
    return envelope_to_fragments(data)


def position_after(envelope_id: uuid.UUID, fragments: list[Any], count: int) -> Any:
    """Where a reader stands once it has the first `count` fragments."""
    reached: dict[bytes, tuple[int, int]] = {}
    for fragment in fragments[:count]:
        for event in fragment.events:
            index, items = reached.get(bytes(event.id), (0, 0))
            reached[bytes(event.id)] = (max(index, event.index), items + len(event.items))
    return pb.EnvelopePosition(
        envelopeID=envelope_id.bytes,
        start=count > 0,
        complete=count >= len(fragments),
        eventPositions=[
            pb.EventPosition(eventID=eid, index=index, itemCount=items)
            for eid, (index, items) in reached.items()
        ],
    )


def fragments_after(fragments: list[Any], position: Any) -> list[tuple[int, Any]]:
    """The fragments a reader at `position` has not seen yet, with their ordinal."""
    seen = {bytes(p.eventID): p.index for p in position.eventPositions}
    todo = []
    for n, fragment in enumerate(fragments):
        if fragment.events and all(e.index <= seen.get(bytes(e.id), 0) for e in fragment.events):
            continue
        if not fragment.events and n == 0 and position.start:
            continue
        todo.append((n, fragment))
    return todo


async def process_request(session: AsyncSession, request: ActorRequest) -> Any:
    message = pb.ActorProcessRequest(
        context=pb.ProcessingContext(processID=request.process_id.bytes, nodeID=request.node_id)
    )
    for entry in request.inputs:
        envelope_id = uuid.UUID(entry["envelope_id"])
        fragments = await fragments_of(session, envelope_id)
        message.inputs.add(
            name=entry["name"],
            envelope=fragments[0],
            position=position_after(envelope_id, fragments, 1),
        )
    return message
