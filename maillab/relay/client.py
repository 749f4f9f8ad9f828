"""The relay's SMTP client: how one lab host hands a message to the next.

It speaks the client half of RFC 5321 on the lab loop: greeting, EHLO (HELO if
EHLO is refused), STARTTLS whenever the server offers it (RFC 3207), verifying
the lab CA and the MX host's name, then MAIL, RCPT for each recipient, DATA,
QUIT. Its outgoing socket is bound to the sending host's own loopback address,
so the next hop's ``Received: from`` line names the real sender.

Two classic mistakes it avoids:

* bytes a server sends after ``220 ready to start TLS`` arrived in plaintext and
  are thrown away before the handshake (the STARTTLS injection bugs);
* the message is sent with every line ending as CRLF and lines starting with "."
  doubled (dot-stuffing, RFC 5321 4.5.2), so a stray LF or CR can never end the
  DATA early at the next hop (SMTP smuggling).

Every line sent and received is recorded as a client-side session (protocol
"smtp", side "client", host = the sending host), so the transcript shows the hop:
one transcript per message and hop, also when the message goes over a session
kept open from the previous message (:class:`Connection`; it then starts with a
note naming the transcript that opened the connection, and ``RSET``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import tls as tlsinfo
from ..connection import ConnectionClosed, LineConnection, LineTooLong
from . import diagnosis
from .message import NO_STARTTLS, SESSION_FAILED, TLS_FAILED, UNREACHABLE

if TYPE_CHECKING:
    from ..events import EventBus

#: RFC 5321 4.5.3.1.5: a reply line is at most 512 octets; we are lenient but bounded.
MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 100
#: Messages sent over one connection before it is closed anyway, so one session (and
#: its transcript on the receiving side) does not grow without end.
REUSE_LIMIT = 100


# -- the sans-IO part: replies and message encoding ------------------------------------


@dataclass
class Reply:
    code: int
    lines: list[str]  # the text of each line, without "250-"

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    @property
    def status(self) -> str:
        """The enhanced status code (RFC 3463) at the start of the text, if any."""
        first = self.lines[0].split(" ", 1)[0] if self.lines and self.lines[0] else ""
        parts = first.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and first[0] == str(self.code)[0]:
            return first
        return f"{str(self.code)[0]}.0.0"

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class ReplyParser:
    """Feed reply lines, get a :class:`Reply` when the last line (``NNN text``) arrives."""

    def __init__(self) -> None:
        self._code: int | None = None
        self._lines: list[str] = []

    def feed(self, line: str) -> Reply | None:
        line = line.rstrip("\r\n")
        # ASCII digits only: "²50" is isdigit() too, and int() refuses it
        if len(line) < 3 or not (line[:3].isascii() and line[:3].isdigit()) or (len(line) > 3 and line[3] not in " -"):
            raise ProtocolError(f"not an SMTP reply line: {line[:80]!r}")
        code = int(line[:3])
        if self._code is not None and code != self._code:
            raise ProtocolError(f"reply code changed inside a multi-line reply: {line[:80]!r}")
        self._code = code
        self._lines.append(line[4:])
        if len(self._lines) > MAX_REPLY_LINES:
            raise ProtocolError("reply has too many lines")
        if len(line) == 3 or line[3] == " ":
            reply = Reply(code, self._lines)
            self._code, self._lines = None, []
            return reply
        return None


def encode_data(data: bytes) -> bytes:
    """The message as it goes after ``354``: CRLF line endings, dot-stuffed, ending
    ``CRLF . CRLF``. Bare CR or LF become CRLF: nothing stray reaches the next hop."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = bytearray()
    for line in lines:
        if line.startswith(b"."):
            out += b"."
        out += line + b"\r\n"
    out += b".\r\n"
    return bytes(out)


def ehlo_extensions(reply: Reply) -> dict[str, str]:
    """``250-SIZE 1000`` lines -> {"SIZE": "1000", ...} (the first line is the greeting)."""
    ext = {}
    for line in reply.lines[1:]:
        keyword, _, params = line.partition(" ")
        ext[keyword.upper()] = params
    return ext


class ProtocolError(Exception):
    pass


# -- results -----------------------------------------------------------------------------


