"""The lab's SMTP servers: MX ("port 25"), submission (587) and SMTPS (465).

A thin asyncio driver on the same listener and connection code as POP3 and IMAP
(:mod:`maillab.listener`, :mod:`maillab.connection`: line limits, timeouts, the
one STARTTLS switch that discards pipelined plaintext, connection caps). It reads
a line, hands it to the sans-IO :class:`~maillab.smtp.session.SMTPSession`, does
what the answer asks (call the host's aiosmtpd handler, store or relay a
message, read DATA, start TLS), writes the reply and records both. Every rule
lives in the session, :mod:`.policy` and :mod:`.data`; this module only reads,
writes and waits.

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
import inspect
import logging
import ssl
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

from ..auth import mta as auth_mta
from ..connection import LineConnection, LineTooLong
from ..events import SessionRecorder
from ..faults import CONNECT, reply_closes
from ..listener import DROPPED, LineServer
from ..masking import mask_line
from ..plaintext import plaintext_auth_allowed
from ..services import Service, register
from ..tls import describe
from ..workers import DELIVERY
from . import data as smtpdata
from . import hooks
from .policy import Reply
from .received import TLSInfo
from .session import Deliver, Hook, SMTPSession, Step

if TYPE_CHECKING:
    from ..lab import Lab

log = logging.getLogger("maillab.smtp")

#: Services where users log in and may send anywhere (the rest is MX only).
SUBMISSION_SERVICES = ("submission", "smtps")
#: Octets past the size limit that a text is read in before its transparency
#: dots are counted (a text is sent with one more octet per stuffed line).
DATA_SLACK = 64 * 1024
#: The largest piece of DATA text read at once: each is counted against the lab's
#: DATA budget before the next is read (a message up to this size is still one piece).
DATA_PIECE = 2 * 1024 * 1024
#: What _read_data says when the text did not fit in the lab's DATA budget.
NO_ROOM = "no room"


def tls_info(conn: LineConnection) -> TLSInfo:
    """What the Received header says about the TLS of ``conn`` (RFC 8314 4.3)."""
    ssl_object = conn.transport.get_extra_info("ssl_object") if conn.transport else None
    info = describe(ssl_object)
    cipher = ssl_object.cipher() if ssl_object is not None else None
    return TLSInfo(info["version"] or "TLS", info["cipher"] or "?", cipher[2] if cipher else None)


class SMTPServer(LineServer):
    """One listener (smtp, submission or smtps) of one lab host."""

    protocol = "smtp"

    def __init__(self, lab: Lab, service: Service, *, implicit_tls: bool) -> None:
        super().__init__(lab, service, implicit_tls=implicit_tls)
        self.submission = service.name in SUBMISSION_SERVICES

    @property
    def hostname(self) -> str:
        """The host's name (what aiosmtpd handlers read as ``server.hostname``)."""
        return self.service.hostname

    @property
    def busy_reply(self) -> str:  # type: ignore[override]
        return f"421 4.7.0 {self.hostname} Error: too many connections"

    @property
    def idle_timeout(self) -> float:
        return self.lab.limits.smtp_timeout

    def open_session(self) -> SMTPSession:
        lab, host = self.lab, self.service.host
        users = lab.users_at(host)  # who may log in here: this host's own users
        return SMTPSession(
            hostname=self.hostname,
            limits=lab.limits,
            local_domains=frozenset(host.domains) if host else frozenset(),
            is_user=lab.users.__contains__,
            postmaster=lambda domain: next(iter(sorted(u.address for u in lab.users if u.domain == domain)), None),
            authenticate=users.authenticate,
            resolve=users.resolve,
            relay_available=lab.relay is not None,
            submission=self.submission,
            starttls_available=not self.implicit_tls,
            require_tls=bool(lab.policy.require_tls),
            plaintext_auth=self.submission and plaintext_auth_allowed(lab, "submission"),
            data_budget=lab.smtp_data,
        )

    def session_ended(self, rec: SessionRecorder, session: SMTPSession) -> None:
        session.ended()  # a transaction not finished with <CRLF>.<CRLF> leaves nothing behind

    # -- the conversation ---------------------------------------------------------------
    async def converse(self, conn: LineConnection, rec: SessionRecorder, session: SMTPSession) -> str:
        session.peer_ip = conn.peer.rpartition(":")[0] or conn.peer
        if self.implicit_tls:
            session.tls = tls_info(conn)
        handler = self.lab.smtp_handlers.get(self.hostname)
        session.hooks = hooks.names(handler)
        hook_session = hooks.new_session(conn.peer) if handler is not None else None
        fault = await self.injected(rec)
        if fault is not None and (fault.drop or fault.reply):  # the greeting refused (421)
            if not fault.drop:
                await self._send(conn, rec, session.injected(CONNECT, fault.reply or "421"))
            return DROPPED
        await self._send(conn, rec, session.greeting())
        while True:
            reply = session.give_up()
            if reply is None:
                try:
                    line = await conn.readline(session.read_limit)
                except LineTooLong as exc:
                    self._record_too_long(rec, session, exc.head)
                    reply = session.line_too_long()
                except TimeoutError:
                    reply = session.timed_out()
                else:
                    if len(line) > session.line_limit(line):
                        self._record_too_long(rec, session, line[:80])
                        reply = session.line_too_long()
                    else:
                        rec.client_line(session.masked(line))
                        reply = await self._command(conn, rec, session, line, handler, hook_session)
                        if reply is None:
                            return DROPPED
            await self._send(conn, rec, reply)
            if reply.starttls:
                try:
                    await conn.starttls(self.tls_context, self.lab.limits.tls_handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
                    rec.note(f"TLS handshake failed: {exc}")
                    return "TLS handshake failed"
                session.tls_started(tls_info(conn))
            if reply.read_data:
                reply = await self._data(conn, rec, session, handler, hook_session)
                await self._send(conn, rec, reply)
            if reply.close:
                return reply.close

    async def _command(self, conn: LineConnection, rec: SessionRecorder, session: SMTPSession,
                       line: bytes, handler: Any, hook_session: Any) -> Reply | None:
        """The reply to one command line; None when an injected fault drops the connection."""
        fault = None
        if self.lab.faults.armed:  # no coroutine per command for nothing
            verb = session.command(line)
            fault = await self.injected(rec, verb) if verb else None
        if fault is not None and fault.drop:
            return None
        if fault is not None and fault.reply:  # the session never sees the command
            reply = session.injected(verb, fault.reply)
            return replace(reply, close=DROPPED) if reply_closes(fault) else reply
        return await self._run(session.receive, line, session=session, rec=rec,
                               handler=handler, hook_session=hook_session)

    async def _run(self, step_of: Any, *args: Any, session: SMTPSession, rec: SessionRecorder,
                   handler: Any, hook_session: Any) -> Reply:
        """Ask the session, and do what it asks until it gives a reply."""
        try:
            step: Step = step_of(*args)
            while not isinstance(step, Reply):
                if isinstance(step, Hook):
                    hooks.update_session(hook_session, session)
                    status = await hooks.call(handler, step, self, hook_session, rec,
                                              timeout=self.lab.limits.smtp_timeout)
                    step = step.then(status)
                else:
                    step = step.then(await self._deliver(step, rec, session))
            return step
        except Exception as exc:  # a server never dies of a client
            log.exception("SMTP session step failed")
            rec.note(f"internal error: {exc!r}")
            return Reply(451, "4.3.0", "Error: local error in processing")

    def _record_too_long(self, rec: SessionRecorder, session: SMTPSession, head: bytes) -> None:
        text = head[:80].decode("utf-8", "replace").rstrip("\r\n")
        if text[:4].upper() == "AUTH":
            text = mask_line("smtp", f"{text} ")  # cut short: mask whatever follows the mechanism
        else:
            text = session.masked(text)
        rec.client_line(f"{text}… (over the limit, discarded)", too_long=True)

    async def _send(self, conn: LineConnection, rec: SessionRecorder, reply: Reply) -> None:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.auth is not None:
            rec.auth(*reply.auth)
        for text, data in reply.notes:
            rec.note(text, **data)
        lines, wire = reply.wire
        for line in lines:
            rec.server_line(line)
        conn.write(wire)
        await conn.drain()

    # -- DATA ----------------------------------------------------------------------------
    async def _data(self, conn: LineConnection, rec: SessionRecorder, session: SMTPSession,
                    handler: Any, hook_session: Any) -> Reply:
        try:
            raw, too_big = await self._read_data(conn, session)
        except TimeoutError:
            return session.timed_out()
        if too_big is NO_ROOM:
            rec.client_line("<message over the lab's DATA budget, discarded while reading>", payload=True)
            rec.client_line(".")
            return session.no_storage()
        if too_big:
            limit = self.lab.limits.smtp_message_size
            rec.client_line(f"<message over {limit} octets, discarded while reading>", payload=True)
            rec.client_line(".")
            return session.message_too_big()
        text = smtpdata.scan(raw)
        rec.payload("C", text.message)
        rec.client_line(".")
        return await self._run(session.end_of_data, text, session=session, rec=rec,
                               handler=handler, hook_session=hook_session)

    async def _read_data(self, conn: LineConnection, session: SMTPSession) -> tuple[bytes, bool | str]:
        """The text up to and including ``<CRLF>.<CRLF>``, with a CRLF in front.

        The stream is searched for the end marker as it comes (not line by line), and
        a text within the size limit comes back as one piece, copied once. Past the
        limit the text is still read to its end, but thrown away as it comes, so
        memory stays bounded whatever the client sends. The same when the text
        would take the lab past its DATA budget (limits.smtp_data_in_flight): then
        the answer is ``NO_ROOM``. Pieces are at most DATA_PIECE octets, so what a
        session holds outside the budget stays small.
        """
        # A CRLF in front, so that a message that is empty, or starts with ".",
        # is found by the same search.
        conn.unread(b"\r\n")
        limit = self.lab.limits.smtp_message_size
        chunks: list[bytes] = []
        raw_size = 0
        too_big: bool | str = False
        done = False
        while not done:
            chunk, done = await conn.read_through(smtpdata.END_OF_DATA, min(limit + DATA_SLACK, DATA_PIECE))
            if too_big:
                continue
            chunks.append(chunk)
            raw_size += len(chunk)
            # The size that counts (RFC 1870) is the message's: without transparency
            # dots, the CRLF put in front and the ".CRLF" of the end marker. Only a
            # text longer than the limit as sent needs its dots counted. Before the
            # end, one dot may still be missing from the count (a line start split
            # between two pieces), so only a size over the limit by more is final.
            if raw_size - 5 > limit:
                chunks = [b"".join(chunks)]
                if done:
                    too_big = raw_size - 5 - (chunks[0].count(b"\r\n.") - 1) > limit
                else:
                    too_big = raw_size - 3 - chunks[0].count(b"\r\n.") > limit
                if too_big:
                    chunks.clear()
            # Over the size limit is final (552); over the budget only for now (452).
            if not too_big and not session.hold_data(raw_size):
                too_big = NO_ROOM
                chunks.clear()
        return (b"", too_big) if too_big else (b"".join(chunks), False)

    async def _deliver(self, job: Deliver, rec: SessionRecorder, session: SMTPSession) -> Reply | None:
        """Store and/or relay an accepted message; None, or the 451 (or a DMARC 550) when it failed."""
        folder = "INBOX"
        checked = job.message  # every line of it ends in CRLF (smtpdata.check_line_endings)
        if not self.submission and job.local and auth_mta.checking(self.lab, self.hostname):
            # The MX checks SPF, DKIM, ARC and DMARC and acts on them (maillab.auth).
            inbound = await auth_mta.inbound(self.lab, self.hostname, ip=session.peer_ip,
                                             helo=session.helo or "", mail_from=job.mail_from,
                                             local=job.local, message=job.message, rec=rec,
                                             queue_id=job.queue_id)
            if inbound.reply is not None:
                code, enhanced, text = inbound.reply
                rec.note(f"message refused: {text}")
                return Reply(code, enhanced, text)
            job, folder = replace(job, message=inbound.message, local=inbound.local), inbound.folder
        if job.remote and self.submission:
            job = replace(job, message=await auth_mta.outgoing(self.lab, self.hostname, job.message))
        if job.remote:
            # The relay first: if it cannot take the message, nobody gets a copy
            # and the client's retry does not duplicate local deliveries.
            try:
                room = getattr(self.lab.relay, "room", None)  # flow control (tests use stand-ins)
                if room is not None:
                    await room(rec)
                relay_id = self.lab.relay.submit(job.mail_from, job.remote, job.message,
                                                 origin=self.service.host, session=rec.session)
                if inspect.isawaitable(relay_id):
                    relay_id = await relay_id
                synced = getattr(self.lab.relay, "synced", None)
                if synced is not None:  # the queue entry on the disk before the 250
                    await synced(relay_id)
            except Exception as exc:
                rec.note(f"relay refused the message: {exc!r}")
                return Reply(451, "4.3.0", "Error: queue file write error, try again later")
            rec.note(f"queued for {', '.join(job.remote)} as {relay_id}", relay_id=relay_id,
                     recipients=job.remote)
        for address in job.local:
            try:
                # File system work happens on a worker thread, so other sessions on
                # the lab loop go on meanwhile (the store is thread-safe). The file is
                # on the disk (fsync'ed, marked complete in tmp/) before the client
                # hears 250, as with Postfix (limits.smtp_fsync; store/delivering.py).
                if self.lab.limits.smtp_fsync:
                    info = await DELIVERY.run(partial(self.lab.store.accept, address, job.message, folder,
                                                      crlf_only=job.message is checked))
                else:
                    info = await DELIVERY.run(partial(self.lab.store.deliver, address, job.message, folder,
                                                      crlf_only=job.message is checked))
            except OSError as exc:
                rec.note(f"delivery to {address} failed: {exc}")
                return Reply(451, "4.3.0", "Error: local delivery failed, try again later")
            rec.stored(f"{address}/{folder}", info.uid, info.size, user=address, queue_id=job.queue_id)
        return None


@register("smtp")
async def start_mx(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """MX, "port 25": mail for this host's domains from anyone, no AUTH, no relaying."""
    smtpdata.import_numpy_soon()
    return await SMTPServer(lab, service, implicit_tls=False).start()


@register("submission")
async def start_submission(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """Submission, "port 587" (RFC 6409): STARTTLS, then AUTH, then mail to anywhere."""
    smtpdata.import_numpy_soon()
    return await SMTPServer(lab, service, implicit_tls=False).start()


@register("smtps")
async def start_smtps(lab: Lab, service: Service) -> asyncio.AbstractServer:
    """Submission with implicit TLS, "port 465" (RFC 8314 3.3)."""
    smtpdata.import_numpy_soon()
    return await SMTPServer(lab, service, implicit_tls=True).start()
