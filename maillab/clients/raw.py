"""A "telnet" client for the raw protocol cells (``%%smtp``, ``%%pop3``, ``%%imap``).

Lines are sent one at a time, exactly as typed (with CRLF), and the reply is read
until the protocol says it is complete. Each protocol knows when a reply is
complete (SMTP: a line ``NNN <text>``; POP3: one status line, or a dot-terminated
block after a multi-line command; IMAP: the tagged line), so it passes that rule
in as ``reply_complete(command, lines_so_far)``.

Every call has a timeout: a cell must never hang on a silent server.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from ..events import EventBus, SessionRecorder
from ..masking import mask_line

ReplyComplete = Callable[[str | None, list[str]], bool]


@dataclass
class Exchange:
    """One command and the reply it got (``command`` is None for the greeting)."""

    command: str | None
    reply: list[str] = field(default_factory=list)
    timed_out: bool = False


class RawSession:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str,
        reply_complete: ReplyComplete,
        events: EventBus | None = None,
        implicit_tls: bool = False,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.host, self.port = host, port
        self.reply_complete = reply_complete
        self.timeout = timeout
        self.protocol = protocol
        #: True while the lines sent answer a SASL challenge (they are masked whole).
        self.sasl = False
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname or host
        self.recorder: SessionRecorder | None = (
            events.session(protocol, "client", f"{host}:{port}", f"{host}:{port}") if events is not None else None
        )
        self.exchanges: list[Exchange] = []
        sock = socket.create_connection((host, port), timeout=timeout)
        if implicit_tls:
            sock = self._wrap(sock)
        self.sock: socket.socket = sock
        self._buf = b""

    def _wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        ctx = self.ssl_context or ssl.create_default_context()
        tls = ctx.wrap_socket(sock, server_hostname=self.server_hostname)
        if self.recorder:
            cipher = tls.cipher()
            self.recorder.tls(tls.version(), cipher[0] if cipher else None)
        return tls

    def starttls(self) -> None:
        """Upgrade after the server said yes to STARTTLS/STLS."""
        self._buf = b""
        self.sock = self._wrap(self.sock)

    def _readline(self) -> str:
        while b"\n" not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.rstrip(b"\r").decode("utf-8", "replace")

    def read_reply(self, command: str | None) -> Exchange:
        ex = Exchange(command)
        try:
            while True:
                line = self._readline()
                ex.reply.append(line)
                if self.recorder:
                    self.recorder.server_line(line)
                if self.reply_complete(command, ex.reply):
                    break
        except TimeoutError:
            ex.timed_out = True
            if self.recorder:
                self.recorder.note(f"no complete reply within {self.timeout} s")
        self.exchanges.append(ex)
        return ex

    def greeting(self) -> Exchange:
        return self.read_reply(None)

    def send_line(self, line: str) -> None:
        """Send one line without reading (lines inside SMTP DATA have no reply)."""
        if self.recorder:
            self.recorder.client_line(self.masked(line))
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def masked(self, line: str) -> str:
        """``line`` as the events may show it (:func:`maillab.masking.mask_line`)."""
        return mask_line(self.protocol, line, sasl=self.sasl)

    def command(self, line: str) -> Exchange:
        self.send_line(line)
        return self.read_reply(line)

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            if self.recorder:
                self.recorder.close()