@dataclass
class Delivery:
    """What one SMTP session with one MX address came to."""

    host: str
    address: str
    port: int
    connected: bool = False
    # the last command sent (or "greeting" while waiting for it, "end of DATA" after the
    # text): connect, greeting, EHLO, HELO, STARTTLS, RSET, MAIL, RCPT, DATA, end of DATA, QUIT
    stage: str = "connect"
    session_failure: Reply | None = None  # the greeting, EHLO, HELO or STARTTLS refused: try the next MX
    error: str = ""  # text for failures that had no SMTP reply (refused, timeout, TLS)
    mail_reply: Reply | None = None
    rcpt_replies: dict[str, Reply] = field(default_factory=dict)  # final per-recipient outcome
    data_go: Reply | None = None  # the reply to DATA itself (354, or a refusal)
    data_reply: Reply | None = None  # the reply to the end of the text
    tls: bool = False
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_verified: str | None = None  # how the next hop was authenticated: "lab CA", "DANE", or None
    starttls_offered: bool | None = None  # did the EHLO reply offer STARTTLS (None: no EHLO seen)
    tls_failure: str | None = None  # NO_STARTTLS / TLS_FAILED: why the session ended at TLS
    protocol: str = "ESMTP"  # ESMTP / ESMTPS (RFC 3848), as the next hop writes it
    session: str | None = None  # the client-side session id in the event stream
    duration: float = 0.0
    reused_from: str | None = None  # a cached connection: the session id that opened it
    kept: Connection | None = field(default=None, repr=False)  # left open for the next message

    @property
    def try_next_mx(self) -> bool:
        """Nothing was said about the recipients: the next MX may be tried."""
        return self.mail_reply is None and not self.rcpt_replies

    @property
    def failure(self) -> str:
        """How far a session that carried no transaction got (``message.NEXT_MX``): a host
        that answered is not "unreachable", whatever ended the session."""
        if self.tls_failure:
            return self.tls_failure
        return SESSION_FAILED if self.connected else UNREACHABLE


# -- the asyncio driver ------------------------------------------------------------------


class _Session:
    def __init__(self, conn: LineConnection, rec, timeout: float) -> None:
        self.conn = conn  # the lab's one line connection (limits, STARTTLS discard)
        self.rec = rec
        self.timeout = timeout

    async def reply(self) -> Reply:
        parser = ReplyParser()
        while True:
            try:
                raw = await self.conn.readline(MAX_REPLY_LINE)
            except LineTooLong:
                raise ProtocolError("reply line too long") from None
            except ConnectionClosed:
                raise ConnectionError("connection closed by the server") from None
            except TimeoutError:
                raise asyncio.TimeoutError() from None  # what the callers catch (also on 3.10)
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.rec.server_line(text)
            reply = parser.feed(text)
            if reply is not None:
                return reply

    async def send(self, lines: list[str]) -> None:
        """Write ``lines`` at once, without waiting for replies (PIPELINING)."""
        for line in lines:
            self.rec.client_line(line)
        self.conn.write("".join(line + "\r\n" for line in lines).encode("utf-8"))
        await self.conn.drain()

    async def command(self, line: str) -> Reply:
        self.rec.client_line(line)
        self.conn.write(line.encode("utf-8") + b"\r\n")
        await self.conn.drain()
        return await self.reply()


@dataclass
class Connection:
    """An SMTP session past EHLO (and STARTTLS), between two mail transactions.

    An MTA with more mail for the same host sends it over the session it already
    has instead of connecting, greeting and negotiating TLS again (Postfix's
    connection cache). Each message still gets a transcript of its own; the
    connection remembers which transcript opened it.
    """

    host: str
    address: str
    port: int
    session: _Session
    extensions: dict[str, str]
    tls: bool
    tls_version: str | None
    protocol: str
    opened_in: str  # the client session id whose transcript shows connect, EHLO, STARTTLS
    opened: float = field(default_factory=time.monotonic)
    transactions: int = 0

    async def quit(self) -> None:
        await _quit(self.session)
        await self.session.conn.close()


