"""Serving an nrpc service: the generated python-nrpc handlers in python-xbus drop the
service-level subject parameters (Broker's actorID, ClientAPI's accountID), so this one
handler serves any of them from their method tables, passing every parameter."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nrpc

log = logging.getLogger(__name__)


class Service:
    """`generated` is a python-xbus *Handler class; `impl` has one coroutine (or async
    generator, for streamed replies) per method, taking service parameters, method
    parameters, then the request message. `on_call`, if given, sees every call's
    parameters once the method has answered (an actor's sign of life: after the answer, so
    that an actor back online is not handed again the request its call just ended)."""

    def __init__(
        self,
        nc: Any,
        generated: type,
        impl: Any,
        on_call: Callable[[list[Any]], Awaitable[None]] | None = None,
    ) -> None:
        self.nc = nc
        self.impl = impl
        self.on_call = on_call
        self.methods: dict[str, tuple[Any, ...]] = generated.methods  # type: ignore[attr-defined]
        module = sys.modules[generated.__module__]
        name = generated.__name__.removesuffix("Handler")
        self.package = module.PKG_SUBJECT
        self.service_subject: str = getattr(module, f"{name}_SUBJECT")
        self.service_params: int = getattr(module, f"{name}_SUBJECT_PARAMS_COUNT")
        self.name = name

    def subjects(self) -> list[str]:
        prefix = [self.package, self.service_subject] + ["*"] * self.service_params
        return [
            ".".join([*prefix, method]) + (".>" if spec[1] else "")
            for method, spec in self.methods.items()
            if hasattr(self.impl, spec[0])  # published-only methods have no implementation
        ]

    async def _logged(self, mname: str, replies: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for reply in replies:
                yield reply
        except nrpc.exc.NrpcError:
            raise
        except Exception:
            log.exception("%s.%s failed", self.name, mname)
            raise

    async def handle(self, msg: Any) -> None:
        mname = "?"
        try:
            _, svc_params, method_token, tail = nrpc.parse_subject(
                self.package, 0, self.service_subject, self.service_params, msg.subject
            )
            mname, params_count, input_type, has_reply, void_reply, streamed = self.methods[
                method_token
            ]
            mt_params, _ = nrpc.parse_subject_tail(params_count, tail)
            args: list[Any] = [*svc_params, *mt_params]
            if input_type is not None:
                args.append(input_type.FromString(msg.data))
            method = getattr(self.impl, mname)
            if streamed:
                await nrpc.streamed_reply_handler(
                    self.nc, msg.reply, self._logged(mname, method(*args))
                )
            else:
                err = None
                rep = None
                try:
                    rep = await method(*args)
                except nrpc.exc.NrpcError as exc:
                    err = exc.as_nrpc_error()
                except Exception as exc:
                    log.exception("%s.%s failed", self.name, mname)
                    err = nrpc.exc.server_error(exc)
                if has_reply and msg.reply:
                    if err is not None:
                        raw = b"\x00" + err.SerializeToString()
                    elif rep is not None and not void_reply:
                        raw = rep.SerializeToString()
                    else:
                        raw = b""
                    await self.nc.publish(msg.reply, raw)
            if self.on_call is not None:
                await self.on_call(args)
        except Exception:
            log.exception("error serving %s on %s (%s)", self.name, msg.subject, mname)
