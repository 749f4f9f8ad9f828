"""The lab's SMTP servers: MX ("port 25"), submission (587) and SMTPS (465).

Built on aiosmtpd's :class:`~aiosmtpd.smtp.SMTP` protocol, which brings the
connection plumbing (stream reader, idle timer, the STARTTLS transport switch
that discards plaintext pipelined after ``STARTTLS``). The commands themselves
are re-implemented here in the open, one method per command, because the lab
needs what aiosmtpd leaves to the application: enhanced status codes on every
reply, bare CR/LF refused, the relay rules, AUTH only under TLS, every line
recorded as an event with credentials masked. The decisions live in
:mod:`.policy` and :mod:`.data` (no I/O); this module only reads and writes.

Three services per mail host (RFC 8314 and RFC 6409 name the roles):

========== ========= ======================================================
service    lab port  role
========== ========= ======================================================
smtp       2525      MX: mail *for* this host's domains, from anyone; no AUTH
submission 2587      users send mail: STARTTLS, then AUTH, then MAIL
smtps      2465      the same with implicit TLS from the first byte
========== ========= ======================================================
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import inspect
import logging
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP

from .. import sasl
from ..faults import CONNECT, reply_closes
from ..listener import DROPPED, injected
from ..masking import mask_line
from ..services import Service, register
from ..tls import describe
from . import data as smtpdata
from .policy import (
    LOCAL,
    NEED_AUTH,
    NEED_EHLO,
    NEED_MAIL,
    NEED_RCPT,
    NEED_STARTTLS,
    NESTED_MAIL,
    NO_VALID_RCPT,
    MailParams,
    PathError,
    Reply,
    Route,
    check_rcpt_params,
    check_sender,
    parse_mail_params,
    parse_path,
    require_utf8_ok,
    route_recipient,
)
from .received import TLSInfo, queue_id, received_header, with_protocol

if TYPE_CHECKING:
    from ..lab import Lab

log = logging.getLogger("maillab.smtp")

#: Services where users log in and may send anywhere (the rest is MX only).
SUBMISSION_SERVICES = ("submission", "smtps")
#: RFC 4954 4: an AUTH line with an initial response may be up to 12288 octets.
AUTH_LINE_LIMIT = 12288
#: RFC 1870 6 and RFC 6531 3.4 let MAIL grow by SIZE=... (26) and SMTPUTF8 (10),
#: BODY=8BITMIME (14) and AUTH=<...> too; the lab allows that much on MAIL lines.
MAIL_LINE_EXTRA = 26 + 10 + 14 + 64


class LabSMTP(SMTP):
    """One SMTP session of the lab (one instance per TCP connection)."""

    # aiosmtpd sizes its StreamReader from this. The lab reads DATA in chunks of up
    # to this many octets (a message is searched for its end marker, not read line
    # by line), and checks command and text line lengths itself.
    line_length_limit = 64 * 1024

    def __init__(self, lab: Lab, service: Service, *, tls_context: Any, implicit_tls: bool,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.lab = lab
        self.service = service
        self.limits = lab.limits
        self.submission = service.name in SUBMISSION_SERVICES
        self.implicit_tls = implicit_tls
        self.rec: Any = None
        self._opened = False
        self._close_reason = ""
        # 5xx replies since the last delivered message; STARTTLS does not reset it.
        self.errors = 0
        self._reset_session()
        super().__init__(
            _NoHooks(),
            data_size_limit=lab.limits.smtp_message_size,
            enable_SMTPUTF8=True,
            hostname=service.hostname,
            ident="ESMTP maillab",
            tls_context=tls_context,
            timeout=lab.limits.smtp_timeout,
            auth_require_tls=True,
            loop=loop,
        )

    # -- per-session state -------------------------------------------------------------
    def _reset_session(self) -> None:
        """Forget everything the client said (new connection, or after STARTTLS:
        RFC 3207 4.2 - the client must start over with EHLO)."""
        self.helo: str | None = None
        self.extended = False
        self.user: str | None = None
        self._reset_transaction()

    def _reset_transaction(self) -> None:
        """RFC 5321 4.1.1.5 (RSET), 4.1.4 (EHLO mid-transaction) and after DATA."""
        self.mail_from: str | None = None
        self.mail_params = MailParams()
        self.rcpts: list[Route] = []
        self.rejected_rcpts = 0

    def tls_on(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    # -- connection life cycle --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = not self._opened
        super().connection_made(transport)
        if not first:
            return  # the STARTTLS handshake finished; smtp_STARTTLS records it
        self._opened = True
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.peer_ip = str(peer[0])
        self.service.session_opened()
        self.rec = self.lab.events.session(
            protocol="smtp", side="server", host=self.service.hostname,
            peer=f"{peer[0]}:{peer[1]}", service=self.service.name, port=self.service.port)
        if self.implicit_tls:
            self._record_tls(transport)

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            self._session_over(str(error) if error else "connection closed")

    def _session_over(self, reason: str) -> None:
        """Count the session as closed and close its record (once)."""
        if self._opened and self.rec is not None:
            self._opened = False
            self.service.session_closed()
            self.rec.close(self._close_reason or reason)

    def _record_tls(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        info = describe(ssl_object)
        cipher = ssl_object.cipher() if ssl_object is not None else None
        self.tls_info = TLSInfo(info["version"] or "TLS", info["cipher"] or "?",
                                cipher[2] if cipher else None)
        self.rec.tls(info["version"], info["cipher"])

    def _timeout_cb(self) -> None:
        # RFC 5321 4.5.3.2: a server may close an idle session; say why first.
        if self.transport is not None and self.rec is not None:
            reply = Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded")
            for line in reply.lines():
                self.rec.server_line(line)
            self._writer.write(str(reply).encode() + b"\r\n")
            self.rec.note(f"idle for {self.limits.smtp_timeout} s: session closed")
            self._close_reason = "idle timeout"
        super()._timeout_cb()

    # -- the wire ---------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        """Send one reply (a :class:`Reply`, a line, or the lines of EHLO) and record it."""
        if isinstance(status, Reply):
            lines = status.lines()
        elif isinstance(status, list):
            lines = status
        else:
            lines = [status.decode() if isinstance(status, bytes) else status]
        if lines[0][:1] == "5":
            self.errors += 1
        for line in lines:
            self.rec.server_line(line)
        self._writer.write(("\r\n".join(lines) + "\r\n").encode("utf-8"))
        await self._writer.drain()

    async def _read_line(self, limit: int) -> tuple[bytes, bool]:
        """One line with its line ending, and whether it was over ``limit`` octets.
        An over-long line is read to its end and thrown away (only its start is
        returned), so memory stays bounded whatever the client sends."""
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            head = await self._reader.readexactly(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.readexactly(more.consumed)
            return head[:80], True
        if len(line) > limit:
            return line[:80], True
        return line, False

    # -- the command loop -------------------------------------------------------------
    async def _handle_client(self) -> None:
        if self.service.active > self.limits.max_connections:
            await self.push(Reply(421, "4.7.0", f"{self.hostname} Error: too many connections"))
            self._close_reason = "too many connections"
            self.transport.close()
            return
        fault = await injected(self.lab, self.service, "smtp", self.rec, (CONNECT,))
        if fault is not None and (fault.drop or fault.reply):  # the greeting refused (421)
            if not fault.drop:
                await self.push(fault.reply)
            self._close_reason = DROPPED
            self.transport.close()
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        try:
            while self.transport is not None:
                if self.errors >= self.limits.smtp_bad_commands:
                    await self.push(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"))
                    self.rec.note(f"{self.errors} errors: session closed")
                    self._close_reason = "too many errors"
                    self.transport.close()
                    return
                # Read up to the largest line any command may have, then apply the
                # limit of the command it turns out to be.
                line, too_long = await self._read_line(AUTH_LINE_LIMIT)
                self._reset_timeout()
                if too_long or len(line) > self._line_limit(line):
                    text = line[:80].decode("utf-8", "replace").rstrip("\r\n")
                    if text[:4].upper() == "AUTH":
                        text = mask_line("smtp", f"{text} ")  # cut short: mask whatever follows
                    self.rec.client_line(f"{text}… (over the limit, discarded)", too_long=True)
                    await self.push(Reply(500, "5.5.2", "Error: command line too long (RFC 5321"
                                          f" 4.5.3.1.4: at most {self.limits.smtp_command_line} octets)"))
                    continue
                await self._command(line)
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.close()
            raise
        except (ConnectionError, asyncio.IncompleteReadError):
            if self.transport is not None:
                self.transport.close()

    def _line_limit(self, line: bytes) -> int:
        # MAIL may grow by what its extensions add (RFC 1870 6); AUTH with an
        # initial response may be long (RFC 4954 4).
        verb = line[:5].upper()
        if verb.startswith(b"MAIL"):
            return self.limits.smtp_command_line + MAIL_LINE_EXTRA
        if verb.startswith(b"AUTH"):
            return AUTH_LINE_LIMIT
        return self.limits.smtp_command_line

    async def _command(self, raw: bytes) -> None:
        bare_lf = not raw.endswith(b"\r\n")
        body = raw[:-1] if bare_lf else raw[:-2]
        text = body.decode("utf-8", "replace")
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        self.rec.client_line(mask_line("smtp", text))
        if bare_lf:
            await self.push(Reply(500, "5.5.2", "Error: bare <LF> received: SMTP commands end with"
                                  " <CRLF> (RFC 5321 2.3.8); with netcat use nc -C"))
            return
        if b"\r" in body:
            await self.push(Reply(500, "5.5.2", "Error: bare <CR> received inside a command"
                                  " (RFC 5321 2.3.8)"))
            return
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            await self.push(Reply(500, "5.5.2", "Error: command is not valid UTF-8"))
            return
        if not verb:
            await self.push(Reply(500, "5.5.2", "Error: bad syntax"))
            return
        fault = await injected(self.lab, self.service, "smtp", self.rec, (verb,))
        if fault is not None and (fault.drop or fault.reply):  # the command is never run
            if fault.reply:
                if verb == "RCPT":
                    self.rejected_rcpts += 1
                await self.push(fault.reply)
            if reply_closes(fault):
                self._close_reason = DROPPED
                self.transport.close()
            return
        method = self._commands.get(verb)
        if method is None:
            await self.push(Reply(502, "5.5.2", f"Error: command not recognized: {verb[:20]}"))
            return
        try:
            await method(self, arg.strip())
        except PathError as exc:
            await self.push(exc.reply)
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as exc:  # a server never dies of a client
            log.exception("SMTP %s failed", verb)
            self.rec.note(f"internal error in {verb}: {exc!r}")
            await self.push(Reply(451, "4.3.0", "Error: local error in processing"))

    # -- commands (RFC 5321 4.1.1) -----------------------------------------------------
    async def smtp_EHLO(self, arg: str) -> None:
        if not arg:
            await self.push(Reply(501, "5.5.4", "Syntax: EHLO hostname"))
            return
        self._reset_transaction()
        self.helo, self.extended = arg, True
        lines = [self.hostname, "PIPELINING", f"SIZE {self.limits.smtp_message_size}"]
        if not self.tls_on() and self.tls_context is not None:
            lines.append("STARTTLS")
        if self.submission and self.tls_on() and self.user is None:
            lines.append("AUTH PLAIN LOGIN")  # RFC 4954 4; plain passwords only under TLS
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8"]
        await self.push([f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"])

    async def smtp_HELO(self, arg: str) -> None:
        if not arg:
            await self.push(Reply(501, "5.5.4", "Syntax: HELO hostname"))
            return
        self._reset_transaction()
        self.helo, self.extended = arg, False
        await self.push(f"250 {self.hostname}")

    async def smtp_STARTTLS(self, arg: str) -> None:
        if arg:
            await self.push(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if self.tls_on():
            # RFC 3207 4.2 leaves it open; Postfix answers exactly this.
            await self.push(Reply(554, "5.5.1", "Error: TLS already active"))
            return
        if self.tls_context is None:
            await self.push(Reply(454, "4.7.0", "TLS not available"))
            return
        if self.mail_from is not None:
            await self.push(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
            return
        pending = len(self._reader._buffer)  # type: ignore[attr-defined]
        await self.push(Reply(220, "2.0.0", "Ready to start TLS"))
        # From here on the bytes belong to TLS. aiosmtpd's connection_made() (called
        # when the handshake is done) throws away whatever plaintext the client sent
        # behind STARTTLS: those commands were never protected (CVE-2011-0411).
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.tls_context, waiter, server_side=True,
            ssl_handshake_timeout=self.limits.tls_handshake_timeout)
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        try:
            await waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The TLS layer never reached our protocol, so connection_lost() will
            # not come: close the socket and the session record here.
            self.rec.note(f"TLS handshake failed: {exc}")
            self._original_transport.close()
            self._session_over("TLS handshake failed")
            raise ConnectionError("TLS handshake failed") from exc
        if pending:
            self.rec.note(f"{pending} plaintext bytes pipelined after STARTTLS were discarded"
                          " (RFC 3207 5)", discarded=pending)
        self._reset_session()
        self._record_tls(self.transport)

    async def smtp_AUTH(self, arg: str) -> None:
        if not self.submission:
            await self.push(Reply(503, "5.5.1", "Error: authentication not enabled"
                                  " (this is an MX port; users log in on submission)"))
            return
        if not self.extended:
            await self.push(Reply(503, "5.5.1", "Error: send EHLO first"))
            return
        if not self.tls_on():
            if self.lab.policy.require_tls:  # RFC 3207 4: the server requires TLS for everything
                await self.push(NEED_STARTTLS)
            else:
                await self.push(Reply(538, "5.7.11", "Encryption required for requested"
                                      " authentication mechanism (RFC 4954 6): STARTTLS first"))
            return
        if self.user is not None:
            await self.push(Reply(503, "5.5.1", "Error: already authenticated"))
            return
        if self.mail_from is not None:
            await self.push(Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
            return
        parts = arg.split()
        if not parts or len(parts) > 2:
            await self.push(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        mechanism = parts[0].upper()
        initial = parts[1] if len(parts) == 2 else None
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(initial)
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(initial)
        else:
            await self.push(Reply(504, "5.5.4", f"Unrecognized authentication type {mechanism[:20]}"))
            return
        if credentials is None:
            return  # the reply is sent
        login, password = credentials
        address = self.lab.users.authenticate(login, password)
        if address is None:
            # A pause makes guessing slow; the same for a wrong user and a wrong password.
            await asyncio.sleep(self.limits.auth_failure_delay)
            self.rec.auth(login, False, mechanism)
            await self.push(Reply(535, "5.7.8", "Authentication credentials invalid"))
            return
        self.user = address
        self.rec.auth(address, True, mechanism)
        await self.push(Reply(235, "2.7.0", "Authentication successful"))

    async def _challenge(self, prompt: str) -> bytes | None:
        """Send ``334 prompt`` and read the client's base64 answer (recorded masked)."""
        await self.push(f"334 {prompt}")
        line, too_long = await self._read_line(AUTH_LINE_LIMIT)
        self.rec.client_line(mask_line("smtp", line.decode("ascii", "replace").rstrip("\r\n"), sasl=True))
        if too_long:
            await self.push(Reply(500, "5.5.2", "Error: AUTH line too long"))
            return None
        return await self._decode_b64(line.strip())

    async def _decode_b64(self, blob: bytes) -> bytes | None:
        try:
            return sasl.decode_response(blob)
        except sasl.Cancelled:  # RFC 4954 4: the client cancels
            await self.push(Reply(501, "5.7.0", "Authentication aborted"))
        except sasl.SASLError:
            await self.push(Reply(501, "5.5.2", "Error: cannot decode the base64 response"))
        return None

    async def _auth_plain(self, initial: str | None) -> tuple[str, str] | None:
        # RFC 4616: [authzid] NUL authcid NUL passwd
        if initial is None:
            decoded = await self._challenge("")
        else:
            decoded = await self._decode_b64(initial.encode())
        if decoded is None:
            return None
        try:
            credentials = sasl.parse_plain(decoded)
        except sasl.SASLError as exc:
            await self.push(Reply(501, "5.5.2", f"Error: {exc}"))
            return None
        login = credentials.authcid
        if not sasl.may_act_as(credentials, self.lab.users.resolve(login)):
            # Acting as someone else would need an admin right the lab does not have.
            login = f"{login} as {credentials.authzid}"
        return login, credentials.password

    async def _auth_login(self, initial: str | None) -> tuple[str, str] | None:
        # The old LOGIN mechanism (draft-murchison-sasl-login): two prompts.
        if initial is None:
            login = await self._challenge(sasl.challenge(sasl.LOGIN_PROMPTS[0]))
        else:
            login = await self._decode_b64(initial.encode())
        if login is None:
            return None
        password = await self._challenge(sasl.challenge(sasl.LOGIN_PROMPTS[1]))
        if password is None:
            return None
        return login.decode("utf-8", "replace"), password.decode("utf-8", "replace")

    async def smtp_MAIL(self, arg: str) -> None:
        if self.helo is None:
            await self.push(NEED_EHLO)
            return
        if self.submission:
            if not self.tls_on():
                await self.push(NEED_STARTTLS)
                return
            if self.user is None:
                await self.push(NEED_AUTH)  # RFC 6409 4.3 (and RFC 4954 6)
                return
        if self.mail_from is not None:
            await self.push(NESTED_MAIL)
            return
        if arg[:5].upper() != "FROM:":
            await self.push(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
            return
        path, rest = parse_path(arg[5:], what="sender", allow_null=True)
        params = parse_mail_params(rest, extended=self.extended,
                                   size_limit=self.limits.smtp_message_size)
        require_utf8_ok(path, params.smtputf8)
        if self.submission:
            check_sender(path, self.user)
        self.mail_from, self.mail_params = path.address, params
        await self.push(Reply(250, "2.1.0", "Ok"))

    async def smtp_RCPT(self, arg: str) -> None:
        if self.helo is None:
            await self.push(NEED_EHLO)
            return
        if self.mail_from is None:
            await self.push(NEED_MAIL)
            return
        if arg[:3].upper() != "TO:":
            await self.push(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
            return
        path, rest = parse_path(arg[3:], what="recipient")
        check_rcpt_params(rest)
        require_utf8_ok(path, self.mail_params.smtputf8)
        if len(self.rcpts) >= self.limits.smtp_recipients:
            await self.push(Reply(452, "4.5.3", "Error: too many recipients (RFC 5321 4.5.3.1.8)"))
            return
        try:
            route = route_recipient(
                path,
                local_domains=set(self.service.host.domains) if self.service.host else set(),
                is_user=self.lab.users.__contains__,
                authenticated=self.user is not None,
                relay_available=self.lab.relay is not None,
            )
        except PathError:
            self.rejected_rcpts += 1
            raise
        self.rcpts.append(route)
        await self.push(Reply(250, "2.1.5", "Ok"))

    async def smtp_DATA(self, arg: str) -> None:
        if self.helo is None:
            await self.push(NEED_EHLO)
            return
        if arg:
            await self.push(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self.mail_from is None:
            await self.push(NEED_MAIL)
            return
        if not self.rcpts:
            await self.push(NO_VALID_RCPT if self.rejected_rcpts else NEED_RCPT)
            return
        await self.push(Reply(354, "2.0.0", "End data with <CR><LF>.<CR><LF>"))
        raw, too_big = await self._read_data()
        try:
            reply = await self._accept(raw, too_big)
        finally:
            self._reset_transaction()
        if reply.ok:
            self.errors = 0  # like Postfix: the error limit is for clients that deliver nothing
        await self.push(reply)

    async def _read_data(self) -> tuple[bytes, bool]:
        """The text up to and including ``<CRLF>.<CRLF>``, with a CRLF in front.

        The stream is searched for the end marker chunk by chunk (not line by line,
        which is what makes aiosmtpd slow on big messages). Past the size limit the
        text is still read to its end, but thrown away as it comes.
        """
        # Put a CRLF in front so that a message that is empty, or starts with ".",
        # is found by the same search. (aiosmtpd, too, works on the reader's buffer.)
        self._reader._buffer[0:0] = b"\r\n"  # type: ignore[attr-defined]
        limit = self.limits.smtp_message_size
        chunks: list[bytes] = []
        # Octets of message so far, without transparency dots (RFC 1870); it starts
        # at -4 for the CRLF put in front and the ".CRLF" of the end marker.
        size = -4
        slack = 0  # a stuffed dot split across two chunks may be counted once as text
        too_big = False
        while True:
            try:
                chunk = await self._reader.readuntil(smtpdata.END_OF_DATA)
                done = True
            except asyncio.LimitOverrunError as exc:
                chunk = await self._reader.readexactly(exc.consumed)
                done = False
            self._reset_timeout()
            if not too_big:
                size += len(chunk) - chunk.count(b"\r\n.")
                slack += 1
                if size > limit + slack:
                    too_big = True
                    chunks.clear()
                else:
                    chunks.append(chunk)
            if done:
                break
        if too_big:
            self.rec.client_line(f"<message over {limit} octets, discarded while reading>", payload=True)
            self.rec.client_line(".")
            return b"", True
        return b"".join(chunks), False

    async def _accept(self, raw: bytes, too_big: bool) -> Reply:
        """The reply to the end of data; stores or relays the message when it is acceptable."""
        size_refusal = Reply(552, "5.3.4", "Message size exceeds fixed limit of"
                             f" {self.limits.smtp_message_size} octets; nothing was stored")
        if too_big:
            return size_refusal
        refusal = smtpdata.check_line_endings(raw)
        message = smtpdata.unstuff(raw)
        self.rec.payload("C", message)
        self.rec.client_line(".")
        if refusal is None and len(message) > self.limits.smtp_message_size:
            refusal = size_refusal
        if refusal is None:
            refusal = smtpdata.check_line_length(message, self.limits.smtp_text_line)
        if refusal is None:
            refusal = smtpdata.check_hops(message)
        if refusal is not None:
            self.rec.note(f"message refused: {refusal.text}")
            return refusal
        return await self._deliver(message)

    async def _deliver(self, message: bytes) -> Reply:
        qid = queue_id()
        local = list(dict.fromkeys(r.address for r in self.rcpts if r.kind == LOCAL))
        remote = list(dict.fromkeys(r.address for r in self.rcpts if r.kind != LOCAL))
        header = received_header(
            helo=self.helo or "unknown", peer_ip=self.peer_ip, by=self.hostname,
            protocol=with_protocol(extended=self.extended, tls=self.tls_on(),
                                   authenticated=self.user is not None,
                                   smtputf8=self.mail_params.smtputf8),
            id=qid, recipient=self.rcpts[0].address if len(self.rcpts) == 1 else None,
            tls=getattr(self, "tls_info", None) if self.tls_on() else None)
        message = header + message
        if remote:
            # The relay first: if it cannot take the message, nobody gets a copy
            # and the client's retry does not duplicate local deliveries.
            try:
                relay_id = self.lab.relay.submit(self.mail_from or "", remote, message,
                                                 origin=self.service.host, session=self.rec.session)
                if inspect.isawaitable(relay_id):
                    relay_id = await relay_id
            except Exception as exc:
                self.rec.note(f"relay refused the message: {exc!r}")
                return Reply(451, "4.3.0", "Error: queue file write error, try again later")
            self.rec.note(f"queued for {', '.join(remote)} as {relay_id}", relay_id=relay_id,
                          recipients=remote)
        for address in local:
            try:
                # File system work happens on a worker thread, so other sessions on
                # the lab loop go on meanwhile (the store is thread-safe).
                info = await self.loop.run_in_executor(None, self.lab.store.deliver, address, message)
            except OSError as exc:
                self.rec.note(f"delivery to {address} failed: {exc}")
                return Reply(451, "4.3.0", "Error: local delivery failed, try again later")
            self.rec.stored(f"{address}/INBOX", info.uid, info.size, user=address, queue_id=qid)
        return Reply(250, "2.0.0", f"Ok: queued as {qid}")

    async def smtp_RSET(self, arg: str) -> None:
        if arg:
            await self.push(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        self._reset_transaction()
        await self.push(Reply(250, "2.0.0", "Ok"))

    async def smtp_NOOP(self, arg: str) -> None:
        await self.push(Reply(250, "2.0.0", "Ok"))

    async def smtp_QUIT(self, arg: str) -> None:
        await self.push(Reply(221, "2.0.0", "Bye"))
        self._close_reason = "QUIT"
        self.transport.close()
        raise asyncio.CancelledError

    async def smtp_VRFY(self, arg: str) -> None:
        if not arg:
            await self.push(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        # RFC 5321 3.5.3: 252 says "not verified, but try it" without telling
        # address harvesters which users exist.
        await self.push(Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"))

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(Reply(502, "5.5.1", "Error: EXPN not available"))

    async def smtp_HELP(self, arg: str) -> None:
        await self.push(Reply(214, "2.0.0", "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET"
                              " NOOP VRFY QUIT; see RFC 5321"))

    _commands = {
        "EHLO": smtp_EHLO, "HELO": smtp_HELO, "STARTTLS": smtp_STARTTLS, "AUTH": smtp_AUTH,
        "MAIL": smtp_MAIL, "RCPT": smtp_RCPT, "DATA": smtp_DATA, "RSET": smtp_RSET,
        "NOOP": smtp_NOOP, "QUIT": smtp_QUIT, "VRFY": smtp_VRFY, "EXPN": smtp_EXPN,
        "HELP": smtp_HELP,
    }


class _NoHooks:
    """aiosmtpd wants a handler object; the lab's session does its own work."""


async def _serve(lab: Lab, service: Service, *, implicit_tls: bool) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    assert lab.ca is not None
    context = lab.ca.server_context(service.hostname, [service.address])

    def session() -> LabSMTP:
        return LabSMTP(lab, service, tls_context=None if implicit_tls else context,
                       implicit_tls=implicit_tls, loop=loop)

    if implicit_tls:
        server = await loop.create_server(session, service.address, service.port, ssl=context,
                                          ssl_handshake_timeout=lab.limits.tls_handshake_timeout,
                                          reuse_address=True)
    else:
        server = await loop.create_server(session, service.address, service.port, reuse_address=True)
    service.port = server.sockets[0].getsockname()[1]
    return server


@register("smtp")
async def start_mx(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """MX, "port 25": mail for this host's domains from anyone, no AUTH, no relaying."""
    return await _serve(lab, service, implicit_tls=False)


@register("submission")
async def start_submission(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """Submission, "port 587" (RFC 6409): STARTTLS, then AUTH, then mail to anywhere."""
    return await _serve(lab, service, implicit_tls=False)


@register("smtps")
async def start_smtps(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """Submission with implicit TLS, "port 465" (RFC 8314 3.3)."""
    return await _serve(lab, service, implicit_tls=True)
