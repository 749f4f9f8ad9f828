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
import gc
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

_live_loops: weakref.WeakSet[LabLoop] = weakref.WeakSet()

#: The loop is lagging when a callback due now waits longer than this: every other
#: session's NOOP (and the notebook's view updates) waits as long.
LAG_THRESHOLD = 0.100
#: How often the watch looks (a timer on the loop; it costs ~20 wake-ups a second).
HEARTBEAT = 0.05


# CPU time each thread spent in the garbage collector. A full collection in a big
# process (a notebook, a test run) can take a few hundred ms in whichever thread
# allocated last; that is lag, but not a callback of ours computing.
_gc_cpu: dict[int, float] = {}
_gc_started: dict[int, tuple[float, float]] = {}


@dataclass(frozen=True)
class GCPause:
    """A full (generation 2) garbage collection that held the GIL past LAG_THRESHOLD:
    every thread of the process, the lab loop among them, waited for it."""

    when: float  # time.time() at its end
    start: float  # time.monotonic() at its start (to match it with a lag)
    wall: float
    cpu: float  # of ``wall``, what the collecting thread computed (the rest it waited:
    # finalizers that release the GIL, a loaded machine)
    thread: str  # the thread whose allocation set it off
    collected: int

    def __str__(self) -> str:
        return (f"full garbage collection of {self.wall * 1000:.0f} ms ({self.cpu * 1000:.0f} ms CPU)"
                f" in thread {self.thread}, {self.collected} objects freed")


