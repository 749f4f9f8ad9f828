"""A mailbox's lock, and turns for the worker threads that may wait for it.

IMAP runs its heavy commands on worker threads, few of them on purpose: the GIL lets
one thread compute at a time, and every thread that wants to compute makes the lab
loop wait longer for its turn. But a command that waits for a mailbox lock another
thread holds (a STORE 1:* renaming 100,000 files, a first SELECT indexing them)
computes nothing, and with a fixed pool of two threads, two such waits stopped every
other session's offloaded command, in any mailbox, behind them.

So the rule is about *computing* threads, not threads: a pool's jobs run on as many
threads as they need (up to a generous cap) but each takes one of the pool's
:class:`Turns` before it starts, and a job that has to wait for a :class:`MailboxLock`
gives its turn back while it waits. Once it has the lock it takes a turn again if one
is free and otherwise goes on without (it never waits for a turn while it holds a
lock: a job holding a turn may be waiting for that lock, or for another the first
one holds). So about the pool's number of commands compute at once (more only for
the moment after such a wait), and a command stuck behind a held mailbox never holds
up another session's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MailboxLock", "Turns"]

T = TypeVar("T")

_local = threading.local()  # .turn: the Turns whose turn this thread holds, or None


class Turns:
    """About ``count`` jobs compute at once; a job waiting for a mailbox lock does not count."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._sem = threading.Semaphore(count)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` once a turn is free (call it on the worker thread, holding no lock)."""
        self._sem.acquire()
        _local.turn = self
        try:
            return fn(*args)
        finally:
            if _local.turn is self:  # (not when it gave its turn back for a lock and found none after)
                self._sem.release()
            _local.turn = None


class MailboxLock:
    """A re-entrant lock (``threading.RLock``'s interface) whose waiting thread gives
    back its :class:`Turns` turn, if it holds one."""

    __slots__ = ("_lock", "_try", "waiting")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._try = self._lock.acquire  # (``with`` is the hot path: one call when free)
        #: threads waiting for it now (a test or a view reads it)
        self.waiting = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            return False
        turn: Turns | None = getattr(_local, "turn", None)
        if turn is not None:
            _local.turn = None
            turn._sem.release()
        self.waiting += 1  # (for observers: a lost update skews it for a moment, no more)
        try:
            return self._lock.acquire(True, timeout)
        finally:
            self.waiting -= 1
            if turn is not None and turn._sem.acquire(False):
                _local.turn = turn

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self._try(False) or self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
