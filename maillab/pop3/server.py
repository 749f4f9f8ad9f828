"""The POP3 servers of a lab host: ``pop3`` (lab port 1110, STLS) and ``pop3s``
(lab port 1995, implicit TLS, RFC 8314).

A thin asyncio driver: it reads lines through :class:`~maillab.connection.LineConnection`
(which enforces the line limit and discards plaintext pipelined after STLS),
hands each one to the sans-IO :class:`~maillab.pop3.session.POP3Session`, writes
the reply and records both into the lab's event stream.

Lab policy on passwords without TLS: USER/PASS and AUTH PLAIN are accepted on
the plaintext port, because every lab server listens on loopback only and
curl, fetchmail and poplib examples should work as typed. Each such login gets
a note in the transcript saying that a real server would refuse it before STLS.
Set ``lab.policy.pop3_plaintext_auth = False`` to behave like such a server:
``-ERR [AUTH] ...`` until STLS, and CAPA stops offering USER and SASL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING

from ..connection import LineConnection, LineTooLong
from ..events import SessionRecorder
from ..listener import DROPPED, LineServer
from ..plaintext import plaintext_auth_allowed
from ..services import Service, register
from .maildrop import StoreBackend
from .session import POP3Session, Reply

log = logging.getLogger("maillab.pop3")

if TYPE_CHECKING:
    from ..lab import Lab

#: Multi-line text bodies up to this many lines are recorded line by line.
RECORD_LINES = 40


class POP3Server(LineServer):
    """One listener (pop3 or pop3s) of one lab host."""

    protocol = "pop3"
    busy_reply = "-ERR [SYS/TEMP] too many connections, try again later"
    crash_reply = "-ERR [SYS/TEMP] internal server error, closing"

    def __init__(self, lab: Lab, service: Service, *, implicit_tls: bool) -> None:
        super().__init__(lab, service, implicit_tls=implicit_tls)
        self.backend = StoreBackend(lab.store, lab.users)

    @property
    def idle_timeout(self) -> float:
        return self.lab.limits.pop3_idle_timeout

    def open_session(self) -> POP3Session:
        limits = self.lab.limits
        return POP3Session(
            self.backend,
            hostname=self.service.hostname,
            tls_active=self.implicit_tls,
            stls_available=not self.implicit_tls,
            plaintext_auth=plaintext_auth_allowed(self.lab, "pop3"),
            auth_failure_delay=limits.auth_failure_delay,
            line_limit=limits.pop3_command_line,
        )

    async def converse(self, conn: LineConnection, rec: SessionRecorder, session: POP3Session) -> str:
        rec.state(session.state.value)
        fault = await self.injected(rec)
        if fault is not None and (fault.drop or fault.reply):  # the greeting refused
            if not fault.drop:
                await self._send(conn, rec, Reply(fault.reply or "-ERR"))
            return DROPPED
        await self._send(conn, rec, session.greeting())
        while True:
            try:
                # RFC 2449 section 4: 255 octets including the CRLF
                line = await conn.readline(session.line_limit)
            except LineTooLong as exc:
                rec.note(f"command line of {exc.length}+ octets discarded", limit="pop3_command_line")
                await self._send(conn, rec, session.line_too_long())
                continue
            except TimeoutError:
                await self._send(conn, rec, session.timed_out())
                return "idle timeout"
            rec.client_line(session.masked(line))
            command = session.command(line)
            fault = await self.injected(rec, command) if command else None
            if fault is not None and fault.drop:
                return DROPPED
            if fault is not None and fault.reply:  # the session never sees the command
                await self._send(conn, rec, Reply(fault.reply))
                continue
            try:
                reply = session.receive(line)
            except Exception as exc:  # a bug costs the client one command, never the session
                log.exception("POP3 session step failed")
                rec.note(f"internal error: {exc!r}", error=True)
                reply = Reply("-ERR [SYS/TEMP] internal server error, try again")  # RFC 3206
            await self._send(conn, rec, reply)
            if reply.starttls:
                try:
                    await conn.starttls(self.tls_context, self.lab.limits.tls_handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                    return f"TLS handshake failed: {exc}"
                session.tls_started()
            if reply.close:
                return "QUIT" if reply.ok else "connection closed by the client"

    def session_ended(self, rec: SessionRecorder, session: POP3Session) -> None:
        if session.maildrop is not None:
            rec.note("session ended without QUIT: no UPDATE state, nothing deleted",
                     pop3="aborted")
        session.end()

    async def _send(self, conn: LineConnection, rec: SessionRecorder, reply: Reply) -> None:
        if reply.auth is not None:
            rec.auth(*reply.auth)
        for text, data in reply.notes:
            rec.note(text, **data)
        if reply.state is not None:
            rec.state(reply.state.value)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        rec.server_line(reply.status)
        if reply.multiline:
            body = reply.body()
            if reply.lines is not None and len(reply.lines) <= RECORD_LINES:
                for ln in body[:-2].decode("utf-8", "replace").split("\r\n"):
                    rec.server_line(ln)
            else:
                rec.payload("S", body)
            # one write: status and body leave in the same send() where they fit
            conn.write(reply.status.encode("utf-8") + b"\r\n" + body)
        else:
            conn.write(reply.status.encode("utf-8") + b"\r\n")
        await conn.drain()


@register("pop3")
async def start_pop3(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await POP3Server(lab, service, implicit_tls=False).start()


@register("pop3s")
async def start_pop3s(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await POP3Server(lab, service, implicit_tls=True).start()
