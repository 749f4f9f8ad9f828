"""``%imap`` and ``%%imap``: IMAP from a notebook.

``%imap bob --list | --envelopes [MAILBOX] | --fetch UID [--peek] | --search QUERY |
--flag UID FLAG`` runs a real client session (imaplib through maillab's recording
wrapper, STARTTLS with the lab CA) and returns a table or view; the session's
lines are in ``%mail transcript``.

``%%imap [host:port | imap | imaps]`` is a raw session: each line of the cell is
sent as one command with a tag added (a1, a2, ...), and the reply is read until
the line with that tag (RFC 3501 2.2.2). A line ending in ``{n}`` (or ``{n+}``,
LITERAL+) is followed by n octets of literal taken from the next lines of the
cell (joined with CRLF); STARTTLS upgrades the connection, trusting the lab CA;
``IDLE`` waits for the server's pushes until a line ``DONE``.
"""

from __future__ import annotations

import html
import imaplib
import re
import select
import ssl
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Float

from ..clients.envelopes import ENVELOPE_ITEMS, EnvelopeClient, envelope_rows
from ..clients.imap import connect, parse_fetch, parse_list_line
from ..clients.raw import Exchange, RawSession
from ..lab import Lab
from ..store.names import decode_mutf7
from ..views.mailbox import ROW_COLUMNS, MailboxView
from ..views.mime_tree import MimeTree, from_message
from ..views.status import text_table
from ..views.theme import card_table, page, text_lines
from .comments import strip_comment
from .mail import ensure_started, help_asked
from .rawcell import CellDialect, CellLines, RawResult, command, run_raw
from .state import current_lab

_LITERAL = re.compile(r"\{(\d+)(\+?)\}$")


@dataclass
class ResultTable:
    """Rows with a title: text in terminals, an HTML table in notebooks."""

    title: str
    rows: list[dict[str, Any]]
    columns: tuple[tuple[str, str], ...]
    note: str = ""

    def __repr__(self) -> str:
        parts = [self.title, text_table(self.rows, self.columns) if self.rows else "(none)"]
        return "\n".join(parts + ([self.note] if self.note else []))

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="imap")

    def _html_body(self) -> str:
        # in a narrow output each row is a card (theme.card_table); a table of many
        # columns (a search's messages) turns sooner than a short one (folders)
        table = card_table([t for t, _ in self.columns], (
            [html.escape(str(r.get(k, ""))) for _, k in self.columns] for r in self.rows),
            kind="ml-cards" if len(self.columns) > 4 else "ml-cards-narrow")
        note = f"<p>{html.escape(self.note)}</p>" if self.note else ""
        return f"<b>{html.escape(self.title)}</b>{table}{note}"


@dataclass
class FetchedMessage:
    """What ``%imap bob --fetch UID`` returns: flags before and after, the MIME tree, the text."""

    uid: int
    mailbox: str
    data: bytes
    flags_before: tuple[str, ...]
    flags_after: tuple[str, ...]
    peek: bool
    tree: MimeTree = field(init=False)

    def __post_init__(self) -> None:
        self.tree = MimeTree(from_message(self.data), "parsed from the downloaded bytes")

    def text_body(self, limit: int = 2000) -> str:
        """The first text/plain part that is no attachment (else text/html), decoded.

        Read with the compat32 parser: ``email.policy.default`` parses each part's
        Content-Type with a grammar that is quadratic on some values (30 KB of ``(a)``
        comments: 6.5 s of the kernel), and a downloaded message is anyone's."""
        from email import message_from_bytes

        from ..imap.decoding import decode_bytes

        parts = [p for p in message_from_bytes(self.data).walk()
                 if not p.is_multipart() and p.get_content_disposition() != "attachment"]
        for subtype in ("plain", "html"):
            part = next((p for p in parts if p.get_content_type() == f"text/{subtype}"), None)
            if part is not None:
                payload = part.get_payload(decode=True)
                text = decode_bytes(payload if isinstance(payload, bytes) else b"", part.get_content_charset())
                text = text.replace("\r\n", "\n")
                return text[:limit] + ("…" if len(text) > limit else "")
        return ""

    def summary(self) -> str:
        how = "BODY.PEEK[] (flags unchanged)" if self.peek else "BODY[] (the server sets \\Seen)"
        return (f"UID {self.uid} in {self.mailbox}: {len(self.data)} octets via {how}; "
                f"flags before: {' '.join(self.flags_before) or '(none)'}; "
                f"after: {' '.join(self.flags_after) or '(none)'}")

    def __repr__(self) -> str:
        return "\n\n".join([self.summary(), self.tree.text(), self.text_body()])

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="imap-fetch")

    def _html_body(self) -> str:
        return (f"<p>{html.escape(self.summary())}</p>{self.tree._repr_html_()}"
                + text_lines(self.text_body()))


