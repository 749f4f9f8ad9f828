"""maillab's IMAP client: Python's imaplib, recording its side of the conversation.

Every line imaplib sends or receives goes into the lab's event stream as a
client-side session (``C:``/``S:`` like an RFC transcript); literals (message
bodies, APPEND data) are recorded compactly with their size. Each event carries
the number of octets it took on the wire (``data["bytes"]``), so a view can say
what a step cost. Passwords (LOGIN, AUTHENTICATE) are masked before they are
recorded. Every connection has a timeout so a notebook cell cannot hang.

    with connect(lab, "bob@alpha.test") as imap:      # STARTTLS with the lab CA, LOGIN
        imap.select("INBOX")
        typ, data = imap.fetch("1:*", "(UID ENVELOPE)")
        for item in parse_fetch(data):
            print(item["UID"], item["ENVELOPE"])

imaplib (as of Python 3.13) has no IDLE; :meth:`RecordingIMAP4.idle` adds RFC 2177
IDLE. :func:`parse_fetch` turns imaplib's raw FETCH data into Python values (the
response grammar of RFC 3501 section 9: atoms, numbers, strings, literals, NIL, lists).
"""

from __future__ import annotations

import imaplib
import re
import select
import socket
import ssl
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..events import Event, EventBus, SessionRecorder
from ..masking import MASK, mask_line
from ..tls import describe

if TYPE_CHECKING:
    from ..lab import Lab

DEFAULT_TIMEOUT = 10.0

_AUTH = re.compile(r"(?i)^(\S+) +AUTHENTICATE\b")
_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r?\n?$")


def mask_imap(line: str) -> str:
    """An IMAP command line with its credential replaced by ****."""
    return mask_line("imap", line)


