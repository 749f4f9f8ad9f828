"""The lab network: mail domains, mail hosts with their own loopback addresses,
the services each host runs, and the port map from standard ports to lab ports.

Linux routes all of 127.0.0.0/8 to the loopback interface, so every lab host can
have an address of its own (mail.alpha.test = 127.0.0.1, mx.beta.test =
127.0.20.1, ...) and listen on the same lab port 2525, exactly as hosts on the
internet all listen on port 25.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

#: service -> (standard port, lab port, TLS mode, protocol)
SERVICES: dict[str, tuple[int, int, str, str]] = {
    "smtp": (25, 2525, "starttls", "smtp"),
    "submission": (587, 2587, "starttls", "smtp"),
    "smtps": (465, 2465, "implicit", "smtp"),
    "pop3": (110, 1110, "starttls", "pop3"),
    "pop3s": (995, 1995, "implicit", "pop3"),
    "imap": (143, 1143, "starttls", "imap"),
    "imaps": (993, 1993, "implicit", "imap"),
    "dns": (53, 1053, "none", "dns"),
}

MAIL_SERVICES = ("smtp", "submission", "smtps", "pop3", "pop3s", "imap", "imaps")


def standard_port(service: str) -> int:
    return SERVICES[service][0]


def lab_port(service: str) -> int:
    return SERVICES[service][1]


def tls_mode(service: str) -> str:
    return SERVICES[service][2]


def protocol_of(service: str) -> str:
    return SERVICES[service][3]


@dataclass
class MailHost:
    """A lab mail server: its name, its address, the domains it is final for."""

    name: str
    address: str
    domains: list[str] = field(default_factory=list)
    services: tuple[str, ...] = MAIL_SERVICES


@dataclass
class Domain:
    name: str
    mx: list[tuple[int, str]] = field(default_factory=list)  # (preference, host name)


@dataclass
class Topology:
    domains: dict[str, Domain] = field(default_factory=dict)
    hosts: dict[str, MailHost] = field(default_factory=dict)

    def add_host(self, host: MailHost) -> MailHost:
        self.hosts[host.name] = host
        return host

    def add_domain(self, name: str, mx: list[tuple[int, str]] | None = None) -> Domain:
        d = Domain(name.lower(), list(mx or []))
        self.domains[d.name] = d
        for _pref, hostname in d.mx:
            host = self.hosts.get(hostname)
            if host is not None and d.name not in host.domains:
                host.domains.append(d.name)
        return d

    def host_for_domain(self, domain: str) -> MailHost | None:
        """The best (lowest preference) lab host that is final for ``domain``."""
        d = self.domains.get(domain.lower())
        if not d:
            return None
        for _pref, hostname in sorted(d.mx):
            if hostname in self.hosts:
                return self.hosts[hostname]
        return None

    def home_of(self, domain: str) -> MailHost:
        """The host where users of ``domain`` log in and read their mail: the host final
        for it, or the primary host for a domain no lab host is final for."""
        best = self.host_for_domain(domain)
        if best is not None and self.keeps_users_of(best, domain):
            return best
        return next(h for h in self.hosts.values() if self.keeps_users_of(h, domain))

    def keeps_users_of(self, host: MailHost, domain: str) -> bool:
        """Whether ``host`` knows the users of ``domain`` (lets them log in): the domains
        it is final for, where their mailboxes are; the primary host also keeps the users
        of a domain no lab host is final for. With one host, that is every user."""
        domain = domain.lower()
        if domain in (d.lower() for d in host.domains):
            return True
        return host is self.primary and not any(domain in (d.lower() for d in h.domains)
                                                for h in self.hosts.values())

    def local_domains(self) -> list[str]:
        return sorted(self.domains)

    @property
    def primary(self) -> MailHost:
        """The host a user's own clients talk to (the first one)."""
        return next(iter(self.hosts.values()))


def loopback_aliases_work(address: str = "127.0.20.1") -> bool:
    """True when extra loopback addresses can be bound (Linux: yes; macOS: not
    without ``ifconfig lo0 alias``)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def single_host(domains: list[str], address: str = "127.0.0.1") -> Topology:
    """One mail host, final for all of ``domains`` (``maillab serve --domain``)."""
    topo = Topology()
    first = domains[0]
    topo.add_host(MailHost(f"mail.{first}", address, []))
    for d in domains:
        topo.add_domain(d, [(10, f"mail.{first}")])
    return topo


def default_network(address: str = "127.0.0.1") -> Topology:
    """The default lab: alpha.test on ``address`` (the user's own provider),
    beta.test with two MX hosts of different preference, gamma.test.

    Names are under .test (RFC 2606/6761), so nothing here can reach a real domain.
    Where extra loopback addresses cannot be bound, every host shares ``address``
    (and then needs its own ports).
    """
    aliases = loopback_aliases_work()
    def addr(a: str) -> str:
        return a if aliases else address

    topo = Topology()
    topo.add_host(MailHost("mail.alpha.test", address))
    topo.add_host(MailHost("mx1.beta.test", addr("127.0.20.1")))
    topo.add_host(MailHost("mx2.beta.test", addr("127.0.20.2")))
    topo.add_host(MailHost("mail.gamma.test", addr("127.0.30.1")))
    topo.add_domain("alpha.test", [(10, "mail.alpha.test")])
    topo.add_domain("beta.test", [(10, "mx1.beta.test"), (20, "mx2.beta.test")])
    topo.add_domain("gamma.test", [(10, "mail.gamma.test")])
    return topo
