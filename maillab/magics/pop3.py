"""``%pop3`` and ``%%pop3``: POP3 as a client sees it.

``%pop3 bob --list`` runs a real POP3 session (poplib through maillab's recording
client) and returns a table, the server's state diagram for that session and
the transcript. ``%%pop3 host:port`` (or ``pop3`` / ``pop3s``) sends the cell's
lines one by one, like telnet, and shows each reply.
"""

from __future__ import annotations

import html
import poplib
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float

from ..clients.pop3 import connect
from ..lab import Lab
from ..views.pop3_state import POP3StateFigure, session_for_client, session_state
from ..views.status import text_table
from ..views.theme import card_table, page, text_lines
from ..views.transcript import render_html, render_text
from .comments import strip_comment
from .mail import ensure_started, help_asked
from .rawcell import CellDialect, CellLines, RawResult, command, run_raw
from .state import current_lab
from .targets import lab_ssl_context

COLUMNS = (("#", "number"), ("UIDL", "uidl"), ("octets", "size"), ("Subject", "subject"),
           ("this session", "action"))

#: Commands whose +OK reply goes on as a multi-line block ending in "." (RFC 1939, 2449).
MULTILINE_ALWAYS = {"CAPA", "RETR", "TOP"}
MULTILINE_WITHOUT_ARGUMENT = {"LIST", "UIDL", "AUTH"}


def pop3_reply_complete(command: str | None, lines: list[str]) -> bool:
    """When a POP3 reply is complete: one status line, or a dot-terminated block
    after +OK to a multi-line command (RFC 1939 section 3)."""
    if not lines:
        return False
    first = lines[0]
    if command is None or not first.startswith("+OK"):
        return True  # greeting, -ERR, or a "+ " SASL challenge
    words = command.split()
    verb = words[0].upper() if words else ""
    multiline = verb in MULTILINE_ALWAYS or (verb in MULTILINE_WITHOUT_ARGUMENT and len(words) == 1)
    return not multiline or (len(lines) > 1 and lines[-1] == ".")


@dataclass
class POP3Result:
    """What ``%pop3`` returns: what the client did, the drop listing, the server's
    state diagram for the session and the client-side transcript."""

    user: str
    rows: list[dict[str, Any]]
    bodies: list[tuple[str, str]] = field(default_factory=list)  # (title, text)
    figure: POP3StateFigure | None = None
    events: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # one sentence each, shown one per line

    @property
    def note(self) -> str:
        return "\n".join(self.notes)

    @property
    def state(self) -> Any:
        return self.figure.st if self.figure else None

    @property
    def columns(self) -> tuple[tuple[str, str], ...]:
        """The table's columns, without those this session left empty."""
        return tuple((t, k) for t, k in COLUMNS if k in ("number", "size") or any(
            r.get(k) is not None if k == "subject" else r.get(k) for r in self.rows))

    def _shown(self) -> list[dict[str, Any]]:
        """The rows as shown: a Subject this session did not download says so."""
        return [{**r, "subject": subject_cell(r.get("subject"))} for r in self.rows]

    def __repr__(self) -> str:
        parts = [f"POP3 session as {self.user}",
                 text_table(self._shown(), self.columns) if self.rows else "(no messages)"]
        for title, text in self.bodies:
            parts += [f"--- {title}", text]
        if self.figure:
            parts.append(repr(self.figure))
        parts += self.notes
        parts += ["--- transcript (client side)", render_text(self.events)]
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="pop3")

    def _html_body(self) -> str:
        # at 800 px and 150% zoom each message is a card (theme.card_table)
        table = card_table([t for t, _ in self.columns], (
            [_cell_html(r, k) for _, k in self.columns] for r in self.rows), kind="ml-cards-narrow")
        out = [f"<b>POP3 session as {html.escape(self.user)}</b>",
               table if self.rows else "<i>no messages</i>"]
        for title, text in self.bodies:
            out.append(f"<details open><summary>{html.escape(title)}</summary>"
                       f"{text_lines(text)}</details>")
        if self.figure:
            out.append(self.figure._repr_html_())
        out += [f"<div>{html.escape(n)}</div>" for n in self.notes]
        out.append("<details><summary>transcript (client side)</summary>"
                   f"{render_html(self.events)}</details>")
        return "".join(out)


#: What the Subject column says of a message this session did not download: LIST
#: (RFC 1939 5) answers numbers and sizes only, so its subject is unknown, not empty.
NOT_DOWNLOADED = "(not downloaded: LIST gives sizes only)"


def subject_cell(subject: str | None) -> str:
    """A row's Subject as shown: None (not downloaded) says so; "" is a message read
    with TOP or RETR that has no Subject field."""
    if subject is None:
        return NOT_DOWNLOADED
    return subject or "(no Subject field)"