def _flags(client: Any, uid: int) -> tuple[str, ...]:
    typ, data = client.uid("FETCH", str(uid), "(FLAGS)")
    items = parse_fetch(data) if typ == "OK" and data and data[0] else []
    if not items:
        raise UsageError(f"no message with UID {uid}")
    return tuple(str(f) for f in items[0].get("FLAGS", []))


def _text(data: list[Any]) -> str:
    """The text of a tagged NO/BAD as imaplib hands it over."""
    first = data[0] if data else b""
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


def _search_args(words: list[str]) -> tuple[list[str], bytes | None]:
    """Search words -> (atoms, literal): non-ASCII text travels as a UTF-8 literal
    after CHARSET UTF-8 (RFC 3501 6.4.4), so it must be the last criterion."""
    if all(w.isascii() for w in words):
        return [w if " " not in w and w else f'"{w}"' for w in words], None
    if not words[-1].isascii() and all(w.isascii() for w in words[:-1]):
        return ["CHARSET", "UTF-8", *words[:-1]], words[-1].encode("utf-8")
    raise UsageError("put the non-ASCII search text last, e.g. --search SUBJECT 你好")


# -- raw sessions ---------------------------------------------------------------------------

class IMAPRawSession(RawSession):
    """A raw session that knows IMAP's framing: tagged completion and literals.

    Server literals (``{n}`` at a line's end, e.g. a FETCH BODY[]) are read by
    octet count, not by lines, so a message line that happens to start with the
    tag cannot end the reply early.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.continuation_ok = False  # does the current command expect a "+"?
        super().__init__(*args, reply_complete=self._complete, **kwargs)

    def _complete(self, command: str | None, lines: list[str]) -> bool:
        if command is None:
            return True  # the greeting is one line
        last = lines[-1]
        if self.continuation_ok and last.startswith("+"):
            return True
        tag = command.split(" ", 1)[0]
        return last.startswith(tag + " ")

    def _read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection inside a literal")
            self._buf += chunk
        data, self._buf = self._buf[:n], self._buf[n:]
        return data

    def read_reply(self, command: str | None) -> Exchange:
        ex = Exchange(command)
        try:
            while True:
                line = self._readline()
                ex.reply.append(line)
                if self.recorder:
                    self.recorder.server_line(line, bytes=len(line.encode()) + 2)
                m = _LITERAL.search(line)
                while m:
                    data = self._read_exact(int(m.group(1)))
                    if self.recorder:
                        self.recorder.payload("S", data)
                    ex.reply.append(data.decode("utf-8", "replace"))
                    line = self._readline()
                    ex.reply.append(line)
                    if self.recorder:
                        self.recorder.server_line(line, bytes=len(line.encode()) + 2)
                    m = _LITERAL.search(line)
                if self.reply_complete(command, ex.reply):
                    break
        except TimeoutError:
            ex.timed_out = True
            if self.recorder:
                self.recorder.note(f"no complete reply within {self.timeout} s")
        self.exchanges.append(ex)
        return ex

    def drain(self, wait: float) -> list[str]:
        """Lines the server pushes within ``wait`` seconds (IDLE updates)."""
        got = []
        while True:
            pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()
            if b"\n" not in self._buf and not pending:
                ready, _, _ = select.select([self.sock], [], [], wait)
                if not ready:
                    return got
            line = self._readline()
            got.append(line)
            if self.recorder:
                self.recorder.server_line(line, bytes=len(line.encode()) + 2)

    def send_raw(self, data: bytes) -> None:
        if self.recorder:
            self.recorder.payload("C", data)
        self.sock.sendall(data)


class IMAPCell(CellDialect):
    """``%%imap``: the cell's commands get tags a1, a2, ...; a command ending in a
    literal takes the lines after it as the literal's octets; IDLE waits
    ``idle_wait`` seconds for pushed updates, then sends DONE; AUTHENTICATE answers
    each "+" challenge with the next line (masked); STARTTLS upgrades."""

    protocol = "imap"

    def __init__(self, idle_wait: float = 2.0) -> None:
        self.idle_wait = idle_wait
        self.n = 0

    def open(self, host: str, port: int, **kwargs: Any) -> IMAPRawSession:
        return IMAPRawSession(host, port, protocol="imap", **kwargs)

    def step(self, raw: Any, cell: CellLines, result: RawResult) -> bool:
        line = cell.take()
        if not line.strip():
            return True  # blank lines are layout
        self.n += 1
        tagged = f"a{self.n} {line}"
        verb = line.split()[0].upper()
        lit = _LITERAL.search(line)
        if lit:
            if not _send_with_literal(raw, tagged, lit, cell.lines, cell.i, result):
                return False
            cell.i = _take_literal(cell.lines, cell.i, int(lit.group(1)))[1]
            return True
        raw.continuation_ok = verb in ("IDLE", "AUTHENTICATE")
        ex = command(raw, tagged, result)
        if ex is None:
            return False
        last = ex.reply[-1] if ex.reply else ""
        if verb == "IDLE" and last.startswith("+"):
            raw.drain(self.idle_wait)
            cell.skip_blank()
            if cell and cell.lines[cell.i].strip().upper() == "DONE":
                cell.take()
            raw.continuation_ok = False
            raw.send_line("DONE")  # RFC 2177: DONE ends IDLE; it has no tag
            raw.read_reply(tagged)
        elif verb == "AUTHENTICATE":
            while last.startswith("+") and cell:
                raw.sasl = True
                raw.send_line(cell.take().strip())
                ex = raw.read_reply(tagged)
                last = ex.reply[-1] if ex.reply else ""
            raw.sasl = False
        elif verb == "STARTTLS" and last.startswith(f"a{self.n} OK"):
            raw.starttls()
        elif verb == "LOGOUT" or last.startswith("* BYE"):
            return False
        return True


def run_raw_imap(lab: Lab, target: str, text: str, *, timeout: float = 10.0,
                 idle_wait: float = 2.0) -> RawResult:
    """Send the cell's commands with tags a1, a2, ... and record the session (see :class:`IMAPCell`)."""
    return run_raw(lab, target, text, IMAPCell(idle_wait), timeout=timeout)


