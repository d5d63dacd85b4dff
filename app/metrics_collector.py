"""`GET /metrics`: the HTTP metrics of prometheus-fastapi-instrumentator, the bus's counters
(app/metrics.py), and gauges read at scrape time: processes by status, pending work by
channel, actors by kind, the database pool, and the nats-server's /varz figures.

Scrape-time figures come from cheap queries on indexed columns and are cached for
`metrics_cache_seconds`: however many scrapers (or replicas' scrapers) ask, the database
sees at most one round of queries per replica per period. Each query runs under
`metrics_query_timeout`; one that fails or times out only loses its own series and counts
in `xbus_metrics_errors_total`."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from timeit import default_timer
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator, routing
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import QueuePool
from starlette.routing import BaseRoute

from app.bus.supervisor import STRANDED_GRACE
from app.config import Settings
from app.core.bodylimit import content_length
from app.core.errors import Problem
from app.core.exceptions import Unauthorized
from app.metrics import LogDropsCollector
from app.models import Actor, ActorRequest, Envelope, Process
from app.models.enums import (
    ActorKind,
    EnvelopeStatus,
    PostmortemStatus,
    ProcessStatus,
    RequestChannel,
    RequestStatus,
)
from app.ops.repository import kept_counts
from app.runtime.watchdog import UP, read_status
from app.state import AppState
from app.store.processes import STRANDED_COUNT
from app.version import version

log = logging.getLogger(__name__)

ACTIVE = (ProcessStatus.INITIAL, ProcessStatus.RUNNING, ProcessStatus.PAUSED)
FINAL = (ProcessStatus.DONE, ProcessStatus.ERROR)
IN_FLIGHT = (RequestStatus.LEASED, RequestStatus.RUNNING)

# nats-server /varz fields: (field, metric name without xbus_nats_, help, counter?)
VARZ = [
    ("connections", "connections", "Client connections open now", False),
    ("total_connections", "connections", "Client connections accepted since start", True),
    ("subscriptions", "subscriptions", "Subscriptions", False),
    ("slow_consumers", "slow_consumers", "Clients dropped as slow consumers", True),
    ("in_msgs", "in_msgs", "Messages received", True),
    ("out_msgs", "out_msgs", "Messages sent", True),
    ("in_bytes", "in_bytes", "Bytes received", True),
    ("out_bytes", "out_bytes", "Bytes sent", True),
    ("mem", "mem_bytes", "Resident memory of the nats-server", False),
    ("cpu", "cpu_percent", "CPU use of the nats-server (percent of one core)", False),
    ("routes", "routes", "Cluster routes", False),
    ("leafnodes", "leafnodes", "Leaf node connections", False),
]

Query = Callable[[AsyncConnection], Awaitable[list[Metric]]]


def _age(oldest: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """Seconds from `oldest` to now, in SQL."""
    return sa.func.extract("epoch", sa.func.now() - oldest)


def _pairs(rows: sa.Result[Any, Any]) -> dict[Any, Any]:
    return {key: value for key, value in rows}


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels or [])


async def _processes(conn: AsyncConnection, statuses: tuple[ProcessStatus, ...]) -> list[Metric]:
    kept = kept_counts()
    rows = await conn.execute(
        sa.select(kept.c.status, sa.func.sum(kept.c.n))
        .where(kept.c.status.in_([status.value for status in statuses]))
        .group_by(kept.c.status)
    )
    counts = {ProcessStatus(status): int(n) for status, n in rows}
    family = _gauge("xbus_processes", "Stored processes by status", ["status"])
    for status in statuses:
        family.add_metric([status.value], counts.get(status, 0))
    return [family]


async def _active_processes(conn: AsyncConnection) -> list[Metric]:
    return await _processes(conn, ACTIVE)


async def _final_processes(conn: AsyncConnection) -> list[Metric]:
    return await _processes(conn, FINAL)


async def _postmortems(conn: AsyncConnection) -> list[Metric]:
    kept = kept_counts()
    total = sa.func.sum(kept.c.n)
    rows = await conn.execute(
        sa.select(kept.c.pm_status, kept.c.pm_level, total)
        .where(
            kept.c.pm_level.is_not(None),
            kept.c.pm_status.in_([PostmortemStatus.NEW.value, PostmortemStatus.OPENED.value]),
        )
        .group_by(kept.c.pm_status, kept.c.pm_level)
        .having(total != 0)
    )
    family = _gauge(
        "xbus_postmortems_open",
        "Processes with a postmortem not closed yet, by postmortem status and level",
        ["status", "level"],
    )
    for pm_status, level, n in rows:
        family.add_metric([str(pm_status), str(level)], int(n))
    return [family]


async def _stranded(conn: AsyncConnection) -> list[Metric]:
    raw = await conn.get_raw_connection()
    driver: Any = raw.dbapi_connection
    count = await driver._connection.fetchval(STRANDED_COUNT, STRANDED_GRACE, 1000)
    family = _gauge(
        "xbus_processes_stranded",
        "Running processes with no request open and no change for 30 s: nothing will move "
        "them (counted up to 1000; the supervisor logs their ids)",
    )
    family.add_metric([], count)
    return [family]


async def _requests(conn: AsyncConnection) -> list[Metric]:
    pending = _pairs(
        await conn.execute(
            sa.select(ActorRequest.channel, sa.func.count())
            .where(ActorRequest.status == RequestStatus.PENDING)
            .group_by(ActorRequest.channel)
        )
    )
    oldest = _pairs(
        await conn.execute(
            sa.select(
                ActorRequest.channel,
                sa.func.extract("epoch", sa.func.now() - sa.func.min(ActorRequest.available_at)),
            )
            .join(Process, Process.id == ActorRequest.process_id)
            .where(
                ActorRequest.status == RequestStatus.PENDING,
                ActorRequest.available_at <= sa.func.now(),
                Process.status == ProcessStatus.RUNNING,
            )
            .group_by(ActorRequest.channel)
        )
    )
    in_flight = _pairs(
        await conn.execute(
            sa.select(ActorRequest.channel, sa.func.count())
            .where(ActorRequest.status.in_(IN_FLIGHT))
            .group_by(ActorRequest.channel)
        )
    )
    depth = _gauge(
        "xbus_requests_pending",
        "Actor requests waiting for delivery (due now or scheduled for a retry), by channel",
        ["channel"],
    )
    age = _gauge(
        "xbus_requests_oldest_due_age_seconds",
        "Age of the oldest request due for delivery in a running process, by channel "
        "(0 when none is due)",
        ["channel"],
    )
    flight = _gauge(
        "xbus_requests_in_flight",
        "Actor requests handed out and not answered yet (leased or running), by channel",
        ["channel"],
    )
    for channel in RequestChannel:
        depth.add_metric([channel.value], pending.get(channel, 0))
        age.add_metric([channel.value], max(float(oldest.get(channel) or 0.0), 0.0))
        flight.add_metric([channel.value], in_flight.get(channel, 0))
    return [depth, age, flight]


async def _envelopes(conn: AsyncConnection) -> list[Metric]:
    count, age = (
        await conn.execute(
            sa.select(
                sa.func.count(),
                _age(sa.func.min(Envelope.last_fragment_at)),
            ).where(Envelope.status == EnvelopeStatus.RECEIVING)
        )
    ).one()
    receiving = _gauge("xbus_envelopes_receiving", "Envelopes whose fragments are still arriving")
    receiving.add_metric([], count)
    oldest = _gauge(
        "xbus_envelopes_receiving_oldest_age_seconds",
        "Time since the last fragment of the longest-waiting incomplete envelope",
    )
    oldest.add_metric([], max(float(age or 0.0), 0.0))
    return [receiving, oldest]


async def _actors(conn: AsyncConnection) -> list[Metric]:
    rows = await conn.execute(
        sa.select(
            Actor.kind,
            Actor.status,
            sa.func.count(),
            sa.func.count().filter(Actor.online),
            sa.func.count().filter(Actor.unresponsive),
        ).group_by(Actor.kind, Actor.status)
    )
    by_status = _gauge("xbus_actors", "Actors by kind and status", ["kind", "status"])
    online: dict[str, int] = {kind.value: 0 for kind in ActorKind}
    unresponsive = dict(online)
    for kind, status, n, n_online, n_unresponsive in rows:
        by_status.add_metric([str(kind), str(status)], n)
        online[str(kind)] += n_online
        unresponsive[str(kind)] += n_unresponsive
    online_family = _gauge("xbus_actors_online", "Actors connected now, by kind", ["kind"])
    unresponsive_family = _gauge(
        "xbus_actors_unresponsive",
        "Actors marked unresponsive (work waiting, no answer), by kind",
        ["kind"],
    )
    for kind_name, n in online.items():
        online_family.add_metric([kind_name], n)
        unresponsive_family.add_metric([kind_name], unresponsive[kind_name])
    return [by_status, online_family, unresponsive_family]


QUERIES: dict[str, Query] = {
    "processes_active": _active_processes,
    "processes_final": _final_processes,
    "postmortems": _postmortems,
    "stranded": _stranded,
    "requests": _requests,
    "envelopes": _envelopes,
    "actors": _actors,
}


def varz_families(varz: dict[str, Any]) -> list[Metric]:
    """The nats-server's /varz JSON as xbus_nats_* series, labelled with its server name."""
    server = str(varz.get("server_name") or varz.get("server_id") or "")
    families: list[Metric] = []
    for field, name, doc, counter in VARZ:
        value = varz.get(field)
        if not isinstance(value, int | float):
            continue
        family: Metric
        if counter:
            family = CounterMetricFamily(f"xbus_nats_{name}", doc, labels=["server"])
        else:
            family = GaugeMetricFamily(f"xbus_nats_{name}", doc, labels=["server"])
        family.add_metric([server], float(value))
        families.append(family)
    info = _gauge("xbus_nats_info", "nats-server identity", ["server", "server_id", "version"])
    info.add_metric([server, str(varz.get("server_id", "")), str(varz.get("version", ""))], 1)
    families.append(info)
    return families