async def deliver(
    events: EventBus,
    *,
    helo_name: str,
    source_address: str | None,
    host: str,
    address: str,
    port: int,
    mail_from: str,
    rcpts: list[str],
    data: bytes,
    tls_context: ssl.SSLContext | None,
    connect_timeout: float = 5.0,
    reply_timeout: float = 60.0,
    queue_id: str = "",
    require_tls: bool = False,
    tlsa: list[tuple[int, int, int, str]] | None = None,
    connection: Connection | None = None,
    keep_open: Callable[[], bool] | None = None,
) -> Delivery:
    """One mail transaction from ``helo_name`` to the MX ``host`` at ``address:port``:
    over ``connection`` if one is given and still answers RSET, else over a new session.

    When the transaction is over and ``keep_open()`` says more mail waits for this
    host, the session is not ended with QUIT but left in ``Delivery.kept`` for the
    next message. Never raises for anything the network or the server does: the
    outcome is in the returned :class:`Delivery`.

    ``tlsa``: DANE (RFC 7672): the server's certificate must match one of these
    TLSA records (checked after the handshake; a mismatch ends the session).
    """
    result = Delivery(host, address, port)
    started = time.perf_counter()
    extra = {"reuses": connection.opened_in} if connection is not None else {}
    rec = events.session("smtp", "client", helo_name, f"{address}:{port}", mx=host, relay=queue_id, **extra)
    result.session = rec.session
    conn: Connection | None = None
    try:
        clean = False
        if connection is not None:
            conn = _adopt(connection, rec, result)
            try:
                clean = await _transaction(conn.session, result, conn.extensions, mail_from, rcpts, data,
                                           reset=True)
            except _Stale as exc:
                rec.note(f"the cached connection no longer works ({exc}): opening a new one")
                await conn.session.conn.close()
                conn = None
                result.connected, result.reused_from, result.tls, result.tls_version = False, None, False, None
                result.protocol = "ESMTP"
        if conn is None:
            conn = await _open(rec, result, helo_name=helo_name, source_address=source_address,
                               tls_context=tls_context, require_tls=require_tls, tlsa=tlsa,
                               connect_timeout=connect_timeout, reply_timeout=reply_timeout)
            if conn is None:
                return result
            clean = await _transaction(conn.session, result, conn.extensions, mail_from, rcpts, data)
        conn.transactions += 1
        if clean and keep_open is not None and conn.transactions < REUSE_LIMIT and keep_open():
            rec.note(f"more mail waits for {host}: the connection stays open for it (connection cache)",
                     kept=True)
            result.kept = conn
        else:
            if result.data_reply is not None:
                result.stage = "QUIT"
            await _quit(conn.session)
        return result
    except asyncio.TimeoutError:
        result.error = diagnosis.timed_out(host, address, result.stage, reply_timeout)
        rec.note(result.error)
        return result
    except (ConnectionError, ProtocolError, ssl.SSLError, OSError) as exc:
        result.error = f"{diagnosis.lost(host, address, result.stage)} ({exc})"
        rec.note(result.error)
        return result
    finally:
        result.duration = time.perf_counter() - started
        if conn is not None and result.kept is None:
            await conn.session.conn.close()
        rec.close(result.error or ("connection kept open" if result.kept else ""))


class _Stale(Exception):
    """A cached connection did not answer RSET with 250: nothing was delivered over it."""


def _adopt(conn: Connection, rec: Any, result: Delivery) -> Connection:
    """Take over a cached session for this message's transcript. Whether it still
    works shows in the reply to the RSET that starts the transaction."""
    conn.session.rec = rec
    tls = f"TLS {conn.tls_version}" if conn.tls else "no TLS"
    rec.note(f"reusing the open connection to {conn.host} [{conn.address}]:{conn.port} ({conn.protocol}, {tls})"
             f" opened in session {conn.opened_in}: message {conn.transactions + 1} on it", reused_from=conn.opened_in)
    result.connected, result.reused_from = True, conn.opened_in
    result.tls, result.tls_version, result.protocol = conn.tls, conn.tls_version, conn.protocol
    return conn