def _take_literal(lines: list[str], i: int, size: int) -> tuple[bytes, int]:
    """The cell lines that make up a literal of ``size`` octets (joined with CRLF), and
    the index of the line after them. The literal ends at a line's end: either its last
    CRLF belongs to the literal, or that CRLF ends the command."""
    taken = b""
    while i < len(lines) and len(taken) < size:
        taken += lines[i].encode("utf-8") + b"\r\n"
        i += 1
    return taken, i


def _send_with_literal(raw: IMAPRawSession, command: str, lit: re.Match[str], lines: list[str],
                       i: int, result: RawResult) -> bool:
    """A command ending in a literal: wait for "+" (unless LITERAL+), send the octets,
    then the CRLF that ends the command. False when the session cannot go on."""
    size = int(lit.group(1))
    body, _next = _take_literal(lines, i, size)
    if len(body) not in (size, size + 2):
        result.problems.append(
            f"{command.split(' ', 1)[1]!r} announces {size} octets, but the lines that follow hold"
            f" {len(body) - 2} (or {len(body)} counting the last line's CRLF): fix the count")
        return False
    if lit.group(2):  # {n+}: LITERAL+ (RFC 7888), no waiting for "+"
        raw.send_line(command)
    else:
        raw.continuation_ok = True
        ex = raw.command(command)
        raw.continuation_ok = False
        last = ex.reply[-1] if ex.reply else ""
        if ex.timed_out or not last.startswith("+"):
            return not ex.timed_out  # refused (NO/BAD, e.g. TOOBIG): the literal is not sent
    raw.send_raw(body[:size])
    raw.sock.sendall(b"\r\n")  # the CRLF that ends the command
    ex = raw.read_reply(command)
    if ex.timed_out:
        result.problems.append(f"no reply after the literal of {command.split(' {')[0]!r}")
        return False
    return True


