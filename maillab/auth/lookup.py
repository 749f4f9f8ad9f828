"""DNS look-ups for SPF, DKIM, DMARC and ARC, asked of the lab's own DNS only.

dkimpy takes a ``dnsfunc(name, timeout)`` that returns a TXT record's text; pyspf
asks a module-level ``spf.DNSLookup(name, qtype, strict, timeout)``. Both are
pointed here: a :class:`LabLookup` asks the lab DNS with a blocking dnspython
resolver and keeps every question with the answer it got (the ``%mail auth``
view shows them as the lab DNS answered). It blocks, so the receiving MTA runs
it on a worker thread: the lab DNS answers on the lab loop, which must stay free.

A receiving MX hands it its :class:`~maillab.auth.resolver_cache.ResolverCache`, as
a real MTA asks a caching resolver: a question answered before (within the TTL, and
since the lab's zones last changed) is answered from the cache, not asked on the
wire, and its :class:`Question` says so ("cached, 287 s left"). The DNS transcript
shows only the questions that were really sent.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.name
import dns.rcode
import dns.resolver
import spf

from .resolver_cache import ResolverCache

#: How long one look-up may take before the check gives ``temperror`` (RFC 7208 4.6.4
#: and RFC 6376 6.1.2 leave it to the receiver; lab answers come in milliseconds).
LOOKUP_TIMEOUT = 2.0


@dataclass
class Question:
    """One DNS question and what the lab DNS said (``answers`` empty: none)."""

    name: str
    rdtype: str
    answers: list[str] = field(default_factory=list)
    error: str = ""  # "NXDOMAIN", "timeout", ...
    cached: float | None = None  # answered from the MX's cache, with this many seconds left

    def __str__(self) -> str:
        said = self.error or ("; ".join(self.answers) if self.answers else "no records")
        kept = f"  (cached, {self.cached:.0f} s left: not asked on the wire)" if self.cached is not None else ""
        return f"{self.name} {self.rdtype}? -> {said}{kept}"


def asked(trace: list[Question]) -> str:
    """How many questions went to the lab DNS and how many the MX's cache answered."""
    cached = sum(1 for q in trace if q.cached is not None)
    text = f"{len(trace) - cached} asked of the lab DNS"
    return text + (f", {cached} answered from the MX's resolver cache" if cached else "")


class LabLookup:
    """Blocking look-ups against one DNS server (the lab's), with a trace."""

    def __init__(self, address: str, port: int, timeout: float = LOOKUP_TIMEOUT,
                 cache: ResolverCache | None = None) -> None:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [address]
        res.port = port
        res.timeout = res.lifetime = timeout
        res.cache = None
        self.resolver = res
        self.cache = cache
        self.trace: list[Question] = []
        self._answers: dict[tuple[str, str], list[Any]] = {}  # one check asks each question once

    def query(self, name: str, rdtype: str) -> list[Any]:
        """The rdatas of ``name``/``rdtype``; [] when none; raises ``dns.exception.Timeout``
        (or another DNSException) when the server did not answer: the caller's temperror."""
        key = (name.rstrip(".").lower(), rdtype)
        if key in self._answers:
            return self._answers[key]
        q = Question(name.rstrip("."), rdtype)
        self.trace.append(q)
        stamp = 0
        if self.cache is not None:
            found = self.cache.get(key)
            if found is not None:
                kept, left = found
                q.error, q.answers, q.cached = kept.error, [_show(r) for r in kept.rdatas], left
                self._answers[key] = list(kept.rdatas)
                return self._answers[key]
            stamp = self.cache.stamp()
        try:
            answer = self.resolver.resolve(name, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            q.error = "NXDOMAIN"
            self._answers[key] = []
            if self.cache is not None:
                self.cache.put(key, stamp, [], "NXDOMAIN", _negative_ttl(exc))
            return []
        except dns.resolver.NoNameservers as exc:
            if _refused(exc):  # the lab DNS answers only for lab zones: no such name here
                q.error = "REFUSED (not a lab zone)"
                self._answers[key] = []
                return []
            q.error = "no answer"
            raise
        except dns.exception.DNSException as exc:
            q.error = "timeout" if isinstance(exc, dns.exception.Timeout) else type(exc).__name__
            raise
        rdatas = list(answer.rrset or [])
        q.answers = [_show(r) for r in rdatas]
        self._answers[key] = rdatas
        if self.cache is not None:
            # The TTL of the answer, the lowest along a CNAME chain; for "no records of
            # this type" the negative TTL from the SOA (RFC 2308 5), as dnspython works it out.
            self.cache.put(key, stamp, rdatas, "", answer.chaining_result.minimum_ttl)
        return rdatas

    # -- dkimpy: dnsfunc(name, timeout=5) -> the TXT text, or None -------------------------
    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        name = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        rdatas = self.query(name, "TXT")
        if not rdatas:
            return None
        return b"".join(rdatas[0].strings)

    # -- pyspf: DNSLookup(name, qtype, strict, timeout) -> [((name, qtype), value)] --------
    def spf_lookup(self, name: str, qtype: str, strict: Any = True, timeout: float = 0) -> list:
        try:
            rdatas = self.query(name, qtype)
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from None
        out = []
        for r in rdatas:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), r.address))
            elif qtype == "MX":
                out.append(((name, qtype), (r.preference, r.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), r.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), r.strings))
        return out


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """How long an NXDOMAIN may be kept: min(SOA TTL, SOA MINIMUM) from its authority
    section (RFC 2308 5); 0 (not kept) when the response cannot say."""
    for response in (exc.kwargs.get("responses") or {}).values():
        try:
            return float(response.resolve_chaining().minimum_ttl)
        except dns.exception.DNSException:
            return 0.0
    return 0.0


def _refused(exc: dns.resolver.NoNameservers) -> bool:
    """Did the server answer REFUSED (rather than not answer at all)?"""
    for error in exc.kwargs.get("errors") or []:
        answer = error[4] if len(error) > 4 else None
        if answer is not None and answer.rcode() == dns.rcode.REFUSED:
            return True
    return False


def _show(rdata: Any) -> str:
    text = rdata.to_text()
    return text if len(text) <= 120 else text[:100] + f'… ({len(text)} chars)"'


# pyspf asks a module-level function. The lab points it at the LabLookup of the
# check running on this thread; any other caller keeps pyspf's own look-up.
_current = threading.local()
_pyspf_lookup = spf.DNSLookup


def _dispatch(name: str, qtype: str, strict: Any = True, timeout: float = 0) -> list:
    lookup: LabLookup | None = getattr(_current, "lookup", None)
    if lookup is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return lookup.spf_lookup(name, qtype, strict, timeout)


spf.DNSLookup = _dispatch


class using:
    """``with using(lookup): spf.check2(...)``: pyspf's look-ups on this thread go to ``lookup``."""

    def __init__(self, lookup: LabLookup) -> None:
        self.lookup = lookup

    def __enter__(self) -> LabLookup:
        _current.lookup = self.lookup
        return self.lookup

    def __exit__(self, *exc: object) -> None:
        _current.lookup = None
