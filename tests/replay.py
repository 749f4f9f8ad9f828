"""Replay a ``C:``/``S:`` transcript against a protocol's sans-IO session, in memory.

The idea is h11's ``ConnectionPair``: a client and a server joined with no network
between them. Here the client is a transcript file written the way the RFCs write
their examples (RFC 1939 section 10, RFC 3501 section 8, RFC 5321 appendix D), and
the server is the lab's own session object (``POP3Session``, ``IMAPSession``,
``SMTPSession``), driven
the way its asyncio driver drives it. No socket, no thread, no timer: a transcript
runs in milliseconds and reads like the RFC.

File format (``tests/transcripts/*.txt``)::

    # a comment; blank lines are ignored
    @protocol pop3                  # pop3 | imap | smtp (also taken from the file name)
    @user mrose@dbc.test tanstaaf   # a lab user (login with the full address or the local part)
    @mail mrose@dbc.test size=120   # a message for the user; options below
    @option timestamp=<1896.697170952@dbc.mtview.ca.us>    # session options (POP3: timestamp)
    @stored mrose@dbc.test 0        # after the last line: the user's INBOX holds 0 messages
    S: +OK $* <1896.697170952@dbc.mtview.ca.us>
    C: APOP mrose c4c9334bac560ecc979e58001b3e22fb
    S: +OK mrose@dbc.test's maildrop has 2 messages (320 octets)

Each ``C:`` line is sent with CRLF; the ``S:`` lines after it are what the server must
answer, line by line, and nothing more. In ``S:`` lines (Dovecot imaptest style):

- ``$*`` matches any text within the line (a timestamp, a UIDVALIDITY, free text);
- a line ``...`` alone matches any number of server lines (a message body, a
  capability list), up to the next line that matches;
- a line starting with white space continues the previous one, joined by one space
  (how the RFCs fold long responses);
- IMAP's untagged responses (``* ...``) may come in any order within a run of them
  (RFC 3501 leaves it to the server); a ``...`` in the run allows more of them.

``@mail`` options: ``size=N`` (a filler message of exactly N octets, CRLF counted),
``file=NAME`` (a file beside the transcripts), ``count=N``, ``flags=\\Seen,\\Deleted``,
``old`` (not \\Recent: an earlier IMAP session has seen it), ``date="17-Jul-1996
02:44:25 -0700"`` (the INTERNALDATE).

IMAP literals work as on the wire: after ``{N}`` the next ``C:`` lines supply the N
octets (CRLFs counted) and the rest of the last one continues the command. SMTP's
message text after 354 is the ``C:`` lines up to the one holding only ``.``.
"""

from __future__ import annotations

import email.utils
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maillab.imap.parser import LiteralRefused, NeedLiteral, Parser
from maillab.imap.responses import Response
from maillab.imap.selected_mailbox import RECENT_META
from maillab.imap.session import IMAPSession
from maillab.limits import Limits
from maillab.pop3.maildrop import StoreBackend
from maillab.pop3.session import POP3Session
from maillab.smtp import data as smtpdata
from maillab.smtp.policy import Reply as SMTPReply
from maillab.smtp.received import TLSInfo
from maillab.smtp.session import Deliver, Hook, SMTPSession
from maillab.store import Store
from maillab.users import Users

HERE = Path(__file__).parent / "transcripts"
ANY_LINES = "..."
ANY_TEXT = "$*"


@dataclass
class Transcript:
    """A parsed transcript file: setup directives and the C/S steps."""

    name: str
    protocol: str
    users: dict[str, str] = field(default_factory=dict)
    mail: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    stored: list[tuple[str, int]] = field(default_factory=list)  # (address, messages at the end)
    greeting: list[str] = field(default_factory=list)  # the S: lines before any C:
    steps: list[tuple[str, list[str], int]] = field(default_factory=list)  # (C line, S lines, line no)


def parse(path: Path) -> Transcript:
    protocol = path.stem.split("-", 1)[0]
    t = Transcript(path.stem, protocol)
    expect: list[str] = t.greeting
    for number, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        text = raw.rstrip("\r")
        if not text.strip() or text.startswith("#"):
            continue
        if text[0] in " \t":  # a folded line continues the previous S: line
            expect[-1] += " " + text.strip()
        elif text.startswith("@"):
            words = _words(text[1:])
            if words[0] == "protocol":
                t.protocol = words[1]
            elif words[0] == "user":
                t.users[words[1]] = words[2]
            elif words[0] == "mail":
                t.mail.append((words[1], dict(_option(w) for w in words[2:])))
            elif words[0] == "option":
                t.options.update(_option(w) for w in words[1:])
            elif words[0] == "stored":
                t.stored.append((words[1], int(words[2])))
            else:
                raise ValueError(f"{path.name}:{number}: unknown directive @{words[0]}")
        elif text.startswith("C:"):
            t.steps.append((text[3:] if text[2:3] == " " else text[2:], [], number))
            expect = t.steps[-1][1]
        elif text.startswith("S:"):
            expect.append(text[3:] if text[2:3] == " " else text[2:])
        else:
            raise ValueError(f"{path.name}:{number}: a line starts with C:, S:, @, # or white space")
    return t


