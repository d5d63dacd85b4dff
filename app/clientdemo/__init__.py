"""Demo services for `xbus-client serve`, under python-xbus's own names: `demo.helloworld`
(an emitter), `demo.relay` (a worker) and `demo.print-to-console` (a consumer). They replace
python-xbus's demos, whose print-to-console calls a method that does not exist."""

from __future__ import annotations

from xbus import service

from app.clientdemo.helloworld import HelloWorld
from app.clientdemo.print_to_console import PrintToConsole
from app.clientdemo.relay import Relay

SERVICES = {
    "demo.helloworld": HelloWorld,
    "demo.relay": Relay,
    "demo.print-to-console": PrintToConsole,
}


def register_services() -> None:
    """Put ours in python-xbus's service registry (over its own demos)."""
    for name, factory in SERVICES.items():
        service.register(name, factory)


__all__ = ["SERVICES", "HelloWorld", "PrintToConsole", "Relay", "register_services"]
