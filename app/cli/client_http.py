"""The bus's HTTP API as `xbus-client` and `xbus-fullenv` use it: info, registrations,
renew-cert, and any other call through `BusHttp.call`."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class BusError(Exception):
    """The bus answered an error, or could not be reached."""

    def __init__(
        self, message: str, status: int | None = None, problem: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem or {}  # the problem+json body, when the bus sent one


class BusHttp:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BusHttp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One call; the JSON object answered ({} for an empty answer), or BusError."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._http.request(method, path, json=json, params=params, **extra)
        except httpx.HTTPError as exc:
            raise BusError(f"cannot reach the bus at {self.url}: {exc}") from None
        if response.is_success:
            if response.status_code == 204 or not response.content:
                return {}
            try:
                body = response.json()
            except ValueError:
                body = None
            if not isinstance(body, dict):
                raise BusError(f"unexpected answer from {self.url}{path}: {response.text[:200]}")
            return body
        problem: dict[str, Any] | None = None
        try:
            loaded = response.json()
            problem = loaded if isinstance(loaded, dict) else None
        except ValueError:
            pass
        if problem is not None:
            detail = problem.get("detail") or problem.get("title") or response.reason_phrase
        else:
            detail = response.text[:200] or response.reason_phrase
        raise BusError(f"{detail} (HTTP {response.status_code})", response.status_code, problem)

    def info(self) -> dict[str, Any]:
        return self.call("GET", "/api/v1/info")

    def register(
        self, name: str, type_: str, csr: str, actors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body = {"name": name, "type": type_, "csr": csr, "actors": actors}
        return self.call("POST", "/api/v1/registrations", body)

    def registration(self, registration_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/registrations/{registration_id}")

    def renew_cert(
        self, account: str, csr: str, signature: str | None, days: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"csr": csr}
        if signature is not None:
            body["signature"] = signature
        if days is not None:
            body["cert_expire_days"] = days
        ref = urllib.parse.quote(account, safe="")
        return self.call("POST", f"/api/v1/accounts/{ref}/renew-cert", body)
