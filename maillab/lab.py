"""The Lab: the topology (domains, hosts, users), its servers, and the handles
that views, magics, the CLI and tests use.

::

    from maillab import Lab
    lab = Lab()                 # the default lab network, in a fresh temp dir
    lab.start()                 # every service up on the lab thread
    lab.status()                # the port/TLS table
    lab.stop()
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import json
import tempfile
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .events import EventBus
from .faults import Faults
from .fdlimit import FdLimit, raise_soft_limit
from .fdlimit import needed as fd_needed
from .limits import Limits
from .policy import Policy
from .relay.tlspolicy import RelayTLSPolicy
from .runtime import LabLoop, freeze_what_exists
from .services import FACTORIES, PortBusy, Service
from .smtp.data import Budget
from .store import Store
from .tls import LabCA
from .topology import (
    SERVICES,
    Domain,
    MailHost,
    Topology,
    default_network,
    lab_port,
    loopback_aliases_work,
    single_host,
)
from .users import DEFAULT_USERS, Users

if TYPE_CHECKING:
    from .dns.server import LabDNS
    from .relay.queue import RelayQueue

#: Modules that register services; a missing one just means fewer services.
SERVICE_MODULES = (
    "maillab.smtp.server",
    "maillab.pop3.server",
    "maillab.imap.server",
    "maillab.dns.server",
)

#: A start or stop hook: ``async def hook(lab)``, run on the lab thread.
Hook = Callable[["Lab"], Awaitable[None]]


def _load_service_modules() -> None:
    for mod in SERVICE_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):
                raise


class Lab:
    """A mail lab: servers for every host of a topology, on one lab thread."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Lab:
        # What the process holds before this lab (the kernel's state, imported modules,
        # the services' modules imported here) leaves the collector's generations, so a
        # full collection on the lab loop walks the lab's own objects, not the kernel's.
        # Here, before the instance exists: frozen, it and what it makes in cycles with
        # it would never be collected.
        _load_service_modules()
        freeze_what_exists()
        return super().__new__(cls)

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        ports: str | dict[str, int] = "default",
        domains: list[str] | None = None,
        users: dict[str, str] | None = None,
        services: tuple[str, ...] | None = None,
        limits: Limits | None = None,
        policy: Policy | None = None,
        topology: Topology | None = None,
        require_tls: bool = False,
        service_addresses: dict[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="maillab-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.bind_host = host
        self.ports = ports
        self.limits = limits or Limits()
        self.policy = policy or Policy()
        if require_tls:
            self.policy.require_tls = True
        if topology is not None:
            self.topology = topology
        elif domains:
            self.topology = single_host([d.lower() for d in domains], host)
        else:
            self.topology = default_network(host)
        if users is None:
            local = set(self.topology.domains)
            users = {a: p for a, p in DEFAULT_USERS.items() if a.split("@")[1] in local}
            if not users:
                first = next(iter(self.topology.domains))
                users = {f"alice@{first}": "alice-pw", f"bob@{first}": "bob-pw"}
        self.users = Users(users)
        self.wanted_services = services
        #: service name -> the address it binds instead of its host's (a lab that joined a
        #: class network keeps all but its MX on loopback); a busy lab port there falls
        #: back to a free one, since other labs on this machine may hold it.
        self.service_addresses = dict(service_addresses or {})
        self.events = EventBus()
        self.loop = LabLoop(f"maillab-loop-{id(self):x}")
        self.loop.on_lag = lambda lag: self.events.emit(
            "lab", "lag", "lab", "server", "lab", str(lag), wall_ms=round(lag.wall * 1000),
            cpu_ms=round(lag.cpu * 1000), busy=lag.busy, full_gc_ms=round(lag.full_gc * 1000),
            others_ms=round(lag.others * 1000))
        self.loop.on_gc_pause = lambda pause: self.events.emit(
            "lab", "gc", "lab", "server", "lab", str(pause), wall_ms=round(pause.wall * 1000),
            cpu_ms=round(pause.cpu * 1000),
            thread=pause.thread, collected=pause.collected)
        self.store = Store(self.directory / "mail")
        self.ca: LabCA | None = None
        self.fd_limit: FdLimit | None = None  # the open-file limit as found and raised at start
        self.services: list[Service] = []
        self.relay: RelayQueue | None = None  # the MTA queue of every host, while started
        self.dns: LabDNS | None = None  # the lab DNS server, when the lab runs the dns service
        self.imap_hub: Any = None  # what the IMAP sessions share (IDLE, logins per user)
        self.classnet: Any = None  # the class network this lab joined (maillab.classnet.member)
        self.faults = Faults(lambda: self.topology.hosts)  # %mail fail: injected failures
        self._start_hooks: list[Hook] = []
        self._stop_hooks: list[Hook] = []
        #: The relay's TLS level per destination domain (none/may/encrypt/verify/dane).
        self.tls_policy = RelayTLSPolicy()
        self.middleboxes: dict[str, Any] = {}  # "host/service" -> a running maillab.middlebox.Middlebox
        self.wire_captures: deque[Any] = deque(maxlen=200)  # what the middleboxes saw (the eavesdropper view)
        #: host name -> aiosmtpd handler object whose hooks its SMTP servers call
        self.smtp_handlers: dict[str, Any] = {}
        #: DATA text all the SMTP sessions hold at once (limits.smtp_data_in_flight)
        self.smtp_data = Budget(self.limits)
        self.started = False

    def on_start(self, hook: Hook) -> None:
        """Run ``await hook(lab)`` on the lab thread after the services started
        (once per hook, however often it is registered)."""
        if hook not in self._start_hooks:
            self._start_hooks.append(hook)

    def on_stop(self, hook: Hook) -> None:
        """Run ``await hook(lab)`` on the lab thread before the services stop."""
        if hook not in self._stop_hooks:
            self._stop_hooks.append(hook)

    # -- life cycle -------------------------------------------------------------
    def start(self) -> Lab:
        """Start every service (idempotent)."""
        if self.started:
            return self
        _load_service_modules()
        self.loop.start()
        if self.ca is None:
            self.ca = LabCA(self.directory / "tls")
        for user in self.users:
            self.store.ensure_user(user.address)
        self.services = self._plan_services()
        self.fd_limit = raise_soft_limit(fd_needed(len(self.services), len(self.users), self.limits))
        self.events.emit("lab", "note", "lab", "server", "lab", self.fd_limit.text(),
                         soft=self.fd_limit.soft, hard=self.fd_limit.hard, needed=self.fd_limit.needed)
        try:
            self.loop.run(self._start_services(), timeout=30)
        except BaseException:
            self.loop.run(self._stop_services(), timeout=10)
            self.loop.stop()
            raise
        self.started = True
        self.write_lab_json()
        return self

    def stop(self) -> None:
        """Close every listener and session, then the lab thread."""
        if self.loop.running:
            try:
                self.loop.run(self._stop_services(), timeout=10)
            finally:
                self.loop.stop()
        self.started = False
        self.store.close()

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _port_for(self, name: str, shared_address: bool) -> int:
        if isinstance(self.ports, dict):
            return int(self.ports.get(name, lab_port(name)))
        if self.ports == "auto" or shared_address:
            return 0
        return lab_port(name)

    def _plan_services(self) -> list[Service]:
        wanted = self.wanted_services
        planned: list[Service] = []
        seen_addresses: set[str] = set()
        for host in self.topology.hosts.values():
            # Hosts that had to share an address (no loopback aliases) get free ports.
            shared = host.address in seen_addresses
            seen_addresses.add(host.address)
            for name in host.services:
                reg = FACTORIES.get(name)
                if reg is None or not reg.per_host or (wanted and name not in wanted):
                    continue
                planned.append(Service(name, host.name, self.service_addresses.get(name, host.address),
                                       self._port_for(name, shared), host=host))
        for name, reg in FACTORIES.items():
            if not reg.per_host and (not wanted or name in wanted):
                planned.append(Service(name, f"lab-{name}", self.service_addresses.get(name, self.bind_host),
                                       self._port_for(name, False)))
        return planned

    async def _start_services(self) -> None:
        for svc in self.services:
            try:
                svc.listener = await self._bind(svc)
            except OSError as exc:
                svc.state = f"failed: {exc.strerror or exc}"
                if exc.errno == errno.EADDRINUSE:
                    raise PortBusy(svc) from None
                raise
            svc.state = "running"
        await self._start_lab_parts()
        for hook in list(self._start_hooks):
            await hook(self)

    async def _bind(self, svc: Service) -> Any:
        factory = FACTORIES[svc.name].factory
        try:
            return await factory(self, svc)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or svc.port == 0 or svc.name not in self.service_addresses:
                raise
        svc.port = 0  # a moved service's lab port is taken (another lab here): any free port
        return await factory(self, svc)

    async def _start_lab_parts(self) -> None:
        """Wire the lab-wide parts that other code reaches by name: ``lab.dns`` (the
        name server's Python handle) and ``lab.relay`` (every host's outgoing queue)."""
        dns_server = next((s.listener for s in self.services
                           if s.name == "dns" and s.listener is not None), None)
        if dns_server is not None:
            from .dns.server import LabDNS

            self.dns = LabDNS(self, dns_server)
        from .relay.queue import RelayQueue

        relay = RelayQueue(self)
        await relay.start()
        self.relay = relay

    async def _stop_services(self) -> None:
        for hook in list(self._stop_hooks):
            try:
                await hook(self)
            except Exception:
                pass
        from .relay.queue import RelayQueue

        if isinstance(self.relay, RelayQueue):  # (tests put stand-ins there)
            try:
                await self.relay.stop()
            except Exception:
                pass
        for svc in self.services:
            if svc.listener is not None:
                svc.listener.close()
        for svc in self.services:
            if svc.listener is not None:
                try:
                    await asyncio.wait_for(svc.listener.wait_closed(), 3)
                except Exception:
                    pass
                svc.listener = None
            svc.state = "stopped"
        # Sessions still open (a client that never said QUIT) are cancelled.
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3)

    # -- lookups ----------------------------------------------------------------
    def service(self, name: str, host: str | None = None) -> Service:
        """The service ``name`` of ``host`` (default: the primary host)."""
        hostname = host or (self.topology.primary.name if SERVICES.get(name, (0, 0, "", ""))[3] != "dns"
                            else f"lab-{name}")
        for svc in self.services:
            if svc.name == name and (svc.hostname == hostname or (svc.host is None and host is None)):
                return svc
        raise KeyError(f"no service {name!r} on {hostname} (is the lab started?)")

    def address(self, name: str, host: str | None = None) -> tuple[str, int]:
        svc = self.service(name, host)
        return svc.address, svc.port

    def status(self) -> list[dict[str, Any]]:
        """One row per service: what ``%mail status`` and ``maillab serve`` show."""
        rows = []
        for svc in self.services:
            cert = ""
            if svc.tls != "none":
                cert = f"lab CA: {svc.hostname}"
            rows.append({
                "service": svc.name,
                "host": svc.hostname,
                "address": svc.address,
                "lab_port": svc.port,
                "standard_port": svc.standard_port,
                "tls": svc.tls,
                "cert": cert,
                "state": svc.state,
                "sessions": svc.active,
                "total": svc.total,
            })
        return rows

    @property
    def ca_path(self) -> Path:
        if self.ca is None:
            raise RuntimeError("start the lab first: the CA is made at start")
        return self.ca.ca_path

    def lab_json(self) -> dict[str, Any]:
        primary = self.topology.primary.name
        services = {s.name: s.as_dict() for s in self.services
                    if s.hostname == primary or s.host is None}
        hosts: dict[str, Any] = {}
        for host in self.topology.hosts.values():
            hosts[host.name] = {
                "address": host.address,
                "domains": host.domains,
                "services": {s.name: s.as_dict() for s in self.services if s.hostname == host.name},
            }
        return {
            "directory": str(self.directory),
            "ca": str(self.ca.ca_path) if self.ca else None,
            "services": services,
            "hosts": hosts,
            "domains": {d.name: {"mx": [[p, h] for p, h in d.mx]} for d in self.topology.domains.values()},
            "users": {u.address: u.password for u in self.users},
        }

    def write_lab_json(self) -> Path:
        path = self.directory / "lab.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.lab_json(), indent=2))
        tmp.replace(path)
        return path

    def add_domain(self, name: str, mx: list[tuple[int, str]] | None = None, *,
                   users: dict[str, str] | None = None) -> Domain:
        """Add a mail domain (``lab.add_domain("delta.test", mx=[(10, "mx1"), (20, "mx2")])``).

        Short MX names are hosts under the domain (``mx1`` -> ``mx1.delta.test``); hosts the
        lab does not have yet get their own loopback address and, on a running lab, their
        services at once. ``mx=None`` means one host ``mail.<domain>``; ``mx=[]`` no MX
        record (senders use the domain's A record); ``[(0, ".")]`` a null MX (RFC 7505).
        The lab DNS zones and ``lab.json`` follow.
        """
        name = name.lower().rstrip(".")
        wanted = [(10, "mail")] if mx is None else mx
        records: list[tuple[int, str]] = []
        for pref, host in wanted:
            host = host.lower().rstrip(".")
            records.append((int(pref), "." if not host else host if "." in host else f"{host}.{name}"))
        new_hosts: list[MailHost] = []
        third = self._free_third_octet()
        for _pref, hostname in records:
            if hostname != "." and hostname not in self.topology.hosts:
                address = (f"127.0.{third}.{len(new_hosts) + 1}" if loopback_aliases_work()
                           else self.bind_host)
                new_hosts.append(self.topology.add_host(MailHost(hostname, address)))
        domain = self.topology.add_domain(name, records)
        if self.started:
            self.loop.run(self._start_hosts(new_hosts), timeout=30)
            if self.dns is not None:
                self.dns.rebuild()
        for address, password in (users or {}).items():
            self.add_user(address, password)
        if self.started:
            self.write_lab_json()
        return domain

    def _free_third_octet(self) -> int:
        used = {h.address.split(".")[2] for h in self.topology.hosts.values() if h.address.count(".") == 3}
        return next(n for n in [*range(40, 251, 10), *range(1, 256)] if str(n) not in used)

    async def _start_hosts(self, hosts: list[MailHost]) -> None:
        for host in hosts:
            shared = any(h.address == host.address for h in self.topology.hosts.values() if h is not host)
            for name in host.services:
                reg = FACTORIES.get(name)
                if reg is None or not reg.per_host or (self.wanted_services and name not in self.wanted_services):
                    continue
                svc = Service(name, host.name, host.address, self._port_for(name, shared), host=host)
                try:
                    svc.listener = await reg.factory(self, svc)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        raise PortBusy(svc) from None
                    raise
                svc.state = "running"
                self.services.append(svc)

    def set_tls_policy(self, domain: str | None = None, level: str | None = None, *,
                       default: str | None = None) -> RelayTLSPolicy:
        """The TLS level every lab MTA uses when sending to ``domain``
        (``lab.set_tls_policy("beta.test", "encrypt")``; ``level=None`` removes the entry),
        or for every destination without an entry (``default="may"``)."""
        self.tls_policy.set(domain, level, default=default)
        return self.tls_policy

    def mitm(self, host: str, on: bool = True, *, service: str = "smtp", strip: bool = True) -> Any:
        """Put a lab middlebox in front of ``host``'s ``service`` (on=False removes it).

        ``strip=True`` removes STARTTLS from what the server offers (the downgrade
        attack); ``strip=False`` only listens (a passive eavesdropper). Either way it
        records what crossed the wire for the eavesdropper view."""
        from .middlebox import install, remove

        if on:
            return install(self, host, service, strip=strip)
        return remove(self, host, service)

    def set_handler(self, host: str, handler: Any) -> None:
        """Let ``handler`` (an aiosmtpd handler object: ``handle_EHLO``, ``handle_MAIL``,
        ``handle_RCPT``, ``handle_DATA``) have its say in the SMTP sessions of lab host ``host``
        (see :mod:`maillab.smtp.hooks`); None removes it. New connections use it."""
        names = set(self.topology.hosts)
        if host not in names:
            raise ValueError(f"no lab host {host!r}; the hosts are {', '.join(sorted(names))}")
        if handler is None:
            self.smtp_handlers.pop(host, None)
        else:
            self.smtp_handlers[host] = handler

    def users_at(self, host: MailHost | None) -> Users:
        """The users who may log in at ``host`` (all of them for a lab-wide service):
        those of the domains it keeps (:meth:`Topology.keeps_users_of`). Alice's login
        at beta.test's server fails there like a wrong password, as on the internet."""
        if host is None:
            return self.users
        return self.users.at(lambda domain: self.topology.keeps_users_of(host, domain))

    def home_host(self, user: str) -> str:
        """The name of the host where ``user`` (an address or a lab login) logs in."""
        address = self.users.resolve(user) or user
        return self.topology.home_of(address.rpartition("@")[2]).name

    def add_user(self, address: str, password: str) -> None:
        self.users.add(address, password)
        if self.started:
            self.store.ensure_user(address)
            self.write_lab_json()

    def check(self, exercise: str, answer: str | None = None) -> Any:
        """Judge an exercise (``maillab exercises`` lists them) from this lab's events
        and store: a result with ``.passed`` and ``.hints`` (what is still missing)."""
        from .exercises import check

        return check(self, exercise, answer)

    def __repr__(self) -> str:
        state = "running" if self.started else "stopped"
        return f"<Lab {state} dir={self.directory} services={len(self.services)}>"