class _Recording:
    """Overrides imaplib's socket I/O to record it (IMAP4 or IMAP4_SSL below).

    imaplib reads through a buffered file; we read the socket ourselves instead,
    so IDLE can wait with a timeout without breaking that buffer, and so bytes
    that arrive before a STARTTLS handshake can be discarded, never read as if
    they had come over TLS.
    """

    recorder: SessionRecorder | None
    sock: socket.socket
    host: str

    def _start_recording(self, events: EventBus | None, host: str, port: int,
                         server_hostname: str | None) -> None:
        self.recorder = events.session("imap", "client", f"{host}:{port}", f"{host}:{port}") if events is not None else None
        self.server_hostname = server_hostname or host
        self._rbuf = bytearray()
        self._out = bytearray()  # a command line being assembled from send() calls
        self._literal_left = 0  # octets of an outgoing literal still to come
        self._literal = bytearray()
        self._secret_literal = False
        self._auth_tag: str | None = None  # masks SASL lines until this tag completes

    # -- receiving ------------------------------------------------------------------
    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self._rbuf += chunk
        return True

    def readline(self) -> bytes:
        while True:
            i = self._rbuf.find(b"\n")
            if i >= 0:
                line = bytes(self._rbuf[: i + 1])
                del self._rbuf[: i + 1]
                break
            if len(self._rbuf) > imaplib._MAXLINE:
                raise imaplib.IMAP4.error(f"got more than {imaplib._MAXLINE} bytes in one line")
            if not self._fill():
                line = bytes(self._rbuf)
                self._rbuf.clear()
                break
        if self.recorder and line:
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            self.recorder.server_line(text, bytes=len(line))
            if self._auth_tag and text.startswith(self._auth_tag + " "):
                self._auth_tag = None
        return line

    def read(self, size: int) -> bytes:
        while len(self._rbuf) < size:
            if not self._fill():
                break
        data = bytes(self._rbuf[:size])
        del self._rbuf[:size]
        if self.recorder:
            self.recorder.payload("S", data)
        return data

    # -- sending ---------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if self.recorder:
            self._record_sent(data)
        self.sock.sendall(data)

    def _record_sent(self, data: bytes) -> None:
        assert self.recorder is not None
        pos = 0
        while pos < len(data):
            if self._literal_left:
                take = data[pos:pos + self._literal_left]
                self._literal += take
                self._literal_left -= len(take)
                pos += len(take)
                if not self._literal_left:
                    if self._secret_literal:
                        self.recorder.client_line(MASK, bytes=len(self._literal), payload=True)
                    else:
                        self.recorder.payload("C", bytes(self._literal))
                    self._literal.clear()
                    self._secret_literal = False
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._out += data[pos:]
                return
            self._out += data[pos:end + 1]
            pos = end + 1
            line = bytes(self._out)
            self._out.clear()
            text = line.rstrip(b"\r\n").decode("utf-8", "replace")
            if not text:
                continue  # the CRLF that ends a command after its last literal
            m = _AUTH.match(text)
            if self._auth_tag is not None:
                shown = MASK  # a SASL response (RFC 3501 6.2.2): it carries the password
            else:
                shown = mask_imap(text)
                if m:
                    self._auth_tag = m.group(1)
            self.recorder.client_line(shown, bytes=len(line))
            lit = _LITERAL_AT_END.search(line)
            if lit:
                self._literal_left = int(lit.group(1))
                self._secret_literal = bool(shown != text or self._auth_tag)

    # -- TLS, login, life cycle --------------------------------------------------------
    def _record_tls(self) -> None:
        if self.recorder:
            info = describe(self.sock)  # type: ignore[arg-type]
            self.recorder.tls(info["version"], info["cipher"], server_hostname=self.server_hostname)

    def starttls(self, ssl_context: ssl.SSLContext | None = None) -> tuple[str, list[Any]]:
        """RFC 3501 6.2.1 STARTTLS, verifying the server against ``ssl_context``."""
        if self._tls_established:  # type: ignore[attr-defined]
            raise imaplib.IMAP4.abort("TLS session already established")
        typ, dat = self._simple_command("STARTTLS")  # type: ignore[attr-defined]
        if typ != "OK":
            raise imaplib.IMAP4.error(f"STARTTLS refused: {dat!r}")
        if self._rbuf:
            # Anything after the OK was sent in plaintext by someone: never treat it
            # as part of the protected session (the STARTTLS command injection attacks).
            if self.recorder:
                self.recorder.note(f"discarded {len(self._rbuf)} bytes received before TLS")
            self._rbuf.clear()
        ctx = ssl_context or ssl.create_default_context()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_hostname)
        self.file = self.sock.makefile("rb")
        self._tls_established = True
        self._record_tls()
        self._get_capabilities()  # type: ignore[attr-defined]  # RFC 3501: ask again after TLS
        return self._untagged_response(typ, dat, "STARTTLS")  # type: ignore[attr-defined,no-any-return]

    def login(self, user: str, password: str) -> tuple[str, list[Any]]:
        try:
            result = super().login(user, password)  # type: ignore[misc]
        except imaplib.IMAP4.error:
            if self.recorder:
                self.recorder.auth(user, False, "LOGIN")
            raise
        if self.recorder:
            self.recorder.auth(user, True, "LOGIN")
        return result  # type: ignore[no-any-return]

    def authenticate_plain(self, user: str, password: str) -> tuple[str, list[Any]]:
        """AUTHENTICATE PLAIN (RFC 4616) through imaplib's continuation handling."""
        token = f"\0{user}\0{password}".encode()
        try:
            result = self.authenticate("PLAIN", lambda _challenge: token)  # type: ignore[attr-defined]
        except imaplib.IMAP4.error:
            if self.recorder:
                self.recorder.auth(user, False, "PLAIN")
            raise
        if self.recorder:
            self.recorder.auth(user, True, "PLAIN")
        return result  # type: ignore[no-any-return]

    def idle(self, timeout: float = 5.0, stop_on: Iterable[bytes] = (b"EXISTS", b"EXPUNGE", b"FETCH")
             ) -> list[bytes]:
        """RFC 2177 IDLE: wait up to ``timeout`` s for an untagged update, then DONE.

        Returns the untagged lines the server sent while idling (e.g. ``* 4 EXISTS``).
        """
        stop = tuple(stop_on)
        tag = self._new_tag()  # type: ignore[attr-defined]
        self.send(tag + b" IDLE\r\n")
        first = self.readline()
        if not first.startswith(b"+"):
            raise imaplib.IMAP4.error(f"IDLE refused: {first!r}")
        seen: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"\n" not in self._rbuf and not self._readable(deadline - time.monotonic()):
                break
            line = self.readline().rstrip(b"\r\n")
            if not line:
                raise imaplib.IMAP4.abort("server closed the connection during IDLE")
            seen.append(line)
            if any(word in line for word in stop):
                break
        self.send(b"DONE\r\n")
        while True:
            line = self.readline().rstrip(b"\r\n")
            if not line:
                raise imaplib.IMAP4.abort("server closed the connection after DONE")
            if line.startswith(tag + b" "):
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise imaplib.IMAP4.error(line.decode("utf-8", "replace"))
                return seen
            seen.append(line)

    def _readable(self, wait: float) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        ready, _, _ = select.select([self.sock], [], [], max(0.0, wait))
        return bool(ready)

    def events(self) -> list[Event]:
        """This session's events, in order."""
        if not self.recorder:
            return []
        return self.recorder.bus.events(session=self.recorder.session)

    def wire_bytes(self, since: int = 0) -> tuple[int, int]:
        """Octets (sent, received) of IMAP data in this session after event ``since``."""
        sent = received = 0
        for ev in self.events():
            if ev.seq <= since or not ev.is_line:
                continue
            n = int(ev.data.get("bytes", 0))
            if ev.kind == "C":
                sent += n
            else:
                received += n
        return sent, received

    def last_seq(self) -> int:
        evs = self.events()
        return evs[-1].seq if evs else 0

    def shutdown(self) -> None:
        try:
            super().shutdown()  # type: ignore[misc]
        finally:
            if self.recorder:
                self.recorder.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.state != "LOGOUT":  # type: ignore[attr-defined]
                self.logout()  # type: ignore[attr-defined]
        except (OSError, imaplib.IMAP4.error):
            self.shutdown()


