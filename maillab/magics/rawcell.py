"""The one loop behind the raw protocol cells ``%%smtp``, ``%%pop3`` and ``%%imap``.

Each cell is a telnet session: connect (implicit TLS where the port says so), read
the greeting, then send the cell's lines one by one and read each reply, recording
the client side in the lab's events. What differs between the protocols is only
what one line means (SMTP's DATA text has no reply, IMAP's literals and IDLE take
the lines after them, POP3 and SMTP end at QUIT): a :class:`CellDialect` per
protocol says that in its :meth:`~CellDialect.step`, and :func:`run_raw` does the
rest once - connecting, timeouts, TLS and connection errors, closing.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..clients.raw import Exchange, RawSession
from ..lab import Lab
from ..views.theme import badge, page
from ..views.transcript import render_body, render_text
from .targets import lab_ssl_context, raw_target


@dataclass
class RawResult:
    """What a raw cell returns: the session as the client saw it."""

    target: str
    session: str | None
    events: Any
    problems: list[str] = field(default_factory=list)

    def _events(self) -> list[Any]:
        return self.events.events(session=self.session) if self.session else []

    @property
    def replies(self) -> list[str]:
        """The server's final reply lines, in order (greeting first)."""
        out = []
        for e in self._events():
            if e.kind == "S" and e.text[3:4] != "-":
                out.append(e.text)
        return out

    @property
    def codes(self) -> list[int]:
        """The reply codes, in order: ``[220, 250, 250, 550, 221]``."""
        # ASCII digits only: a server's "²50" is isdigit() too, and int() refuses it
        return [int(r[:3]) for r in self.replies if r[:3].isascii() and r[:3].isdigit()]

    def __repr__(self) -> str:
        text = render_text(self._events())
        return "\n".join([text, *(f"!! {p}" for p in self.problems)])

    def _repr_html_(self) -> str:
        probs = "".join(f"<div>{badge('err', p)}</div>" for p in self.problems)
        return page(render_body(self._events()) + probs, kind="raw")


class CellLines:
    """The cell's lines, taken one at a time by a dialect's step."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.i = 0

    def __bool__(self) -> bool:
        return self.i < len(self.lines)

    def take(self) -> str:
        line = self.lines[self.i]
        self.i += 1
        return line

    def skip_blank(self) -> None:
        while self and not self.lines[self.i].strip():
            self.i += 1

    def remaining_commands(self) -> int:
        return sum(1 for ln in self.lines[self.i:] if ln.strip())


class CellDialect:
    """What one protocol's raw cell does with its lines (one instance per cell run)."""

    protocol: ClassVar[str]

    def open(self, host: str, port: int, **kwargs: Any) -> RawSession:
        return RawSession(host, port, protocol=self.protocol, reply_complete=self.reply_complete, **kwargs)

    def reply_complete(self, command: str | None, lines: list[str]) -> bool:
        raise NotImplementedError

    def step(self, raw: Any, cell: CellLines, result: RawResult) -> bool:
        """Send the next line (or lines) and read the reply; False ends the session."""
        raise NotImplementedError

    def finish(self, result: RawResult) -> None:
        """Every line was sent: anything left unfinished goes into ``result.problems``."""


def command(raw: RawSession, line: str, result: RawResult) -> Exchange | None:
    """Send ``line`` and read its reply; None (and a problem noted) when none came in time."""
    ex = raw.command(line)
    if ex.timed_out:
        result.problems.append(f"no complete reply to {raw.masked(line)!r} within {raw.timeout} s")
        return None
    return ex


def run_raw(lab: Lab, target: str, text: str, dialect: CellDialect, *, timeout: float = 10.0,
            implicit_tls: bool | None = None) -> RawResult:
    """Run ``text`` as a raw ``dialect.protocol`` session against ``target``
    (a service name of the primary host, or host:port)."""
    host, port, implicit, cert_name = raw_target(lab, target, dialect.protocol)
    if implicit_tls is not None:
        implicit = implicit_tls
    result = RawResult(f"{host}:{port}", None, lab.events)
    try:
        raw = dialect.open(host, port, events=lab.events, implicit_tls=implicit,
                           ssl_context=lab_ssl_context(lab), server_hostname=cert_name, timeout=timeout)
    except OSError as exc:
        result.problems.append(f"cannot connect to {host}:{port}: {exc}")
        return result
    result.session = raw.recorder.session if raw.recorder else None
    try:
        if raw.greeting().timed_out:
            result.problems.append(f"no greeting within {timeout} s")
            return result
        cell = CellLines(text)
        while cell:
            if not dialect.step(raw, cell, result):
                break
        else:
            dialect.finish(result)
    except ssl.SSLError as exc:
        result.problems.append(f"TLS failed: {exc}")
    except (ConnectionError, OSError) as exc:
        result.problems.append(f"connection lost: {exc}")
    finally:
        raw.close()
    return result
