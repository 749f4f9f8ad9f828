"""The process's open-file limit (RLIMIT_NOFILE), raised when a lab starts.

Every listener, client connection, relay session and mailbox index (sqlite with its
WAL and shared-memory files) holds a file descriptor. The common default soft limit
of 1,024 is reached by a 50-domain lab under load, and then every ``accept`` and
``open`` fails with "Too many open files" and mail waits in queues. The soft limit
may be raised up to the hard limit without privileges, so the lab does that, and
says so when even the hard limit is below what its topology needs.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

from .limits import Limits

#: Where "unlimited" hard limits are capped (the kernel refuses more than nr_open).
CEILING = 1 << 20
#: Descriptors a lab needs before any service: the interpreter, the loop, logs, the CA.
BASE = 64
#: Per listener: its listening socket (sessions are counted once for the whole lab below).
PER_SERVICE = 1
#: Sessions open at once at a busy moment, both ends when the client runs in the lab too
#: (a class's clients, the relay's sessions and the MX sessions they open).
SESSIONS = 128
#: Per user: two folders open (INBOX and one more), each index three files (db, WAL, shm),
#: and the INBOX's accept log (store/acceptlog.py: kept open by a folder SMTP delivers to).
PER_USER = 2 * 3 + 1

# Measured (benchmarks/relay.py --domains 50, 10,000 messages): 351 listeners and 50 users
# peak at about 640 descriptors; this estimate says ~880.


@dataclass(frozen=True)
class FdLimit:
    """What the lab found and did at start."""

    before: int  # the soft limit at start
    soft: int  # the soft limit now
    hard: int  # the hard limit (RLIM_INFINITY shown as CEILING)
    needed: int  # the estimate for this topology

    @property
    def enough(self) -> bool:
        return self.soft >= self.needed

    def text(self) -> str:
        if not self.enough:
            return (f"open-file limit {self.soft} is below the ~{self.needed} this lab needs"
                    f" (the hard limit is {self.hard}): connections and deliveries may fail"
                    " with 'Too many open files'; raise it (ulimit -Hn) before starting")
        if self.soft != self.before:
            return f"open-file limit raised from {self.before} to {self.soft} (needs ~{self.needed})"
        return f"open-file limit {self.soft} (needs ~{self.needed})"


def needed(services: int, users: int, limits: Limits) -> int:
    """A generous estimate of the descriptors a lab of this size holds at a busy moment."""
    return BASE + services * PER_SERVICE + SESSIONS + users * PER_USER + limits.relay_concurrency * 4


def raise_soft_limit(wanted: int) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE as far as the hard limit allows (never lower it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = CEILING if hard == resource.RLIM_INFINITY else hard
    target = max(soft, min(top, CEILING))
    if target != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
    return FdLimit(before=soft, soft=target, hard=top, needed=wanted)