async def _open(rec: Any, result: Delivery, *, helo_name: str, source_address: str | None,
                tls_context: ssl.SSLContext | None, require_tls: bool, connect_timeout: float,
                reply_timeout: float, tlsa: list[tuple[int, int, int, str]] | None = None) -> Connection | None:
    """Connect, read the greeting, EHLO, STARTTLS when offered. None (with the reason in
    ``result``) when the session cannot carry mail: the next MX may be tried."""
    host, address, port = result.host, result.address, result.port
    local = (source_address, 0) if source_address else None
    try:
        _transport, conn = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: LineConnection(idle_timeout=reply_timeout), address, port, local_addr=local),
            connect_timeout)
    except asyncio.TimeoutError:
        result.error = f"connect to {host}[{address}]:{port}: timed out"
        return None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)  # "Connection refused", as Postfix says
        result.error = f"connect to {host}[{address}]:{port}: {reason}"
        return None
    result.connected = True
    conn.recorder = rec
    s = _Session(conn, rec, reply_timeout)
    opened = False
    try:
        result.stage = "greeting"
        greeting = await s.reply()
        if greeting.code != 220:
            result.session_failure = greeting
            await _quit(s)
            return None
        result.stage = "EHLO"
        ehlo = await s.command(f"EHLO {helo_name}")
        extensions: dict[str, str] = {}
        if ehlo.code == 250:
            extensions = ehlo_extensions(ehlo)
        else:
            result.stage = "HELO"
            helo = await s.command(f"HELO {helo_name}")
            if helo.code != 250:
                result.session_failure = helo
                await _quit(s)
                return None
            result.protocol = "SMTP"
        result.starttls_offered = "STARTTLS" in extensions
        if require_tls and ("STARTTLS" not in extensions or tls_context is None):
            # RFC 3207 4.1 / RFC 8689: a client that requires TLS must not go on in plaintext.
            result.error = (f"{host}[{address}] does not offer STARTTLS, and this relay requires TLS (its"
                            " reply to EHLO listed no STARTTLS)")
            result.tls_failure = NO_STARTTLS
            rec.note(result.error)
            await _quit(s)
            return None
        if "STARTTLS" in extensions and tls_context is not None:
            result.stage = "STARTTLS"
            go = await s.command("STARTTLS")
            if go.code == 220:
                try:
                    # discards what the server sent after 220 (see the module docstring)
                    await conn.starttls(tls_context, connect_timeout, server_hostname=host)
                except (ssl.SSLError, ssl.CertificateError, OSError, asyncio.TimeoutError,
                        ConnectionClosed) as exc:
                    # A failed handshake leaves the session unusable; the next MX may do better.
                    verify = getattr(exc, "verify_message", None)  # ssl's own words, not "(_ssl.c:1006)"
                    why = f"certificate verify failed: {verify}" if verify else (str(exc) or exc.__class__.__name__)
                    result.error = f"TLS handshake with {host}[{address}] failed after its 220 reply to STARTTLS: {why}"
                    result.tls_failure = TLS_FAILED
                    rec.note(result.error)
                    return None
                ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
                info = tlsinfo.describe(ssl_object)
                verified = "lab CA" if tls_context.verify_mode == ssl.CERT_REQUIRED else None
                if tlsa:
                    from .tlspolicy import tlsa_matches

                    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
                    if not der or not tlsa_matches(der, tlsa):
                        # RFC 7672 2.2: with usable TLSA records, a server that fails to
                        # authenticate gets no mail at all.
                        result.error = (f"DANE: the certificate of {host}[{address}] (TLS handshake after"
                                        f" STARTTLS) matches none of its {len(tlsa)} TLSA record(s)")
                        result.tls_failure = TLS_FAILED
                        rec.note(result.error)
                        await _quit(s)
                        return None
                    verified = "DANE"
                rec.tls(info["version"], info["cipher"], peer_cert=host, verified=bool(verified),
                        authenticated_by=verified)
                result.tls, result.tls_version = True, info["version"]
                result.tls_cipher, result.tls_verified = info["cipher"], verified
                result.protocol = "ESMTPS"
                result.stage = "EHLO"
                ehlo = await s.command(f"EHLO {helo_name}")  # RFC 3207 4.2: forget what we knew
                if ehlo.code != 250:
                    result.session_failure = ehlo
                    await _quit(s)
                    return None
                extensions = ehlo_extensions(ehlo)
            elif require_tls:
                # RFC 3207 4.1: after a 454 the client decides; one that requires TLS
                # must not go on in the clear (RFC 7672 2.2: defer, never send it plain).
                result.error = (f"TLS is required, but {diagnosis.said(host, address, str(go), 'STARTTLS')}")
                result.session_failure = go
                result.tls_failure = NO_STARTTLS
                rec.note(result.error)
                await _quit(s)
                return None
            else:
                rec.note(f"STARTTLS refused ({go}); continuing without TLS")
        opened = True
        return Connection(host, address, port, s, extensions, result.tls, result.tls_version,
                          result.protocol, rec.session)
    finally:
        if not opened:
            await conn.close()


