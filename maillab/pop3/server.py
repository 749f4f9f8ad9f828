"""The POP3 servers of a lab host: ``pop3`` (lab port 1110, STLS) and ``pop3s``
(lab port 1995, implicit TLS, RFC 8314).

A thin asyncio driver: it reads lines through :class:`~maillab.connection.LineConnection`
(which enforces the line limit and discards plaintext pipelined after STLS),
hands each one to the sans-IO :class:`~maillab.pop3.session.POP3Session`, writes
the reply and records both into the lab's event stream.

A command the session calls slow (:meth:`POP3Session.slow`: a login, which opens
the maildrop; QUIT, whose UPDATE state removes files; LIST/UIDL of a large
maildrop; RETR/TOP of a large message), and one that would wait for a mailbox lock
another thread holds, runs on the mailbox workers IMAP uses too
(:func:`maillab.workers.on_turn`), so the lab loop goes on answering every other
session meanwhile; waiting there for a held lock, it takes no worker turn, and no
thread of asyncio's default executor that authentication checks and DNS need. A
message is written as slices of the bytes read (:meth:`Reply.parts`), in one
gathering write.

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
from ..workers import on_turn
from .maildrop import Maildrop, StoreBackend
from .session import POP3Session, Reply
from .wire import dot_stuff

log = logging.getLogger("maillab.pop3")

if TYPE_CHECKING:
    from ..lab import Lab
    from ..store.locking import MailboxLock

#: Multi-line text bodies up to this many lines are recorded line by line.
RECORD_LINES = 40
#: Of a message (RETR, TOP), the transcript keeps this many lines and the size.
RECORD_HEAD = 12
#: Octets a connection's transport may hold before the driver waits for the reader
#: (asyncio's default is 64 KiB): pipelined RETRs keep coming while the client reads.
WRITE_BUFFER = 1 << 20


class POP3Server(LineServer):
    """One listener (pop3 or pop3s) of one lab host."""

    protocol = "pop3"
    busy_reply = "-ERR [SYS/TEMP] too many connections, try again later"
    crash_reply = "-ERR [SYS/TEMP] internal server error, closing"

    def __init__(self, lab: Lab, service: Service, *, implicit_tls: bool) -> None:
        super().__init__(lab, service, implicit_tls=implicit_tls)
        self.backend = StoreBackend(lab.store, lab.users_at(service.host), lab.limits)

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
            auth_failures=limits.auth_failures,
            line_limit=limits.pop3_command_line,
        )

    async def converse(self, conn: LineConnection, rec: SessionRecorder, session: POP3Session) -> str:
        rec.state(session.state.value)
        transport = conn.transport
        if transport is not None:
            transport.set_write_buffer_limits(high=WRITE_BUFFER, low=WRITE_BUFFER // 4)
        fault = await self.injected(rec)
        if fault is not None and (fault.drop or fault.reply):  # the greeting refused
            if not fault.drop:
                await self._send(conn, rec, Reply(fault.reply or "-ERR"))
            return DROPPED
        await self._send(conn, rec, session.greeting())
        while True:
            # 10,000 pipelined DELEs must not hold the loop (connection.TURN); the flags
            # are settled first, so others may look at them meanwhile
            if conn.has_buffered_data() and conn.turn_is_over():
                await _settle(session)
                await conn.share_turn()
            try:
                # RFC 2449 section 4: 255 octets including the CRLF
                line = await conn.readline(session.line_limit)
            except LineTooLong as exc:
                rec.note(f"command line of {exc.length}+ octets discarded", limit="pop3_command_line")
                await self._send(conn, rec, session.line_too_long())
                continue
            except TimeoutError:
                maildrop = session.maildrop
                await self._send(conn, rec, session.timed_out())
                _keep_seen(maildrop)
                return "idle timeout"
            rec.client_line(session.masked(line))
            fault = None
            if self.lab.faults.armed:  # no coroutine per command for nothing
                command = session.command(line)
                fault = await self.injected(rec, command) if command else None
            if fault is not None and fault.drop:
                return DROPPED
            if fault is not None and fault.reply:  # the session never sees the command
                await self._send(conn, rec, Reply(fault.reply))
                continue
            try:
                slow = session.slow(line)
                lock = None if slow else _mailbox_lock(session)
                if slow or lock is not None and not lock.acquire(blocking=False):
                    reply, parts = await on_turn(_answer, session, line)
                else:
                    try:
                        reply, parts = _answer(session, line)
                    finally:
                        if lock is not None:
                            lock.release()
            except Exception as exc:  # a bug costs the client one command, never the session
                log.exception("POP3 session step failed")
                rec.note(f"internal error: {exc!r}", error=True)
                reply = Reply("-ERR [SYS/TEMP] internal server error, try again")  # RFC 3206
                parts = None
            if not conn.has_buffered_data():
                await _settle(session)  # the client waits for this reply: RETR's \Seen comes first
            await self._send(conn, rec, reply, parts)
            if reply.starttls:
                try:
                    await conn.starttls(self.tls_context, self.lab.limits.tls_handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                    return f"TLS handshake failed: {exc}"
                session.tls_started()
            if reply.close:
                if reply.auth is not None and not reply.ok:
                    return "too many failed logins"
                return "QUIT" if reply.ok else "connection closed by the client"

    def session_ended(self, rec: SessionRecorder, session: POP3Session) -> None:
        maildrop = session.maildrop
        if maildrop is not None:
            rec.note("session ended without QUIT: no UPDATE state, nothing deleted",
                     pop3="aborted")
        lock = _mailbox_lock(session) if session.unsettled else None
        if lock is not None and lock.acquire(blocking=False):
            try:
                session.settle(follow_moves=False)
            finally:
                lock.release()
        if lock is not None and session.unsettled:  # the lock is busy: never wait on the loop
            on_turn(_end, session, maildrop)
            return
        session.end()  # (marks what RETR sent \\Seen, releases the lock)
        _keep_seen(maildrop)

    async def _send(self, conn: LineConnection, rec: SessionRecorder, reply: Reply,
                    parts: list[bytes | memoryview] | None = None) -> None:
        if reply.auth is not None:
            rec.auth(*reply.auth)
        for text, data in reply.notes:
            rec.note(text, **data)
        if reply.state is not None:
            rec.state(reply.state.value)
        if reply.delay:
            conn.flush()  # what is held goes out before the pause
            await asyncio.sleep(reply.delay)
        if parts is None:
            parts = reply.parts()
        rec.server_line(reply.status)
        if reply.lines is not None:
            body = parts[1]
            assert isinstance(body, bytes)
            if len(reply.lines) <= RECORD_LINES:
                for ln in body[:-2].decode("utf-8", "replace").split("\r\n"):
                    rec.server_line(ln)
            else:
                rec.payload("S", body)
        elif reply.message is not None:
            head, size = _head(reply.message, parts)
            rec.payload("S", head, head_lines=RECORD_HEAD, size=size)
        # one gathering write: status and body leave in the same send() where they fit;
        # while the client has pipelined more commands, their replies go out together
        if conn.has_buffered_line() and not (reply.close or reply.starttls):
            conn.hold(parts)
        else:
            conn.writelines(parts)
        await conn.drain()


def _keep_seen(maildrop: Maildrop | None) -> None:
    """A session that held ``maildrop`` ended without QUIT: the \\Seen its RETRs marked
    stays (as in Dovecot) and goes to the disk in a fsync round on a worker thread,
    never on the lab loop (see :meth:`Maildrop.flush_seen`)."""
    if maildrop is None or not maildrop.seen_unflushed:
        return
    on_turn(maildrop.flush_seen)


def _end(session: POP3Session, maildrop: Maildrop | None) -> None:
    """:meth:`POP3Session.end` and the \\Seen flush on a worker thread."""
    session.end()
    if maildrop is not None:
        maildrop.flush_seen()


def _mailbox_lock(session: POP3Session) -> MailboxLock | None:
    """The lock of the session's maildrop, if it has one. The lab loop takes it only
    when free (``acquire(blocking=False)``) and never waits for it: its holders may be
    doing disk IO (an expunge's unlinks, an index commit, renames for flags), so a
    command that would wait runs on a worker thread instead and the loop answers
    every other session meanwhile. Taken, not merely looked at, and held across the
    command: nobody can take it between the look and the command's own
    ``with mailbox.lock`` (an RLock: the same thread enters again)."""
    return session.maildrop.mailbox.lock if session.maildrop is not None else None


async def _settle(session: POP3Session) -> None:
    """:meth:`POP3Session.settle` without the lab loop waiting for a lock: inline when
    the mailbox is free, else (or for messages an IMAP MOVE took to another folder,
    whose lock it would wait for) on a worker thread."""
    if not session.unsettled:
        return
    lock = _mailbox_lock(session)
    if lock is not None and lock.acquire(blocking=False):
        try:
            session.settle(follow_moves=False)
        finally:
            lock.release()
    if session.unsettled:
        await on_turn(session.settle)


def _answer(session: POP3Session, line: bytes) -> tuple[Reply, list[bytes | memoryview]]:
    """The session's reply to ``line`` and the pieces it is written in (on the loop,
    or on a worker thread when the command is slow)."""
    reply = session.receive(line)
    return reply, reply.parts()


def _head(message: bytes, parts: list[bytes | memoryview]) -> tuple[bytes, int | None]:
    """What the transcript needs of a message body: its first RECORD_HEAD lines as
    sent (dot-stuffed) and the body's size; a short body is recorded whole."""
    cut = 0
    for _ in range(RECORD_HEAD + 1):
        nl = message.find(b"\n", cut)
        if nl < 0:
            return b"".join(parts[1:]), None
        cut = nl + 1
    return dot_stuff(message[:cut]), sum(map(len, parts)) - len(parts[0])


@register("pop3")
async def start_pop3(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await POP3Server(lab, service, implicit_tls=False).start()


@register("pop3s")
async def start_pop3s(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await POP3Server(lab, service, implicit_tls=True).start()
