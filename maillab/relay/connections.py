"""The relay's connection cache: open SMTP sessions waiting for the next message.

When a burst of mail goes to one host, connecting, greeting, EHLO and a TLS
handshake for every single message cost more than the messages themselves.
Postfix therefore keeps a finished session open for a moment when more mail for
the same destination is waiting (``smtp_connection_cache_on_demand``, with
``smtp_connection_cache_time_limit = 2s``), and the next delivery to that host
sends ``RSET`` and its own ``MAIL FROM`` over it.

The lab does the same, on demand only: a message sent on its own still gets a
session of its own, from connect to QUIT, exactly as before. Each message's
transcript stays its own either way: a reused session starts with a note naming
the transcript that opened the connection. A connection nobody takes within
``lab.limits.relay_connection_cache`` seconds is closed with QUIT in a short
transcript of its own. ``relay_connection_cache = 0`` turns reuse off.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .client import Connection

if TYPE_CHECKING:
    from ..events import EventBus

#: Who may share a connection: the sending host (HELO name and source address), the
#: MX host and its address and port, and the TLS policy level the connection was opened with.
Key = tuple[str, "str | None", str, str, int, str]


class ConnectionCache:
    """Idle connections by :data:`Key`, most recently used first; each closes itself
    after ``idle`` seconds."""

    def __init__(self, events: EventBus, idle: float) -> None:
        self.events = events
        self.idle = idle
        self.reused = 0
        self._idle: dict[Key, list[tuple[Connection, asyncio.TimerHandle]]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def take(self, key: Key) -> Connection | None:
        """An idle connection for ``key``. The server may have closed it meanwhile (its idle
        timeout): the caller finds out with RSET, in the message's transcript."""
        stack = self._idle.get(key)
        if not stack:
            return None
        conn, timer = stack.pop()
        timer.cancel()
        if not stack:
            del self._idle[key]
        self.reused += 1
        return conn

    def put(self, key: Key, conn: Connection) -> None:
        if self.idle <= 0:
            self._close_later(conn, "connection reuse is off")
            return
        timer = asyncio.get_running_loop().call_later(self.idle, self._expire, key, conn)
        self._idle.setdefault(key, []).append((conn, timer))

    def drop(self, host: str | None = None) -> int:
        """Close the idle connections to ``host`` (all when None), e.g. when a failure is
        injected there: a cached session must not hide that the host went down."""
        n = 0
        for key in list(self._idle):
            if host is None or key[2] == host:
                for conn, timer in self._idle.pop(key):
                    timer.cancel()
                    self._close_later(conn, f"failure injected at {conn.host}" if host else "relay stopped")
                    n += 1
        return n

    async def close(self) -> None:
        self.drop()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=3)

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def _expire(self, key: Key, conn: Connection) -> None:
        stack = self._idle.get(key, [])
        for i, (c, _timer) in enumerate(stack):
            if c is conn:
                del stack[i]
                break
        if not stack:
            self._idle.pop(key, None)
        self._close_later(conn, f"idle for {self.idle:g} s with no more mail for {conn.host}")

    def _close_later(self, conn: Connection, why: str) -> None:
        task = asyncio.get_running_loop().create_task(self._quit(conn, why))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, conn: Connection, why: str) -> None:
        """QUIT in a transcript of its own: the last message's transcript is already closed."""
        rec = self.events.session("smtp", "client", conn.session.rec.host, f"{conn.address}:{conn.port}",
                                  mx=conn.host, reuses=conn.opened_in)
        conn.session.rec = rec
        rec.note(f"closing the cached connection opened in session {conn.opened_in} after"
                 f" {conn.transactions} message(s): {why}")
        await conn.quit()
        rec.close("QUIT")
