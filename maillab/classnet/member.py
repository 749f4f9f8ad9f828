"""A student's lab in a class network: joining, staying registered, leaving.

:func:`join_lab` makes the lab that ``%mail join`` and ``maillab serve --join`` run:
one mail host ``mail.NAME.class.test`` whose MX listens on the listen address at the
class's MX port, and one user ``NAME@NAME.class.test``. Only the MX faces the class:
beyond loopback submission, POP3, IMAP and the lab DNS bind 127.0.0.1 (lab ports, or
free ones when another lab here holds them), so the student's own clients reach them
and nobody else does (:func:`service_address`). At every start it sends
the class DNS one signed UPDATE (RFC 2136, TSIG RFC 8945) that replaces its records::

    NAME.class.test.        60 IN MX  10 mail.NAME.class.test.
    mail.NAME.class.test.   60 IN A   <listen address>

and sends it again every ``limits.class_refresh`` seconds, so a class DNS that
restarted or a lab on a new address is right again within a minute. ``leave()``
deletes them. Nothing else is needed for mail: the relay (:mod:`maillab.relay.queue`)
asks :class:`ClassUpstream` for every class domain, which looks up MX and A records
in the class DNS, from the lab's own address, and delivers over SMTP on the class's
MX port, STARTTLS opportunistically (another lab's certificate is signed by that
lab's CA, which this lab has no reason to trust: encrypted, not verified, RFC 7435).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update

from ..dns.stub import StubResolver
from ..lab import Lab
from ..limits import Limits
from ..relay.mx import Route, find_route
from ..topology import SERVICES, single_host
from .keys import parse_key_spec, tsig_key
from .policy import class_address
from .server import CLASS_TTL, MX_PORT_TXT

#: Seconds a joining lab waits for the class DNS.
CLASS_DNS_TIMEOUT = 5.0


class JoinError(RuntimeError):
    """The class DNS could not be reached or refused the key."""


def parse_join(target: str) -> tuple[str, int]:
    """``127.0.0.1:5053`` -> ("127.0.0.1", 5053)."""
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--join takes ADDR:PORT of the class DNS, e.g. 127.0.0.1:5053, not {target!r}")
    return host, int(port)


def class_mx_port(address: str, port: int, zone: str, timeout: float = CLASS_DNS_TIMEOUT) -> int:
    """Ask the class DNS which port every lab's MX listens on (a TXT record at its apex)."""
    query = dns.message.make_query(zone, "TXT")
    try:
        response = dns.query.udp(query, address, port=port, timeout=timeout)
    except (OSError, dns.exception.DNSException) as exc:
        raise JoinError(f"cannot reach the class DNS at {address}:{port}: {exc}") from None
    if response.rcode() != dns.rcode.NOERROR:
        raise JoinError(f"the class DNS at {address}:{port} answers {dns.rcode.to_text(response.rcode())}"
                        f" for {zone}: is the key's zone the class zone?")
    for rrset in response.answer:
        for rd in rrset:
            text = b"".join(getattr(rd, "strings", [])).decode("ascii", "replace")
            if text.startswith(MX_PORT_TXT):
                return int(text[len(MX_PORT_TXT):])
    return SERVICES["smtp"][1]


class ClassUpstream:
    """``lab.classnet.upstream``: how the relay reaches the other labs of the class."""

    def __init__(self, address: str, port: int, zone: str, mx_port: int, source: str | None) -> None:
        self.address, self.port = address, port
        self.zone = dns.name.from_text(zone)
        self.smtp_port = mx_port
        self.source = source
        self._resolver: StubResolver | None = None
        # Opportunistic TLS between labs: encrypt, do not verify (Postfix's "may" level).
        self.tls_context = ssl.create_default_context()
        self.tls_context.check_hostname = False
        self.tls_context.verify_mode = ssl.CERT_NONE
        self.tls_context.minimum_version = ssl.TLSVersion.TLSv1_2

    def covers(self, name: str) -> bool:
        try:
            return dns.name.from_text(name.rstrip(".")).is_subdomain(self.zone)
        except dns.exception.DNSException:
            return False

    @property
    def queries(self) -> int:
        return self._resolver.queries if self._resolver is not None else 0

    def resolver(self) -> StubResolver:
        """The stub resolver at the class DNS (made on the lab loop, on first use)."""
        if self._resolver is None:
            self._resolver = StubResolver(self.address, self.port, CLASS_DNS_TIMEOUT, source=self.source)
        return self._resolver

    async def route(self, domain: str, *, self_names: list[str]) -> Route:
        """The MX route for a class domain, looked up in the class DNS (lab loop)."""
        return await find_route(domain, self.resolver(), self_names=self_names, lab_zone=self.covers,
                                allowed=class_address)

    def close(self) -> None:
        if self._resolver is not None:
            self._resolver.close()
            self._resolver = None


