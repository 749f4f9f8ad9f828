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
starve the others. And at most ``per_destination`` slots serve one recipient domain at
once (Postfix's ``default_destination_concurrency_limit``): the oldest waiting
delivery *whose domain has room* gets a freed slot. Without that, a next hop that
answers each command after a minute (on the class network, anyone's MX) held every
slot of the lab, and all its other outbound mail waited (tests/test_socket_attacks.py).

Flow control (Postfix's ``in_flow_delay``): the lab's SMTP servers, relay queue and
MTAs share one interpreter, so a burst of submissions takes the time the relay
needs to drain, and the queue (and every message's wait in it) grows for as long as
the burst lasts. :meth:`room` lets the SMTP server pause before it accepts a
message for relaying while ``inflow_backlog`` or more deliveries wait for a slot,
until one starts or ``inflow_delay`` seconds passed: mail comes in about as fast as
it goes out, and the client, not the queue, holds what waits.
"""

from __future__ import annotations

import asyncio
from collections import deque

#: A flow: (sending host, recipient domain).
Flow = tuple[str, str]


class DeliverySlots:
    def __init__(self, slots: int, burst: int, inflow_backlog: int = 0, per_destination: int = 0) -> None:
        self.burst = burst
        self.per_destination = per_destination  # 0: no cap
        self.destinations: dict[str, int] = {}  # slots granted per recipient domain
        self.inflow_backlog = inflow_backlog  # 0: no flow control
        self.waiting = 0  # deliveries waiting for a slot now
        self.paused = 0  # messages whose acceptance :meth:`room` delayed
        self._admissions: deque[asyncio.Future[None]] = deque()
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
            # (a free slot means no waiter could have it: each one's domain is full)
            if self._free > 0 and not self._full(flow):
                self._free -= 1
                self._granted(flow)
                streak = 0
            else:
                fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
                self._queue.append((flow, fut))
                self._by_flow.setdefault(flow, deque()).append(fut)
                self.waiting += 1
                try:
                    streak = await fut
                except asyncio.CancelledError:
                    if fut.done() and not fut.cancelled():
                        self._ungranted(flow)
                        self._pass(flow, fut.result())  # granted, then cancelled: hand it on
                    raise
                finally:
                    self.waiting -= 1
                    self._admit()
        except BaseException:
            self._forget(flow)
            raise
        self.active[flow] = self.active.get(flow, 0) + 1
        return streak

    def release(self, flow: Flow, streak: int = 0) -> None:
        """A delivery of ``flow`` is done with its slot (``streak`` from :meth:`acquire`)."""
        self.active[flow] = self.active.get(flow, 1) - 1
        self._forget(flow)
        self._ungranted(flow)
        self._pass(flow, streak)

    def _full(self, flow: Flow) -> bool:
        return bool(self.per_destination) and self.destinations.get(flow[1], 0) >= self.per_destination

    def _granted(self, flow: Flow) -> None:
        self.destinations[flow[1]] = self.destinations.get(flow[1], 0) + 1

    def _ungranted(self, flow: Flow) -> None:
        left = self.destinations.get(flow[1], 1) - 1
        if left > 0:
            self.destinations[flow[1]] = left
        else:
            self.destinations.pop(flow[1], None)

    def _pass(self, flow: Flow, streak: int) -> None:
        """Give the slot to the next delivery of ``flow`` (up to ``burst`` in a row), else
        to the oldest waiting delivery, else keep it free. Futures already granted or
        cancelled stay in the queues until they come up, and are skipped then."""
        waiters = self._by_flow.get(flow)
        if streak + 1 < self.burst and not self._full(flow):
            while waiters:
                fut = waiters.popleft()
                if not fut.done():
                    self._granted(flow)
                    fut.set_result(streak + 1)
                    self.handed_over += 1
                    return
        skipped: list[tuple[Flow, asyncio.Future[int]]] = []  # waiters whose domain is full
        try:
            while self._queue:
                other, fut = self._queue.popleft()
                if fut.done():
                    continue
                if self._full(other):
                    skipped.append((other, fut))
                    continue
                self._granted(other)
                fut.set_result(0)
                return
            self._free += 1
        finally:
            self._queue.extendleft(reversed(skipped))

    async def room(self, timeout: float) -> float:
        """Wait until fewer than ``inflow_backlog`` deliveries wait for a slot, at most
        ``timeout`` seconds; returns the seconds waited (0.0: there was room)."""
        if not self.inflow_backlog or self.waiting < self.inflow_backlog or timeout <= 0:
            return 0.0
        loop = asyncio.get_running_loop()
        started = loop.time()
        fut: asyncio.Future[None] = loop.create_future()
        self._admissions.append(fut)
        self.paused += 1
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass  # Postfix's rule: after in_flow_delay the message is accepted anyway
        return loop.time() - started

    def _admit(self) -> None:
        """A waiting delivery got its slot (or gave up): let one paused message in."""
        while self._admissions and self.waiting < self.inflow_backlog:
            fut = self._admissions.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _forget(self, flow: Flow) -> None:
        self.wanting[flow] = self.wanting.get(flow, 1) - 1
        if self.wanting[flow] <= 0:
            self.wanting.pop(flow, None)
            self.active.pop(flow, None)
            self._by_flow.pop(flow, None)
