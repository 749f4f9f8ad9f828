"""A line-oriented connection for the hand-written servers (POP3, IMAP).

It owns the byte buffer, so limits are enforced before memory is spent: a line
longer than the limit is consumed and reported as too long, never stored whole.
It also owns the STARTTLS switch, where the classic bug lives: bytes a client
pipelines after ``STARTTLS`` arrive in plaintext and must be thrown away, never
read as if they had come over TLS (CVE-2011-0411 and its many descendants).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import Sequence

from . import tls as tlsinfo
from .events import SessionRecorder

#: Buffers one writev() call may take (POSIX IOV_MAX, 1024 on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16
_WRITEV = hasattr(os, "writev")


class LineTooLong(Exception):
    """A line exceeded the limit; its bytes up to the next LF have been discarded."""

    def __init__(self, length: int) -> None:
        super().__init__(f"line of {length}+ octets")
        self.length = length


class ConnectionClosed(Exception):
    pass


class LineConnection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        recorder: SessionRecorder,
        *,
        idle_timeout: float,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.recorder = recorder
        self.idle_timeout = idle_timeout
        self._buf = bytearray()
        self._eof = False
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"

    @property
    def tls_active(self) -> bool:
        return self.writer.get_extra_info("ssl_object") is not None

    async def _fill(self) -> None:
        if self._eof:
            raise ConnectionClosed()
        try:
            chunk = await asyncio.wait_for(self.reader.read(65536), self.idle_timeout)
        except asyncio.TimeoutError:
            raise TimeoutError("idle timeout") from None
        except (ConnectionError, ssl.SSLError) as exc:
            raise ConnectionClosed() from exc
        if not chunk:
            self._eof = True
            raise ConnectionClosed()
        self._buf += chunk

    def has_buffered_data(self) -> bool:
        return bool(self._buf)

    async def readline(self, limit: int) -> bytes:
        """One line including its line ending (CRLF or bare LF).

        Over ``limit`` octets: the rest of the line is read and thrown away and
        :class:`LineTooLong` raised, so the session can answer and go on.
        """
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                if nl + 1 > limit:
                    del self._buf[: nl + 1]
                    raise LineTooLong(nl + 1)
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                return line
            if len(self._buf) > limit:
                dropped = len(self._buf)
                self._buf.clear()
                await self._discard_to_eol()
                raise LineTooLong(dropped)
            start = len(self._buf)
            await self._fill()

    async def _discard_to_eol(self) -> None:
        while True:
            await self._fill()
            nl = self._buf.find(b"\n")
            if nl >= 0:
                del self._buf[: nl + 1]
                return
            self._buf.clear()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes (an IMAP literal)."""
        while len(self._buf) < n:
            await self._fill()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def writelines(self, parts: Sequence[bytes]) -> None:
        """Write ``parts`` in order. On a plain TCP connection whose transport has
        nothing queued, they go out in gathering system calls (writev), so large
        message data is neither joined into one buffer nor sent one piece per call;
        whatever the socket does not take at once (and everything over TLS) goes
        through the transport as usual, behind it."""
        transport = self.writer.transport
        start = 0
        sock = self.writer.get_extra_info("socket")
        if (_WRITEV and sock is not None and self.writer.get_extra_info("ssl_object") is None
                and not transport.get_write_buffer_size() and not transport.is_closing()):
            fd = sock.fileno()
            while start < len(parts):
                batch = parts[start:start + _IOV_MAX]
                try:
                    sent = os.writev(fd, batch)
                except OSError:  # would block, or a dead socket the transport will report
                    break
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
        await self.writer.drain()

    async def send_line(self, text: str | bytes, *, record: bool = True) -> None:
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        if record:
            self.recorder.server_line(raw.decode("utf-8", "replace"))
        self.writer.write(raw + b"\r\n")
        await self.writer.drain()

    async def starttls(self, context: ssl.SSLContext, handshake_timeout: float = 15.0) -> None:
        """Upgrade to TLS after the "go ahead" reply has been written.

        Whatever the client pipelined after its STARTTLS command is plaintext
        that must not be processed after the upgrade: it is discarded here, in
        our buffer and in the stream reader's, before the handshake starts.
        """
        await self.writer.drain()
        dropped = len(self._buf) + len(self.reader._buffer)  # noqa: SLF001 - see docstring
        self._buf.clear()
        self.reader._buffer.clear()  # noqa: SLF001
        if dropped:
            self.recorder.note(f"discarded {dropped} plaintext bytes sent before TLS started",
                               discarded=dropped)
        if sys.version_info >= (3, 11):
            await self.writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
        else:  # pragma: no cover - Python 3.10 has no StreamWriter.start_tls
            loop = asyncio.get_running_loop()
            transport = self.writer.transport
            protocol = transport.get_protocol()
            new = await loop.start_tls(transport, protocol, context, server_side=True,
                                       ssl_handshake_timeout=handshake_timeout)
            self.writer._transport = new  # noqa: SLF001
            protocol._transport = new  # noqa: SLF001
        self.record_tls()

    def record_tls(self) -> None:
        info = tlsinfo.describe(self.writer.get_extra_info("ssl_object"))
        self.recorder.tls(info["version"], info["cipher"])

    async def close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except Exception:
            pass