class ClassMember:
    """``lab.classnet``: the lab's registration in the class DNS."""

    def __init__(self, lab: Lab, dns_address: str, dns_port: int, key_name: str, secret: str,
                 mx_port: int) -> None:
        self.lab = lab
        self.dns_address, self.dns_port = dns_address, dns_port
        self.domain = key_name
        self.zone = key_name.split(".", 1)[1]
        self.key = tsig_key(key_name, secret)
        self.mx_port = mx_port
        self.host = f"mail.{self.domain}"
        self.upstream = ClassUpstream(dns_address, dns_port, self.zone, mx_port, lab.bind_host)
        self.registered: float | None = None
        self.refreshes = 0
        self.last_error: str | None = None
        self.history: list[tuple[float, str]] = []  # (time, what happened), for the views
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.lab.bind_host

    @property
    def user(self) -> str:
        return f"{self.domain.split('.', 1)[0]}@{self.domain}"

    @property
    def tlsa_name(self) -> str:
        return f"_25._tcp.{self.host}"  # RFC 7672 3: the MX host's TLSA records, for port 25

    def tlsa(self) -> str | None:
        """``3 1 1 <sha256 of the key>`` of the certificate the lab's MX presents (DANE-EE,
        RFC 7671), or None before the lab has its CA."""
        if self.lab.ca is None:
            return None
        from ..tls import spki_sha256

        return f"3 1 1 {spki_sha256(self.lab.ca.certificate(self.host, [self.address]))}"

    def records(self) -> list[str]:
        tlsa = self.tlsa()
        return [f"{self.domain}. {CLASS_TTL} IN MX 10 {self.host}.",
                f"{self.host}. {CLASS_TTL} IN A {self.address}",
                *([f"{self.tlsa_name}. {CLASS_TTL} IN TLSA {tlsa}"] if tlsa else [])]

    def _message(self, *, remove: bool = False) -> dns.update.UpdateMessage:
        msg = dns.update.UpdateMessage(self.zone, keyring=self.key, keyname=self.key.name)
        if remove:
            for name in (self.domain, self.host, self.tlsa_name):
                msg.delete(name + ".")
        else:  # replace = delete the RRset, then add: the same message is right every time
            msg.replace(self.domain + ".", CLASS_TTL, "MX", f"10 {self.host}.")
            msg.replace(self.host + ".", CLASS_TTL, "A", self.address)
            tlsa = self.tlsa()
            if tlsa:  # for senders whose relay policy is dane (RFC 7672)
                msg.replace(self.tlsa_name + ".", CLASS_TTL, "TLSA", tlsa)
        return msg

    def _result(self, response: dns.message.Message, what: str) -> None:
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            raise JoinError(f"the class DNS refused {what}: {dns.rcode.to_text(rcode)}"
                            + (" (the key may update only its own names)" if rcode == dns.rcode.REFUSED else ""))
        self.history.append((time.time(), what))

    def _explain(self, exc: Exception, what: str) -> JoinError:
        if isinstance(exc, JoinError):
            return exc
        # BADKEY/BADSIG come with an unsigned TSIG record (PeerError); a server that sends
        # none makes dnspython say "expected a TSIG" (FormError).
        if isinstance(exc, dns.tsig.PeerError) or (isinstance(exc, dns.exception.FormError) and "TSIG" in str(exc)):
            return JoinError(f"the class DNS refused {what}: NOTAUTH (unknown, revoked or wrong key,"
                             " or this machine's clock is off by more than 5 minutes)")
        return JoinError(f"{what}: cannot reach the class DNS at {self.dns_address}:{self.dns_port}:"
                         f" {exc.__class__.__name__}: {exc}")

    async def register(self) -> None:
        """Send the records (on the lab loop)."""
        try:
            response = await dns.asyncquery.tcp(self._message(), self.dns_address, port=self.dns_port,
                                                 timeout=CLASS_DNS_TIMEOUT)
            self._result(response, f"registration of {self.domain}")
        except Exception as exc:  # noqa: BLE001 - every failure becomes one clear message
            raise self._explain(exc, f"registration of {self.domain}") from None
        self.registered = time.time()
        self.last_error = None

    async def _keep_fresh(self) -> None:
        while True:
            await asyncio.sleep(self.lab.limits.class_refresh)
            try:
                await self.register()
                self.refreshes += 1
            except JoinError as exc:
                self.last_error = str(exc)  # the class DNS may be back next time

    async def on_start(self, lab: Lab) -> None:
        await self.register()
        self._task = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def on_stop(self, lab: Lab) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.upstream.close()

    def leave(self) -> str:
        """Delete the records (blocking: call from a cell or the CLI, not the lab loop)."""
        what = f"removal of {self.domain}"
        if self._task is not None and self.lab.loop.running:
            self.lab.loop.call(self._task.cancel)  # no refresh may bring the records back
            self._task = None
        try:
            response = dns.query.tcp(self._message(remove=True), self.dns_address, port=self.dns_port,
                                     timeout=CLASS_DNS_TIMEOUT)
            self._result(response, what)
        except Exception as exc:  # noqa: BLE001
            raise self._explain(exc, what) from None
        self.registered = None
        return f"{self.domain} left the class: its MX, A and TLSA records are gone from {self.dns_address}:{self.dns_port}"

    def status(self) -> dict[str, Any]:
        return {"domain": self.domain, "host": self.host, "address": self.address, "mx_port": self.mx_port,
                "class_dns": f"{self.dns_address}:{self.dns_port}", "user": self.user,
                "registered": self.registered, "refreshes": self.refreshes, "last_error": self.last_error,
                "records": self.records()}


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def service_address(service: str, listen: str) -> str:
    """The address a joined lab binds ``service`` on, given its listen address.

    The MX (``smtp``) is what the other labs of the class reach: it listens on ``listen``.
    Submission, POP3, IMAP and the lab DNS serve only the student's own clients, so a
    non-loopback lab keeps them on 127.0.0.1 (issue 13: "submission stays local to its
    lab"); a loopback lab (one machine, the tests) has everything on ``listen``."""
    return listen if service == "smtp" or _loopback(listen) else "127.0.0.1"


