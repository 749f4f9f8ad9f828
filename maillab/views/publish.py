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
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Throttle:
    def __init__(self, interval: float, publish: Callable[[], None]) -> None:
        self.interval = interval
        self._publish = publish
        self._lock = threading.Lock()  # held only for an instant, on any thread
        self._timer: threading.Timer | None = None
        self._closed = False

    def poke(self) -> None:
        """Ask for a publish soon (cheap; safe on the lab thread; never raises)."""
        try:
            with self._lock:
                if self._timer is None and not self._closed:
                    self._timer = threading.Timer(self.interval, self._run)
                    self._timer.daemon = True
                    self._timer.start()
        except Exception:
            pass

    def _run(self) -> None:
        with self._lock:
            self._timer = None
        try:
            self._publish()
        except Exception:  # a broken view stays broken alone
            pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