class BusCollector(Collector):
    """The scrape-time series. `refresh()` (async, cached) reads the database and
    nats-server; `collect()` (called by the exposition, synchronous) hands out the last
    reading plus the process-local pool figures."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state: AppState | None = None
        self._families: list[Metric] = []
        self._fresh_until = 0.0
        self._lock = asyncio.Lock()
        self._errors: dict[str, int] = {}

    async def refresh(self, state: AppState) -> None:
        self.state = state
        if time.monotonic() < self._fresh_until:
            return
        async with self._lock:
            if time.monotonic() < self._fresh_until:
                return  # another scrape refreshed while this one waited
            started = time.monotonic()
            db_part, nats_part = await asyncio.gather(self._read_database(state), self._varz())
            took = _gauge("xbus_metrics_refresh_seconds", "Time the last scrape-time reading took")
            took.add_metric([], time.monotonic() - started)
            self._families = [*db_part, *nats_part, took]
            self._fresh_until = time.monotonic() + self.settings.metrics_cache_seconds

    def _error(self, source: str) -> None:
        self._errors[source] = self._errors.get(source, 0) + 1

    async def _read_database(self, state: AppState) -> list[Metric]:
        families: list[Metric] = []
        up = _gauge("xbus_metrics_source_up", "Whether a metrics source answered", ["source"])
        timeout_ms = int(self.settings.metrics_query_timeout * 1000)
        try:
            async with state.db.engine.connect() as conn:
                await conn.execute(sa.text(f"SET statement_timeout = {timeout_ms}"))
                try:
                    for name, query in QUERIES.items():
                        try:
                            async with conn.begin_nested():
                                families.extend(await query(conn))
                        except Exception as exc:
                            log.warning("metrics query %s failed: %s", name, exc)
                            self._error(f"database:{name}")
                finally:
                    await conn.rollback()
                    await conn.execute(sa.text("RESET statement_timeout"))
                    await conn.commit()
            up.add_metric(["database"], 1)
        except Exception as exc:
            log.warning("metrics: database not readable: %s", exc)
            self._error("database")
            up.add_metric(["database"], 0)
        return [*families, up]

    async def _varz(self) -> list[Metric]:
        url = self.settings.nats_monitor_url
        if not url:
            return []
        up = _gauge("xbus_nats_up", "Whether the nats-server monitoring endpoint answered")
        try:
            async with httpx.AsyncClient(timeout=self.settings.metrics_query_timeout) as client:
                response = await client.get(url.rstrip("/") + "/varz")
                response.raise_for_status()
                varz = response.json()
            up.add_metric([], 1)
            return [*varz_families(varz), up]
        except Exception as exc:
            log.warning("metrics: nats-server varz at %s not readable: %s", url, exc)
            self._error("nats")
            up.add_metric([], 0)
            return [up]

    def collect(self) -> Iterator[Metric]:
        yield from self._families
        errors = CounterMetricFamily(
            "xbus_metrics_errors",
            "Scrape-time readings that failed (database query, nats-server varz)",
            labels=["source"],
        )
        for source, n in sorted(self._errors.items()):
            errors.add_metric([source], n)
        yield errors
        info = _gauge("xbus_info", "This xbusd", ["version"])
        info.add_metric([version()], 1)
        yield info
        if self.state is not None:
            yield from pool_families(self.state)
        yield from embedded_families(self.settings)


def embedded_families(settings: Settings) -> list[Metric]:
    """The embedded servers as the watchdog of `xbusd serve` last saw them (none when the
    database and NATS are external)."""
    servers = read_status(settings.embedded_status_file)
    if not servers:
        return []
    up = _gauge("xbus_embedded_server_up", "Whether an embedded server runs", ["server"])
    restarts = CounterMetricFamily(
        "xbus_embedded_server_restarts",
        "Times an embedded server was restarted after it exited",
        labels=["server"],
    )
    for name, server in sorted(servers.items()):
        up.add_metric([name], 1 if server.get("state") == UP else 0)
        restarts.add_metric([name], int(server.get("restarts") or 0))
    return [up, restarts]


def pool_families(state: AppState) -> list[Metric]:
    pool = state.db.engine.sync_engine.pool
    if not isinstance(pool, QueuePool):
        return []
    hot_most, hot_open, hot_idle = state.db.hot_pool()
    figures = [
        ("xbus_db_pool_size", "Connections the pool keeps (db_pool_size)", pool.size()),
        (
            "xbus_db_pool_max_overflow",
            "Connections allowed over the pool size (db_max_overflow)",
            state.settings.db_max_overflow,
        ),
        ("xbus_db_pool_checked_out", "Connections in use now", pool.checkedout()),
        ("xbus_db_pool_checked_in", "Idle connections in the pool", pool.checkedin()),
        (
            "xbus_db_pool_overflow",
            "Connections open over the pool size now",
            max(pool.overflow(), 0),
        ),
        (
            "xbus_db_hot_pool_size",
            "Most connections of the hot routes' asyncpg pool (db_hot_pool_size)",
            hot_most,
        ),
        ("xbus_db_hot_pool_open", "Connections of the hot routes' pool open now", hot_open),
        (
            "xbus_db_hot_pool_in_use",
            "Connections of the hot routes' pool in use now",
            hot_open - hot_idle,
        ),
    ]
    families: list[Metric] = []
    for name, doc, value in figures:
        family = _gauge(name, doc)
        family.add_metric([], value)
        families.append(family)
    return families


# The instrumentator's default HTTP series (`metrics.default()`), as it defines them.
_HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5,
    5, 7.5, 10, 30, 60)  # fmt: skip
_LOWR_BUCKETS = (0.1, 0.5, 1)
_SIZE_DOC = "Content length of {} by handler. Only value of header is respected. Otherwise "
_SIZE_DOC += "ignored. No percentile calculated. "


class HttpSeries:
    """The instrumentator's default series (`metrics.default()`, with its defaults): the
    same names, help, labels and buckets, the same values, recorded without building a
    `Request`, a `Headers` and an `Info` for each request, and with the children of each
    (method, status, handler) looked up once (`labels()` checks and locks at each call)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter(
            "http_requests_total",
            "Total number of requests by method, status and handler.",
            ("method", "status", "handler"),
            registry=registry,
        )
        self.in_size = Summary(
            "http_request_size_bytes",
            _SIZE_DOC.format("incoming requests"),
            ("handler",),
            registry=registry,
        )
        self.out_size = Summary(
            "http_response_size_bytes",
            _SIZE_DOC.format("outgoing responses"),
            ("handler",),
            registry=registry,
        )
        self.highr = Histogram(
            "http_request_duration_highr_seconds",
            "Latency with many buckets but no API specific labels. Made for more accurate "
            "percentile calculations. ",
            buckets=_HIGHR_BUCKETS,
            registry=registry,
        )
        self.lowr = Histogram(
            "http_request_duration_seconds",
            "Latency with only few buckets by handler. Made to be only used if aggregation by "
            "handler is important. ",
            ("method", "handler"),
            buckets=_LOWR_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any, Any]] = {}

    def record(
        self,
        method: str,
        status: str,
        handler: str,
        received: int,
        sent: int,
        duration: float,
    ) -> None:
        """One request: its method, status (class), handler, the Content-Length of its
        request and of its response (0 without), its duration in seconds."""
        key = (method, status, handler)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.total.labels(method, status, handler),
                self.in_size.labels(handler),
                self.out_size.labels(handler),
                self.lowr.labels(method, handler),
            )
        total, in_size, out_size, lowr = children
        total.inc()
        in_size.observe(received)
        out_size.observe(sent)
        self.highr.observe(duration)
        lowr.observe(duration)