class RecordingIMAP4(_Recording, imaplib.IMAP4):
    """imaplib.IMAP4 that records into ``events`` (port 143, STARTTLS available)."""

    def __init__(self, host: str, port: int = 143, *, events: EventBus | None = None,
                 timeout: float = DEFAULT_TIMEOUT, server_hostname: str | None = None) -> None:
        self._start_recording(events, host, port, server_hostname)
        try:
            super().__init__(host, port, timeout=timeout)
        except BaseException:
            if self.recorder:
                self.recorder.close("connect failed")
            raise


class RecordingIMAP4_SSL(_Recording, imaplib.IMAP4_SSL):  # noqa: N801 - mirrors imaplib.IMAP4_SSL
    """imaplib.IMAP4_SSL (implicit TLS, port 993) that records into ``events``."""

    def __init__(self, host: str, port: int = 993, *, events: EventBus | None = None,
                 ssl_context: ssl.SSLContext | None = None, timeout: float = DEFAULT_TIMEOUT,
                 server_hostname: str | None = None) -> None:
        self._start_recording(events, host, port, server_hostname)
        try:
            super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)
        except BaseException:
            if self.recorder:
                self.recorder.close("connect failed")
            raise

    def _create_socket(self, timeout: float | None) -> ssl.SSLSocket:
        sock = imaplib.IMAP4._create_socket(self, timeout)
        tls = self.ssl_context.wrap_socket(sock, server_hostname=self.server_hostname)
        self.sock = tls
        self._record_tls()
        return tls


def connect(lab: Lab, user: str, *, tls: str = "starttls", host: str | None = None,
            login: bool = True, timeout: float = DEFAULT_TIMEOUT,
            ) -> RecordingIMAP4 | RecordingIMAP4_SSL:
    """A recording imaplib session to ``lab``'s IMAP server, logged in as ``user``.

    ``tls``: "starttls" (port 143 -> lab 1143, upgraded before LOGIN), "implicit"
    (993 -> lab 1993) or "none" (plaintext; only for showing what an eavesdropper sees).
    ``host``: the lab host to connect to; by default the user's own (carol's is
    mx1.beta.test: no other host knows her login).
    """
    service = "imaps" if tls == "implicit" else "imap"
    svc = lab.service(service, host or lab.home_host(user))  # where the user's login exists
    ctx = lab.ca.client_context() if lab.ca else None
    client: RecordingIMAP4 | RecordingIMAP4_SSL
    if tls == "implicit":
        client = RecordingIMAP4_SSL(svc.address, svc.port, events=lab.events, ssl_context=ctx,
                                    timeout=timeout, server_hostname=svc.hostname)
    else:
        client = RecordingIMAP4(svc.address, svc.port, events=lab.events, timeout=timeout,
                                server_hostname=svc.hostname)
        if tls == "starttls":
            client.starttls(ctx)
        elif tls != "none":
            raise ValueError(f"tls must be 'starttls', 'implicit' or 'none', not {tls!r}")
    if login:
        address = lab.users.resolve(user) or user
        client.login(address, lab.users.password(address))
    return client


# -- reading responses (RFC 3501 section 9, the response side) -------------------------

class ResponseSyntaxError(ValueError):
    pass


_TOKEN = re.compile(rb'\s*(?:(\()|(\))|(NIL)(?=[\s()\]]|$)|("(?:[^"\\]|\\.)*")|(\{\d+\})|([^\s()"{]+))',
                    re.IGNORECASE)


def _tokens(data: list[Any]) -> list[Any]:
    """imaplib's pieces of a response -> tokens; literals arrive already separated."""
    out: list[Any] = []
    for piece in data:
        if isinstance(piece, tuple):
            head, literal = piece
            head = head.rstrip()
            m = _LITERAL_AT_END.search(head)
            if m:
                head = head[: m.start()]
            out.extend(_scan(head))
            out.append(("lit", literal))
        elif isinstance(piece, bytes):
            out.extend(_scan(piece))
        elif piece is None:
            continue
    return out


