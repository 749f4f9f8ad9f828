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
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["MailboxLock", "Turns", "share_turn"]

T = TypeVar("T")

_local = threading.local()  # .turn: the Turns whose turn this thread holds, or None


class Turns:
    """About ``count`` jobs compute at once; a job waiting for a mailbox lock does not count.

    Turns are handed out in the order they were asked for, and a job that has computed
    for :data:`SLICE` hands its turn to the first one waiting (:func:`share_turn`) and
    queues again: two SEARCH TEXT over a large mailbox, one user's, held both turns for
    seconds, and every other session's SELECT, STORE or POP3 command, of any user,
    waited for them to end (tests/test_socket_attacks.py)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._lock = threading.Lock()
        self._free = count
        self._waiting: deque[threading.Lock] = deque()  # one held lock per waiting job

    def _take(self) -> None:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return
            gate = threading.Lock()
            gate.acquire()
            self._waiting.append(gate)
        gate.acquire()  # released by the job that hands its turn over

    def _try_take(self) -> bool:
        with self._lock:
            if self._free and not self._waiting:
                self._free -= 1
                return True
            return False

    def _give(self) -> None:
        with self._lock:
            if self._waiting:
                self._waiting.popleft().release()  # the turn passes straight on
            else:
                self._free += 1

    def _share(self) -> None:
        """Hand the turn to the first job waiting, if any, and wait for it again."""
        with self._lock:
            if not self._waiting:
                return
            first = self._waiting.popleft()
            gate = threading.Lock()
            gate.acquire()
            self._waiting.append(gate)
        first.release()
        gate.acquire()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` once a turn is free (call it on the worker thread, holding no lock)."""
        self._take()
        _local.turn = self
        _local.since = time.monotonic()
        try:
            return fn(*args)
        finally:
            if _local.turn is self:  # (not when it gave its turn back for a lock and found none after)
                self._give()
            _local.turn = None


#: Seconds a job computes on its turn before :func:`share_turn` lets a waiting one go first.
SLICE = 0.02


def share_turn() -> None:
    """Between two messages of a long command (SEARCH over bodies, FETCH of many), on a
    worker thread that holds no mailbox lock: after :data:`SLICE` on its turn, let the
    first job waiting for one compute first. Elsewhere (on the loop, no turn): nothing."""
    turn: Turns | None = getattr(_local, "turn", None)
    if turn is None or time.monotonic() - _local.since < SLICE:
        return
    turn._share()
    _local.since = time.monotonic()


#: Seconds a long job waits between two holds of a mailbox lock for threads waiting for it.
LET_IN = 0.005


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
            turn._give()
        self.waiting += 1  # (for observers: a lost update skews it for a moment, no more)
        try:
            return self._lock.acquire(True, timeout)
        finally:
            self.waiting -= 1
            if turn is not None and turn._try_take():
                _local.turn = turn
                _local.since = time.monotonic()

    def release(self) -> None:
        self._lock.release()

    def let_waiters_in(self) -> None:
        """Between two holds of a long job (a copy-in indexed or its rows written a
        chunk per hold), not holding the lock: if threads wait for it, give them a
        moment to take it (until none waits, at most :data:`LET_IN` s). A released
        lock is not handed to a waiter: the releasing thread, still running, would
        take it back first, and the waiter would wait for every chunk instead of one
        (on a busy machine a woken waiter may need milliseconds to get a CPU)."""
        if not self.waiting or self._lock._is_owned():  # (held further up: nobody could take it)
            return
        end = time.monotonic() + LET_IN
        while self.waiting and time.monotonic() < end:
            time.sleep(0.0005)

    def __enter__(self) -> bool:
        return self._try(False) or self.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
