"""RFC 2136 UPDATE against the class zone, under a per-key update policy. Sans-IO.

:func:`process` takes the class zone, an UPDATE message that dnspython has already
parsed (its TSIG checked, see :mod:`.server`) and the key that signed it, and
returns the response code and the changes made. The steps are the RFC's:

1. the zone section names our zone (3.1, checked by the server: NOTAUTH otherwise);
2. the prerequisites hold (3.2: NXDOMAIN, YXDOMAIN, NXRRSET, YXRRSET, NOTZONE);
3. the signer may make every change (3.3: REFUSED otherwise). The policy is BIND's
   ``grant KEY subdomain KEY TYPES``: the key ``alice.class.test`` may change
   ``alice.class.test`` and names under it, only records of :data:`ALLOWED_TYPES`,
   with addresses on the class's networks, and at most ``max_records`` of them;
4. the update section is well formed (3.4.1) and is applied as one transaction
   (3.4.2: all or nothing), and the SOA serial goes up by one (3.6).

Nothing is changed unless every step passes: a refused UPDATE leaves the zone as it
was, whatever it contained before the refused record.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rrset
import dns.transaction
import dns.update
import dns.zone

#: What a student may publish: addresses, mail routing, text (SPF, DKIM), service
#: locations and TLSA (DANE). Not SOA or NS (that would take the zone or delegate
#: away a name), not CNAME (a name that is an alias can hold nothing else).
ALLOWED_TYPES = frozenset({dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.MX, dns.rdatatype.TXT,
                           dns.rdatatype.SRV, dns.rdatatype.TLSA})
#: Types that never appear in an update section (RFC 2136 3.4.1.3).
META_TYPES = frozenset({dns.rdatatype.ANY, dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.MAILA,
                        dns.rdatatype.MAILB, dns.rdatatype.OPT, dns.rdatatype.TSIG})


def class_address(address: str) -> bool:
    """May a lab of the class have this address? Loopback (one machine) and private
    networks (a lab room, JupyterHub pods); never a public address, so no lab can be
    told to send mail to a host on the internet."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_loopback or (ip.is_private and not ip.is_unspecified and not ip.is_link_local)


@dataclass
class Outcome:
    rcode: int
    reason: str = ""
    changes: list[str] = field(default_factory=list)  # "+ name TTL IN TYPE rdata" / "- ..."

    @property
    def ok(self) -> bool:
        return self.rcode == dns.rcode.NOERROR

    @property
    def rcode_text(self) -> str:
        return dns.rcode.to_text(self.rcode)


def _fail(rcode: int, reason: str) -> Outcome:
    return Outcome(rcode, reason)


def check_prerequisites(txn: dns.transaction.Transaction, origin: dns.name.Name,
                        prereqs: Iterable[dns.rrset.RRset]) -> Outcome | None:
    """RFC 2136 3.2: None when every prerequisite holds, else the failing one's rcode."""
    for rrset in prereqs:
        name, rdtype = rrset.name, rrset.rdtype
        if not name.is_subdomain(origin):
            return _fail(dns.rcode.NOTZONE, f"prerequisite {name} is outside the zone {origin}")
        if rrset.ttl != 0:
            return _fail(dns.rcode.FORMERR, "a prerequisite's TTL must be 0 (RFC 2136 2.4)")
        if rrset.deleting == dns.rdataclass.ANY:
            if rdtype == dns.rdatatype.ANY:
                if not txn.name_exists(name):
                    return _fail(dns.rcode.NXDOMAIN, f"prerequisite: name {name} is not in use")
            elif txn.get(name, rdtype) is None:
                return _fail(dns.rcode.NXRRSET, f"prerequisite: {name} has no {dns.rdatatype.to_text(rdtype)}")
        elif rrset.deleting == dns.rdataclass.NONE:
            if rdtype == dns.rdatatype.ANY:
                if txn.name_exists(name):
                    return _fail(dns.rcode.YXDOMAIN, f"prerequisite: name {name} is in use")
            elif txn.get(name, rdtype) is not None:
                return _fail(dns.rcode.YXRRSET, f"prerequisite: {name} has {dns.rdatatype.to_text(rdtype)}")
        else:  # value dependent: the RRset must be exactly these records (2.4.2)
            have = txn.get(name, rdtype)
            if have is None or set(have) != set(rrset):
                return _fail(dns.rcode.NXRRSET, f"prerequisite: {name} {dns.rdatatype.to_text(rdtype)}"
                                                " is not the set given")
    return None


def check_permission(grant: dns.name.Name, updates: Iterable[dns.rrset.RRset],
                     address_ok: Callable[[str], bool] = class_address) -> Outcome | None:
    """RFC 2136 3.3 with the class policy: None when the signer may make every change."""
    for rrset in updates:
        if not rrset.name.is_subdomain(grant):
            return _fail(dns.rcode.REFUSED, f"key {grant} may not change {rrset.name}: only {grant}"
                                            " and names under it")
        deleting_all = rrset.deleting == dns.rdataclass.ANY and rrset.rdtype == dns.rdatatype.ANY
        if not deleting_all and rrset.rdtype not in ALLOWED_TYPES:
            return _fail(dns.rcode.REFUSED, f"{dns.rdatatype.to_text(rrset.rdtype)} records are not"
                                            " allowed in the class zone (A AAAA MX TXT SRV TLSA are)")
        # Only IN addresses have one to check; another class is prescan's FORMERR (an A
        # record of class 0x21 arrives as GenericRdata, without .address: fuzz, issue 15).
        if (rrset.deleting is None and rrset.rdclass == dns.rdataclass.IN
                and rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)):
            for rd in rrset:
                if not address_ok(rd.address):
                    return _fail(dns.rcode.REFUSED, f"{rd.address} is not an address of the class"
                                                    " (loopback or a private network)")
    return None


