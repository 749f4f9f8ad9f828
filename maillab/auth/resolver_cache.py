"""The receiving MX's resolver cache: DNS answers kept for their TTL (RFC 1035 7.4, RFC 2308).

A real MTA does not send every SPF, DKIM and DMARC question to the authoritative
server: it asks a caching resolver, which answers a repeated question from what it
kept, for as long as the record's TTL allows. Each lab MX keeps such a cache for its
checks (:class:`maillab.auth.lookup.LabLookup` consults it), with two rules that keep
it honest in a lab:

* an answer is kept for its TTL (the lowest along a CNAME chain), never longer than
  ``lab.limits.auth_dns_cache``; a negative answer (NXDOMAIN, or the name has no
  records of that type) for the negative TTL of RFC 2308 section 5, the lesser of the
  SOA record's TTL and its MINIMUM field. Timeouts, SERVFAIL and REFUSED are not kept:
  the next check asks again (RFC 2308 7 allows keeping them briefly; the lab does not);
* the lab knows when its own DNS data changes: every zone edit (``%%zone``,
  ``%mail dmarc``, a new domain, a rebuild) bumps
  :attr:`maillab.dns.zones.LabZones.generation`, and then every kept answer is dropped
  at once. A real resolver would go on giving the old answer until its TTL ran out; the
  lab prefers that a fixed record counts for the very next message, so it never gives an
  answer its DNS would no longer give.

Checks run on worker threads: every read and write takes the lock. Two checks that miss
at the same moment both ask the lab DNS; both answers are the same.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

#: Answers one MX keeps at most; past it the oldest go first (the lab has a few dozen names).
CACHE_ENTRIES = 4096


@dataclass(frozen=True)
class Kept:
    """One answer as the lab DNS gave it: its rdatas ([] and ``error`` for a negative one)."""

    rdatas: tuple[Any, ...]
    error: str  # "" (records, or none of that type) or "NXDOMAIN"
    expires: float  # time.monotonic() when it runs out


class ResolverCache:
    """Answers by (name, type), kept per TTL and dropped when the lab's zones change."""

    def __init__(self, zones: Any, cap: float) -> None:
        self.zones = zones  # maillab.dns.zones.LabZones: its ``generation`` says when data changed
        self.cap = cap
        self.hits = 0
        self.misses = 0
        self._generation = zones.generation
        self._kept: dict[tuple[str, str], Kept] = {}
        self._lock = threading.Lock()

    def stamp(self) -> int:
        """The zones' generation now: take it before asking, hand it to :meth:`put`."""
        return self.zones.generation

    def get(self, key: tuple[str, str]) -> tuple[Kept, float] | None:
        """The kept answer for ``key`` and the seconds it has left, or None (then ask)."""
        now = time.monotonic()
        with self._lock:
            self._drop_if_changed()
            kept = self._kept.get(key)
            if kept is not None and kept.expires <= now:
                del self._kept[key]
                kept = None
            if kept is None:
                self.misses += 1
                return None
            self.hits += 1
            return kept, kept.expires - now

    def put(self, key: tuple[str, str], stamp: int, rdatas: list[Any], error: str, ttl: float) -> None:
        """Keep an answer got while the zones were at ``stamp`` for ``ttl`` seconds (capped).

        An answer asked before a zone edit and received after it may be the old data:
        it is not kept.
        """
        ttl = min(ttl, self.cap)
        if ttl <= 0:
            return
        with self._lock:
            self._drop_if_changed()
            if stamp != self._generation:
                return
            if len(self._kept) >= CACHE_ENTRIES:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = Kept(tuple(rdatas), error, time.monotonic() + ttl)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def _drop_if_changed(self) -> None:
        generation = self.zones.generation
        if generation != self._generation:
            self._kept.clear()
            self._generation = generation
