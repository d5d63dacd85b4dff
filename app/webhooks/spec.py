"""The bus's outbound half in the OpenAPI document: the delivery POST a webhook consumer
receives (OpenAPI 3.1 top-level `webhooks`), so a consumer team generates its receiver's
models from the same file as its clients. Documentation only: nothing here is served."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header

from app.requests.schemas import ActorRequestRead, RequestStateIn

_DESCRIPTION = """\
The bus POSTs each request of a webhook actor to its `http.webhook.url`: the body a polling
actor would get from `GET /api/v1/actors/{actor}/requests` (JSON; `application/x-protobuf`
when the actor's `http.webhook.content-type` says so: an `xbus.ActorProcessRequest`).

With `http.webhook.secret`, each POST is signed per Standard Webhooks: `webhook-id` (stable
across the retries of one request), `webhook-timestamp` (Unix seconds) and
`webhook-signature` (`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one per secret
while rotating, separated by spaces). `app/webhooks/verify.py` checks them.

How the answer is read:

- a success code (`http.webhook.success-codes`, default 2xx): the request ends as the body's
  state says. No body, or one that is not a state: success; `{"status": "error", ...}`: an
  error; `{"status": "running"}`: still open (the actor reports later with
  `POST /api/v1/requests/{id}/state`); a worker's `outputs` are its output envelopes.
- a reattempt code (`http.webhook.reattempt-codes`, default 408, 425, 429, 500, 502, 503,
  504), a connection error, a timeout: delivered again after a backoff with jitter, or after
  the answer's `Retry-After`; out of attempts or age, the node ends in error.
- 410 Gone: the node ends in error and the webhook is suspended (probed until it answers a
  success).
- any other code (3xx included): the node ends in error with the code and the start of the
  body.
"""


def declare_webhooks(app: FastAPI) -> None:
    """Add the delivery POST to `app.webhooks` (the document's `webhooks` section)."""

    @app.webhooks.post(
        "request-delivery",
        operation_id="request_delivery",
        summary="A request delivered to a webhook actor",
        description=_DESCRIPTION,
        tags=["webhooks"],
        responses={
            200: {
                "model": RequestStateIn,
                "description": "Taken: success, or the state in the body (a body is optional)",
            },
            410: {"description": "Gone: the node fails and the webhook is suspended"},
            429: {"description": "Try later (any reattempt code; `Retry-After` honoured)"},
        },
    )
    def request_delivery(  # pragma: no cover - documentation, never served
        body: ActorRequestRead,
        webhook_id: Annotated[
            str | None,
            Header(alias="webhook-id", description="the request's id, the same on every retry"),
        ] = None,
        webhook_timestamp: Annotated[
            str | None, Header(alias="webhook-timestamp", description="Unix seconds")
        ] = None,
        webhook_signature: Annotated[
            str | None,
            Header(
                alias="webhook-signature",
                description="`v1,<base64 HMAC-SHA256>` per secret, space-separated",
            ),
        ] = None,
    ) -> None:
        """Documentation only."""
