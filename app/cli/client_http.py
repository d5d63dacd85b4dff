"""The bus's HTTP API as `xbus-client` uses it: info, registrations, renew-cert."""

from __future__ import annotations

import urllib.parse
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class BusError(Exception):
    """The bus answered an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


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

    def _call(self, method: str, path: str, json: Any = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise BusError(f"cannot reach the bus at {self.url}: {exc}") from None
        if response.is_success:
            body = response.json()
            if not isinstance(body, dict):
                raise BusError(f"unexpected answer from {self.url}{path}: {response.text[:200]}")
            return body
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title") or response.reason_phrase
        except ValueError:
            detail = response.text[:200] or response.reason_phrase
        raise BusError(f"{detail} (HTTP {response.status_code})", response.status_code)

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/api/v1/info")

    def register(
        self, name: str, type_: str, csr: str, actors: list[dict[str, Any]]
    ) -> dict[str, Any]:
        body = {"name": name, "type": type_, "csr": csr, "actors": actors}
        return self._call("POST", "/api/v1/registrations", body)

    def registration(self, registration_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/registrations/{registration_id}")

    def renew_cert(
        self, account: str, csr: str, signature: str | None, days: int | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"csr": csr}
        if signature is not None:
            body["signature"] = signature
        if days is not None:
            body["cert_expire_days"] = days
        ref = urllib.parse.quote(account, safe="")
        return self._call("POST", f"/api/v1/accounts/{ref}/renew-cert", body)
