"""The rules of webhook delivery: what an attempt's answer means for its request, the
process and the actor's webhook.

| answer                                   | request                                          |
|------------------------------------------|--------------------------------------------------|
| success code                             | ends as the body's state says (default success)  |
| reattempt code, connection error, timeout | pending again after backoff (or Retry-After);   |
|                                          | out of attempts or age: node error, postmortem   |
| 410 Gone                                 | node error; the webhook is suspended             |
| any other code (3xx included)            | node error with the code and the body's start    |
| URL refused by the SSRF guard            | node error; nothing was sent                     |

A webhook suspended by failures (a request out of attempts while no other delivery to the
actor succeeded, or a 410) keeps its requests pending, and is probed every
`webhook_probe_interval` with its oldest pending request: any success answer brings it back.
An operator's disable is not probed. While suspended nothing fails for lack of attempts.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import math
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus

from app.bus.director import Answering, Director, Message, OutputConflict
from app.bus.notify import CONFIG, actor_key
from app.commit_hooks import notify_after_commit
from app.config import Settings
from app.core.exceptions import Conflict, NotFound, Unprocessable
from app.envelopes.codec import EnvelopeData
from app.models.enums import AttemptOutcome, LogLevel, RequestStatus
from app.store.connection import Unit, driver_connection
from app.store.processes import Joined
from app.webhooks import store
from app.webhooks.client import HttpResponse
from app.webhooks.payload import ActorState, AnswerError, read_state
from app.webhooks.settings import WebhookSettings

log = logging.getLogger(__name__)

LOG_EXCERPT = 200  # characters of an answer quoted in a process log line


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Job:
    """One claimed attempt of one request."""

    request_id: uuid.UUID
    actor_id: uuid.UUID
    actor_name: str
    process_id: uuid.UUID
    node_id: str
    attempt: int
    created_at: datetime
    settings: WebhookSettings
    body: bytes = b""
    unsendable: str | None = None  # why no body could be built for this request
    probe: bool = False


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one POST gave: an answer, or why there was none."""

    started_at: datetime
    duration: float  # seconds
    response: HttpResponse | None = None
    error: str | None = None  # connection error, timeout, unresolvable host
    refused: str | None = None  # nothing was sent: the SSRF guard refused the URL, or no body


class Kind(enum.Enum):
    DELIVERED = "delivered"  # a success code
    RETRY = "retry"  # a reattempt code, a connection error or a timeout
    GONE = "gone"  # 410
    FAILED = "failed"  # anything else


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    outcome: AttemptOutcome
    summary: str  # "503 Service Unavailable", "timeout after 2 s", ...
    state: ActorState | None = None
    retry_after: float | None = None


def excerpt(body: bytes, limit: int) -> str:
    """The start of an answer as text (PostgreSQL text holds no NUL)."""
    return body[:limit].decode("utf-8", "replace").replace("\x00", "\ufffd")


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from now: a number of seconds or an HTTP date."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _status_text(code: int, reason: str) -> str:
    if not reason:
        reason = HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ""
    return f"{code} {reason}".strip()


def judge(job: Job, result: AttemptResult, app_settings: Settings) -> Verdict:
    ws = job.settings
    if job.unsendable is not None:
        return Verdict(Kind.FAILED, AttemptOutcome.FAILURE, job.unsendable)
    if result.refused is not None:
        return Verdict(Kind.FAILED, AttemptOutcome.FAILURE, f"refused: {result.refused}")
    response = result.response
    if response is None:
        return Verdict(Kind.RETRY, AttemptOutcome.RETRY, result.error or "no answer")
    code = response.status
    text = _status_text(code, response.reason)
    if code in ws.success_codes:
        if response.truncated:
            return Verdict(
                Kind.FAILED,
                AttemptOutcome.FAILURE,
                f"{text}: the answer is larger than {app_settings.webhook_max_response_bytes} "
                "bytes",
            )
        try:
            state = read_state(
                ws.content_type,
                response.header("content-type"),
                response.body,
                max_items=app_settings.envelope_max_items,
                max_bytes=app_settings.envelope_max_bytes,
            )
        except AnswerError as exc:
            return Verdict(Kind.FAILED, AttemptOutcome.FAILURE, f"{text}: {exc}")
        outcome = AttemptOutcome.SUCCESS
        if state is not None and state.status == RequestStatus.RUNNING:
            outcome = AttemptOutcome.RUNNING
        elif state is not None and state.status == RequestStatus.ERROR:
            outcome = AttemptOutcome.FAILURE
        return Verdict(Kind.DELIVERED, outcome, text, state=state)
    if code in ws.reattempt_codes:
        wait = retry_after_seconds(response.header("retry-after"), utcnow())
        return Verdict(Kind.RETRY, AttemptOutcome.RETRY, text, retry_after=wait)
    if code == 410:
        return Verdict(Kind.GONE, AttemptOutcome.FAILURE, text)
    if 300 <= code < 400:
        location = response.header("location")
        text += f" (redirect to {location} not followed)" if location else " (redirect)"
    return Verdict(Kind.FAILED, AttemptOutcome.FAILURE, text)


