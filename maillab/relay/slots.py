"""The relay's delivery slots: how many deliveries run at once, and which one runs next.

``lab.limits.relay_concurrency`` deliveries (DNS lookup and SMTP session) run at
once, whole lab. A delivery waits for a slot in arrival order, with one exception,
which is what Postfix's queue manager and smtp(8) do with a connection cache: when
a delivery ends and more mail from the same host for the same domain (the same
*flow*) is waiting, the slot goes to that mail next, so it can use the SMTP
session just finished (kept open by :mod:`.connections`) instead of connecting,
greeting, EHLO and a TLS handshake again. Without that, in a lab of 50 domains
(2,450 flows) the next message of a flow waits behind hundreds of others, long
after the kept session has expired.

At most ``burst`` deliveries of one flow follow each other that way; then the slot
goes to the oldest waiting delivery of any flow, so a flood to one domain cannot
starve the others.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: A flow: (sending host, recipient domain).
Flow = tuple[str, str]


class DeliverySlots:
    def __init__(self, slots: int, burst: int) -> None:
        self.burst = burst
        self._free = slots
        self._queue: deque[tuple[Flow, asyncio.Future[int]]] = deque()  # every waiter, oldest first
        self._by_flow: dict[Flow, deque[asyncio.Future[int]]] = {}
        self.wanting: dict[Flow, int] = {}  # deliveries started (waiting or running) per flow
        self.active: dict[Flow, int] = {}  # deliveries running per flow
        self.handed_over = 0  # slots passed straight to the next delivery of the same flow

    def backlog(self, flow: Flow) -> bool:
        """Does more mail of ``flow`` wait for a slot than runs now?"""
        return self.wanting.get(flow, 0) > self.active.get(flow, 0)

    async def acquire(self, flow: Flow) -> int:
        """Wait for a slot; returns how many deliveries of ``flow`` ran in a row before
        this one on the same slot (0: a slot of its own)."""
        self.wanting[flow] = self.wanting.get(flow, 0) + 1
        try:
            if self._free > 0 and not self._queue:
                self._free -= 1
                streak = 0
            else:
                fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self._queue.append((flow, fut))
                self._by_flow.setdefault(flow, deque()).append(fut)
                try:
                    streak = await fut
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled():
                        self._pass(flow, fut.result())  # granted, then cancelled: hand it on
                    raise
        except BaseException:
            self._forget(flow)
            raise
        self.active[flow] = self.active.get(flow, 0) + 1
        return streak

    def release(self, flow: Flow, streak: int = 0) -> None:
        """A delivery of ``flow`` is done with its slot (``streak`` from :meth:`acquire`)."""
        self.active[flow] = self.active.get(flow, 1) - 1
        self._forget(flow)
        self._pass(flow, streak)

    def _pass(self, flow: Flow, streak: int) -> None:
        """Give the slot to the next delivery of ``flow`` (up to ``burst`` in a row), else
        to the oldest waiting delivery, else keep it free. Futures already granted or
        cancelled stay in the queues until they come up, and are skipped then."""
        waiters = self._by_flow.get(flow)
        if streak + 1 < self.burst:
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    fut.set_result(streak + 1)
                    self.handed_over += 1
                    return
        while self._queue:
            _other, fut = self._queue.popleft()
            if not fut.done():
                fut.set_result(0)
                return
        self._free += 1

    def _forget(self, flow: Flow) -> None:
        self.wanting[flow] = self.wanting.get(flow, 1) - 1
        if self.wanting[flow] <= 0:
            self.wanting.pop(flow, None)
            self.active.pop(flow, None)
            self._by_flow.pop(flow, None)
