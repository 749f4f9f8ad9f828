"""Blocking work (a delivery: create, write, fsync, rename, index) on worker threads,
its result back on the lab loop, for less than ``loop.run_in_executor`` costs.

``run_in_executor`` wraps each call in a ``concurrent.futures.Future`` with its own
lock and condition, chains it to an asyncio future, and wakes the loop once per
result. A busy MX hands over a message every millisecond, and that cost lands on the
lab thread, which every session shares (measured with ``smtp-source``, 8 connections,
4 KiB messages: the lab thread's CPU per message fell by a quarter with this pool).
Here a job is a tuple in a queue, and the results that finish while the loop is busy
are settled by one wake-up of the loop, not one each.

The work itself is the same: it runs to its end even when the awaiting task is
cancelled (the lab stopping), exactly as with ``run_in_executor``.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

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
    """A pool of daemon threads (started on first use) that runs blocking calls for
    any loop of the process."""

    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[_Inbox, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = \
            queue.SimpleQueue()
        self._started = 0
        self._start_lock = threading.Lock()
        self._inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = \
            weakref.WeakKeyDictionary()

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """``fn(*args)`` on a worker thread; await the future for its result (or its
        exception). Call on the loop's thread."""
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            inbox = self._inboxes[loop] = _Inbox(loop)
        if self._started < self.threads:
            self._start()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((inbox, future, fn, args))
        return future

    def _start(self) -> None:
        with self._start_lock:
            while self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()

    def _work(self) -> None:
        while True:
            inbox, future, fn, args = self._jobs.get()
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting task, as run_in_executor does
                inbox.put(future, False, exc)
            else:
                inbox.put(future, True, result)
            del inbox, future, fn, args  # a finished job's objects are not kept by an idle thread


#: Deliveries of the lab's SMTP servers. They wait for the disk (fsync), not for a CPU,
#: so the pool is not sized by CPUs like asyncio's default executor (6 threads on 2
#: CPUs): with 8 sessions delivering at once, the 7th and 8th message would wait for a
#: thread while their fsyncs could share the others' journal commits (store.groupsync).
DELIVERY = Workers(max(16, min(32, (os.cpu_count() or 1) + 4)), "maillab-delivery")
