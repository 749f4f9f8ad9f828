"""Measuring instruments for tests/test_security_*.py (SECURITY.md, line by line).

SECURITY.md makes three kinds of claim that a reply code alone cannot show:
"memory stays bounded", "no task leaked" and "the server never dies". The tools
here measure them on a running lab, from outside, with real hostile clients:

- :func:`memory_peak` traces every allocation of the process (the lab's servers run
  on a thread of this process) while hostile bytes go over a socket; a server that
  buffered the attack shows a peak the size of the attack.
- :func:`lab_tasks` / :func:`settled_tasks` count the asyncio tasks on the lab loop.
- :func:`blast` sends many megabytes from one reused chunk, so the client itself
  adds nothing to the peak.
"""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from maillab import Lab

MB = 1024 * 1024


@dataclass
class Peak:
    """Traced memory (bytes) above the level at the start: the largest amount while
    the block ran, and what was still held when it ended."""

    bytes: int = 0
    retained: int = 0

    @property
    def mb(self) -> float:
        return self.bytes / MB

    @property
    def retained_mb(self) -> float:
        return self.retained / MB


@contextmanager
def memory_peak() -> Iterator[Peak]:
    """Trace allocations of every thread while the block runs; the peak above the start."""
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    peak = Peak()
    try:
        yield peak
    finally:
        now, top = tracemalloc.get_traced_memory()
        peak.bytes, peak.retained = top - base, now - base
        if started_here:
            tracemalloc.stop()


def blast(sock: socket.socket, total: int, chunk: bytes) -> int:
    """Send whole copies of ``chunk`` until at least ``total`` octets went out; the count.

    Stops early (and returns less) when the server closes the connection, which is
    a legitimate answer to a flood."""
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def lab_tasks(lab: Lab) -> int:
    """How many asyncio tasks the lab loop holds right now (the counting task included)."""
    return lab.loop.call(lambda: len(asyncio.all_tasks()))


def settled_tasks(lab: Lab, baseline: int, timeout: float = 5.0) -> int:
    """Wait until the lab loop is back to ``baseline`` tasks (or ``timeout``); the count."""
    deadline = time.monotonic() + timeout
    count = lab_tasks(lab)
    while count > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
        count = lab_tasks(lab)
    return count


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_until_closed(sock: socket.socket, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (bytes, closed within ``timeout``)."""
    sock.settimeout(timeout)
    got = b""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return got, True
            got += data
    except (ConnectionResetError, BrokenPipeError):
        return got, True
    except TimeoutError:
        return got, False
    except OSError:  # ssl.SSLError is an OSError: a TLS alert ends the connection too
        return got, True
