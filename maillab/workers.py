"""Blocking work (a delivery: create, write, fsync, rename, index) on worker threads,
its result back on the lab loop, for less than ``loop.run_in_executor`` costs.

``run_in_executor`` wraps each call in a ``concurrent.futures.Future`` with its own
lock and condition, chains it to an asyncio future, and wakes the loop once per
result. A busy MX hands over a message every millisecond, and that cost lands on the
lab thread, which every session shares (measured with ``smtp-source``, 8 connections,
4 KiB messages: the lab thread's CPU per message fell by a quarter with this pool).
Here a job is a tuple in a queue, and the results that finish while the loop is busy
are settled by one wake-up of the loop, not one each.

A job wakes exactly one thread: the one that went idle last (its own lock released),
not a ``queue.SimpleQueue`` whose ``get`` passes its lock on to a second waiting
thread, which wakes only to find the queue empty and sleep again (seen in strace: two
worker threads woken per SMTP delivery, the second one competing with the first for
the interpreter lock and, on a busy machine, for a CPU). The thread idle last is also
the one most likely still warm on a CPU.

The work itself is the same: it runs to its end even when the awaiting task is
cancelled (the lab stopping), exactly as with ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from .store.locking import Turns

T = TypeVar("T")


class _Inbox:
    """Results waiting for one loop; the first one in schedules the settling."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self.waking = False

    def put(self, future: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """On a worker thread: hand a result over."""
        with self.lock:
            self.items.append((future, ok, value))
            if self.waking:
                return  # the loop has been woken already and has not settled yet
            self.waking = True
        try:
            self.loop.call_soon_threadsafe(self.settle)
        except RuntimeError:  # the loop is closed: nobody waits for the result
            pass

    def settle(self) -> None:
        """On the loop: every result that came in since the last wake-up."""
        with self.lock:
            items, self.items = self.items, []
            self.waking = False
        for future, ok, value in items:
            if future.done():  # cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)


class Workers:
    """A pool of daemon threads (started as jobs need them) that runs blocking calls
    for any loop of the process."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.name = name
        self._lock = threading.Lock()
        self._jobs: deque[tuple[_Inbox, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = deque()
        # Idle threads, each waiting on a lock of its own that run() releases; the last
        # one in is woken first.
        self._idle: list[threading.Lock] = []
        self._started = 0
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = \
            weakref.WeakKeyDictionary()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on a worker thread; await the future for its result (or its
        exception). Call on the loop's thread."""
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox(loop)
        future: asyncio.Future[T] = loop.create_future()
        start = False
        with self._lock:
            self._jobs.append((inbox, future, fn, args))
            waiter = self._idle.pop() if self._idle else None
            if waiter is None and self._started < self.threads:
                self._started += 1
                start = True
        if waiter is not None:
            waiter.release()
        elif start:
            threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()
        # else every thread is busy: the first to finish takes the job
        return future

    def _work(self) -> None:
        wake = threading.Lock()
        wake.acquire()
        while True:
            with self._lock:
                job = self._jobs.popleft() if self._jobs else None
                if job is None:
                    self._idle.append(wake)
            if job is None:
                wake.acquire()  # until run() hands this thread a job
                continue
            inbox, future, fn, args = job
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                inbox.put(future, False, exc)
            else:
                inbox.put(future, True, result)
            del job, inbox, future, fn, args  # a finished job's objects are not kept by an idle thread


#: Deliveries of the lab's SMTP servers. They wait for the disk (fsync), not for a CPU,
#: so the pool is not sized by CPUs like asyncio's default executor (6 threads on 2
#: CPUs): with 8 sessions delivering at once, the 7th and 8th message would wait for a
#: thread while their fsyncs could share the others' journal commits (store.groupsync).
DELIVERY = Workers(max(16, min(32, (os.cpu_count() or 1) + 4)), "maillab-delivery")

#: IMAP and POP3 commands that may wait for a mailbox lock another thread holds (a
#: STORE 1:* renaming 100,000 files, a first SELECT indexing them): at most this many
#: compute at once (the GIL serialises Python anyway; the point is that the loop gets
#: a turn every switch interval), each holding one of :data:`MAILBOX_TURNS`, which it
#: gives back while it waits for such a lock (:mod:`maillab.store.locking`). So
#: sessions stuck behind one held mailbox never stop another's commands, in either
#: protocol, nor take the threads of asyncio's default executor (6 on 2 CPUs), which
#: the SMTP authentication checks and DNS share (tests/test_imap_worker_turns.py,
#: tests/test_pop3_worker_turns.py).
WORKERS = 2
MAILBOX_TURNS = Turns(WORKERS)
#: Threads for them: the computing ones and those waiting for a mailbox lock.
MAILBOX = Workers(64, "maillab-mailbox")


def on_turn(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``fn(*args)`` on a :data:`MAILBOX` thread, once one of :data:`MAILBOX_TURNS` is
    free. Call on the loop; await the future for the result."""
    return MAILBOX.run(MAILBOX_TURNS.run, fn, *args)
