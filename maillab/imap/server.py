"""The IMAP servers of a lab host: ``imap`` (lab port 1143, STARTTLS) and ``imaps``
(lab port 1993, implicit TLS, RFC 8314).

A thin asyncio driver around the sans-IO parser and session: it reads lines
through :class:`~maillab.connection.LineConnection` (line limit; plaintext
pipelined after STARTTLS is discarded), reads literals only after checking
their announced size, writes responses in large chunks while honouring a slow
reader's backpressure, and records everything into the lab's event stream.

Lab policy on passwords without TLS: LOGIN and AUTHENTICATE PLAIN work on the
plaintext port when the server listens on a loopback address, so ``curl
imap://`` and imaplib examples work as typed (Dovecot makes the same exception
for connections from the server's own address). Each such login gets a note in
the transcript. A server bound to any other address, or a lab with
``lab.policy.imap_plaintext_auth = False``, advertises LOGINDISABLED and
answers ``NO [PRIVACYREQUIRED]`` until STARTTLS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING

from ..connection import ConnectionClosed, LineConnection, LineTooLong
from ..events import MASK, SessionRecorder
from ..faults import Rule, reply_closes
from ..listener import DROPPED, LineServer
from ..plaintext import plaintext_auth_allowed
from ..services import Service, register
from ..store.locking import MailboxLock
from ..workers import on_turn
from .commands.fetch import light
from .parser import Command, LiteralRefused, NeedLiteral, ParseError, Parser, parse_tag
from .responses import Delay, Notice, Output, Response
from .session import IMAPSession
from .states import State
from .verbs import (
    Append,
    Close,
    Copy,
    Create,
    Delete,
    Expunge,
    Fetch,
    List,
    Lsub,
    Rename,
    Search,
    Select,
    Status,
    Store,
    Subscribe,
    Unsubscribe,
)

log = logging.getLogger("maillab.imap")

if TYPE_CHECKING:
    from ..lab import Lab

#: Wait for a slow reader (drain) after writing this much.
CHUNK = 256 * 1024
#: Octets a connection's transport may hold before the driver waits for the reader.
WRITE_BUFFER = 1 << 20
#: Untagged responses of one command recorded one by one (the rest: one note).
RECORD_RESPONSES = 100
#: How often an IDLE session looks for changes nobody announced (mutt, cp, POP3).
IDLE_POLL = 1.0
#: Commands whose work may be heavy (parsing a 25 MB message of 10,000 parts for
#: BODYSTRUCTURE, SEARCH BODY over every body, storing a large APPEND or COPY,
#: indexing a 100,000-file Maildir on its first SELECT, STORE or EXPUNGE of 1:*):
#: they run on a worker thread, so the lab loop keeps answering other sessions
#: meanwhile. Move is a Copy, Examine a Select. Everything else is light and runs
#: inline on the loop, where it never waits for a mailbox another thread holds
#: (see ``IMAPSession.on_loop``). CREATE, DELETE, RENAME, SUBSCRIBE and UNSUBSCRIBE
#: wait for the disk (an fsync of the user's directory, and of the UIDVALIDITY file
#: before a new folder uses its value) before their OK. LIST and LSUB read the user's
#: directory and look at every folder in it (a user may have created 20,000: 0.4 s of
#: the loop, tests/test_socket_attacks.py).
OFFLOADED = (Fetch, Search, Append, Copy, Select, Status, Store, Expunge, Close, Create, Rename, List, Lsub,
             Delete, Subscribe, Unsubscribe)
#: A light command (NOOP, IDLE's updates, DONE...) whose session is owed more
#: untagged updates than this runs on a worker too: after another session's EXPUNGE
#: of 20,000 messages, announcing them is 20,000 lines of work on one NOOP.
INLINE_UPDATES = 1_000
#: :data:`OFFLOADED` commands run on the mailbox workers shared with POP3: at most
#: :data:`~maillab.workers.WORKERS` compute at once, and one that waits for a mailbox
#: lock another thread holds gives its turn back (tests/test_imap_worker_turns.py).


class IMAPHub:
    """What all IMAP sessions of a lab share: who is logged in how often, and who
    is waiting in IDLE on which mailbox."""

    def __init__(self, lab: Lab, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sessions_per_user: dict[str, int] = {}
        self.waiting: dict[tuple[str, str], set[asyncio.Event]] = {}
        # Deliveries happen on any thread (SMTP on the lab thread, tests on theirs).
        self._unsubscribe = lab.store.subscribe(
            lambda user, folder, info: loop.call_soon_threadsafe(self.changed, user, folder))

    def changed_anywhere(self, user: str, folder: str) -> None:
        """:meth:`changed`, callable from any thread (a session's command may run on a
        worker thread; asyncio events are set on the loop only)."""
        self.loop.call_soon_threadsafe(self.changed, user, folder)

    def changed(self, user: str, folder: str) -> None:
        for event in self.waiting.get((user.lower(), folder), ()):
            event.set()

    def watch(self, user: str, folder: str, event: asyncio.Event) -> None:
        self.waiting.setdefault((user.lower(), folder), set()).add(event)

    def unwatch(self, user: str, folder: str, event: asyncio.Event) -> None:
        events = self.waiting.get((user.lower(), folder))
        if events is not None:
            events.discard(event)
            if not events:
                del self.waiting[(user.lower(), folder)]

    def close(self) -> None:
        self._unsubscribe()


def _hub(lab: Lab) -> IMAPHub:
    """The lab's hub (``lab.imap_hub``), made by the first IMAP listener of a start."""
    if lab.imap_hub is None:
        lab.imap_hub = IMAPHub(lab, asyncio.get_running_loop())
        lab.on_stop(_stop_hub)
    return lab.imap_hub