async def _transaction(s: _Session, result: Delivery, extensions: dict[str, str], mail_from: str,
                       rcpts: list[str], data: bytes, *, reset: bool = False) -> bool:
    """MAIL, RCPT for each recipient, DATA (RFC 5321 3.3). True when the session is back
    between transactions, so another message may follow on it.

    ``reset``: the session was kept from an earlier message, so RSET comes first
    (RFC 5321 4.1.1.5), in the same pipelined write as MAIL and RCPT when the server
    offers PIPELINING (RFC 2920 3.1 lists RSET among the commands that may be
    grouped). Raises :class:`_Stale` when RSET gets no 250: the connection is not used."""
    if reset:
        result.stage = "RSET"
        if "PIPELINING" not in extensions:
            await _reset(s)
    result.stage = "MAIL"
    params = []
    if "SIZE" in extensions:
        params.append(f"SIZE={len(data)}")
    if "8BITMIME" in extensions and not data.isascii():
        params.append("BODY=8BITMIME")
    if "SMTPUTF8" in extensions and not (mail_from + "".join(rcpts)).isascii():
        params.append("SMTPUTF8")
    mail_line = f"MAIL FROM:<{mail_from}>" + "".join(" " + p for p in params)
    accepted: list[str] = []
    if "PIPELINING" in extensions:
        # RFC 2920: MAIL, every RCPT and DATA in one write; the replies come back
        # in the same order. One round trip instead of two plus one per recipient.
        lines = [mail_line, *(f"RCPT TO:<{r}>" for r in rcpts), "DATA"]
        if reset:
            await _reset(s, lines)
        else:
            await s.send(lines)
        mail = result.mail_reply = await s.reply()
        for rcpt in rcpts:
            result.stage = "RCPT"
            r = await s.reply()
            if mail.code == 250:
                result.rcpt_replies[rcpt] = r
                if r.code in (250, 251):
                    accepted.append(rcpt)
        result.stage = "DATA"
        go = await s.reply()
        if mail.code != 250 or not accepted:
            if go.code == 354:  # RFC 2920 3.1: nobody to deliver to, so end the data at once
                await s.send(["."])
                await s.reply()
            return True
    else:
        mail = result.mail_reply = await s.command(mail_line)
        if mail.code != 250:
            return True
        for rcpt in rcpts:
            result.stage = "RCPT"
            r = await s.command(f"RCPT TO:<{rcpt}>")
            result.rcpt_replies[rcpt] = r
            if r.code in (250, 251):
                accepted.append(rcpt)
        if not accepted:
            return True  # MAIL stays in effect until RSET (the next message sends one)
        result.stage = "DATA"
        go = await s.command("DATA")
    result.data_go = go
    if go.code != 354:
        for rcpt in accepted:
            result.rcpt_replies[rcpt] = go
        return True
    result.stage = "end of DATA"
    s.rec.payload("C", data)
    s.conn.write(encode_data(data))
    await s.conn.drain()
    final = await s.reply()
    result.data_reply = final
    for rcpt in accepted:
        result.rcpt_replies[rcpt] = final
    return True


async def _reset(s: _Session, pipelined: list[str] | None = None) -> None:
    """RSET (with the ``pipelined`` commands after it in the same write). Any failure,
    or a reply other than 250, means the cached connection is of no use: :class:`_Stale`."""
    try:
        if pipelined is None:
            reply = await s.command("RSET")
        else:
            await s.send(["RSET", *pipelined])
            reply = await s.reply()
    except (asyncio.TimeoutError, ConnectionError, ProtocolError, ssl.SSLError, OSError) as exc:
        raise _Stale(str(exc) or exc.__class__.__name__) from None
    if reply.code != 250:
        raise _Stale(f"RSET answered {reply}")


async def _quit(s: _Session) -> None:
    try:
        await asyncio.wait_for(s.command("QUIT"), 5)
    except Exception:  # noqa: BLE001 - QUIT is a courtesy; the result is already decided
        pass
