"""Where mail for a domain goes: MX lookup and ordering (RFC 5321 section 5.1).

The steps, as an MTA takes them:

1. Look up the domain's MX records (only in the lab DNS: nothing here can reach a
   real name server, so nothing can reach a real domain).
2. ``MX 0 .`` is a *null MX* (RFC 7505): the domain takes no mail. Bounce at once.
3. No MX at all, but the name exists: the domain's own A record is an *implicit MX*
   of preference 0.
4. Order by preference, lowest first; equal preferences in random order (5.1).
5. If this host is itself in the list, drop every record of its own preference or
   higher, else a backup MX would hand mail back and forth forever (5.1).
6. Look up each exchange's addresses; an address outside the lab (not loopback)
   is never contacted.

Temporary DNS trouble (SERVFAIL, a timeout) defers the message (4.4.3); a name
that does not exist bounces it (5.1.2).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver


class RouteError(Exception):
    """No route now (``permanent=False``: try later) or ever (``permanent=True``: bounce)."""

    def __init__(self, permanent: bool, status: str, text: str, answer: list[str] | None = None) -> None:
        super().__init__(f"{status} {text}")
        self.permanent = permanent
        self.status = status
        self.text = text
        self.answer = answer or []


@dataclass
class MXTarget:
    preference: int
    name: str  # host name, no trailing dot
    addresses: list[str] = field(default_factory=list)
    implicit: bool = False  # from the A record because there is no MX (RFC 5321 5.1)


@dataclass
class Route:
    domain: str
    targets: list[MXTarget]
    answer: list[str]  # the DNS answers used, as text ("beta.test. MX 10 mx1.beta.test.")
    notes: list[str] = field(default_factory=list)  # decisions worth showing (skipped MX, ...)
    ttl: float = 0.0  # the smallest TTL of the answers used: how long a cache may keep it

    def as_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "targets": [{"preference": t.preference, "name": t.name, "addresses": t.addresses,
                         "implicit": t.implicit} for t in self.targets],
            "answer": self.answer,
            "notes": self.notes,
        }


def _name(n: dns.name.Name) -> str:
    return n.to_text(omit_final_dot=True).lower()


def _refused(exc: dns.resolver.NoNameservers) -> bool:
    """Did the name server answer REFUSED (not ours to answer: outside the lab)?"""
    for err in exc.kwargs.get("errors", []) or []:
        resp = err[-1] if isinstance(err, tuple) else None
        if hasattr(resp, "rcode") and resp.rcode() == dns.rcode.REFUSED:
            return True
    return "REFUSED" in str(exc)


OUTSIDE_LAB = ("is outside the lab: the lab's MTAs resolve names only through the lab DNS,"
               " so this message never leaves this machine")


async def _lookup(resolver: dns.asyncresolver.Resolver, name: str, rdtype: str) -> dns.resolver.Answer | None:
    """One lookup; None for NODATA. NXDOMAIN and outages raise :class:`RouteError`."""
    try:
        return await resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
    except dns.resolver.NXDOMAIN:
        raise RouteError(True, "5.1.2", f"Host or domain name not found. Name service error for"
                                        f" name={name} type={rdtype}: Host not found") from None
    except dns.resolver.NoNameservers as exc:
        if _refused(exc):
            raise RouteError(True, "5.1.2", f"{name} {OUTSIDE_LAB}") from None
        raise RouteError(False, "4.4.3", f"Name service error for name={name} type={rdtype}:"
                                         " SERVFAIL (will retry)") from None
    except (dns.exception.Timeout, dns.resolver.LifetimeTimeout):
        raise RouteError(False, "4.4.3", f"Name service error for name={name} type={rdtype}:"
                                         " timed out (will retry)") from None
    except dns.exception.DNSException as exc:
        raise RouteError(False, "4.4.3", f"Name service error for name={name} type={rdtype}: {exc}") from None


def in_lab(address: str) -> bool:
    """Only loopback addresses are lab hosts; anything else is the real internet."""
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def find_route(
    domain: str,
    resolver: dns.asyncresolver.Resolver,
    *,
    self_names: Iterable[str] = (),
    lab_zone: Any = None,
    rng: random.Random | None = None,
    allowed: Callable[[str], bool] = in_lab,
) -> Route:
    """The ordered MX targets for ``domain``, with addresses, or :class:`RouteError`.

    ``self_names`` are the names of the sending host (step 5); ``lab_zone`` is a
    callable telling whether a name lies in a lab zone (checked before any query);
    ``allowed`` tells which addresses may be contacted (default: loopback only).
    """
    domain = domain.lower().rstrip(".")
    me = {n.lower().rstrip(".") for n in self_names}
    rng = rng or random.Random()
    if domain.startswith("[") or not domain:
        raise RouteError(True, "5.1.2", f"address literal or empty domain {domain!r}: the lab relays only to lab domains")
    if lab_zone is not None and not lab_zone(domain):
        raise RouteError(True, "5.1.2", f"{domain} {OUTSIDE_LAB}")

    answer: list[str] = []
    notes: list[str] = []
    ttls: list[float] = []
    mx = await _lookup(resolver, domain, "MX")
    if mx is not None and mx.rrset is not None:
        ttls.append(mx.rrset.ttl)
    records: list[tuple[int, str]] = []
    if mx is not None and mx.rrset is not None:
        for rr in mx.rrset:
            answer.append(f"{domain}. MX {rr.preference} {rr.exchange}")
            records.append((rr.preference, "." if rr.exchange == dns.name.root else _name(rr.exchange)))
    if any(exchange == "." for _p, exchange in records):
        raise RouteError(True, "5.1.10", f"Recipient address rejected: domain {domain} has a null MX"
                                         " (RFC 7505): it accepts no mail", answer)

    targets: list[MXTarget]
    if not records:
        notes.append(f"{domain} has no MX record: using its A record as an implicit MX (RFC 5321 5.1)")
        targets = [MXTarget(0, domain, implicit=True)]
    else:
        by_pref: dict[int, list[str]] = {}
        for pref, exchange in records:
            by_pref.setdefault(pref, []).append(exchange)
        targets = []
        for pref in sorted(by_pref):
            names = list(dict.fromkeys(by_pref[pref]))
            rng.shuffle(names)  # equal preference: spread the load (RFC 5321 5.1)
            targets.extend(MXTarget(pref, n) for n in names)
        mine = [t.preference for t in targets if t.name in me]
        if mine:
            cut = min(mine)
            dropped = [t.name for t in targets if t.preference >= cut]
            targets = [t for t in targets if t.preference < cut]
            notes.append(f"this host is MX {cut} for {domain}: ignoring {', '.join(dropped)}"
                         " (preference equal or higher, RFC 5321 5.1)")
            if not targets:
                raise RouteError(True, "5.4.6", f"mail for {domain} loops back to myself", answer)

    # An authoritative MX answer carries the exchanges' addresses in its additional
    # section (as dig shows); use them and save a query per MX host.
    glue: dict[str, list[str]] = {}
    if mx is not None and mx.response.flags & dns.flags.AA:
        for rrset in mx.response.additional:
            if rrset.rdtype == dns.rdatatype.A and rrset.rdclass == dns.rdataclass.IN:  # CH A has no address
                glue.setdefault(_name(rrset.name), []).extend(rr.address for rr in rrset)

    temporary: RouteError | None = None
    for target in targets:
        if target.name in glue:
            for address in glue[target.name]:
                answer.append(f"{target.name}. A {address}")
                if allowed(address):
                    target.addresses.append(address)
                else:
                    notes.append(f"{target.name} has address {address}, outside the lab (not loopback):"
                                 " never contacted")
            continue
        try:
            a = await _lookup(resolver, target.name, "A")
        except RouteError as exc:
            notes.append(f"{target.name}: {exc.text}")
            if not exc.permanent:
                temporary = exc
            continue
        if a is None or a.rrset is None:
            notes.append(f"{target.name} has no A record: skipped")
            continue
        ttls.append(a.rrset.ttl)
        if a.canonical_name != dns.name.from_text(target.name):
            answer.append(f"{target.name}. CNAME {a.canonical_name}")
        for rr in a.rrset:
            answer.append(f"{a.canonical_name} A {rr.address}")
            if allowed(rr.address):
                target.addresses.append(rr.address)
            else:
                notes.append(f"{target.name} has address {rr.address}, outside the lab (not loopback):"
                             " never contacted")
    reachable = [t for t in targets if t.addresses]
    if not reachable:
        if temporary is not None:
            raise RouteError(False, temporary.status, temporary.text, answer)
        if targets and targets[0].implicit:
            raise RouteError(True, "5.1.2", f"{domain} has neither an MX nor a usable A record", answer)
        raise RouteError(True, "5.4.4", f"unable to route: no lab address for any MX host of {domain}"
                                        f" ({'; '.join(notes) or 'none'})", answer)
    return Route(domain, reachable, answer, notes, ttl=float(min(ttls, default=0)))