def _saved_password(directory: Path, address: str) -> str | None:
    """The user's password from an earlier run in this directory (it stays the same)."""
    try:
        return json.loads((directory / "lab.json").read_text())["users"].get(address)
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def join_lab(directory: str | Path | None, join: str, key: str, *, listen: str = "127.0.0.1",
             ports: str = "default", limits: Limits | None = None) -> Lab:
    """The lab of a student who joins the class at ``join`` (``ADDR:PORT``) with ``key``
    (``NAME.class.test:SECRET``); not started yet (``lab.start()`` registers it)."""
    address, port = parse_join(join)
    key_name, secret = parse_key_spec(key)
    if "." not in key_name:
        raise ValueError(f"the key name {key_name!r} should be the domain it may update,"
                         " e.g. alice.class.test (maillab class key prints it)")
    zone = key_name.split(".", 1)[1]
    mx_port = class_mx_port(address, port, zone)
    wanted = {name: 0 for name in SERVICES} if ports == "auto" else {name: SERVICES[name][1] for name in SERVICES}
    wanted["smtp"] = mx_port  # every lab of the class: the same "port 25"
    # Beyond loopback other machines can reach every port of the lab: no login before TLS
    # anywhere (the lab's loopback leniency is for a lab that only this machine sees).
    moved = {name: service_address(name, listen) for name in SERVICES}
    lab = Lab(directory, host=listen, ports=wanted, topology=single_host([key_name], listen), users={},
              limits=limits, require_tls=not _loopback(listen),
              service_addresses={name: a for name, a in moved.items() if a != listen})
    user = f"{key_name.split('.', 1)[0]}@{key_name}"
    lab.add_user(user, _saved_password(lab.directory, user) or secrets.token_urlsafe(9))
    member = ClassMember(lab, address, port, key_name, secret, mx_port)
    lab.classnet = member
    lab.on_start(member.on_start)
    lab.on_stop(member.on_stop)
    return lab
