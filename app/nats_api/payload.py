"""An envelope as the fragments the Xbus protocol sends, read from the database a page of
items at a time and cut as it goes (`FragmentCutter`): only the fragment being filled and
one page of items are in memory, whatever the envelope's size. ActorProcessRequest carries
each input's first fragment inline and the position after it; EnvelopeStorage.Retrieve
streams the fragments a reader has not seen yet, each with the position after it. A small
envelope comes whole with the lease of the request that hands it out (`held_envelopes`):
its first fragment is cut without another read."""

from __future__ import annotations

import bisect
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.envelopes import repository
from app.envelopes.codec import FRAGMENT_SIZE, FragmentCutter
from app.store.connection import Unit

pb: Any = xbus_pb2

# Reads one page of an envelope's items (after a position); a session of its own per page
# for long streams, so no connection is held while the fragments travel.
Pages = Callable[[tuple[int, int]], Awaitable[list[tuple[int, int, bytes]]]]


Events = list[tuple[int, uuid.UUID, str]]  # (position, id, type) in order


async def fragments(
    events: Events, envelope_id: uuid.UUID, pages: Pages, *, max_size: int = FRAGMENT_SIZE
) -> AsyncGenerator[Any, None]:
    """The envelope's fragments in order, cut as its items are read."""
    cutter = FragmentCutter(
        envelope_id, [(event_id, kind) for _, event_id, kind in events], max_fragment_size=max_size
    )
    event_no = {position: n for n, (position, _, _) in enumerate(events)}
    after = (-1, -1)
    while True:
        page = await pages(after)
        for position, item_position, data in page:
            for fragment in cutter.add(event_no[position], data):
                yield fragment
            after = (position, item_position)
        if len(page) < repository.ITEMS_PAGE:
            break
    for fragment in cutter.finish():
        yield fragment


class Reader:
    """Where a reader stands as fragments go past: the position after each."""

    def __init__(self, envelope_id: uuid.UUID) -> None:
        self.envelope_id = envelope_id
        self.reached: dict[bytes, tuple[int, int]] = {}

    def past(self, fragment: Any) -> Any:
        for event in fragment.events:
            index, items = self.reached.get(bytes(event.id), (0, 0))
            self.reached[bytes(event.id)] = (max(index, event.index), items + len(event.items))
        return pb.EnvelopePosition(
            envelopeID=self.envelope_id.bytes,
            start=True,
            complete=bool(fragment.last),
            eventPositions=[
                pb.EventPosition(eventID=eid, index=index, itemCount=items)
                for eid, (index, items) in self.reached.items()
            ],
        )


def seen(position: Any, ordinal: int, fragment: Any) -> bool:
    """Whether a reader at `position` already has this fragment (the `ordinal`-th)."""
    reached = {bytes(p.eventID): p.index for p in position.eventPositions}
    if fragment.events:
        return all(e.index <= reached.get(bytes(e.id), 0) for e in fragment.events)
    return ordinal == 0 and bool(position.start)


async def events_of(session: Unit, envelope_id: uuid.UUID) -> Events:
    events = await repository.envelope_events(session, envelope_id)
    if events is None:
        raise LookupError(f"no envelope {envelope_id}")
    return events


async def first_fragment(
    session: Unit, envelope_id: uuid.UUID, *, max_size: int = FRAGMENT_SIZE
) -> tuple[Any, Any]:
    """The envelope's first fragment and the position after it (reads only what it holds)."""
    events = await events_of(session, envelope_id)

    async def pages(after: tuple[int, int]) -> list[tuple[int, int, bytes]]:
        return await repository.items_page(session, envelope_id, after)

    return await _first(events, envelope_id, pages, max_size)


async def _first(
    events: Events, envelope_id: uuid.UUID, pages: Pages, max_size: int
) -> tuple[Any, Any]:
    stream = fragments(events, envelope_id, pages, max_size=max_size)
    try:
        first = await anext(stream)
    finally:
        await stream.aclose()
    return first, Reader(envelope_id).past(first)


# Envelopes read whole with the lease that hands them out: {id: (events, items)}, the items
# as (event position, item position, data) in order.
Held = dict[uuid.UUID, tuple[Events, list[tuple[int, int, bytes]]]]


def held_envelopes(rows: Iterable[Sequence[Any]], inline_max: int) -> Held:
    """The envelopes a lease read whole (rows of `app.store.processes.handed`: envelope
    id, size, item count, event id, type, encoding, item, in order; events and items only
    of those no larger than `inline_max`, the bound the lease was given)."""
    held: Held = {}
    for envelope_id, size, _count, event_id, type_, _encoding, data in rows:
        if envelope_id is None or size > inline_max:
            continue  # no such envelope (read again, and said so), or too large: paged
        events, items = held.setdefault(envelope_id, ([], []))
        if event_id is None:
            continue  # an envelope without events
        if not events or events[-1][1] != event_id:
            events.append((len(events), event_id, type_))
        if data is not None:
            items.append((events[-1][0], len(items), data))
    return held


def _held_pages(items: list[tuple[int, int, bytes]]) -> Pages:
    """`Pages` over items already in memory."""
    keys = [(position, item) for position, item, _ in items]

    async def pages(after: tuple[int, int]) -> list[tuple[int, int, bytes]]:
        start = bisect.bisect_right(keys, after)
        return items[start : start + repository.ITEMS_PAGE]

    return pages


class Handed(Protocol):
    """What a request's message needs of it (an ORM row, or a row read with plain SQL)."""

    @property
    def process_id(self) -> uuid.UUID: ...
    @property
    def node_id(self) -> str: ...
    @property
    def inputs(self) -> list[Any]: ...


async def process_request(
    session: Unit, request: Handed, *, max_size: int = FRAGMENT_SIZE, held: Held | None = None
) -> Any:
    """ActorProcessRequest for a request: each input's first fragment, cut from `held` when
    the lease read the envelope whole, else read from the database."""
    message = pb.ActorProcessRequest(
        context=pb.ProcessingContext(processID=request.process_id.bytes, nodeID=request.node_id)
    )
    for entry in request.inputs:
        envelope_id = uuid.UUID(entry["envelope_id"])
        whole = held.get(envelope_id) if held else None
        if whole is None:
            first, position = await first_fragment(session, envelope_id, max_size=max_size)
        else:
            events, items = whole
            first, position = await _first(events, envelope_id, _held_pages(items), max_size)
        message.inputs.add(name=entry["name"], envelope=first, position=position)
    return message
