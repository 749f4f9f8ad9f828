"""The one raw test client: bytes out exactly as given, lines in, every read with a
timeout. The server tests use it where smtplib, poplib or imaplib would hide what
goes over the wire (pipelining, bare LF, literals, hostile input).

:class:`Wire` holds the connection (plain or TLS, its buffer, "has the server
closed?"); each protocol adds only how a reply ends: :class:`SMTPWire` (a line
whose fourth character is not "-", RFC 5321 4.2.1), :class:`POP3Wire` (one line,
or a dot-terminated block, RFC 1939 3), :class:`IMAPWire` (the tagged line, with
literals read by octet count, RFC 3501 7.5).
"""

from __future__ import annotations

import re
import socket
import ssl

from maillab import Lab


class Closed(ConnectionError, EOFError):
    """The server closed the connection while a reply was awaited."""


class Wire:
    def __init__(self, address: tuple[str, int], *, tls: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 5.0, source: str | None = None) -> None:
        self.sock: socket.socket = socket.create_connection(
            address, timeout=timeout, source_address=(source, 0) if source else None)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname or address[0])
        self.buf = b""

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Closed(f"closed by the server; unread: {self.buf!r}")
        self.buf += chunk

    def raw_line(self) -> bytes:
        """The next line with its CRLF."""
        while b"\r\n" not in self.buf:
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def line(self) -> bytes:
        """The next line without its CRLF."""
        return self.raw_line()[:-2]

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def wrap(self, ctx: ssl.SSLContext, hostname: str) -> None:
        """Start TLS on the connection (after the server said yes to STARTTLS/STLS)."""
        self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname)

    def closed(self, timeout: float | None = None) -> bool:
        """True when the server closes the connection (EOF or reset) within ``timeout``
        (default: the connection's timeout); what it sent first stays in the buffer."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf += data
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class SMTPWire(Wire):
    """``Wire(address)`` for SMTP: read the greeting yourself with :meth:`reply`."""

    def __init__(self, address: tuple[str, int], *, tls: ssl.SSLContext | None = None,
                 server_hostname: str = "mail.alpha.test", timeout: float = 5, source: str | None = None) -> None:
        super().__init__(address, tls=tls, server_hostname=server_hostname, timeout=timeout, source=source)

    def reply(self) -> tuple[int, str]:
        """The next complete reply: its code and its text lines joined by newlines."""
        lines = []
        while True:
            line = self.line().decode()
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), "\n".join(lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send(line + ("\r\n" if isinstance(line, str) else b"\r\n"))
        return self.reply()

    def starttls(self, ctx: ssl.SSLContext, hostname: str = "mail.alpha.test") -> None:
        assert self.cmd("STARTTLS")[0] == 220
        self.wrap(ctx, hostname)

    def closed(self, timeout: float | None = 3) -> bool:
        return super().closed(timeout)


class POP3Wire(Wire):
    """A POP3 connection to a lab service; the greeting is in ``greeting``."""

    def __init__(self, lab: Lab, service: str = "pop3") -> None:
        super().__init__(lab.address(service), timeout=5)
        self.greeting = self.line()

    def cmd(self, data: bytes) -> bytes:
        """Send a command, return the status line."""
        self.send(data + b"\r\n")
        return self.line()

    def multiline(self) -> list[bytes]:
        """The rest of a multi-line response, up to the terminating "."."""
        out = []
        while (ln := self.line()) != b".":
            out.append(ln)
        return out

    def login(self) -> None:
        assert self.cmd(b"USER bob").startswith(b"+OK")
        assert self.cmd(b"PASS bob-pw").startswith(b"+OK")


_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class IMAPWire(Wire):
    """``IMAPWire(host, port)``; the greeting is in ``greeting``. Lines keep their CRLF."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 5.0) -> None:
        super().__init__((host, port), tls=context, server_hostname=server_hostname, timeout=timeout)
        self.greeting = self.readline()

    def readline(self) -> bytes:
        """One response line with any literals it announces appended (CRLF kept)."""
        out = self.raw_line()
        m = _LITERAL.search(out)
        if m:
            out += self.read_exact(int(m.group(1)))
            out += self.readline()
        return out

    def until_tagged(self, tag: str) -> list[bytes]:
        lines = []
        while True:
            ln = self.readline()
            lines.append(ln)
            if ln.startswith(tag.encode() + b" "):
                return lines

    def cmd(self, tag: str, text: str | bytes) -> list[bytes]:
        raw = text.encode() if isinstance(text, str) else text
        self.send(tag.encode() + b" " + raw + b"\r\n")
        return self.until_tagged(tag)

    def login(self, user: str, password: str) -> None:
        lines = self.cmd("L", f'LOGIN "{user}" "{password}"')
        assert lines[-1].startswith(b"L OK"), lines
