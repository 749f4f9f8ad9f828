"""Handing updates from the lab thread to a widget.

The event bus calls subscribers on the thread that emitted the event: usually the
lab thread, which must never wait for a view nor see its exceptions. A live view
therefore only *pokes* a :class:`Throttle` there; the throttle runs the view's
publish function on a short-lived timer thread at most once per ``interval``
seconds, however many events arrived (one publisher per view, batched updates).

A timer rather than the kernel's IOLoop: while a cell blocks on a client (the
moment a transcript should grow), the kernel's loop does not run. Widget trait
updates from another thread are safe: ipykernel sends comm messages through its
thread-safe IOPub channel.

The publisher shares the interpreter with the lab thread and the kernel's shell: a
view that takes 20 ms to publish, ten times a second under load, takes a fifth of
the time a cell has. So the pause before the next publish also grows with the cost
of the last one (at least ``BUDGET`` times its duration), and while events keep
coming (a publish within the last second) a view publishes at most every
``SUSTAINED`` seconds: the first line after a quiet spell shows within ``interval``,
a stream of lines is coalesced into a few updates a second, and a view spends at
most 1/(1 + ``BUDGET``) of the time publishing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The pause after a publish is at least this many times as long as the publish took.
BUDGET = 4.0
#: The shortest period between publishes while events keep coming (seconds): two
#: updates a second, each view's changes coalesced (under kernel_load's load, 0.25 s
#: made the five views publish ~15 times a second between them).
SUSTAINED = 0.5


class Throttle:
    def __init__(self, interval: float, publish: Callable[[], None]) -> None:
        self.interval = interval
        self._publish = publish
        self._lock = threading.Lock()  # held only for an instant, on any thread
        self._timer: threading.Timer | None = None
        self._closed = False
        self._not_before = 0.0  # monotonic time: the last publish's cost, paid back
        self._last = 0.0  # monotonic time the last publish ended (0: none yet)
        self._before_last = 0.0  # ... and the one before it
        self._again = False  # publish once more after this one, events or not
        self.publishes = 0

    def poke(self) -> None:
        """Ask for a publish soon (cheap; safe on the lab thread; never raises)."""
        try:
            with self._lock:
                if self._timer is None and not self._closed:
                    now = time.monotonic()
                    period = SUSTAINED if self._last and now - self._last < 1.0 else self.interval
                    delay = max(self.interval, period - (now - self._last), self._not_before - now)
                    self._timer = threading.Timer(delay, self._run)
                    self._timer.daemon = True
                    self._timer.start()
        except Exception:
            pass

    def _run(self) -> None:
        with self._lock:
            self._timer = None
        started = time.monotonic()
        try:
            self._publish()
        except Exception:  # a broken view stays broken alone
            pass
        self._before_last, self._last = self._last, time.monotonic()
        self._not_before = self._last + BUDGET * (self._last - started)
        self.publishes += 1
        if self._again:
            self._again = False
            self.poke()

    def again(self) -> None:
        """From the publish function: publish once more after this one, at the usual
        pace, even if no event comes (a view that showed less than it has: a
        transcript's newest lines while traffic streams shows all once it pauses)."""
        self._again = True

    def streaming(self) -> bool:
        """Is the view publishing continuously (it published within the last two
        periods and is due again)? Then waiting for the next publish costs nothing."""
        with self._lock:
            pending = self._timer is not None
        return pending and time.monotonic() - self._last < 2 * max(self.interval, SUSTAINED, self._not_before - self._last)

    def sustained(self) -> bool:
        """Has the view been publishing back to back (its last two publishes, and the
        last one, within a second of now)? Then it is under a stream of events."""
        now = time.monotonic()
        return now - self._last < 1.0 and self._last - self._before_last < 1.0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