async def _stop_hub(lab: Lab) -> None:
    hub, lab.imap_hub = lab.imap_hub, None
    if hub is not None:
        hub.close()


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


class IMAPServer(LineServer):
    """One listener (imap or imaps) of one lab host."""

    protocol = "imap"
    busy_reply = "* BYE [UNAVAILABLE] too many connections, try again later"
    crash_reply = "* BYE [SERVERBUG] internal server error, closing"

    def __init__(self, lab: Lab, service: Service, *, implicit_tls: bool) -> None:
        super().__init__(lab, service, implicit_tls=implicit_tls)
        self.hub = _hub(lab)

    @property
    def idle_timeout(self) -> float:
        return self.lab.limits.imap_idle_timeout

    def open_session(self) -> IMAPSession:
        svc = self.service
        return IMAPSession(
            self.lab.store, self.lab.users_at(svc.host), self.lab.limits,
            hostname=svc.hostname,
            tls_active=self.implicit_tls,
            starttls_available=not self.implicit_tls,
            plaintext_auth=plaintext_auth_allowed(self.lab, "imap") and _is_loopback(svc.address),
            on_change=self.hub.changed_anywhere,
            sessions_per_user=self.hub.sessions_per_user,
        )

    async def converse(self, conn: LineConnection, rec: SessionRecorder, session: IMAPSession) -> str:
        limits = self.lab.limits
        parser = Parser(max_literal=limits.imap_literal,
                        max_command=limits.imap_literal + limits.imap_line,
                        max_depth=limits.imap_nesting)
        reason = "connection closed by the client"
        _roomy_writes(conn)
        fault = await self.injected(rec)
        if fault is not None and (fault.drop or fault.reply):  # the greeting refused: BYE
            if not fault.drop:
                await self._send(conn, rec, [_fault_response("*", fault)])
            return DROPPED
        await self._send(conn, rec, session.greeting())
        while session.action != "close":
            literal, _ = _literal_limit(session)
            parser.max_literal, parser.max_command = literal, literal + limits.imap_line
            try:
                line = await conn.readline(limits.imap_line)
            except LineTooLong as exc:
                await self._line_too_long(conn, rec, parser, exc)
                continue
            except TimeoutError:
                await self._send(conn, rec, [Response(b"* BYE autologout: idle for too long\r\n")])
                return "idle timeout"
            if session.mode == "authenticate":
                rec.client_line(session.masked(line))
                await self._send(conn, rec, session.continue_line(line))
                continue
            try:
                result = await self._read_command(conn, rec, parser, session, line)
            except TimeoutError:  # a literal that did not arrive within the idle timeout
                await self._send(conn, rec, [Response(b"* BYE autologout: idle for too long\r\n")])
                return "idle timeout"
            except (ConnectionError, ConnectionClosed):
                raise
            except Exception as exc:  # a parser bug costs one command, never the session
                tag = parser.current_tag() or parse_tag(line) or "*"
                parser.reset()
                log.exception("IMAP command could not be read")
                rec.note(f"internal error: {exc!r}", error=True)
                await self._send(conn, rec, [Response(
                    f"{tag} BAD [SERVERBUG] internal error reading the command\r\n".encode())])
                continue
            if result is None:
                continue
            if isinstance(result, LiteralRefused):
                if await self._refuse_literal(conn, rec, session, result):
                    return "non-synchronizing literal over the limit"
                continue
            if isinstance(result, Command):
                names = (f"UID {result.name}", result.name) if result.uid else (result.name,)
                fault = await self.injected(rec, *names)
                if fault is not None and (fault.drop or fault.reply):
                    if not fault.drop:  # answered in the session's place; it never sees the command
                        await self._send(conn, rec, [_fault_response(result.tag, fault)])
                    if reply_closes(fault):
                        return DROPPED
                    continue
            offload = isinstance(result, OFFLOADED) or session.updates_owed() > INLINE_UPDATES
            held = _light_fetch(session, result) if offload else None
            session.on_loop = not offload or held is not None
            outputs = session.execute(result)
            if held is not None:  # computed whole under the lock, which is released before any wait
                try:
                    outputs = _computed(outputs)
                finally:
                    held.release()
            elif offload:
                outputs = self._on_worker(outputs)
            await self._send(conn, rec, outputs,
                             tag=result.tag if isinstance(result, Command) else None)
            if session.mode == "idle":
                reason = await self._idle(conn, rec, session) or reason
            if session.action == "starttls":
                try:
                    await conn.starttls(self.tls_context, limits.tls_handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                    return f"TLS handshake failed: {exc}"
                session.tls_started()
                _roomy_writes(conn)  # a new transport: its own buffer limits
                parser.reset()
            if session.action == "close":
                reason = "LOGOUT" if session.state.value == "LOGOUT" else "closed by the server"
        return reason

    async def _read_command(self, conn: LineConnection, rec: SessionRecorder, parser: Parser,
                            session: IMAPSession, line: bytes,
                            ) -> Command | ParseError | LiteralRefused | None:
        """Feed the parser a line and, while it asks for them, literals and more lines."""
        limits = self.lab.limits
        rec.client_line(session.masked(line))
        # Literals of LOGIN and AUTHENTICATE carry credentials: never recorded.
        hide = self._hides_literals(line)
        result = parser.feed_line(line)
        while isinstance(result, NeedLiteral):
            if result.sync:
                # RFC 3501 7.5: go ahead (only now, after the size was checked)
                await self._send(conn, rec, [Response(b"+ ready for literal data\r\n")])
            data = await conn.readexactly(result.size)
            if hide:
                rec.client_line(MASK, literal=True)
            else:
                rec.payload("C", data)
            parser.feed_literal(data)
            try:
                line = await conn.readline(limits.imap_line)
            except LineTooLong as exc:
                await self._line_too_long(conn, rec, parser, exc)
                return None
            rec.client_line(MASK if hide and line.strip() else session.masked(line))
            result = parser.feed_line(line)
        return result

    async def _line_too_long(self, conn: LineConnection, rec: SessionRecorder, parser: Parser,
                             exc: LineTooLong) -> None:
        """An overlong line was read and thrown away: the command it belonged to is
        dropped, the client told, and the session goes on."""
        parser.reset()
        rec.note(f"command line of {exc.length}+ octets discarded", limit="imap_line")
        await self._send(conn, rec, [Response(
            b"* BAD [TOOBIG] line over %d octets (imap_line)\r\n" % self.lab.limits.imap_line)])

    @staticmethod
    def _hides_literals(first: bytes) -> bool:
        words = first.split(b" ", 2)
        return len(words) > 1 and words[1].upper() in (b"LOGIN", b"AUTHENTICATE")

    async def _refuse_literal(self, conn: LineConnection, rec: SessionRecorder, session: IMAPSession,
                              refused: LiteralRefused) -> bool:
        """A literal over imap_literal (imap_literal_before_login before a login). Returns
        True when the connection must close."""
        limit, name = _literal_limit(session)
        tag = refused.tag or "*"
        rec.note(f"literal of {refused.size} octets refused before reading it", limit=name)
        if refused.sync:
            # No "+" was sent, so the client sends no bytes: the next line is a new command.
            await self._send(conn, rec, [Response(
                f"{tag} NO [TOOBIG] literal of {refused.size} octets is over the limit of"
                f" {limit} ({name})\r\n".encode())])
            return False
        # LITERAL+ bytes are already on their way: never read them as commands.
        await self._send(conn, rec, [
            Response(f"{tag} BAD [TOOBIG] non-synchronizing literal of {refused.size} octets is"
                     f" over the limit of {limit} ({name})\r\n".encode()),
            Response(b"* BYE closing: the literal's bytes cannot be skipped safely\r\n")])
        return True

    async def _idle(self, conn: LineConnection, rec: SessionRecorder, session: IMAPSession) -> str | None:
        """RFC 2177: tell the client about changes as they happen until it sends DONE."""
        wake = asyncio.Event()
        watched = None
        if session.selected is not None and session.user:
            watched = (session.user, session.selected.name)
            self.hub.watch(*watched, wake)
        read: asyncio.Task[bytes] | None = None
        try:
            while session.mode == "idle":
                if read is None:
                    read = asyncio.ensure_future(conn.readline(self.lab.limits.imap_line))
                waiter = asyncio.ensure_future(wake.wait())
                done, _ = await asyncio.wait({read, waiter}, timeout=IDLE_POLL,
                                             return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                wake.clear()
                if read in done:
                    task, read = read, None
                    try:
                        line = task.result()
                    except LineTooLong:
                        line = b"<overlong line>\r\n"
                    rec.client_line(session.masked(line))
                    await self._send_placed(conn, rec, session, session.continue_line(line))
                else:
                    await self._send_placed(conn, rec, session, session.idle_updates())
        except TimeoutError:
            await self._send(conn, rec, [Response(b"* BYE autologout: idle for too long\r\n")])
            session.action = "close"
            return "idle timeout"
        finally:
            if watched is not None:
                self.hub.unwatch(*watched, wake)
            if read is not None and not read.done():
                read.cancel()
        return None

    async def _send_placed(self, conn: LineConnection, rec: SessionRecorder, session: IMAPSession,
                           outputs: Iterator[Output]) -> None:
        """Send what an IDLE session says: computed on the loop, unless it has many
        updates to announce (:data:`INLINE_UPDATES`)."""
        if session.updates_owed() <= INLINE_UPDATES:
            await self._send(conn, rec, outputs)
            return
        session.on_loop = False  # on a worker it may wait for the mailbox lock
        try:
            await self._send(conn, rec, self._on_worker(outputs))
        finally:
            session.on_loop = True

    async def _on_worker(self, outputs: Iterator[Output]) -> AsyncIterator[Output]:
        """The session's outputs, computed on a worker thread a batch (up to CHUNK
        octets) at a time: the session still runs one command at a time, only not on
        the loop, and recording and writing stay on the loop."""
        while True:
            batch, error = await on_turn(_next_batch, outputs)
            for out in batch:
                yield out
            if error is not None:
                raise error  # after what came before it, as when run inline
            if not batch:
                return

    async def _send(self, conn: LineConnection, rec: SessionRecorder,
                    outputs: Iterable[Output] | AsyncIterator[Output],
                    tag: str | None = None) -> None:
        """Write responses in large chunks, recording them; wait for slow readers.

        Message data (a FETCH literal) is handed on as the bytes object it was read
        into: :meth:`LineConnection.writelines` sends it without joining.
        """
        pending: list[bytes] = []  # parts not yet handed to the connection
        size = 0
        record = _Recorder(rec)
        if not isinstance(outputs, AsyncIterator):
            outputs = _inline(outputs)
        try:
            async for out in outputs:
                if isinstance(out, Response):
                    record(out)
                    pending.extend(out.parts)
                    size += len(out)
                    if size >= CHUNK:
                        conn.writelines(pending)
                        pending, size = [], 0
                        await conn.drain()
                elif isinstance(out, Delay):
                    conn.writelines(pending)
                    pending, size = [], 0
                    await conn.drain()
                    await asyncio.sleep(out.seconds)
                elif isinstance(out, Notice):
                    record.flush()
                    _notice(rec, out)
        except (ConnectionError, ConnectionClosed, asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:  # a bug must cost one command, never the server
            record.flush()
            rec.note(f"internal error: {exc!r}", error=True)
            text = f"{tag or '*'} NO [SERVERBUG] internal error: {type(exc).__name__}\r\n"
            resp = Response(text.encode())
            record(resp)
            pending.extend(resp.parts)
        record.flush()
        conn.writelines(pending)
        await conn.drain()


async def _inline(outputs: Iterable[Output]) -> AsyncIterator[Output]:
    for out in outputs:
        yield out


def _literal_limit(session: IMAPSession) -> tuple[int, str]:
    """The largest literal the session may send now, and the limit's name: before a login
    a client gets no more than a password needs (Dovecot's login processes take 4 KB)."""
    if session.state is State.NOT_AUTHENTICATED:
        return session.limits.imap_literal_before_login, "imap_literal_before_login"
    return session.limits.imap_literal, "imap_literal"


def _light_fetch(session: IMAPSession, cmd: object) -> MailboxLock | None:
    """The selected mailbox's lock, taken without waiting, if ``cmd`` is a FETCH light
    enough for the loop (:func:`~maillab.imap.commands.fetch.light`: a few small
    messages, nothing parsed or flagged); None (offload it) otherwise or when another
    thread holds the mailbox. The store locking rule holds: the loop never waits."""
    view = session.selected
    if not isinstance(cmd, Fetch) or view is None or session.updates_owed() > INLINE_UPDATES:
        return None
    lock = view.mailbox.lock
    if not lock.acquire(blocking=False):
        return None
    try:
        if light(session, cmd):
            return lock
    except Exception:  # (the worker answers it, and reports a bug the usual way)
        pass
    lock.release()
    return None


def _computed(outputs: Iterator[Output]) -> AsyncIterator[Output]:
    """Every output of a command computed now (on the loop, under the lock the caller
    holds), handed on afterwards as :meth:`IMAPServer._on_worker` hands a worker's."""
    batches: list[list[Output]] = []
    error: Exception | None = None
    while error is None:
        batch, error = _next_batch(outputs)
        if not batch:
            break
        batches.append(batch)
    return _replay(batches, error)


async def _replay(batches: list[list[Output]], error: Exception | None) -> AsyncIterator[Output]:
    for batch in batches:
        for out in batch:
            yield out
    if error is not None:
        raise error  # after what came before it, as when run on a worker


def _next_batch(outputs: Iterator[Output]) -> tuple[list[Output], Exception | None]:
    """The next outputs of a command, up to CHUNK octets or a Delay (which the loop
    must honour before more is computed), and the error that ended it if one did;
    no outputs when the command is done. Runs on a worker thread."""
    batch: list[Output] = []
    size = 0
    try:
        for out in outputs:
            batch.append(out)
            if isinstance(out, Response):
                size += len(out)
            if size >= CHUNK or isinstance(out, Delay):
                break
    except Exception as exc:  # a bug: the loop sends what came before, then reports it
        return batch, exc
    return batch, None


class _Recorder:
    """Records the responses to one command: the first :data:`RECORD_RESPONSES`
    untagged ones in full, the rest summed up in one note, so ``FETCH 1:*`` on
    2,000 messages costs a few hundred events, not 6,000, and the transcript
    stays readable. Tagged and continuation responses are always recorded."""

    def __init__(self, rec: SessionRecorder) -> None:
        self.rec = rec
        self.untagged = 0
        self.skipped = 0
        self.skipped_octets = 0

    def __call__(self, resp: Response) -> None:
        if resp.count > 1:
            self._batch(resp)
            return
        if resp.parts[0][:2] == b"* ":
            self.untagged += 1
            if self.untagged > RECORD_RESPONSES:
                self.skipped += 1
                self.skipped_octets += len(resp)
                return
        self.flush()
        _record(self.rec, resp)

    def _batch(self, resp: Response) -> None:
        """A batch of untagged lines (:func:`~maillab.imap.responses.lines`): each
        recorded as its own response while there is room, the rest counted."""
        data = resp.data
        room = min(max(0, RECORD_RESPONSES - self.untagged), resp.count)
        self.untagged += resp.count
        if room:
            self.flush()
            pieces = data.split(b"\r\n", room)
            for piece in pieces[:room]:
                self.rec.server_line(piece.decode("utf-8", "replace"))
            data = pieces[room] if len(pieces) > room else b""
        if resp.count > room:
            self.skipped += resp.count - room
            self.skipped_octets += len(data)

    def flush(self) -> None:
        if self.skipped:
            self.rec.note(f"... and {self.skipped} more untagged responses ({self.skipped_octets}"
                          " octets) sent, not recorded one by one",
                          responses=self.skipped, bytes=self.skipped_octets, limit="record")
            self.skipped = self.skipped_octets = 0


def _fault_response(tag: str, fault: Rule) -> Response:
    """An injected reply: tagged NO/BAD, or an untagged BYE (RFC 3501 7.1.5)."""
    text = fault.reply or "BYE"
    if text[:3].upper() == "BYE":
        tag = "*"
    return Response(f"{tag} {text}\r\n".encode())


def _roomy_writes(conn: LineConnection) -> None:
    """Let the transport buffer up to WRITE_BUFFER before the driver waits (asyncio's
    default is 64 KiB), so a large FETCH keeps producing while the client reads
    instead of the two taking turns."""
    transport = conn.transport
    if transport is not None:
        transport.set_write_buffer_limits(high=WRITE_BUFFER, low=WRITE_BUFFER // 4)


def _record(rec: SessionRecorder, resp: Response) -> None:
    if not resp.literals:
        rec.server_line(resp.data[:-2].decode("utf-8", "replace"))
        return
    text = b""
    for i, part in enumerate(resp.parts):
        if i in resp.literals:
            rec.server_line(text.rstrip(b"\r\n").decode("utf-8", "replace"))
            rec.payload("S", part)
            text = b""
        else:
            text += part
    text = text.rstrip(b"\r\n")
    if text:
        rec.server_line(text.decode("utf-8", "replace"))


def _notice(rec: SessionRecorder, notice: Notice) -> None:
    if notice.kind == "auth":
        rec.auth(*notice.args)
    elif notice.kind == "state":
        rec.state(notice.args[0])
    elif notice.kind == "stored":
        rec.stored(*notice.args)
    else:
        rec.note(notice.args[0], **notice.data)


@register("imap")
async def start_imap(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await IMAPServer(lab, service, implicit_tls=False).start()


@register("imaps")
async def start_imaps(lab: Lab, service: Service) -> asyncio.AbstractServer:
    return await IMAPServer(lab, service, implicit_tls=True).start()
