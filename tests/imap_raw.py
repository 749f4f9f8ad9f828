"""A raw IMAP test client: bytes in, lines out, every read with a timeout.

The server tests use it where imaplib would hide what goes over the wire
(literals, pipelining, hostile input).
"""

from __future__ import annotations

import re
import socket
import ssl

_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")


class RawIMAP:
    def __init__(self, host: str, port: int, *, context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, timeout: float = 5.0) -> None:
        sock = socket.create_connection((host, port), timeout=timeout)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname=server_hostname or host)
        self.sock = sock
        self.buf = b""
        self.greeting = self.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        """One response line with any literals it announces appended (CRLF kept)."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; buffered {self.buf!r}")
            self.buf += chunk
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        m = _LITERAL.search(out)
        if m:
            n = int(m.group(1))
            while len(self.buf) < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed inside a literal")
                self.buf += chunk
            out += self.buf[:n]
            self.buf = self.buf[n:]
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

    def closed(self) -> bool:
        """True when the server has closed the connection (EOF within the timeout)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
