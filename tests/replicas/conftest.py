"""Replica tests run real `xbusd serve` processes (tests/production/servers.py)."""

from tests.production.servers import cluster, scratch_database

__all__ = ["cluster", "scratch_database"]
