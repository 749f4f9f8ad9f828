"""``%mail dig``: one DNS query and its answer, printed the way dig prints it.

dig shows the whole response message, section by section (RFC 1035 4.1): the
header (status = RCODE, flags such as ``aa`` = authoritative answer), the
question, the answer, the authority (the SOA that vouches for a "no such name")
and the additional section (the A records of the MX hosts, so a mail server
needs no second query). The lab's answers come from the lab DNS; ``--real``
asks the machine's own resolver instead, which cannot know the lab's ``.test``
names (RFC 6761 reserves them), and which may simply be unreachable offline.
"""

from __future__ import annotations

import html
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from .theme import page, text_lines

if TYPE_CHECKING:
    from ..lab import Lab

SECTIONS = ("question", "answer", "authority", "additional")


@dataclass
class DigAnswer:
    """One query and its response (or the reason there is none)."""

    name: str
    rdtype: str
    server: str
    port: int
    transport: str  # "UDP" or "TCP"
    source: str  # "lab DNS" or "machine resolver"
    response: dns.message.Message | None = None
    elapsed: float | None = None  # seconds
    error: str | None = None
    when: datetime = field(default_factory=datetime.now)

    @property
    def status(self) -> str:
        if self.response is None:
            return "NO ANSWER"
        return dns.rcode.to_text(self.response.rcode())

    @property
    def flags(self) -> list[str]:
        if self.response is None:
            return []
        return dns.flags.to_text(self.response.flags).lower().split()

    def records(self, section: str = "answer") -> list[tuple[str, int, str, str]]:
        """(name, TTL, type, data) for each record of a section."""
        if self.response is None:
            return []
        out = []
        for rrset in getattr(self.response, section):
            for rdata in rrset:
                out.append((rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype),
                            rdata.to_text()))
        return out

    def values(self, section: str = "answer") -> list[str]:
        """Just the data of a section, e.g. ``['10 mx1.beta.test.', '20 mx2.beta.test.']``."""
        return [data for _n, _t, _y, data in self.records(section)]

    def text(self) -> str:
        head = f"; <<>> maillab dig ({self.source}) <<>> {self.name} {self.rdtype} @{self.server} -p {self.port}"
        if self.transport == "TCP":
            head += " +tcp"
        lines = [head]
        if self.response is None:
            lines.append(f";; {self.error or 'no answer'}")
            return "\n".join(lines)
        r = self.response
        lines.append(f";; ->>HEADER<<- opcode: QUERY, status: {self.status}, id: {r.id}")
        lines.append(f";; flags: {' '.join(self.flags)}; QUERY: {len(r.question)}, "
                     f"ANSWER: {len(self.records('answer'))}, AUTHORITY: {len(self.records('authority'))}, "
                     f"ADDITIONAL: {len(self.records('additional'))}")
        lines.append("")
        lines.append(";; QUESTION SECTION:")
        for q in r.question:
            lines.append(f";{q.name.to_text()}\t\tIN\t{dns.rdatatype.to_text(q.rdtype)}")
        for section in SECTIONS[1:]:
            recs = self.records(section)
            if recs:
                lines.append("")
                lines.append(f";; {section.upper()} SECTION:")
                for name, ttl, rtype, data in recs:
                    lines.append(f"{name}\t\t{ttl}\tIN\t{rtype}\t{data}")
        lines.append("")
        if self.elapsed is not None:
            lines.append(f";; Query time: {self.elapsed * 1000:.0f} msec")
        lines.append(f";; SERVER: {self.server}#{self.port}({self.server}) ({self.transport})")
        lines.append(f";; WHEN: {self.when:%a %b %d %H:%M:%S %Y}")
        lines.append(f";; MSG SIZE  rcvd: {len(r.to_wire())}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="dns")

    def _html_body(self) -> str:
        return text_lines(self.text())


def record_type(rdtype: str) -> str:
    """``mx`` -> ``MX``; an unknown type is a ValueError (not a query that fails later)."""
    try:
        return dns.rdatatype.to_text(dns.rdatatype.from_text(rdtype.upper()))
    except dns.rdatatype.UnknownRdatatype:
        raise ValueError(f"unknown record type {rdtype!r} (try A, AAAA, MX, TXT, NS, SOA, PTR, CNAME)") from None


def domain_name(name: str) -> str:
    """Check ``name`` is a domain name dig could ask for (labels <= 63 octets, no empty label)."""
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{name!r} is not a valid domain name ({exc})") from None
    return name


def dig_lab(lab: Lab, name: str, rdtype: str = "A", *, tcp: bool = False,
            timeout: float | None = None) -> DigAnswer:
    """Ask the lab DNS, as ``dig @127.0.0.1 -p 1053 NAME TYPE`` would."""
    rdtype, name = record_type(rdtype), domain_name(name)
    if lab.dns is None:
        raise RuntimeError("the lab has no DNS service (is maillab.dns installed and the lab started?)")
    result = DigAnswer(name, rdtype.upper(), lab.dns.address, lab.dns.port, "TCP" if tcp else "UDP", "lab DNS")
    start = time.perf_counter()
    try:
        result.response = lab.dns.query(name, rdtype.upper(), tcp=tcp, timeout=timeout)
    except (dns.exception.DNSException, OSError) as exc:
        result.error = f"the lab DNS did not answer: {type(exc).__name__}: {exc}"
    result.elapsed = time.perf_counter() - start
    return result


def dig_real(name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 3.0,
             nameserver: str | None = None, port: int = 53) -> DigAnswer:
    """Ask the machine's own resolver (the first ``nameserver`` of /etc/resolv.conf).

    Offline, or with no resolver configured, the answer says so plainly instead of
    raising: a notebook cell should explain, not crash.
    """
    rdtype, name = record_type(rdtype), domain_name(name)
    if nameserver is None:
        try:
            nameserver = dns.resolver.Resolver().nameservers[0]
        except (dns.resolver.NoResolverConfiguration, IndexError, OSError):
            return DigAnswer(name, rdtype.upper(), "-", port, "TCP" if tcp else "UDP", "machine resolver",
                             error="offline: this machine has no DNS resolver configured (/etc/resolv.conf)")
    result = DigAnswer(name, rdtype.upper(), nameserver, port, "TCP" if tcp else "UDP", "machine resolver")
    query = dns.message.make_query(name, rdtype.upper(), use_edns=0)
    start = time.perf_counter()
    try:
        if tcp:
            result.response = dns.query.tcp(query, nameserver, port=port, timeout=timeout)
        else:
            result.response = dns.query.udp(query, nameserver, port=port, timeout=timeout)
    except dns.exception.Timeout:
        result.error = (f"offline? the machine's resolver {nameserver} did not answer within {timeout:g} s "
                        "(no network, or DNS blocked); the lab DNS works without it")
    except (ConnectionError, socket.gaierror, OSError) as exc:
        result.error = (f"offline? the machine's resolver {nameserver}:{port} cannot be reached "
                        f"({exc.strerror or exc}); the lab DNS works without it")
    except dns.exception.DNSException as exc:
        result.error = f"the machine's resolver gave no usable answer: {exc}"
    result.elapsed = time.perf_counter() - start
    return result


def as_dict(answer: DigAnswer) -> dict[str, Any]:
    """Plain data (for tests and notebooks that want to check a value)."""
    return {
        "status": answer.status,
        "flags": answer.flags,
        **{s: answer.records(s) for s in SECTIONS[1:]},
        "elapsed": answer.elapsed,
        "error": answer.error,
    }


class ZoneView:
    """What ``%%zone`` returns: the zone as the lab DNS now serves it."""

    def __init__(self, name: str, records: list[str]) -> None:
        self.name = name
        self.records = records

    def __repr__(self) -> str:
        return f"zone {self.name} loaded ({len(self.records)} records):\n" + "\n".join(self.records)

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="zone")

    def _html_body(self) -> str:
        return (f"<b>zone {html.escape(self.name)} loaded</b> ({len(self.records)} records)"
                + text_lines("\n".join(self.records)))
