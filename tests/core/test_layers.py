"""The bus core knows nothing of HTTP or NATS: both front ends call it. (The protobuf message
classes come from python-xbus, whose nrpc package imports nats-py itself; the core never
touches a connection.)"""

from __future__ import annotations

import subprocess
import sys


def test_bus_core_imports_neither_fastapi_nor_nats() -> None:
    code = (
        "import sys, app.bus.director, app.bus.routing, app.bus.notify, app.envelopes.codec;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')"
        " or m.startswith(('app.nats', 'app.core.deps', 'app.core.errors')));"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"the bus core pulls in: {out.stdout.strip()}"