def _attempt_error(verdict: Verdict) -> str | None:
    if verdict.kind != Kind.DELIVERED:
        return verdict.summary
    if verdict.outcome == AttemptOutcome.FAILURE:
        return "the actor answered the state error"
    return None


def _quoted(response: HttpResponse | None) -> str:
    if response is None or not response.body:
        return ""
    return ": " + excerpt(response.body, LOG_EXCERPT)


def _delay(ws: WebhookSettings, attempt: int, retry_after: float | None) -> tuple[float, str]:
    if retry_after is not None:
        return min(retry_after, ws.backoff_cap), " (Retry-After)"
    return ws.backoff_delay(attempt, random.random()), ""


def _seconds(value: float) -> str:
    return f"{value:.3g} s" if value < 10 else f"{math.ceil(value)} s"


class Outcomes:
    """Records an attempt and applies its verdict in the caller's unit of work: the
    attempt's row and what the verdict changes are committed together."""

    def __init__(self, director: Director, settings: Settings) -> None:
        self.director = director
        self.settings = settings

    def judge(self, job: Job, result: AttemptResult) -> Verdict:
        return judge(job, result, self.settings)

    async def record(
        self, session: Unit, job: Job, result: AttemptResult, verdict: Verdict | None = None
    ) -> Verdict:
        """Record an attempt and what its verdict (`judge`'s, when not given) changes."""
        if verdict is None:
            verdict = judge(job, result, self.settings)
        attempt = self._attempt_row(job, verdict, result)
        response = result.response
        now = utcnow()
        if verdict.kind == Kind.DELIVERED:
            if job.probe:
                # A probe's success resumes the webhook: in one transaction with the answer.
                await driver_connection(session)
            if (await self._delivered(session, job, verdict.state, attempt)).result:
                # Also when suspended since the claim (another attempt's verdict); outside a
                # probe, after the answer's own commit.
                await self._resume(session, job, now)
            return verdict
        suspended = await store.add_attempt(session, attempt)
        if job.unsendable is not None:
            # No later attempt would do better.
            await self._fail(
                session, job, f"webhook to actor {job.actor_name} not sent: {verdict.summary}"
            )
        elif job.probe or suspended:
            await self._hold(session, job, verdict, response, now)
        elif verdict.kind == Kind.RETRY:
            await self._retry(session, job, verdict, response, now)
        else:
            if response is None:
                reason = f"webhook to actor {job.actor_name} not sent: {verdict.summary}"
            else:
                reason = f"webhook answered {verdict.summary}{_quoted(response)}"
            if verdict.kind == Kind.GONE:
                reason += f"; the webhook of actor {job.actor_name} is suspended"
            await self._fail(session, job, reason)
            if verdict.kind == Kind.GONE:
                await self._suspend(session, job, f"the endpoint answered {verdict.summary}", now)
        return verdict

    def _attempt_row(self, job: Job, verdict: Verdict, result: AttemptResult) -> store.Attempt:
        response = result.response
        return store.Attempt(
            request_id=job.request_id,
            actor_id=job.actor_id,
            attempt=job.attempt,
            started_at=result.started_at,
            duration_ms=round(result.duration * 1000, 3),
            status_code=response.status if response is not None else None,
            outcome=verdict.outcome,
            error=_attempt_error(verdict),
            response_excerpt=(
                excerpt(response.body, self.settings.webhook_excerpt_bytes)
                if response is not None and response.body
                else None
            ),
        )

    def groupable(self, job: Job, verdict: Verdict) -> bool:
        """Whether `record_group` can record this attempt with others: a delivery (not a
        probe's) whose answer stores no envelope, most of them. The others: `record` each
        on its own."""
        if verdict.kind != Kind.DELIVERED or job.probe:
            return False
        return verdict.state is None or not verdict.state.outputs

    async def record_group(
        self, session: Unit, group: Sequence[tuple[Job, AttemptResult, Verdict]]
    ) -> list[bool | None]:
        """Record delivered attempts (`groupable` ones, with their verdicts) in two round trips
        whatever their number, with no transaction open on the unit: their requests read
        without a lock (`Director.peek_answers`), then every answer with its attempt's row,
        each written only if its process and request are still as read and no other
        transaction holds them, together in a transaction of their own
        (`Director.write_answers`). An attempt whose request had ended writes its row at
        once, opening the unit's transaction (BEGIN, COMMIT: two round trips more). For each
        attempt, in the group's order: whether the actor's webhook is suspended now
        (`resume` it), or None where nothing was written (its process or request changed, or
        was held: another answer, another request of the group's process; a request twice in
        the group is written once): `record` each of those alone."""
        answering = await self.director.peek_answers(
            session, [job.request_id for job, _, _ in group]
        )
        flags = []
        for job, result, verdict in group:
            attempt = self._attempt_row(job, verdict, result)
            flags.append(await self._delivered(session, job, verdict.state, attempt, answering))
        await self.director.write_answers(session, answering)
        return [None if flag.result is None else bool(flag.result) for flag in flags]

    async def resume(self, session: Unit, job: Job) -> None:
        """A delivery answered while the actor's webhook was suspended: it is back."""
        await self._resume(session, job, utcnow())

    # ---------------------------------------------------------------- ends
    async def _report(
        self,
        session: Unit,
        job: Job,
        status: RequestStatus,
        messages: list[Message],
        outputs: dict[str, EnvelopeData],
        answering: Answering | None = None,
    ) -> None:
        try:
            await self.director.report(
                session,
                job.request_id,
                status,
                messages,
                outputs,
                account_id=None,
                answering=answering,
            )
        except OutputConflict:
            raise  # the answer's fault: _delivered ends the request in error
        except (Conflict, NotFound):
            return  # ended meanwhile (canceled, answered by another attempt) or deleted
        # xbus_requests_ended_total is counted by the director when the request ends.

    async def _delivered(
        self,
        session: Unit,
        job: Job,
        state: ActorState | None,
        attempt: store.Attempt,
        answering: Answering | None = None,
    ) -> Joined:
        """Record a delivered attempt and the state its answer gave (success when it gave
        none). Without outputs to store, the attempt's row is written by the answer's own
        statement. `answering`: the group it is part of (`record_group`), which writes the
        answer later. Whether the actor's webhook is suspended now is the `result` of what
        it returns, once written."""
        if state is None:
            state = ActorState(RequestStatus.SUCCESS)
        joined = store.attempt_joined(attempt)
        if not state.outputs:
            try:
                await self.director.report(
                    session,
                    job.request_id,
                    state.status,
                    state.messages,
                    {},
                    account_id=None,
                    answering=answering,
                    joined=joined,
                )
            except (Conflict, NotFound):
                # Ended meanwhile, or deleted: nothing was written but the attempt.
                joined.result = await store.add_attempt(session, attempt)
            except Unprocessable as exc:
                if answering is not None and answering.guarded:
                    return joined  # nothing written (`result` None): recorded alone
                joined.result = await store.add_attempt(session, attempt)
                await self._fail(
                    session, job, f"the webhook's answer was refused: {exc.detail}", answering
                )
            return joined
        joined.result = await store.add_attempt(session, attempt)
        try:
            await self._report(session, job, state.status, state.messages, state.outputs)
        except (Unprocessable, OutputConflict) as exc:
            # Outputs the node does not have, outputs of a consumer, outputs whose ids are
            # taken: found before the report changes anything, so the request can still end
            # in error.
            await self._fail(session, job, f"the webhook's answer was refused: {exc.detail}")
        return joined

    async def _fail(
        self, session: Unit, job: Job, reason: str, answering: Answering | None = None
    ) -> None:
        await self._report(
            session, job, RequestStatus.ERROR, [Message(LogLevel.ERROR, reason)], {}, answering
        )

    # ---------------------------------------------------------------- not yet
    async def _retry(
        self,
        session: Unit,
        job: Job,
        verdict: Verdict,
        response: HttpResponse | None,
        now: datetime,
    ) -> None:
        ws = job.settings
        delay, why = _delay(ws, job.attempt, verdict.retry_after)
        age = (now - job.created_at).total_seconds()
        if job.attempt >= ws.max_attempts or age + delay > ws.max_age:
            await self._exhausted(session, job, verdict, now)
            return
        available = now + timedelta(seconds=delay)
        held = await store.reschedule(
            session, job.process_id, job.request_id, job.attempt, available, verdict.summary, now
        )
        if held:
            await self._log(
                session,
                job,
                LogLevel.WARNING,
                f"webhook attempt {job.attempt} of {ws.max_attempts} to actor {job.actor_name} "
                f"failed: {verdict.summary}{_quoted(response)}; next attempt in "
                f"{_seconds(delay)}{why}",
            )

    async def _exhausted(self, session: Unit, job: Job, verdict: Verdict, now: datetime) -> None:
        ws = job.settings
        attempts = await store.request_attempts(session, job.request_id)
        lines = [
            f"  #{a.attempt} {a.started_at.isoformat(timespec='milliseconds')}: "
            + (a.error or f"{a.status_code} {a.outcome.value}")
            + (f" ({a.duration_ms:.0f} ms)" if a.duration_ms is not None else "")
            for a in attempts
        ]
        if job.attempt >= ws.max_attempts:
            limit = f"max-attempts {ws.max_attempts}"
        else:
            limit = f"max-age {_seconds(ws.max_age)}"
        reason = (
            f"webhook delivery to actor {job.actor_name} gave up after {len(attempts)} "
            f"attempt(s) ({limit}); last: {verdict.summary}"
        )
        listing = f"webhook attempts of request {job.request_id}:\n" + "\n".join(lines)
        await self._report(
            session,
            job,
            RequestStatus.ERROR,
            [Message(LogLevel.ERROR, reason), Message(LogLevel.WARNING, listing)],
            {},
        )
        first = attempts[0].id if attempts else 0
        if not await store.delivered_since(session, job.actor_id, first):
            await self._suspend(
                session,
                job,
                f"a request ran out of attempts ({verdict.summary}) and no other delivery "
                "succeeded meanwhile",
                now,
            )

    async def _hold(
        self,
        session: Unit,
        job: Job,
        verdict: Verdict,
        response: HttpResponse | None,
        now: datetime,
    ) -> None:
        """A failed probe, or an attempt that was in flight when the webhook got suspended:
        the request waits, nothing fails while the webhook is suspended."""
        held = await store.reschedule(
            session, job.process_id, job.request_id, job.attempt, now, verdict.summary, now
        )
        if held:
            what = "probe of the suspended webhook" if job.probe else "webhook attempt"
            await self._log(
                session,
                job,
                LogLevel.NOTICE,
                f"{what} of actor {job.actor_name} failed: {verdict.summary}"
                f"{_quoted(response)}; the request waits until the webhook is back",
            )

    # ---------------------------------------------------------------- the actor's webhook
    async def _suspend(self, session: Unit, job: Job, reason: str, now: datetime) -> None:
        probe_at = now + timedelta(seconds=self.settings.webhook_probe_interval)
        suspended = await store.suspend_by_failures(session, job.actor_id, reason, now, probe_at)
        notify_after_commit(session, CONFIG)  # an UPDATE of the actor, as through the ORM
        if suspended:
            log.warning("webhook of actor %s suspended: %s", job.actor_name, reason)
            await store.add_log(
                session,
                LogLevel.WARNING,
                f"webhook of actor {job.actor_name} suspended: {reason}; probed every "
                f"{_seconds(self.settings.webhook_probe_interval)}",
                actor_id=job.actor_id,
            )

    async def _resume(self, session: Unit, job: Job, now: datetime) -> None:
        # Requests before the actor row: the lock order of every webhook transaction.
        await store.make_due(session, job.actor_id, now)
        resumed = await store.resume_after_failures(session, job.actor_id)
        notify_after_commit(session, CONFIG)  # an UPDATE of the actor, as through the ORM
        if resumed:
            log.info("webhook of actor %s is back", job.actor_name)
            await store.add_log(
                session,
                LogLevel.NOTICE,
                f"webhook of actor {job.actor_name} answered again: delivery resumed",
                actor_id=job.actor_id,
            )
            notify_after_commit(session, actor_key(job.actor_id))

    async def _log(self, session: Unit, job: Job, level: LogLevel, text: str) -> None:
        await store.add_log(
            session,
            level,
            text,
            process_id=job.process_id,
            node_id=job.node_id,
            actor_id=job.actor_id,
            request_id=job.request_id,
        )
