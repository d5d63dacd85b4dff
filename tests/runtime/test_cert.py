"""`xbusd cert generate` and `cert show`: the nats-server certificate for the host names
actors use, its lifetime, a running nats-server reloading it, later starts keeping it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from cryptography import x509

from app.certs.pki import (
    CertificateAuthority,
    certificate_hosts,
    ensure_server_tls,
    fingerprint,
)
from app.nats import tls_context
from app.runtime.nats import EmbeddedNats


def xbusd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XBUS_")}
    return subprocess.run(
        [sys.executable, "-m", "app.cli.xbusd", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def server_cert(data_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((data_dir / "pki" / "nats-server.crt").read_bytes())


def test_generate_for_host_names_and_lifetime_then_show(tmp_path: Path) -> None:
    r = xbusd(
        "cert", "generate", "--data-dir", str(tmp_path), "--expire", "90",
        "--host-defs", "nats.example.org, 10.1.2.3", "--host-defs", "bus.internal",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "nats.example.org" in r.stdout
    cert = server_cert(tmp_path)
    assert certificate_hosts(cert) == sorted(
        ["10.1.2.3", "127.0.0.1", "bus.internal", "localhost", "nats.example.org"]
    )
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89) < lifetime <= dt.timedelta(days=90)
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")  # the CA it created
    ca.verify((tmp_path / "pki" / "nats-server.crt").read_bytes())
    assert (tmp_path / "pki" / "nats-server.key").stat().st_mode & 0o777 == 0o600

    shown = xbusd("cert", "show", "--data-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["nats_server"]["hosts"] == certificate_hosts(cert)
    assert info["ca"]["subject"] == "CN=Xbus CA,O=xbus"

    # A start keeps these names (the settings' ones are among them) ...
    ensure_server_tls(ca, tmp_path / "pki", ["localhost", "127.0.0.1"])
    assert fingerprint(server_cert(tmp_path)) == fingerprint(cert)
    # ... and adds a new one from the settings without dropping them.
    ensure_server_tls(ca, tmp_path / "pki", ["localhost", "127.0.0.1", "nats.other.org"])
    assert "nats.other.org" in certificate_hosts(server_cert(tmp_path))
    assert "nats.example.org" in certificate_hosts(server_cert(tmp_path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host-defs", "bad host"], "invalid host name"),
        (["--host-defs", "a/b"], "invalid host name"),
        (["--expire", "0"], "--expire"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    r = xbusd("cert", "generate", "--data-dir", str(tmp_path), *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert not (tmp_path / "pki" / "nats-server.crt").exists()


def test_show_without_a_ca(tmp_path: Path) -> None:
    r = xbusd("cert", "show", "--data-dir", str(tmp_path))
    assert r.returncode == 1
    assert "no CA" in r.stderr


@pytest.fixture
def running_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    ca = CertificateAuthority.load_or_create(tmp_path / "pki")
    tls = ensure_server_tls(ca, tmp_path / "pki", ["localhost", "127.0.0.1"])
    server = EmbeddedNats(tmp_path, "127.0.0.1", 0, tls)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_running_nats_server_reloads_the_new_certificate(
    tmp_path: Path, running_nats: EmbeddedNats
) -> None:
    pki = tmp_path / "pki"

    async def connect_as(hostname: str) -> None:
        context = tls_context(pki / "ca.crt", pki / "xbusd-client.crt", pki / "xbusd-client.key")
        conn = await nats.connect(
            running_nats.url(),
            tls=context,
            tls_hostname=hostname,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )
        await conn.close()

    await connect_as("localhost")
    with pytest.raises(Exception, match=r"(?i)certificate|hostname"):
        await connect_as("nats.example.org")

    r = xbusd("cert", "generate", "--data-dir", str(tmp_path), "--host-defs", "nats.example.org")
    assert r.returncode == 0, r.stderr
    assert "reloaded" in r.stdout
    for _ in range(50):  # the reload is asynchronous
        try:
            await connect_as("nats.example.org")
            break
        except Exception:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the nats-server still serves the old certificate")