def _cell_html(row: dict[str, Any], key: str) -> str:
    if key == "subject":
        shown = html.escape(subject_cell(row.get("subject")))
        return f"<span class='ml-muted'>{shown}</span>" if row.get("subject") in (None, "") else shown
    return html.escape(str(row.get(key, "")))


def _subject(lines: list[bytes]) -> str:
    from email.header import decode_header, make_header

    for i, ln in enumerate(lines):
        if not ln:
            break
        if ln.lower().startswith(b"subject:"):
            raw = ln[8:].decode("utf-8", "replace")
            for cont in lines[i + 1:]:  # folded header lines (RFC 5322 2.2.3)
                if cont[:1] not in (b" ", b"\t"):
                    break
                raw += cont.decode("utf-8", "replace")
            try:
                return str(make_header(decode_header(raw.strip())))
            except Exception:
                return raw.strip()
    return ""


def run_client_session(lab: Lab, user: str, *, list_: bool = True, top: tuple[int, int] | None = None,
                       retr: list[int] | None = None, dele: list[int] | None = None, keep: bool | None = None,
                       drop: bool = False, tls: str = "none", timeout: float = 10.0) -> POP3Result:
    """A real POP3 session: log in, LIST/UIDL, TOP/RETR/DELE as asked, then QUIT
    (or, with ``drop``, cut the connection without QUIT).

    ``keep``: None (default) leaves retrieved messages alone; False deletes what
    RETR downloaded (classic POP3); True keeps everything: messages marked by
    DELE are unmarked with RSET before QUIT, so the marks are shown and undone.
    """
    address = lab.users.resolve(user)
    if address is None:
        raise UsageError(f"no lab user {user!r}; users: {', '.join(u.address for u in lab.users)}")
    service = "pop3s" if tls == "implicit" else "pop3"
    host, port = lab.address(service, lab.home_host(address))  # where the user's login exists
    client = connect(host, port, events=lab.events, tls=tls, ssl_context=lab_ssl_context(lab),
                     timeout=timeout)
    session = client.recorder.session if client.recorder else None
    local_host, local_port = client.sock.getsockname()[:2]
    local = f"{local_host}:{local_port}"
    result = POP3Result(address, [])
    rows: dict[int, dict[str, Any]] = {}
    try:
        client.user(user)
        client.pass_(lab.users.password(user))
        if list_:
            _r, listing, _o = client.list()
            uidls = {int(n): u.decode() for n, u in (ln.split() for ln in client.uidl()[1])}
            for ln in listing:
                n, size = (int(x) for x in ln.split())
                rows[n] = {"number": n, "uidl": uidls.get(n, ""), "size": size, "subject": None, "action": ""}
        if top is not None:
            n, count = top
            _r, lines, _o = client.top(n, count)
            rows.setdefault(n, {"number": n}).update(subject=_subject(lines), action=f"TOP {n} {count} (peek)")
            result.bodies.append((f"TOP {n} {count}", b"\n".join(lines).decode("utf-8", "replace")))
        for n in retr or []:
            _r, lines, octets = client.retr(n)
            row = rows.setdefault(n, {"number": n})
            row.update(subject=_subject(lines), action=f"RETR ({octets} octets)")
            result.bodies.append((f"RETR {n}", b"\n".join(lines).decode("utf-8", "replace")))
            if keep is False:
                client.dele(n)
                row["action"] += ", DELE (--no-keep)"
        for n in dele or []:
            client.dele(n)
            row = rows.setdefault(n, {"number": n})
            row["action"] = (row.get("action", "") + ", DELE").lstrip(", ")
        if keep and dele:
            client.rset()
            result.notes.append(f"--keep: RSET unmarked message(s) {', '.join(map(str, dele))} before QUIT,"
                                " so nothing is deleted.")
        if drop:
            client.sock.shutdown(socket.SHUT_RDWR)
            result.notes.append("Connection cut without QUIT (--drop): the server never enters UPDATE.")
        else:
            client.quit()
    except poplib.error_proto as exc:
        said = exc.args[0].decode("utf-8", "replace") if isinstance(exc.args[0], bytes) else str(exc)
        marked = any("DELE" in r.get("action", "") for r in rows.values())
        if said == "-ERR EOF":  # poplib's words for a connection closed with no reply at all
            result.notes.append("The server closed the connection without a reply"
                                + (": no UPDATE state, the DELE marks were not applied." if marked else "."))
        elif marked:
            result.notes.append(f"The server said: {said}.")
            result.notes.append("Closed without QUIT after the error: the DELE marks were not applied.")
        else:
            result.notes.append(f"The server said: {said}.")
            try:  # the session goes on after -ERR (RFC 1939 3): end it as a client would
                client.quit()
            except (poplib.error_proto, OSError):
                pass
    except (OSError, ssl.SSLError) as exc:
        result.notes.append(f"Connection problem: {exc}.")
    finally:
        client.close()
    result.rows = [rows[n] for n in sorted(rows)]
    left = len(lab.store.mailbox(address).messages())
    result.notes.append(f"After the session: {left} message(s) on the server.")
    # the server's side of the same connection: its peer is our local address
    server_session = _wait_closed(lab, local)
    if server_session:
        result.figure = POP3StateFigure(session_state(lab.events.events(session=server_session), server_session))
    result.events = lab.events.events(session=session) if session else []
    return result


