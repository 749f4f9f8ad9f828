"""User hooks on a lab host: aiosmtpd handler objects, through aiosmtpd's public API.

Code written for aiosmtpd (its docs, "Handler hooks") runs in the lab unchanged::

    class NoSpam:
        async def handle_DATA(self, server, session, envelope):
            if b"viagra" in envelope.content.lower():
                return "550 5.7.1 No thanks"
            return "250 OK"

    lab.set_handler("mail.alpha.test", NoSpam())     # or: %mail handler mail.alpha.test spam

The lab's own rules come first (no open relay, sizes, bare LF...); a hook then
has its say: ``handle_MAIL`` and ``handle_RCPT`` get the address and options
(``envelope.mail_from`` / ``envelope.rcpt_tos`` are filled in by the lab when the
hook returns a 2xx), ``handle_EHLO`` (the 5-argument form) gets and returns the
reply lines, so it may change what is advertised, ``handle_DATA`` gets the whole message in ``envelope.content``
(bytes, with the lab's Received header). A 2xx reply lets the command go on (the
message is then stored or relayed as usual) and is what the client sees; a 4xx
or 5xx reply refuses it. A hook written as ``async def`` runs on the lab loop
and must not block; a plain ``def`` runs on a worker thread, so it may block
(e.g. send an auto-reply with smtplib). A hook that raises or takes longer than
the SMTP timeout gets the client a 451; the session goes on.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from typing import Any

from aiosmtpd.smtp import Session

from ..events import SessionRecorder
from .session import Hook, SMTPSession

#: The hooks the lab calls (aiosmtpd's names), in the order of a transaction.
HOOKS = ("EHLO", "MAIL", "RCPT", "DATA")


def names(handler: Any) -> frozenset[str]:
    """Which of :data:`HOOKS` ``handler`` implements."""
    if handler is None:
        return frozenset()
    return frozenset(n for n in HOOKS if callable(getattr(handler, f"handle_{n}", None)))


def new_session(peer: str) -> Session:
    """aiosmtpd's per-connection Session object, as its hooks expect it."""
    host, _, port = peer.rpartition(":")
    session = Session(asyncio.get_running_loop())
    session.peer = (host, int(port)) if port.isdigit() else peer
    return session


def update_session(hook_session: Session, session: SMTPSession) -> None:
    """Copy what the lab session knows into aiosmtpd's Session before a hook runs."""
    hook_session.host_name = session.helo
    hook_session.extended_smtp = session.extended
    hook_session.authenticated = session.user is not None
    hook_session.auth_data = session.user
    hook_session.ssl = ({"version": session.tls.version, "cipher": session.tls.cipher}
                        if session.tls is not None else None)


async def call(handler: Any, hook: Hook, server: Any, hook_session: Session,
               rec: SessionRecorder, *, timeout: float) -> Any:
    """Run ``handler.handle_<hook.name>``; its return value, or a 451 string when it failed."""
    method = getattr(handler, f"handle_{hook.name}")
    args = (server, hook_session, hook.envelope, *hook.args)
    try:
        if inspect.iscoroutinefunction(method):
            status = await asyncio.wait_for(method(*args), timeout)
        else:
            loop = asyncio.get_running_loop()
            status = await asyncio.wait_for(
                loop.run_in_executor(None, functools.partial(method, *args)), timeout)
            if inspect.isawaitable(status):
                status = await asyncio.wait_for(status, timeout)
    except Exception as exc:
        rec.note(f"the host's handle_{hook.name} failed: {exc!r}", hook=hook.name)
        return "451 4.3.0 Error: the host's mail handler failed; try again later"
    rec.note(f"handle_{hook.name} of {type(handler).__name__} answered {status!r}", hook=hook.name)
    return status