def prescan(origin: dns.name.Name, updates: Iterable[dns.rrset.RRset]) -> Outcome | None:
    """RFC 2136 3.4.1: the update section's records are in the zone and well formed."""
    for rrset in updates:
        if not rrset.name.is_subdomain(origin):
            return _fail(dns.rcode.NOTZONE, f"{rrset.name} is outside the zone {origin}")
        if rrset.deleting is None:
            if rrset.rdtype in META_TYPES or rrset.rdclass != dns.rdataclass.IN:
                return _fail(dns.rcode.FORMERR, f"cannot add a {dns.rdatatype.to_text(rrset.rdtype)} record")
        else:
            if rrset.ttl != 0:
                return _fail(dns.rcode.FORMERR, "a deletion's TTL must be 0 (RFC 2136 2.5)")
            if rrset.rdtype in META_TYPES - {dns.rdatatype.ANY}:
                return _fail(dns.rcode.FORMERR, f"cannot delete {dns.rdatatype.to_text(rrset.rdtype)}")
            if rrset.deleting == dns.rdataclass.NONE and rrset.rdtype == dns.rdatatype.ANY:
                return _fail(dns.rcode.FORMERR, "class NONE with type ANY is not a deletion")
    return None


def _records_under(txn: dns.transaction.Transaction, grant: dns.name.Name) -> int:
    return sum(len(rds) for name, rds in txn.iterate_rdatasets() if name.is_subdomain(grant))


def _snapshot(txn: dns.transaction.Transaction, names: Iterable[dns.name.Name]) -> dict[tuple, tuple[int, set]]:
    out = {}
    for name in names:
        for rds in txn.get_node(name) or []:
            out[(name, rds.rdtype)] = (rds.ttl, set(rds))
    return out


def apply(txn: dns.transaction.Transaction, updates: list[dns.rrset.RRset]) -> list[str]:
    """RFC 2136 3.4.2, inside ``txn``; returns the net changes as text (a refresh that
    deletes and re-adds the same records changes nothing)."""
    names = list(dict.fromkeys(r.name for r in updates))
    before = _snapshot(txn, names)
    for rrset in updates:
        name, rdtype = rrset.name, rrset.rdtype
        if rrset.deleting is None:  # add to an RRset (a duplicate is silently ignored)
            have = txn.get(name, rdtype)
            new = [rd for rd in rrset if have is None or rd not in have]
            if new:
                txn.add(name, rrset.ttl, *new)
        elif rrset.deleting == dns.rdataclass.ANY:
            if rdtype == dns.rdatatype.ANY:  # delete every RRset at the name
                for rds in list(txn.get_node(name) or []):
                    txn.delete(name, rds.rdtype)
            elif txn.get(name, rdtype) is not None:  # delete an RRset
                txn.delete(name, rdtype)
        else:  # class NONE: delete these records from an RRset
            have = txn.get(name, rdtype)
            gone = [rd for rd in rrset if have is not None and rd in have]
            if gone:
                txn.delete(name, dns.rdataset.from_rdata_list(0, gone))
    after = _snapshot(txn, names)
    changes: list[str] = []
    for key in sorted(set(before) | set(after), key=lambda k: (k[0].to_text(), k[1])):
        name, rdtype = key
        old, new = before.get(key, (0, set()))[1], after.get(key, (0, set()))[1]
        text = dns.rdatatype.to_text(rdtype)
        changes += [f"- {name} IN {text} {rd}" for rd in sorted(old - new, key=str)]
        changes += [f"+ {name} {after[key][0]} IN {text} {rd}" for rd in sorted(new - old, key=str)]
    return changes


def process(zone: dns.zone.Zone, msg: dns.update.UpdateMessage, signer: dns.name.Name, *,
            max_records: int, max_changes: int,
            address_ok: Callable[[str], bool] = class_address) -> Outcome:
    """Prerequisites, permission, prescan, then apply in one transaction (or nothing)."""
    origin = zone.origin
    assert origin is not None
    updates = list(msg.update)
    if sum(max(1, len(r)) for r in updates) > max_changes:
        return _fail(dns.rcode.REFUSED, f"more than {max_changes} records in one UPDATE")
    with zone.writer() as txn:
        failed = (check_prerequisites(txn, origin, msg.prerequisite)
                  or check_permission(signer, updates, address_ok)
                  or prescan(origin, updates))
        if failed is not None:
            txn.rollback()
            return failed
        changes = apply(txn, updates)
        if not changes:
            txn.rollback()
            return Outcome(dns.rcode.NOERROR, "nothing to change")
        if _records_under(txn, signer) > max_records:
            txn.rollback()
            return _fail(dns.rcode.REFUSED, f"{signer} would hold more than {max_records} records")
        txn.update_serial(name=origin)
    return Outcome(dns.rcode.NOERROR, f"{len(changes)} change(s)", changes)