#: The full collections that paused the process past LAG_THRESHOLD, newest last
#: (bounded); ``len`` only grows until trimmed, so readers keep a running count.
GC_PAUSES: list[GCPause] = []
_gc_pauses_seen = 0  # how many were ever recorded (GC_PAUSES is trimmed)


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    # Runs inside the collector, on whichever thread set it off: record only, no locks
    # (the thread may hold one an event emitter wants), and never raise.
    global _gc_pauses_seen
    tid = threading.get_ident()
    if phase == "start":
        _gc_started[tid] = (time.thread_time(), time.monotonic())
        return
    started = _gc_started.pop(tid, None)
    if started is None:
        return
    cpu = time.thread_time() - started[0]
    _gc_cpu[tid] = _gc_cpu.get(tid, 0.0) + cpu
    wall = time.monotonic() - started[1]
    if info.get("generation") == 2 and wall > LAG_THRESHOLD:
        GC_PAUSES.append(GCPause(time.time(), started[1], wall, cpu, threading.current_thread().name,
                                 info.get("collected", 0)))
        _gc_pauses_seen += 1
        if len(GC_PAUSES) > _LAG_LOG_MAX:
            del GC_PAUSES[:len(GC_PAUSES) // 2]


def gc_pauses_since(count: int) -> tuple[list[GCPause], int]:
    """The pauses recorded after the first ``count`` ever, and the count now."""
    total = _gc_pauses_seen
    new = total - count
    return (GC_PAUSES[-new:] if 0 < new <= len(GC_PAUSES) else list(GC_PAUSES) if new > 0 else []), total


gc.callbacks.append(_gc_callback)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Build many long-lived objects without the cyclic garbage collector: indexing
    100,000 files, or handing out 200,000 events, would otherwise set off a full
    collection every few thousand allocations, and none of them is garbage. A pause
    of the build's length only; the collector's settings are left as they were."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: Every LabLoop not yet garbage, started or not (its owner, a Lab or the class DNS, holds it).
_every_loop: weakref.WeakSet[LabLoop] = weakref.WeakSet()


def freeze_what_exists() -> bool:
    """Take every object alive now out of the collector's generations (``gc.freeze``),
    when no lab is alive to be frozen with them; True if it did.

    A full collection walks every object the collector tracks, whichever thread sets
    it off: in a kernel (IPython, numpy, matplotlib, the user's data) or a test run
    (a thousand tests' reports) that is mostly what existed before the lab, and the
    lab loop waited for all of it (219 ms in a test run, 27,549 objects freed).
    Frozen objects are never walked again; objects made later are collected as
    before. Called when a lab is made, before it makes anything of its own.

    Frozen garbage is never collected (only reference counting frees a frozen
    object), so nothing about to become garbage may be frozen: ``gc.collect()``
    first frees what already is, and nothing is frozen while any lab or class DNS
    is still alive (stopped but referenced, or running), since its objects die
    with it. What is frozen is what outlives labs: modules, the kernel's and the
    test runner's state. (CPython's ``gc`` docs give the same recipe around
    ``fork()``; there ``gc.disable()`` also keeps the parent's pages unwritten,
    which does not matter here, so the collector stays on.)
    """
    if any(loop.running for loop in list(_every_loop)):
        return False  # and no collection either: it would pause that lab's loop
    gc.collect()  # also frees a stopped lab that is garbage but for a cycle
    if len(_every_loop):
        return False
    gc.freeze()
    return True


@dataclass(frozen=True)
class Lag:
    """The lab loop came back late: ``wall`` seconds late, of which the lab thread
    spent ``cpu`` seconds computing. cpu close to wall: a callback of ours ran too
    long (a bug); cpu small: the thread waited (a blocking call, the GIL held by
    another thread, or a machine too loaded to schedule it)."""

    loop: str
    when: float  # time.time() when the watch noticed
    wall: float
    cpu: float
    gc: float = 0.0  # of ``cpu``, the seconds the garbage collector ran in the lab thread
    #: of ``wall``, the seconds full collections (any thread's) held the process, and
    #: the longest of them: why a lab that computed nothing still waited
    full_gc: float = 0.0
    pause: GCPause | None = None
    #: CPU seconds the process's other threads used meanwhile: much, and the lab thread
    #: waited for the GIL they held (or for a core); little, and it was blocked or the
    #: machine ran other processes
    others: float = 0.0

    @property
    def own_cpu(self) -> float:
        """CPU seconds of the lab's own work (the collector's share taken out)."""
        return self.cpu - self.gc

    @property
    def busy(self) -> bool:
        """True when the lab thread itself computed past the threshold."""
        return self.own_cpu > LAG_THRESHOLD

    def __str__(self) -> str:
        if self.busy:
            why = "busy computing"
        elif self.pause is not None and self.full_gc >= self.wall / 2:
            why = f"waiting for a {self.pause}"
        elif self.others >= self.wall / 2:
            why = f"waiting while other threads of this process computed {self.others * 1000:.0f} ms"
        else:
            why = (f"waiting (blocked or machine load: other threads computed {self.others * 1000:.0f} ms"
                   " meanwhile)")
        gc_note = f", {self.gc * 1000:.0f} ms of it garbage collection" if self.gc >= 0.01 else ""
        return f"lab loop lagged {self.wall * 1000:.0f} ms ({self.cpu * 1000:.0f} ms CPU{gc_note}: {why})"


#: Every lag of every loop in this process, newest last (bounded): tests read it.
LAG_LOG: list[Lag] = []
_LAG_LOG_MAX = 10_000


class LagWatch:
    """A heartbeat on a loop that records each time the loop came back late."""

    def __init__(self, lab_loop: LabLoop) -> None:
        self.lab_loop = lab_loop
        self._due = 0.0
        self._cpu = 0.0
        self._gc = 0.0
        self._process = 0.0
        self._pauses = _gc_pauses_seen  # full collections before the start are not ours
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._due = 0.0
        loop.call_soon(self._beat, loop)

    def _beat(self, loop: asyncio.AbstractEventLoop) -> None:
        now, cpu = time.monotonic(), time.thread_time()  # thread_time: the lab thread's own CPU
        process = time.process_time()  # every thread's
        collected = _gc_cpu.get(threading.get_ident(), 0.0)
        late = now - self._due
        pauses, self._pauses = gc_pauses_since(self._pauses)
        for pause in pauses:
            self.lab_loop.paused(pause)
        if self._due and late > LAG_THRESHOLD:
            # The full collections that overlapped the late interval, whichever thread ran them.
            overlap = [(min(now, p.start + p.wall) - max(self._due, p.start), p) for p in pauses]
            overlap = [(t, p) for t, p in overlap if t > 0]
            self.lab_loop.lagged(Lag(self.lab_loop.name, time.time(), late, cpu - self._cpu,
                                     collected - self._gc, sum(t for t, _ in overlap),
                                     max(overlap, key=lambda tp: tp[0])[1] if overlap else None,
                                     max(0.0, process - self._process - (cpu - self._cpu))))
        self._due, self._cpu, self._gc, self._process = now + HEARTBEAT, cpu, collected, process
        self._handle = loop.call_later(HEARTBEAT, self._beat, loop)


class LabLoop:
    """An asyncio event loop running in its own daemon thread."""

    def __init__(self, name: str = "maillab-loop") -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._started = threading.Event()
        #: The lags of this loop (newest last, bounded); ``on_lag`` is called on the lab
        #: thread for each (the lab records it as an event).
        self.lags: list[Lag] = []
        self.on_lag: Callable[[Lag], None] | None = None
        #: Full garbage collections that paused the process while this loop ran (newest
        #: last, bounded); ``on_gc_pause`` is called on the lab thread for each.
        self.gc_pauses: list[GCPause] = []
        self.on_gc_pause: Callable[[GCPause], None] | None = None
        self._watch = LagWatch(self)
        _every_loop.add(self)

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
        self._watch.start(self.loop)
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

    def lagged(self, lag: Lag) -> None:
        for log in (self.lags, LAG_LOG):
            log.append(lag)
            if len(log) > _LAG_LOG_MAX:
                del log[:len(log) // 2]
        if self.on_lag is not None:
            try:
                self.on_lag(lag)
            except Exception:  # reporting a lag must never add to it by breaking the loop
                pass

    def paused(self, pause: GCPause) -> None:
        self.gc_pauses.append(pause)
        if len(self.gc_pauses) > _LAG_LOG_MAX:
            del self.gc_pauses[:len(self.gc_pauses) // 2]
        if self.on_gc_pause is not None:
            try:
                self.on_gc_pause(pause)
            except Exception:  # as on_lag
                pass

    @property
    def beat_due(self) -> float:
        """``time.monotonic()`` when the lag watch's next heartbeat is due (0 before the
        first): a thread outside the loop can tell that the loop is late right now
        (benchmarks/lag_stacks.py looks at what the lab thread is doing then)."""
        return self._watch._due

    def lag_summary(self) -> str | None:
        """One line for ``%mail status`` (and one for the full garbage collections that
        paused it), or None when the loop never lagged."""
        if not self.lags and not self.gc_pauses:
            return None
        lines = []
        if self.lags:
            worst = max(self.lags, key=lambda lag: lag.wall)
            busy = sum(lag.busy for lag in self.lags)
            lines.append(f"lab loop lagged over {LAG_THRESHOLD * 1000:.0f} ms {len(self.lags)} times"
                         f" ({busy} busy computing); worst: {worst}")
        if self.gc_pauses:
            worst_pause = max(self.gc_pauses, key=lambda p: p.wall)
            lines.append(f"full garbage collections over {LAG_THRESHOLD * 1000:.0f} ms:"
                         f" {len(self.gc_pauses)}; worst: {worst_pause}")
        return "\n".join(lines)

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
