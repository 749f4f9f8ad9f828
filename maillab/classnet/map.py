"""What the class map shows, read from the class DNS: a snapshot, no sockets.

* **domains**: every student domain that has records (or a key), with its MX host and
  address, the key's state, when it first registered in this run and when it was
  last seen (its last accepted UPDATE: labs refresh every minute; a lab silent for
  2.5 minutes is *quiet*: stopped, or its laptop closed; a lab whose last accepted
  UPDATE removed its records has *left*, at that UPDATE's time);
* **lookups**: who looked up whom. A lab asks the class DNS from its own address
  (:class:`maillab.classnet.member.ClassUpstream`), so the asker of an MX query is the
  domain whose A record holds that address, and the domain asked about is the one
  the queried name lies in;
* the most recent queries and UPDATEs, with their answers and reasons.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.name
import dns.rdatatype

from .keys import RESERVED

if TYPE_CHECKING:
    from .server import ClassDNS

#: Recent queries and UPDATEs a snapshot carries (the counts cover all that are kept).
RECENT = 12
#: A lab not heard from for this many refresh intervals is shown as quiet.
QUIET_REFRESHES = 2.5


@dataclass
class DomainRow:
    domain: str
    mx: list[str] = field(default_factory=list)  # "10 mail.alice.class.test"
    addresses: list[str] = field(default_factory=list)  # of its MX hosts
    key: str = "none"  # active / revoked / none
    joined: float | None = None
    last_seen: float | None = None
    looked_up: int = 0  # MX/A queries others made for it
    #: registered (heard from lately), quiet (records there, no refresh for a while: a
    #: closed laptop; mail for it waits in the senders' queues), left (its last accepted
    #: UPDATE took its records away: ``%mail leave``), or not registered (a key that
    #: never sent an accepted UPDATE in this run)
    state: str = "not registered"
    #: when it left: the time of that last accepted UPDATE (None unless ``left``)
    left: float | None = None

    @property
    def registered(self) -> bool:
        return bool(self.mx)


@dataclass
class Edge:
    asker: str  # a domain, or the address when no domain has it
    target: str
    count: int
    last: float


@dataclass
class ClassMap:
    zone: str
    join: str
    mx_port: int
    domains: list[DomainRow]
    edges: list[Edge]
    lookups: list[tuple[float, str, str, str, str]]  # time, asker, qname, qtype, rcode (newest last)
    updates: list[tuple[float, str, str, str]]  # time, key or peer, rcode, reason/changes
    queries: int
    taken: float = field(default_factory=time.time)

    def domain(self, name: str) -> DomainRow | None:
        return next((d for d in self.domains if d.domain == name), None)


def _student_domain(name: dns.name.Name, origin: dns.name.Name) -> str | None:
    """``mail.alice.class.test.`` -> ``alice.class.test`` (the label just under the zone)."""
    if not name.is_subdomain(origin) or name == origin:
        return None
    rel = name.relativize(origin)
    return f"{rel.labels[-1].decode('ascii', 'replace').lower()}.{origin.to_text(omit_final_dot=True)}"


@functools.lru_cache(maxsize=4096)
def _asked_domain(qname: str, origin: dns.name.Name) -> str | None:
    """The student domain a query asked about (None: another name, or one we cannot
    read): once per name, not once per lookup at every refresh of a live map."""
    try:
        return _student_domain(dns.name.from_text(qname), origin)
    except Exception:  # noqa: BLE001 - a query name we cannot read is not an edge
        return None


def class_map(server: ClassDNS) -> ClassMap:
    """A snapshot of the class as its DNS knows it (safe from any thread)."""
    zone = server.zones.zone
    origin = server.origin
    rows: dict[str, DomainRow] = {}
    for key in server.keys.keys():
        rows[key.name] = DomainRow(key.name, key="active" if key.active else "revoked")
    hosts: dict[str, list[str]] = {}
    for name, rds in zone.iterate_rdatasets():
        if rds.rdtype == dns.rdatatype.A:
            hosts[name.to_text(omit_final_dot=True).lower()] = [rd.address for rd in rds]
    by_address: dict[str, str] = {}
    for name, rds in zone.iterate_rdatasets():
        domain = _student_domain(name, origin)
        if domain is None or domain.split(".", 1)[0] in RESERVED:
            continue
        row = rows.setdefault(domain, DomainRow(domain))
        if rds.rdtype == dns.rdatatype.MX and name.to_text(omit_final_dot=True).lower() == domain:
            for rd in sorted(rds, key=lambda r: r.preference):
                target = rd.exchange.to_text(omit_final_dot=True).lower()
                row.mx.append(f"{rd.preference} {target}")
                row.addresses += hosts.get(target, [])
        if rds.rdtype == dns.rdatatype.A:
            for rd in rds:
                by_address.setdefault(rd.address, domain)
    quiet_after = QUIET_REFRESHES * server.limits.class_refresh
    now = time.time()
    for row in rows.values():
        row.joined = server.joined.get(row.domain)
        row.last_seen = server.last_seen.get(row.domain)
        if row.registered:
            heard = row.last_seen is not None and now - row.last_seen <= quiet_after
            row.state = "registered" if heard else "quiet"
        elif row.last_seen is not None:
            # the class DNS accepted its UPDATEs, and the last one left it no records:
            # it left (not "not registered" beside "joined 6 s ago", which reads as a contradiction)
            row.state, row.left = "left", row.last_seen
    lookups, updates = server.history()
    edges: Counter[tuple[str, str]] = Counter()
    last: dict[tuple[str, str], float] = {}
    recent: list[tuple[float, str, str, str, str]] = []
    for lk in lookups:
        asker = by_address.get(lk.peer, lk.peer)
        target = _asked_domain(lk.qname, origin)
        if target is not None and lk.qtype in ("MX", "A"):
            if target in rows:
                rows[target].looked_up += 1
            if lk.qtype == "MX" and asker != target:
                edges[(asker, target)] += 1
                last[(asker, target)] = lk.time
        recent.append((lk.time, asker, lk.qname, lk.qtype, lk.rcode))
    upd = [(u.time, u.key or u.peer, u.rcode, u.reason if not u.changes else "; ".join(u.changes))
           for u in updates[-RECENT:]]
    domains = sorted(rows.values(), key=lambda r: r.domain)
    return ClassMap(server.zone_name, server.join_address, server.mx_port, domains,
                    [Edge(a, t, n, last[(a, t)]) for (a, t), n in sorted(edges.items())],
                    recent[-RECENT:], upd, server.queries)