# -- the magics ---------------------------------------------------------------------------------

@magics_class
class IMAPMagics(Magics):
    timeout = Float(10.0, help="seconds every IMAP client call may wait").tag(config=True)

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        self._views: list[MailboxView] = []

    def lab(self) -> Lab:
        lab, _note = ensure_started(current_lab(start=False))
        return lab

    @magic_arguments()
    @argument("user", nargs="?", help="lab user (bob or bob@alpha.test); in %%%%imap: host:port, imap or imaps")
    @argument("--list", action="store_true", help="the user's mailboxes with message counts")
    @argument("--envelopes", nargs="?", const="INBOX", metavar="MAILBOX",
              help="summaries (date, from, subject, size, flags) without the bodies")
    @argument("--fetch", type=int, metavar="UID", help="download one message")
    @argument("--peek", action="store_true", help="with --fetch: BODY.PEEK[], leaves \\Seen alone")
    @argument("--search", nargs="+", metavar="QUERY", help="UID SEARCH, e.g. --search SUBJECT 你好")
    @argument("--flag", nargs=2, metavar=("UID", "FLAG"), help="UID STORE +FLAGS, e.g. --flag 3 \\\\Seen")
    @argument("--unflag", nargs=2, metavar=("UID", "FLAG"), help="UID STORE -FLAGS")
    @argument("--mailbox", "-m", default="INBOX", help="mailbox for --fetch/--search/--flag")
    @argument("--tls", default="starttls", choices=("starttls", "implicit", "none"))
    @line_cell_magic
    def imap(self, line: str = "", cell: str | None = None) -> Any:
        """IMAP client sessions as tables, or (as a cell magic) a raw IMAP session."""
        line = strip_comment(line)
        if cell is not None:
            words = line.split()
            return run_raw_imap(self.lab(), words[0] if words else "imap", cell, timeout=self.timeout)
        if (shown := help_asked(self.imap, line)) is not None:
            return shown
        args = parse_argstring(self.imap, line)
        if not args.user:
            raise UsageError("%imap needs a user: %imap bob --envelopes (see %imap?)")
        lab = self.lab()
        if lab.users.resolve(args.user) is None:
            raise UsageError(f"no lab user {args.user!r}; users: {', '.join(u.address for u in lab.users)}")
        if args.envelopes is not None:
            for old in self._views:
                old.close()
            try:
                view = MailboxView(EnvelopeClient.open(lab, args.user, args.envelopes, tls=args.tls,
                                                       timeout=self.timeout))
            except (LookupError, imaplib.IMAP4.error) as exc:
                raise UsageError(f"the server said: {exc}") from None
            self._views = [view]
            return view
        try:
            return self._client_session(lab, args)
        except imaplib.IMAP4.error as exc:
            raise UsageError(f"the server said: {exc}") from None

    def _client_session(self, lab: Lab, args: Any) -> Any:
        with connect(lab, args.user, tls=args.tls, timeout=self.timeout) as client:
            if args.list:
                return list_mailboxes(client)
            typ, data = client.select(args.mailbox, readonly=not (args.flag or args.unflag or
                                                                  (args.fetch and not args.peek)))
            if typ != "OK":
                raise UsageError(f"cannot open {args.mailbox}: {data[0]!r}")
            if args.fetch is not None:
                before = _flags(client, args.fetch)
                item = "BODY.PEEK[]" if args.peek else "BODY[]"
                typ, data = client.uid("FETCH", str(args.fetch), f"({item})")
                if typ != "OK":
                    raise UsageError(f"UID FETCH {args.fetch} failed: the server said {typ} {_text(data)}")
                body = parse_fetch(data)[0].get("BODY[]", b"") if data[0] else b""
                return FetchedMessage(args.fetch, args.mailbox, body, before, _flags(client, args.fetch),
                                      args.peek)
            if args.search:
                atoms, literal = _search_args(args.search)
                if literal is not None:
                    client.literal = literal
                typ, data = client.uid("SEARCH", *atoms)
                if typ != "OK":
                    raise UsageError(f"SEARCH failed: {data!r}")
                uids = [int(x) for x in (data[0] or b"").split()]
                rows = []
                if uids:
                    typ, data = client.uid("FETCH", ",".join(map(str, uids)), ENVELOPE_ITEMS)
                    if typ != "OK":
                        raise UsageError(f"UID FETCH failed: the server said {typ} {_text(data)}")
                    rows = [r.as_dict() for r in envelope_rows(data)]
                return ResultTable(f"UID SEARCH {' '.join(args.search)} in {args.mailbox}: {len(uids)} found",
                                   rows, ROW_COLUMNS, note="The server searched; only the summaries crossed the wire.")
            if args.flag or args.unflag:
                uid, flag = args.flag or args.unflag
                if flag.startswith("\\"):
                    flag = "\\" + flag.lstrip("\\")  # "\\Seen" typed in a shell-quoted line
                op = "+FLAGS" if args.flag else "-FLAGS"
                typ, data = client.uid("STORE", uid, op, f"({flag})")
                if typ != "OK":
                    raise UsageError(f"STORE failed: {data!r}")
                return ResultTable(f"UID STORE {uid} {op} ({flag}) in {args.mailbox}",
                                   [{"uid": uid, "flags": " ".join(_flags(client, int(uid)))}],
                                   (("UID", "uid"), ("flags now", "flags")))
        raise UsageError("say what to do: --list, --envelopes, --fetch UID, --search QUERY or --flag UID FLAG")


def list_mailboxes(client: Any) -> ResultTable:
    """LIST "" "*" plus STATUS (MESSAGES UNSEEN) for each mailbox."""
    typ, data = client.list('""', "*")
    rows = []
    for raw in data:
        if not isinstance(raw, bytes):
            continue
        attrs, _delim, name = parse_list_line(raw)
        row: dict[str, Any] = {"mailbox": decode_mutf7(name), "attributes": " ".join(attrs)}
        if "\\Noselect" not in attrs and "\\NonExistent" not in attrs:
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            typ, status = client.status(quoted, "(MESSAGES UNSEEN)")
            if typ == "OK" and status and status[0]:
                m = re.search(rb"MESSAGES (\d+)", status[0])
                u = re.search(rb"UNSEEN (\d+)", status[0])
                row["messages"] = int(m.group(1)) if m else ""
                row["unseen"] = int(u.group(1)) if u else ""
        rows.append(row)
    return ResultTable("Mailboxes (LIST, then STATUS for each)", rows,
                       (("mailbox", "mailbox"), ("attributes", "attributes"),
                        ("messages", "messages"), ("unseen", "unseen")))


MAGICS = IMAPMagics