class _LeanInstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator's middleware, with the same series (`HttpSeries`, which
    `install_metrics` passes as its one instrumentation) at a fraction of its cost per
    request (a fifth of a bare request's CPU was spent there): the handler is named after
    the app ran, by the route the router matched (`scope["route"]`) instead of matching
    every route again before, and the response is not rebuilt as a Starlette `Response` to
    read two headers. Requests without a FastAPI route (404, mounts) are named the
    library's way. Used with the library's defaults as `install_metrics` sets them (no
    in-progress gauge, no body handlers)."""

    _flat: list[BaseRoute] | None = None

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        (series,) = self.instrumentations
        assert isinstance(series, HttpSeries), "install_metrics passes the series"
        self._series: HttpSeries = series

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = default_timer()
        sent: list[Any] = [500, ()]  # status, headers
        where = scope["path"], scope.get("root_path", "")  # as a mount will have changed them

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                sent[:] = message["status"], message["headers"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._record(scope, where, start, *sent)

    def _record(
        self, scope: Any, where: tuple[str, str], start: float, status_code: int, headers: Any
    ) -> None:
        handler, is_templated = self._handler(scope, where)
        if self._is_handler_excluded(handler, is_templated):
            return
        if not is_templated and self.should_group_untemplated:
            handler = "none"
        status = str(int(status_code))
        if self.should_group_status_codes:
            status = status[0] + "xx"
        self._series.record(
            scope["method"],
            status,
            handler,
            content_length(scope["headers"]),
            content_length(headers),
            max(default_timer() - start, 0.0),
        )

    def _handler(self, scope: Any, where: tuple[str, str]) -> tuple[str, bool]:
        route = scope.get("route")
        if (
            isinstance(route, APIRoute)
            and not self.should_include_root_path
            and route.path_regex.match(scope["path"])  # the whole path: no prefix left out
        ):
            return route.path, True
        # The library's lookup, on the request as it came in, on the app's routes flattened
        # once (it flattens FastAPI's included routers at every request otherwise).
        scope = {**scope, "path": where[0], "root_path": where[1]}
        request = Request(scope)
        if self._flat is None:
            self._flat = routing._effective_routes(request.app.routes)
        name = routing._get_route_name(scope, self._flat)
        if name is None or self.should_include_root_path:
            return super()._get_handler(request)
        return name, True


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """HTTP instrumentation and the /metrics route (nothing when metrics are disabled)."""
    if not settings.metrics_enabled:
        return
    # The HTTP series in a registry of this app's own: in the global one, a second app of the
    # same process (tests) would find them taken and count nothing.
    http_registry = CollectorRegistry()
    Instrumentator(excluded_handlers=["/metrics"], registry=http_registry).instrument(app)
    # The instrumentator's middleware, the lean one above in its place (same arguments),
    # recording the default series (`HttpSeries`; the library would have made its own).
    added: Any = app.user_middleware[0]
    assert added.cls is PrometheusInstrumentatorMiddleware
    assert not added.kwargs.get("should_instrument_requests_inprogress")
    assert not added.kwargs.get("body_handlers")
    assert not added.kwargs.get("instrumentations")
    added.cls = _LeanInstrumentatorMiddleware
    added.kwargs["instrumentations"] = [HttpSeries(http_registry)]
    collector = BusCollector(settings)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    registry.register(LogDropsCollector())
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    token = token or None  # an empty token (unset in a Secret) means no token

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Prometheus metrics",
        description="The HTTP and `xbus_*` series (docs/operations.md lists them). With "
        "`metrics_token` set, only `Authorization: Bearer <token>` is answered.",
        response_class=Response,
        responses={
            200: {"description": "Prometheus text format", "content": {"text/plain": {}}},
            **Problem.of(401),
        },
    )
    async def metrics(request: Request) -> Response:
        if token is not None:
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                presented.strip().encode(), token.encode()
            ):
                raise Unauthorized("/metrics needs `Authorization: Bearer <metrics token>`")
        state: AppState | None = getattr(request.app.state, "xbus", None)
        if state is not None:
            await collector.refresh(state)
        body = (
            generate_latest(REGISTRY) + generate_latest(http_registry) + generate_latest(registry)
        )
        return Response(body, media_type=CONTENT_TYPE_LATEST)
