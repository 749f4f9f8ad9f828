"""The listener half of the lab's line servers (SMTP, POP3, IMAP).

All three protocols open and close a session the same way, so that part lives here
once: bind the service's address (implicit TLS on the pop3s/imaps ports, RFC
8314), open a transcript for every connection, refuse connections over
``max_connections`` with the protocol's own busy reply, count the session in
the service record, and, however the session ends (QUIT/LOGOUT, the client
going away, a TLS error, the lab stopping), close it with a reason the
transcript shows.

What happens in between, the conversation itself, is each protocol's own
:meth:`LineServer.converse`. Failure injection (``lab.faults``, ``%mail fail``)
hooks in here too: :func:`injected` is asked before the greeting and before each
command reaches the session, by every protocol's driver (SMTP's as well).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

from .connection import ConnectionClosed, LineConnection
from .faults import CONNECT, Rule, transcript_text

if TYPE_CHECKING:
    from .events import SessionRecorder
    from .lab import Lab
    from .services import Service

log = logging.getLogger("maillab.listener")

#: Why a session ended when a fault rule closed it.
DROPPED = "connection closed by an injected fault (%mail fail)"


async def injected(lab: Lab, service: Service, protocol: str, rec: SessionRecorder,
                   names: tuple[str, ...]) -> Rule | None:
    """The ``lab.faults`` rule that answers this command (``names``: its verb, e.g.
    ``("UID FETCH", "FETCH")``; ``("CONNECT",)`` for the greeting), or None.

    A rule that fires is recorded as a ``fault`` event and its delay has been waited
    when this returns; the driver then closes the connection (``rule.drop``), sends
    ``rule.reply`` instead of running the command, or (a delay only) runs it.
    """
    rule = lab.faults.fire(service.hostname, protocol, service.name, names)
    if rule is None:
        return None
    rec.fault(transcript_text(rule, names[0]), command=names[0], reply=rule.reply,
              delay=rule.delay, drop=rule.drop, rule=rule.describe())
    if rule.delay:
        await asyncio.sleep(rule.delay)
    return rule


class _HandshakeFailed(Exception):
    """An implicit-TLS client never completed its handshake."""


class LineServer:
    """One listener (e.g. pop3 or pop3s) of one lab host; a subclass per protocol."""

    #: The protocol name the transcript files sessions under ("pop3", "imap").
    protocol: ClassVar[str]
    #: The line a client gets when ``max_connections`` sessions are open already.
    busy_reply: ClassVar[str]
    #: The last line before the server closes a session it can no longer serve (a bug
    #: outside any one command): the protocol's own goodbye, never a silent close.
    crash_reply: ClassVar[str]

    def __init__(self, lab: Lab, service: Service, *, implicit_tls: bool) -> None:
        self.lab = lab
        self.service = service
        self.implicit_tls = implicit_tls
        assert lab.ca is not None
        # One certificate per host, valid for every address its services bind (a joined
        # lab's MX on the listen address, the rest on loopback).
        addresses = [service.address, *(s.address for s in lab.services if s.hostname == service.hostname)]
        self.tls_context: ssl.SSLContext = lab.ca.server_context(service.hostname, list(dict.fromkeys(addresses)))
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def idle_timeout(self) -> float:
        """Seconds a client may stay silent before the server gives up on it."""
        raise NotImplementedError

    def open_session(self) -> Any:
        """The protocol's sans-IO session for a new connection (has an ``end()``)."""
        raise NotImplementedError

    async def converse(self, conn: LineConnection, rec: SessionRecorder, session: Any) -> str:
        """Greet, then serve commands until the session ends; returns why it ended."""
        raise NotImplementedError

    async def injected(self, rec: SessionRecorder, *names: str) -> Rule | None:
        """:func:`injected` for this listener."""
        return await injected(self.lab, self.service, self.protocol, rec, names or (CONNECT,))

    def session_ended(self, rec: SessionRecorder, session: Any) -> None:
        """The connection is gone, whichever way: release what the session holds."""
        session.end()

    async def start(self) -> asyncio.AbstractServer:
        """Listen, and write the port actually bound (port 0 = any) into the service."""
        loop = asyncio.get_running_loop()
        # Implicit TLS is started by the session (handle()), not by asyncio's
        # create_server(ssl=...): a connection in its handshake then counts against
        # max_connections. asyncio's own handshakes counted nowhere, so a client that
        # opened connections and sent nothing (or half a ClientHello) held a socket and
        # a TLS object each for tls_handshake_timeout, as many as it liked.
        server = await loop.create_server(
            lambda: LineConnection(idle_timeout=self.idle_timeout, on_open=self._opened,
                                   tls_first=self.implicit_tls),
            self.service.address, self.service.port,
            reuse_address=True,
        )
        self.service.port = server.sockets[0].getsockname()[1]
        return server

    def _opened(self, conn: LineConnection) -> None:
        # asyncio keeps only weak references to tasks: hold each session's here.
        task = asyncio.get_running_loop().create_task(
            self.handle(conn), name=f"{self.protocol} session {conn.peer}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, conn: LineConnection) -> None:
        svc = self.service
        rec = self.lab.events.session(self.protocol, "server", svc.hostname, conn.peer,
                                      service=svc.name, port=svc.port)
        conn.recorder = rec
        limits = self.lab.limits
        if svc.active >= limits.max_connections:
            if self.implicit_tls:  # a busy reply would cost the handshake the cap is there to spare
                rec.close("too many connections (closed before the TLS handshake)")
            else:
                await conn.send_line(self.busy_reply)
                rec.close("too many connections")
            await conn.close()
            return
        svc.session_opened()
        session = self.open_session()
        reason = "connection closed by the client"
        try:
            if self.implicit_tls:
                try:
                    await conn.starttls(self.tls_context, limits.tls_handshake_timeout)
                except (ssl.SSLError, OSError, asyncio.TimeoutError) as exc:
                    raise _HandshakeFailed(f"TLS handshake failed: {exc or type(exc).__name__}") from exc
            reason = await self.converse(conn, rec, session)
        except _HandshakeFailed as exc:
            reason = str(exc)
        except ConnectionClosed:
            pass
        except TimeoutError:
            reason = "idle timeout"
        except asyncio.CancelledError:
            # The lab is stopping. Not re-raised: the task ends here either way.
            reason = "lab stopped"
        except (ConnectionError, ssl.SSLError) as exc:
            reason = f"connection error: {exc}"
        except Exception as exc:  # a bug ends this session with a goodbye, never the listener
            log.exception("%s session failed", self.protocol)
            rec.note(f"internal error: {exc!r}", error=True)
            reason = f"internal error: {type(exc).__name__}"
            try:
                await conn.send_line(self.crash_reply)
            except Exception:  # the connection may be what broke
                pass
        finally:
            self.session_ended(rec, session)
            rec.close(reason)
            svc.session_closed()
            await conn.close()
