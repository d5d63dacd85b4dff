"""The webhook dispatcher: a duty of every replica that claims due webhook requests and sends
them, each attempt in a task of its own.

Scheduling, each round (on a wake-up for a webhook actor, when an attempt frees its slot or
ends, when accounts, actors or pipelines change, or every `webhook_poll_interval`):
- the webhook actors are read (again only after such a change, or a poll interval);
  enabled ones with an active webhook are candidates, in an order that rotates every round
  (no actor is always first);
- per candidate, a try-advisory-lock (a replica claiming for that actor right now makes the
  others skip it), then its requests in flight on every replica are counted: it gets at most
  `http.webhook.concurrency` minus those, and at most what its rate limit allows. A
  request is in flight from its claim until its outcome is written, but for this replica's
  deliveries whose exchange is over (`Recorder.delivered`, at most the actor's concurrency
  of them): a delivery frees its slot here once answered, while its outcome waits for its
  group's write; other replicas count it until written. Any other outcome (a failure, a
  reattempt, a probe, an answer with outputs) keeps its slot until written;
- the replica's free slots (`webhook_max_in_flight` minus its attempts not yet recorded) are
  dealt one by one in that order, then one statement leases that many due requests per
  actor (`FOR UPDATE SKIP LOCKED`, oldest due first): status leased, attempts + 1, the
  actor's max-attempts, a lease of timeout + `webhook_lease_margin`; a crash mid-send
  leaves the lease to expire, and the supervisor hands the request back (same request id,
  so the same `webhook-id`);
- suspended webhooks whose probe is due get their oldest pending request sent as a probe.

Each attempt's outcome is recorded with its request's answer in one transaction; delivered
answers that end together are written together (`app.webhooks.recorder`).

Isolation: attempts never run on the loop itself, each actor has its own small connection
pool (as many connections as its concurrency), and an attempt's whole exchange is bounded
by the actor's timeout, so a hanging endpoint holds only its own slots.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from app import metrics
from app.bus.director import Director
from app.bus.notify import CONFIG, Notifier, actor_key, wait_set
from app.config import Settings
from app.db import Database
from app.version import version
from app.webhooks import repository as repo
from app.webhooks import store
from app.webhooks.client import HttpError, HttpResponse, Pools, Target
from app.webhooks.payload import request_body
from app.webhooks.recorder import Recorder
from app.webhooks.service import AttemptResult, Job, Kind, Outcomes
from app.webhooks.settings import (
    UnresolvableHostError,
    WebhookSettings,
    WebhookSettingsError,
    check_url_allowed,
    parse_webhook_settings,
)
from app.webhooks.signing import signature_headers

log = logging.getLogger(__name__)

# Delivered attempts' outcomes are written in groups (`Recorder`) of at most this many.
_GROUP_MAX = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


class RateLimiter:
    """A token bucket: `rate` attempts a second, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> int:
        self._refill()
        return int(self.tokens)

    def take(self, count: int) -> None:
        self.tokens -= count

    def wait(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1 - self.tokens) / self.rate)


def deal(order: list[uuid.UUID], wanted: dict[uuid.UUID, int], slots: int) -> dict[uuid.UUID, int]:
    """Share `slots` among actors one at a time, round-robin in `order`, none getting more
    than it wants."""
    shares = dict.fromkeys(order, 0)
    while slots > 0:
        dealt = False
        for actor_id in order:
            if slots == 0:
                break
            if shares[actor_id] < wanted.get(actor_id, 0):
                shares[actor_id] += 1
                slots -= 1
                dealt = True
        if not dealt:
            break
    return {actor_id: n for actor_id, n in shares.items() if n}


