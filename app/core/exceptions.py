"""The error tree, free of any web framework: the bus core raises these, the HTTP layer
(app/core/errors.py) answers them as problem+json, the NATS layer as protocol errors."""

from __future__ import annotations

from typing import Any


class XbusError(Exception):
    """Base of every error the API answers on purpose."""

    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers = headers or {}


class BadRequest(XbusError):
    pass


class Unauthorized(XbusError):
    status, code, title = 401, "unauthorized", "Authentication required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="xbus"'})


class Forbidden(XbusError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(XbusError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(XbusError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(XbusError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(XbusError):
    status, code, title = 415, "unsupported-media-type", "Unsupported media type"


class Unprocessable(XbusError):
    status, code, title = 422, "unprocessable", "Unprocessable content"


class ServiceUnavailable(XbusError):
    status, code, title = 503, "unavailable", "Service unavailable"
