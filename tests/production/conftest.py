"""Helpers for production tests: reading /metrics, a bus built over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.bus.conftest import Bus
from tests.production.servers import cluster, scratch_database

__all__ = ["Scrape", "cluster", "scrape", "scratch_database"]


class Scrape:
    """One /metrics answer, parsed: `scrape.value("xbus_processes", status="done")`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append((sample.labels, sample.value))

    def has(self, name: str) -> bool:
        return name in self.samples

    def value(self, name: str, default: float | None = None, **labels: str) -> float:
        for sample_labels, value in self.samples.get(name, []):
            if all(sample_labels.get(k) == v for k, v in labels.items()):
                return value
        if default is not None:
            return default
        raise AssertionError(f"no sample {name}{labels} in:\n{self.text}")

    def labels(self, name: str) -> list[dict[str, str]]:
        return [labels for labels, _ in self.samples.get(name, [])]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Scrape:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return Scrape(r.text)


@pytest.fixture
async def bus(app: FastAPI, admin: httpx.AsyncClient) -> AsyncIterator[Bus]:
    b = Bus(app, admin)
    yield b
    await b.close()
