"""The lab thread: one asyncio loop in one daemon thread hosts every lab server.

Why not the kernel's own loop? A notebook cell that calls a blocking client
(smtplib, poplib, imaplib) blocks the kernel's thread; a server on that same
loop would never get to answer and the cell would hang forever. So all servers
live here, and cells talk to them over real sockets like any other client.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_live_loops: weakref.WeakSet[LabLoop] = weakref.WeakSet()


class LabLoop:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self, name: str = "maillab-loop") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._started = threading.Event()

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._started.clear()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()
        self._started.wait(5)
        _live_loops.add(self)

    def _run(self) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def in_lab_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30) -> T:
        """Run ``coro`` on the lab loop and wait for its result from another thread."""
        if not self.running or self.loop is None:
            raise RuntimeError("the lab loop is not running")
        if self.in_lab_thread():
            raise RuntimeError("LabLoop.run() called from the lab thread would deadlock")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"lab operation did not finish within {timeout} s") from None

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the lab loop without waiting."""
        if not self.running or self.loop is None:
            raise RuntimeError("the lab loop is not running")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = 30) -> T:
        """Run a plain function on the lab thread (for state only that thread may touch)."""

        async def wrapper() -> T:
            result = fn(*args)
            if isinstance(result, Awaitable):
                return await result  # type: ignore[no-any-return]
            return result

        return self.run(wrapper(), timeout)

    def stop(self, timeout: float = 5) -> None:
        if not self.running or self.loop is None:
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(timeout)
        self.thread = None


@atexit.register
def _stop_all() -> None:
    for loop in list(_live_loops):
        try:
            loop.stop(timeout=2)
        except Exception:
            pass
