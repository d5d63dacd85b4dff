"""The embedded nats-server starts on other ports when one it found free is taken before it
binds it (another server starting meanwhile: a test suite's, in parallel, did)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.runtime import children
from app.runtime.nats import EmbeddedNats


def test_a_port_taken_before_nats_server_binds_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = children.free_port
    handed: list[int] = []

    def free_port(host: str = "127.0.0.1") -> int:
        # The first port handed out (the client port) is the one just taken.
        port = taken.getsockname()[1] if not handed else real(host)
        handed.append(port)
        return port

    monkeypatch.setattr(children, "free_port", free_port)
    nats = EmbeddedNats(tmp_path, "127.0.0.1", 0)
    try:
        url = nats.start()
        assert url.endswith(f":{nats.port}")
        assert nats.port != handed[0]
        assert "address already in use" in nats.log_file.read_text()
    finally:
        nats.stop()
        taken.close()
