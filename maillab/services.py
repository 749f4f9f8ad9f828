"""The registry of lab services: which server each service name starts, and the
live record (address, ports, TLS mode, state, session counts) that the status
view and ``lab.json`` show.

Protocol packages register a factory with :func:`register`; the :class:`~maillab.lab.Lab`
calls it on the lab thread for every host that runs the service.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .topology import MailHost, protocol_of, standard_port, tls_mode

if TYPE_CHECKING:
    from .lab import Lab


class Listener(Protocol):
    def close(self) -> None: ...
    async def wait_closed(self) -> None: ...


Factory = Callable[["Lab", "Service"], Awaitable[Listener]]


@dataclass
class Registration:
    factory: Factory
    per_host: bool  # one per mail host (smtp, pop3, ...) or one per lab (dns)


FACTORIES: dict[str, Registration] = {}


def register(name: str, *, per_host: bool = True) -> Callable[[Factory], Factory]:
    """Decorator: ``@register("pop3")`` on ``async def start(lab, service) -> Listener``.

    The factory binds ``service.address:service.port`` (port 0 = any free port),
    writes the port it got back into ``service.port`` and returns the listener.
    """

    def deco(factory: Factory) -> Factory:
        FACTORIES[name] = Registration(factory, per_host)
        return factory

    return deco


class PortBusy(OSError):
    def __init__(self, service: Service) -> None:
        super().__init__(
            errno.EADDRINUSE,
            f"port {service.port} on {service.address} is already in use (service {service.name}"
            f" of {service.hostname}); stop whatever holds it, or start with --ports auto"
            " (ports='auto') to pick free ports",
        )
        self.service = service


@dataclass
class Service:
    name: str  # "smtp", "submission", "pop3s", "dns", ...
    hostname: str  # the lab host name, e.g. mail.alpha.test
    address: str
    port: int
    host: MailHost | None = None
    state: str = "stopped"
    active: int = 0  # open sessions
    total: int = 0  # sessions since start
    listener: Any = field(default=None, repr=False)

    @property
    def protocol(self) -> str:
        return protocol_of(self.name)

    @property
    def standard_port(self) -> int:
        return standard_port(self.name)

    @property
    def tls(self) -> str:
        return tls_mode(self.name)

    @property
    def key(self) -> str:
        return f"{self.hostname}/{self.name}"

    def session_opened(self) -> None:
        self.active += 1
        self.total += 1

    def session_closed(self) -> None:
        self.active = max(0, self.active - 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.address,
            "hostname": self.hostname,
            "port": self.port,
            "standard_port": self.standard_port,
            "tls": self.tls,
            "protocol": self.protocol,
            "state": self.state,
        }
