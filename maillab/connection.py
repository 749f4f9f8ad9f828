"""One connection of a lab server (SMTP, POP3, IMAP), or of the relay's SMTP client:
bytes in, bytes out.

A :class:`LineConnection` is an :class:`asyncio.Protocol`, so it owns the byte
buffer (asyncio's public API, no stream reader internals) and every limit is
enforced before memory is spent: a line longer than the limit is consumed and
reported as too long, never stored whole; reading pauses while the buffer is
full (backpressure). It also owns the one STARTTLS switch of the lab, where
the classic bug lives: bytes a client pipelines after ``STARTTLS`` arrive in
plaintext and must be thrown away, never read as if they had come over TLS
(CVE-2011-0411 and its many descendants, RFC 3207 5, RFC 2595 3.1).

Time limits: a whole line must arrive within ``idle_timeout`` of the server
starting to wait for it, so a client that sends a byte now and then cannot hold
a session open for ever (SECURITY.md: idle and byte-at-a-time clients time out).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from . import tls as tlsinfo
from .events import SessionRecorder

#: Buffers one writev() call may take (POSIX IOV_MAX, 1024 on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
_WRITEV = hasattr(os, "writev")
#: Reading pauses while this many received octets wait to be consumed.
READ_BUFFER = 256 * 1024
#: How much of an over-long line is kept, for the transcript.
HEAD = 80
#: Octets :meth:`LineConnection.hold` keeps before it writes them anyway.
HOLD_LIMIT = 256 * 1024
#: Seconds a session may go on reading what is already buffered before it lets the
#: lab loop's other sessions have a turn. A read that finds its line in the buffer
#: never waits, so without this a client that pipelines a full READ_BUFFER of
#: NOOPs (43,000 commands) held the loop, and every other session, for a second
#: or more (tests/test_socket_attacks.py).
TURN = 0.005


class LineTooLong(Exception):
    """A line exceeded the limit; its bytes up to the next LF have been discarded."""

    def __init__(self, length: int, head: bytes = b"") -> None:
        super().__init__(f"line of {length}+ octets")
        self.length = length
        self.head = head  # the line's first octets, to show what it was


class ConnectionClosed(Exception):
    pass


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("idle timeout"))


class LineConnection(asyncio.Protocol):
    """The protocol object asyncio feeds; the server's task reads from it."""

    def __init__(self, *, idle_timeout: float,
                 on_open: Callable[[LineConnection], Any] | None = None, tls_first: bool = False) -> None:
        self.idle_timeout = idle_timeout
        #: Implicit TLS (pop3s, imaps, smtps): nothing is read before :meth:`starttls`
        #: takes over the socket, so the ClientHello reaches the TLS layer whole.
        self.tls_first = tls_first
        self.recorder: SessionRecorder | None = None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._on_open = on_open
        self._buf = bytearray()
        self._eof = False
        self._paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # when the waiting read times out (loop time)
        self._timer: asyncio.TimerHandle | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._lost = False
        self._held: list[bytes | memoryview] = []  # hold(): written before the next wait for input
        self._held_size = 0
        loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = loop.create_future()
        self._turn_start = loop.time()  # when this session last let the loop run others

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self.tls_first:
            transport.pause_reading()  # start_tls() resumes it under the TLS layer
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if len(self._buf) > READ_BUFFER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def _wake(self) -> None:
        if self._data_waiter is not None and not self._data_waiter.done():
            self._data_waiter.set_result(None)

    # -- reading ----------------------------------------------------------------
    @property
    def tls_active(self) -> bool:
        return self.transport is not None and self.transport.get_extra_info("ssl_object") is not None

    def has_buffered_data(self) -> bool:
        return bool(self._buf)

    def has_buffered_line(self) -> bool:
        """Whether a whole line waits to be read (a pipelined command)."""
        return b"\n" in self._buf

    async def _fill(self, deadline: float | None = None) -> None:
        """Wait for more bytes (until ``deadline``, loop time; default: the idle timeout)."""
        if self._held:
            self.flush()  # never wait for the client while its replies are held back
        if self._eof:
            raise ConnectionClosed()
        loop = asyncio.get_running_loop()
        timeout = self.idle_timeout if deadline is None else deadline - loop.time()
        if timeout <= 0:
            raise TimeoutError("idle timeout")
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        # Not asyncio.wait_for() (a second trip round the event loop for every read)
        # and not a timer per read (a busy MX reads four times per message): one
        # timer per connection, which moves on to the current deadline when it fires
        # early, and is set again only when a deadline comes sooner.
        waiter = self._data_waiter = loop.create_future()
        self._deadline = deadline = loop.time() + timeout
        if self._timer is None or self._timer.when() > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_at(deadline, self._time_up)
        try:
            await waiter
        finally:
            self._data_waiter = None
        self._turn_start = loop.time()
        if not self._buf and self._eof:
            raise ConnectionClosed()

    def _time_up(self) -> None:
        self._timer = None
        waiter = self._data_waiter
        if waiter is None or waiter.done():
            return  # not reading now: the next read sets the timer again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            _expire(waiter)
        else:
            self._timer = loop.call_at(self._deadline, self._time_up)

    def turn_is_over(self) -> bool:
        """Whether this session has kept the loop for a TURN since it last waited."""
        return asyncio.get_running_loop().time() - self._turn_start > TURN

    async def share_turn(self) -> None:
        """Let the loop run the other sessions now (the replies so far go out first)."""
        self.flush()
        await asyncio.sleep(0)
        self._turn_start = asyncio.get_running_loop().time()

    async def _next_turn(self) -> None:
        # A read that finds its input buffered does not wait: it shares the loop here.
        if self._buf and self.turn_is_over():
            await self.share_turn()

    def _line_deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.idle_timeout

    async def readline(self, limit: int) -> bytes:
        """One line including its line ending (CRLF or bare LF), complete within
        the idle timeout.

        Over ``limit`` octets: the rest of the line is read and thrown away and
        :class:`LineTooLong` raised, so the session can answer and go on.
        """
        await self._next_turn()
        start = 0
        deadline = self._line_deadline()
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                if nl + 1 > limit:
                    head = bytes(self._buf[:HEAD])
                    del self._buf[: nl + 1]
                    raise LineTooLong(nl + 1, head)
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > limit:
                dropped = len(self._buf)
                head = bytes(self._buf[:HEAD])
                self._buf.clear()
                await self._discard_to_eol()
                raise LineTooLong(dropped, head)
            start = len(self._buf)
            await self._fill(deadline)

    async def _discard_to_eol(self) -> None:
        while True:
            await self._fill()
            nl = self._buf.find(b"\n")
            if nl >= 0:
                del self._buf[: nl + 1]
                return
            self._buf.clear()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes (an IMAP literal), all of them within the idle timeout, as
        a line must: a byte now and then no longer holds the session open for ever."""
        await self._next_turn()
        deadline = self._line_deadline()
        while len(self._buf) < n:
            await self._fill(deadline)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` back in front of what has not been read yet."""
        self._buf[0:0] = data

    async def read_through(self, marker: bytes, chunk: int) -> tuple[bytes, bool]:
        """The next piece of the stream up to and including ``marker``, or, when it
        is not within reach, up to ``chunk`` octets without it. Returns the piece and
        whether the marker ended it. Each piece must come within the idle timeout,
        so a large upload may take long but a stalled one does not."""
        await self._next_turn()
        deadline = self._line_deadline()
        start = 0
        while True:
            end = self._buf.find(marker, start)
            if end >= 0:
                return self._take(end + len(marker)), True
            # keep a possible start of the marker for the next search
            take = len(self._buf) - (len(marker) - 1)
            if take >= chunk:
                return self._take(take), False
            start = max(0, take)  # the marker is not in what was searched
            await self._fill(deadline)

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered octets, copied once (a slice of the bytearray
        and then ``bytes()`` of it would copy a 1 MiB message twice)."""
        with memoryview(self._buf) as view:
            piece = bytes(view[:n])
        del self._buf[:n]
        return piece

    # -- writing ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self._held:
            self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def hold(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write ``parts`` later, with what follows: replies to commands a client has
        pipelined go out together (fewer system calls, and the client wakes once
        for many). Held data is written by the next write, by :meth:`flush`, when
        it reaches HOLD_LIMIT, and always before the connection waits for input."""
        self._held.extend(parts)
        self._held_size += sum(map(len, parts))
        if self._held_size >= HOLD_LIMIT or len(self._held) >= _IOV_MAX:
            self.flush()

    def flush(self) -> None:
        """Write what :meth:`hold` kept back."""
        if self._held:
            self.writelines(())

    def writelines(self, parts: Sequence[bytes | memoryview]) -> None:
        """Write ``parts`` in order. On a plain TCP connection whose transport has
        nothing queued, they go out in gathering system calls (writev), so large
        message data is neither joined into one buffer nor sent one piece per call;
        whatever the socket does not take at once (and everything over TLS) goes
        through the transport as usual, behind it."""
        if self._held:
            parts = [*self._held, *parts]
            self._held, self._held_size = [], 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        start = 0
        sock = transport.get_extra_info("socket")
        if (_WRITEV and sock is not None and transport.get_extra_info("ssl_object") is None
                and not transport.get_write_buffer_size()):
            fd = sock.fileno()
            while start < len(parts):
                batch = parts[start:start + _IOV_MAX]
                try:
                    sent = os.writev(fd, batch)
                except OSError:  # would block, or a dead socket the transport will report
                    break
                if sent == sum(map(len, batch)):  # all of it: no need to look at each part
                    start += len(batch)
                    continue
                whole = 0
                for part in batch:
                    if sent < len(part):
                        break
                    sent -= len(part)
                    whole += 1
                start += whole
                if whole < len(batch):  # the socket is full for now
                    if sent:
                        transport.write(memoryview(parts[start])[sent:])
                        start += 1
                    break
        if start < len(parts):
            transport.write(b"".join(parts[start:]))

    async def drain(self) -> None:
        """Wait until the transport wants more (asyncio's flow control)."""
        if self._lost:
            raise ConnectionResetError("connection lost")
        if self._writing_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self._lost:
                raise ConnectionResetError("connection lost")

    async def send_line(self, text: str | bytes, *, record: bool = True) -> None:
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        if record and self.recorder is not None:
            self.recorder.server_line(raw.decode("utf-8", "replace"))
        self.write(raw + b"\r\n")
        await self.drain()

    # -- TLS --------------------------------------------------------------------
    async def starttls(self, context: ssl.SSLContext, handshake_timeout: float = 15.0, *,
                       server_hostname: str | None = None) -> None:
        """Upgrade to TLS after the "go ahead" reply has been written (a server), or
        read (a client: give ``server_hostname``; it records the TLS event itself,
        with what it verified).

        Whatever the peer sent after the STARTTLS command / the 220 reply is
        plaintext that must not be processed after the upgrade: it is discarded
        here, before the handshake starts. On failure the connection is closed and
        the error raised.
        """
        self.flush()
        await self.drain()
        dropped = len(self._buf)
        self._buf.clear()
        if dropped and self.recorder is not None:
            self.recorder.note(f"discarded {dropped} plaintext bytes sent before TLS started",
                               discarded=dropped)
        assert self.transport is not None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(self.transport, self, context,
                                       server_side=server_hostname is None,
                                       server_hostname=server_hostname,
                                       ssl_handshake_timeout=handshake_timeout)
        except BaseException:
            # The TLS layer never reached this protocol, so connection_lost() will
            # not come: close the socket here.
            self.transport.close()
            self.connection_lost(None)
            raise
        if new is None:  # the peer went away during the handshake
            self.connection_lost(None)
            raise ConnectionClosed()
        self.transport = new  # type: ignore[assignment]
        if server_hostname is None:
            self.record_tls()

    def record_tls(self) -> None:
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        info = tlsinfo.describe(ssl_object)
        if self.recorder is not None:
            self.recorder.tls(info["version"], info["cipher"], sni=info["sni"])

    async def close(self) -> None:
        self.flush()
        if self.transport is not None:
            self.transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), 2)
        except Exception:
            pass