def _words(text: str) -> list[str]:
    """Shell-like words, quotes allowed, backslashes kept (``flags=\\Seen``)."""
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.escape = ""
    lexer.commenters = "#"
    return list(lexer)


def _option(word: str) -> tuple[str, str]:
    key, _, value = word.partition("=")
    return key, value


# -- matching -------------------------------------------------------------------------------

def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split(ANY_TEXT)), re.DOTALL)


def matches(expected: list[str], actual: list[str], *, untagged_any_order: bool = False) -> bool:
    """Whether ``actual`` server lines fit ``expected`` (with ``$*`` and ``...``).

    ``untagged_any_order`` (IMAP, as in imaptest): a run of expected untagged lines
    (``* ...``) matches the run of untagged lines the server sent in any order; with a
    ``...`` among them, the server may send more untagged lines than listed.
    """
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if untagged_any_order and head.startswith("* "):
        run = 0
        while run < len(expected) and (expected[run].startswith("* ") or expected[run] == ANY_LINES):
            run += 1
        wanted = [e for e in expected[:run] if e != ANY_LINES]
        sent = 0
        while sent < len(actual) and actual[sent].startswith("* "):
            sent += 1
        if not _any_order(wanted, actual[:sent], extra=ANY_LINES in expected[:run]):
            return False
        return matches(expected[run:], actual[sent:], untagged_any_order=True)
    if head == ANY_LINES:
        return any(matches(rest, actual[i:], untagged_any_order=untagged_any_order)
                   for i in range(len(actual) + 1))
    return (bool(actual) and _pattern(head).fullmatch(actual[0]) is not None
            and matches(rest, actual[1:], untagged_any_order=untagged_any_order))


def _any_order(wanted: list[str], sent: list[str], *, extra: bool) -> bool:
    """Each wanted line matches a different sent line (and nothing else was sent, unless
    ``extra``)."""
    if len(sent) < len(wanted) or (not extra and len(sent) != len(wanted)):
        return False
    if not wanted:
        return True
    pattern = _pattern(wanted[0])
    return any(pattern.fullmatch(line) is not None and _any_order(wanted[1:], sent[:i] + sent[i + 1:], extra=extra)
               for i, line in enumerate(sent))


# -- the server side: each protocol's session, driven like its driver drives it --------------

class POP3Server:
    """A :class:`POP3Session` with the lab's users and store behind it."""

    def __init__(self, store: Store, users: Users, options: dict[str, str]) -> None:
        self.session = POP3Session(StoreBackend(store, users), hostname=options.get("hostname", "mail.test"),
                                   timestamp=options.get("timestamp"), auth_failure_delay=0)

    def greet(self) -> list[str]:
        return _lines(self.session.greeting().wire())

    def send(self, line: str) -> list[str]:
        reply = self.session.receive(line.encode() + b"\r\n")
        if reply.starttls:  # no TLS in memory: what the session does once it is up
            self.session.tls_started()
        return _lines(reply.wire())

    def close(self) -> None:
        self.session.end()


class IMAPServer:
    """An :class:`IMAPSession` and its parser; literals are collected as the driver
    collects them (``+`` for a synchronizing one, after its size was checked)."""

    def __init__(self, store: Store, users: Users, options: dict[str, str]) -> None:
        limits = Limits(auth_failure_delay=0)
        self.parser = Parser(max_literal=limits.imap_literal, max_command=limits.imap_literal + limits.imap_line,
                             max_depth=limits.imap_nesting)
        self.session = IMAPSession(store, users, limits, hostname=options.get("hostname", "mail.test"))
        self.literal: int | None = None  # octets of a literal still to come
        self.buffer = b""

    def greet(self) -> list[str]:
        return _output_lines(self.session.greeting())

    def send(self, line: str) -> list[str]:
        data = line.encode() + b"\r\n"
        out: list[str] = []
        while data:
            if self.literal is not None:
                take, data = data[:self.literal], data[self.literal:]
                self.buffer += take
                self.literal -= len(take)
                if self.literal:
                    return out
                self.literal = None
                result = self.parser.feed_literal(self.buffer)
                self.buffer = b""
                if not data:  # the command goes on in the next C: line
                    return out
            nl = data.find(b"\n")
            one, data = data[:nl + 1], data[nl + 1:]
            if self.session.mode in ("authenticate", "idle"):
                out += _output_lines(self.session.continue_line(one))
                continue
            result = self.parser.feed_line(one)
            if isinstance(result, NeedLiteral):
                if result.sync:
                    out.append("+ ready for literal data")
                self.literal = result.size
                continue
            if isinstance(result, LiteralRefused):
                raise AssertionError(f"literal of {result.size} octets refused")
            out += _output_lines(self.session.execute(result))
            if self.session.action == "starttls":  # no TLS in memory
                self.session.tls_started()
                self.parser.reset()
        return out

    def close(self) -> None:
        self.session.end()