class Dispatcher:
    def __init__(
        self, db: Database, director: Director, settings: Settings, notifier: Notifier
    ) -> None:
        self.db = db
        self.settings = settings
        self.notifier = notifier
        self.wake = asyncio.Event()
        # Attempts record their outcome on the hot routes' pool (units of work without the
        # ORM): at most half of it at once, so that they never starve the API's hot routes.
        self.recorder = Recorder(
            db,
            Outcomes(director, settings),
            units=max(1, settings.db_hot_pool_size // 2),
            group_max=_GROUP_MAX,
            released=self.wake.set,  # a delivery's slot is free once its exchange is over
        )
        self.pools = Pools()
        self.holder = f"webhook:{socket.gethostname()}:{os.getpid()}"
        self.user_agent = f"xbus/{version()}"
        self.attempts: set[asyncio.Task[None]] = set()
        self._watchers: dict[str, asyncio.Task[None]] = {}  # by the notifier's key
        self._parsed: dict[uuid.UUID, tuple[dict[str, str], WebhookSettings | None]] = {}
        self._limiters: dict[uuid.UUID, RateLimiter] = {}
        self._turn = 0
        self._actors_cache: list[repo.WebhookActor] = []
        self._actors_read_at = -math.inf
        self._actors_generation = -1  # the notifier's generation when they were read

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        try:
            while True:
                self.wake.clear()
                try:
                    delay = await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatch round failed; retrying")
                    delay = self.settings.webhook_poll_interval
                await wait_set(self.wake, delay)
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        for watcher in self._watchers.values():
            watcher.cancel()
        if self.attempts:
            # Let attempts in flight end (their answers recorded) before the engine goes.
            await asyncio.wait(self.attempts, timeout=self.settings.webhook_shutdown_grace)
        for task in list(self.attempts):
            task.cancel()
        await asyncio.gather(*self.attempts, *self._watchers.values(), return_exceptions=True)
        await self.recorder.close()
        self.pools.close()

    def _watch(self, actor_ids: Iterable[uuid.UUID]) -> None:
        """Keep one waiter per webhook actor on the notifier, and one on changes of actors:
        new work for any of them, or a change (a webhook enabled, a new webhook actor),
        wakes the loop (locally and, through the doorbell, from other replicas)."""
        wanted = {actor_key(actor_id) for actor_id in actor_ids} | {CONFIG}
        for key in list(self._watchers):
            if key not in wanted:
                self._watchers.pop(key).cancel()
        for key in wanted - self._watchers.keys():
            self._watchers[key] = asyncio.create_task(
                self._watcher(key), name=f"webhook-watch-{key}"
            )

    async def _watcher(self, key: str) -> None:
        while True:
            if await self.notifier.wait(key, 3600):
                self.wake.set()

    def _settings_of(self, actor: repo.WebhookActor) -> WebhookSettings | None:
        cached = self._parsed.get(actor.id)
        if cached is not None and cached[0] == actor.config:
            return cached[1]
        try:
            parsed = parse_webhook_settings(actor.config)
        except WebhookSettingsError as exc:
            # Checked when saved: only a config written around the API gets here.
            log.error("actor %s: invalid webhook settings, not delivering: %s", actor.name, exc)
            parsed = None
        self._parsed[actor.id] = (dict(actor.config), parsed)
        return parsed

    # ------------------------------------------------------------------ one round
    async def round(self) -> float:
        """Claim and start what is due; returns the seconds until the next round at the
        latest."""
        now = utcnow()
        actors = await self._actors()
        delay = self.settings.webhook_poll_interval
        ready: dict[uuid.UUID, tuple[repo.WebhookActor, WebhookSettings, int]] = {}
        probes: list[tuple[repo.WebhookActor, WebhookSettings]] = []
        for actor in actors:
            ws = self._settings_of(actor)
            if ws is None or not actor.enabled:
                continue
            if actor.suspended_at is not None:
                if actor.probe_at is not None:
                    wait = (actor.probe_at - now).total_seconds()
                    if wait <= 0:
                        probes.append((actor, ws))
                    else:
                        delay = min(delay, wait)
                continue
            want = ws.concurrency
            if ws.rate_limit:
                limiter = self._limiter(actor.id, ws.rate_limit)
                want = min(want, limiter.available())
                if want < 1:
                    delay = min(delay, limiter.wait())
                    continue
            ready[actor.id] = (actor, ws, want)
        free = self.settings.webhook_max_in_flight - len(self.attempts)
        if free <= 0 or not (ready or probes):
            return delay
        jobs: list[Job] = []
        async with self.db.working() as session:
            if ready:
                order = list(ready)
                self._turn = (self._turn + 1) % len(order)
                order = order[self._turn :] + order[: self._turn]
                locked = await store.try_lock_actors(session, order)
                flying = await store.in_flight(session, locked, self.recorder.delivered())
                wanted = {
                    actor_id: min(
                        ready[actor_id][2], ready[actor_id][1].concurrency - flying.get(actor_id, 0)
                    )
                    for actor_id in locked
                }
                shares = deal([a for a in order if a in wanted], wanted, free)
                quotas = [
                    store.Quota(
                        actor_id,
                        count,
                        ready[actor_id][1].max_attempts,
                        ready[actor_id][1].timeout + self.settings.webhook_lease_margin,
                    )
                    for actor_id, count in shares.items()
                ]
                inline_max = self.settings.inline_envelope_max_bytes
                for claimed, rows in await store.claim(
                    session, quotas, now, self.holder, inline_max
                ):
                    actor, ws, _ = ready[claimed.actor_id]
                    jobs.append(self._job(claimed, rows, actor, ws, probe=False))
            for actor, ws in probes:
                if len(jobs) >= free:
                    break
                lease = ws.timeout + self.settings.webhook_lease_margin
                next_probe = now + timedelta(
                    seconds=max(self.settings.webhook_probe_interval, lease)
                )
                claimed_probe = await store.claim_probe(
                    session,
                    store.Quota(actor.id, 1, ws.max_attempts, lease),
                    now,
                    next_probe,
                    now + timedelta(seconds=self.settings.webhook_probe_interval),
                    self.holder,
                    self.settings.inline_envelope_max_bytes,
                )
                # The probe moves only the actor's probe schedule, which no cache holds: no
                # cache is dropped (every due probe tried would empty them on every replica).
                if claimed_probe is not None:
                    claimed, rows = claimed_probe
                    jobs.append(self._job(claimed, rows, actor, ws, probe=True))
        for job in jobs:
            if job.settings.rate_limit and not job.probe:
                self._limiter(job.actor_id, job.settings.rate_limit).take(1)
            task = asyncio.create_task(self._attempt(job), name=f"webhook-{job.request_id}")
            self.attempts.add(task)
            task.add_done_callback(self._attempt_done)
        return delay

    async def _actors(self) -> list[repo.WebhookActor]:
        """The webhook actors, read again once accounts, actors or pipelines changed (the
        notifier's generation: at once here, through the doorbell on the other replicas: a
        webhook enabled delivers at once, not at the next poll) and at least every poll
        interval (a ring lost, a change written around the ORM); a round runs after every
        attempt, and actors change far less often than that."""
        generation = self.notifier.generation
        if (
            generation != self._actors_generation
            or time.monotonic() - self._actors_read_at >= self.settings.webhook_poll_interval
        ):
            async with self.db.session() as session:
                self._actors_cache = await repo.webhook_actors(session)
            # The generation as it was before the read: a change during it reads them again.
            self._actors_generation = generation
            self._actors_read_at = time.monotonic()
            self._watch(a.id for a in self._actors_cache)
            self.pools.sweep()
        return self._actors_cache

    def _limiter(self, actor_id: uuid.UUID, rate: float) -> RateLimiter:
        limiter = self._limiters.get(actor_id)
        if limiter is None or limiter.rate != rate:
            limiter = self._limiters[actor_id] = RateLimiter(rate)
        return limiter

    def _job(
        self,
        claimed: store.Claimed,
        rows: list[Any],
        actor: repo.WebhookActor,
        ws: WebhookSettings,
        *,
        probe: bool,
    ) -> Job:
        # The body is built from what the claim read: its input envelopes' rows.
        body, unsendable = b"", None
        try:
            body = request_body(
                claimed.as_request(),
                rows,
                ws.content_type,
                self.settings.inline_envelope_max_bytes,
            )
        except ValueError as exc:
            # An input that cannot take this form: the attempt fails it, the round goes on.
            unsendable = f"the request body cannot be built: {exc}"
        return Job(
            request_id=claimed.id,
            actor_id=claimed.actor_id,
            actor_name=actor.name,
            process_id=claimed.process_id,
            node_id=claimed.node_id,
            attempt=claimed.attempt,
            created_at=claimed.created_at,
            settings=ws,
            body=body,
            unsendable=unsendable,
            probe=probe,
        )

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self.attempts.discard(task)
        self.wake.set()

    # ------------------------------------------------------------------ one attempt
    async def _attempt(self, job: Job) -> None:
        try:
            result = await self.send(job, job.body)
            verdict = await self.recorder.record(job, result)
            if verdict.kind != Kind.DELIVERED or job.probe:
                # It may have suspended or resumed the webhook: read the actors again.
                self._actors_read_at = -math.inf
            metrics.WEBHOOK_ATTEMPTS.labels(verdict.outcome.value).inc()
            if result.response is not None:
                metrics.WEBHOOK_LATENCY.observe(result.duration)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "webhook attempt %d of request %s failed; it is sent again once its lease ends",
                job.attempt,
                job.request_id,
            )

    async def send(self, job: Job, body: bytes) -> AttemptResult:
        ws = job.settings
        started = utcnow()
        t0 = time.perf_counter()

        def result(
            response: HttpResponse | None = None,
            error: str | None = None,
            refused: str | None = None,
        ) -> AttemptResult:
            return AttemptResult(started, time.perf_counter() - t0, response, error, refused)

        if job.unsendable is not None:
            return result(refused=job.unsendable)
        try:
            # DNS answers change: the guard runs again before every attempt.
            await check_url_allowed(ws.url, self.settings.webhook_allow_private)
        except UnresolvableHostError as exc:
            return result(error=exc.message)
        except WebhookSettingsError as exc:
            return result(refused=exc.message)
        target = Target.of(ws.url)
        headers = [("content-type", ws.content_type), ("user-agent", self.user_agent)]
        if ws.secrets:
            headers += signature_headers(ws.secrets, str(job.request_id), body)
        pool = self.pools.get(job.actor_id, target, ws.concurrency)
        try:
            async with asyncio.timeout(ws.timeout):
                response = await pool.post(
                    target, headers, body, self.settings.webhook_max_response_bytes
                )
        except TimeoutError:
            return result(error=f"no answer within {ws.timeout:g} s (timeout)")
        except HttpError as exc:
            return result(error=str(exc))
        return result(response=response)