def _wait_closed(lab: Lab, local: str, timeout: float = 2.0) -> str | None:
    """The server session for our connection, once the server has finished it."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        sid = session_for_client(lab.events.events(protocol="pop3", kinds=("opened",)), local)
        if sid and lab.events.events(session=sid, kinds=("closed",)):
            return sid
        if time.monotonic() > deadline:
            return sid
        time.sleep(0.01)


# -- raw cells -----------------------------------------------------------------------------

class POP3Cell(CellDialect):
    """``%%pop3``: each non-blank line is a command, its reply read (multi-line where
    POP3 says so). ``STLS`` answered with +OK upgrades the connection, trusting the lab
    CA; lines answering a SASL "+ " challenge are masked, like PASS and APOP digests."""

    protocol = "pop3"

    def reply_complete(self, command: str | None, lines: list[str]) -> bool:
        return pop3_reply_complete(command, lines)

    def step(self, raw: Any, cell: CellLines, result: RawResult) -> bool:
        line = cell.take()
        if not line.strip():
            return True
        ex = command(raw, line, result)
        if ex is None:
            return False
        raw.sasl = bool(ex.reply) and ex.reply[0].startswith("+ ")
        verb = line.split()[0].upper()
        ok = bool(ex.reply) and ex.reply[0].startswith("+OK")
        if verb == "STLS" and ok:
            raw.starttls()
        elif verb == "QUIT" and ok:
            if cell.remaining_commands():
                result.problems.append(f"{cell.remaining_commands()} line(s) after QUIT not sent")
            return False
        return True


def run_raw_pop3(lab: Lab, target: str, text: str, *, timeout: float = 10.0) -> RawResult:
    """Send each line of ``text`` and read its reply (see :class:`POP3Cell`)."""
    return run_raw(lab, target, text, POP3Cell(), timeout=timeout)


# -- the magics ---------------------------------------------------------------------------

@magics_class
class POP3Magics(Magics):
    timeout = Float(10.0, help="seconds every POP3 client call may wait").tag(config=True)

    def lab(self) -> Lab:
        lab, _note = ensure_started(current_lab(start=False))
        return lab

    @magic_arguments()
    @argument("user", nargs="?", help="lab user (bob or bob@alpha.test); in %%%%pop3: host:port, pop3 or pop3s")
    @argument("--list", action="store_true", help="LIST and UIDL: numbers, sizes, unique ids (always done)")
    @argument("--top", nargs=2, type=int, metavar=("N", "LINES"), help="TOP N LINES: peek at a message")
    @argument("--retr", nargs="+", type=int, default=[], metavar="N", help="RETR: download message(s)")
    @argument("--dele", nargs="+", type=int, default=[], metavar="N", help="DELE: mark message(s) for deletion")
    @argument("--keep", dest="keep", action="store_true", default=None,
              help="keep everything: messages marked with --dele are unmarked by RSET before QUIT")
    @argument("--no-keep", dest="keep", action="store_false",
              help="DELE every message retrieved with --retr (classic POP3: download and delete)")
    @argument("--drop", action="store_true", help="end by cutting the connection instead of QUIT")
    @argument("--tls", default="none", choices=("none", "stls", "implicit"),
              help="none (port 110), stls (upgrade on 110) or implicit (port 995)")
    @line_cell_magic
    def pop3(self, line: str = "", cell: str | None = None) -> Any:
        """A POP3 client session as a table, or (as a cell magic) a raw POP3 session."""
        line = strip_comment(line)
        if cell is not None:
            words = line.split()
            return run_raw_pop3(self.lab(), words[0] if words else "pop3", cell, timeout=self.timeout)
        if (shown := help_asked(self.pop3, line)) is not None:
            return shown
        args = parse_argstring(self.pop3, line)
        if not args.user:
            raise UsageError("%pop3 needs a user: %pop3 bob --list (see %pop3?)")
        lab = self.lab()
        return run_client_session(lab, args.user, list_=True, top=tuple(args.top) if args.top else None,
                                  retr=args.retr, dele=args.dele, keep=args.keep, drop=args.drop,
                                  tls=args.tls, timeout=self.timeout)


MAGICS = POP3Magics