def _lines(wire: bytes) -> list[str]:
    return wire.decode("utf-8", "replace").split("\r\n")[:-1]


def _output_lines(outputs: Iterable[Any]) -> list[str]:
    """The wire lines of a session's outputs (Delay and Notice are not wire bytes)."""
    return _lines(b"".join(out.data for out in outputs if isinstance(out, Response)))


class SMTPServer:
    """An :class:`SMTPSession` for a host final for the transcript users' domains; the
    driver's parts done in memory: the message text after 354 is collected up to the
    line "." (each C: line one line of it), deliveries go to the store, and mail for
    other domains is taken by a stand-in relay (``@option submission=yes`` for port 587)."""

    def __init__(self, store: Store, users: Users, options: dict[str, str]) -> None:
        self.store = store
        self.relayed: list[tuple[str, list[str]]] = []
        self.session = SMTPSession(
            hostname=options.get("hostname", "mail.test"), limits=Limits(auth_failure_delay=0),
            local_domains=frozenset(u.address.split("@")[1] for u in users),
            is_user=users.__contains__, authenticate=users.authenticate, resolve=users.resolve,
            relay_available=True, submission=options.get("submission") == "yes")
        self.data: list[bytes] | None = None  # the message text while it is being sent

    def greet(self) -> list[str]:
        return self.session.greeting().lines()

    def send(self, line: str) -> list[str]:
        raw = line.encode() + b"\r\n"
        if self.data is not None:
            if line != ".":
                self.data.append(raw)
                return []
            text = b"\r\n" + b"".join(self.data) + b".\r\n"
            self.data = None
            return self._answer(self.session.end_of_data(smtpdata.scan(text)))
        return self._answer(self.session.receive(raw))

    def _answer(self, step: object) -> list[str]:
        while not isinstance(step, SMTPReply):
            if isinstance(step, Hook):
                raise AssertionError("transcripts run without aiosmtpd handlers")
            assert isinstance(step, Deliver)
            for address in step.local:
                self.store.deliver(address, step.message)
            if step.remote:
                self.relayed.append((step.mail_from, step.remote))
            step = step.then(None)
        if step.starttls:  # no TLS in memory: what the session does once it is up
            self.session.tls_started(TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256))
        if step.read_data:
            self.data = []
        return step.lines()

    def close(self) -> None:
        pass


SERVERS = {"pop3": POP3Server, "imap": IMAPServer, "smtp": SMTPServer}


# -- running a transcript ----------------------------------------------------------------------

def setup_store(t: Transcript, directory: Path) -> tuple[Store, Users]:
    users = Users(t.users)
    store = Store(directory)
    for address in t.users:
        store.ensure_user(address)
    for address, opts in t.mail:
        mailbox = store.mailbox(address, "INBOX", create=True)
        flags = [f for f in opts.get("flags", "").split(",") if f]
        when = email.utils.mktime_tz(email.utils.parsedate_tz(opts["date"])) if "date" in opts else None
        for _ in range(int(opts.get("count", "1"))):
            data = (HERE / opts["file"]).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") \
                if "file" in opts else filler(int(opts.get("size", "100")))
            info = mailbox.add(data, flags, internaldate=when)
            if "old" in opts:
                mailbox.set_meta(RECENT_META, info.uid)
    return store, users


def filler(size: int) -> bytes:
    """A message of exactly ``size`` octets (CRLF line ends)."""
    head = b"From: filler@lab.test\r\nSubject: filler\r\n\r\n"
    body_size = size - len(head)
    assert body_size >= 2, f"a message of {size} octets is too small for a header"
    lines, left = [], body_size
    while left > 0:
        n = min(left, 72)
        if left - n == 1:  # a CRLF needs two octets: never leave one
            n -= 1
        lines.append(b"x" * (n - 2) + b"\r\n")
        left -= n
    return head + b"".join(lines)


def replay(path: Path, directory: Path) -> None:
    """Run one transcript; AssertionError names the first C: line answered otherwise."""
    t = parse(path)
    store, users = setup_store(t, directory)
    server = SERVERS[t.protocol](store, users, t.options)
    try:
        any_order = t.protocol == "imap"
        _check(path, 1, "(the greeting)", t.greeting, server.greet(), any_order)
        for line, expected, number in t.steps:
            _check(path, number, line, expected, server.send(line), any_order)
        for address, count in t.stored:
            held = len(store.mailbox(address, "INBOX", create=True).messages())
            assert held == count, f"{path.name}: {address} holds {held} messages at the end, not {count}"
    finally:
        server.close()
        store.close()


def _check(path: Path, number: int, line: str, expected: list[str], actual: list[str],
           any_order: bool) -> None:
    if not matches(expected, actual, untagged_any_order=any_order):
        want = "\n".join(f"  S: {e}" for e in expected) or "  (nothing)"
        got = "\n".join(f"  S: {a}" for a in actual) or "  (nothing)"
        raise AssertionError(f"{path.name}:{number}: C: {line}\nexpected:\n{want}\nthe server sent:\n{got}")