def _scan(text: bytes) -> list[Any]:
    out: list[Any] = []
    pos = 0
    n = len(text)
    while pos < n:
        if text[pos:pos + 1].isspace():
            pos += 1
            continue
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ResponseSyntaxError(f"cannot read {text[pos:pos + 40]!r}")
        opn, cls, nil, quoted, _lit, atom = m.groups()
        if opn:
            out.append("(")
        elif cls:
            out.append(")")
        elif nil:
            out.append(("nil", None))
        elif quoted:
            raw = quoted[1:-1]
            out.append(("str", re.sub(rb"\\(.)", rb"\1", raw)))
        elif atom:
            # BODY[HEADER.FIELDS (SUBJECT)]<0>: a section spec holds spaces and parens.
            if b"[" in atom and b"]" not in atom:
                close = text.find(b"]", m.end())
                end = close + 1
                if text[end:end + 1] == b"<":
                    end = text.find(b">", end) + 1
                if close < 0 or end <= close:
                    raise ResponseSyntaxError(f"unclosed section in {atom[:40]!r}")
                atom = text[m.start(6):end]
                pos = end
                out.append(("atom", atom))
                continue
            out.append(("atom", atom))
        pos = m.end()
    return out


#: Parentheses a response may nest (a BODYSTRUCTURE of the lab's 100 multipart levels
#: needs about 100; the cap keeps a hostile server from exhausting the stack).
MAX_RESPONSE_DEPTH = 400


def _number(value: bytes) -> bool:
    # ASCII digits only ("²" is isdigit() too), and no longer than a 64-bit number
    return value.isascii() and value.isdigit() and len(value) <= 20


def _tree(tokens: list[Any], i: int, depth: int = 0) -> tuple[Any, int]:
    if i >= len(tokens):
        raise ResponseSyntaxError("the response ends too soon")
    tok = tokens[i]
    if tok == "(":
        if depth >= MAX_RESPONSE_DEPTH:
            raise ResponseSyntaxError(f"parentheses nested over {MAX_RESPONSE_DEPTH} deep")
        items = []
        i += 1
        while i < len(tokens) and tokens[i] != ")":
            item, i = _tree(tokens, i, depth + 1)
            items.append(item)
        if i >= len(tokens):
            raise ResponseSyntaxError("unbalanced (")
        return items, i + 1
    if tok == ")":
        raise ResponseSyntaxError("unbalanced )")
    kind, value = tok
    if kind == "atom" and _number(value):
        return int(value), i + 1
    if kind == "atom":
        return value.decode("utf-8", "replace"), i + 1
    return value, i + 1  # strings and literals stay bytes; NIL is None


def parse_fetch(data: list[Any]) -> list[dict[str, Any]]:
    """imaplib's FETCH data -> one dict per message: {"SEQ": n, "UID": ..., "ENVELOPE": [...], ...}.

    Attribute names are upper-cased; strings and literals stay bytes (they may be
    message data); numbers become int; NIL becomes None; lists become lists.
    """
    tokens = _tokens(data)
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok == "(" or not (isinstance(tok, tuple) and tok[0] == "atom" and _number(tok[1])):
            raise ResponseSyntaxError(f"expected a message number, got {tok!r}")
        seq = int(tok[1])
        i += 1
        if i < len(tokens) and tokens[i] == ("atom", b"FETCH"):
            i += 1  # from a raw "* n FETCH (...)" line
        items, i = _tree(tokens, i)
        if not isinstance(items, list):
            raise ResponseSyntaxError(f"expected the attributes of message {seq} in parentheses")
        record: dict[str, Any] = {"SEQ": seq}
        for k in range(0, len(items) - 1, 2):
            record[str(items[k]).upper()] = items[k + 1]
        out.append(record)
    return out


def parse_list_line(line: bytes) -> tuple[list[str], str | None, str]:
    """One LIST/LSUB reply ``(\\HasNoChildren \\Sent) "/" Sent`` -> (attributes, delimiter, name)."""
    tokens = _scan(line)
    attrs, i = _tree(tokens, 0)
    delim, i = _tree(tokens, i)
    name, i = _tree(tokens, i)
    if not isinstance(attrs, list) or isinstance(name, list) or isinstance(delim, list):
        raise ResponseSyntaxError(f"not a LIST reply: {line[:80]!r}")
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return ([str(a) for a in attrs], delim.decode("utf-8", "replace") if isinstance(delim, bytes) else delim,
            str(name))
