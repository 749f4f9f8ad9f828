"""Fuzz targets: every parser that takes bytes from outside, as one function of bytes.

Each :class:`Target` holds a function that feeds its input to one parser (or a
sans-IO session) the way the wire would, a seed corpus (RFC examples and the
test data in ``tests/data``) and a dictionary of the grammar's tokens. A target
passes when the function returns: a protocol error is an answer, not a crash,
so only the exceptions a parser documents as its "no" are caught here.

Two ways to run them:

* ``tests/test_fuzz.py`` (CI): each target for a fixed, seeded budget of inputs
  from :func:`mutate` (random, but reproducible from the seed it prints);
* ``scripts/fuzz`` (long runs): ``python3 tests/fuzz_targets.py TARGET [libFuzzer
  flags]`` under atheris, coverage-guided, with the seeds and the dictionary.

docs/security-tests.md lists the targets, what they were run for and what they found.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
#: Where the targets' stores live: memory (tmpfs) where there is one, so the inputs that
#: read or write messages (FETCH, SEARCH, POP3 QUIT) cost no disk I/O.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere: the maillab beside it

from maillab.dns import server as dns_server  # noqa: E402
from maillab.dns.zones import LabZones, ZoneError, parse_zone  # noqa: E402
from maillab.imap import message  # noqa: E402
from maillab.imap import search as searching  # noqa: E402
from maillab.imap.decoding import decode_header  # noqa: E402
from maillab.imap.envelope import (  # noqa: E402
    MAX_ADDRESSES,
    address_search_text,
    addresses_text,
    parse_addresses,
)
from maillab.imap.parser import (  # noqa: E402
    Command,
    LiteralRefused,
    NeedLiteral,
    ParseError,
    Parser,
    parse_command,
)
from maillab.limits import Limits  # noqa: E402
from maillab.relay.hops import parse_hops  # noqa: E402
from maillab.sasl import SASLError, decode_response, login_value, parse_plain  # noqa: E402
from maillab.smtp import data as smtp_data  # noqa: E402
from maillab.smtp import policy  # noqa: E402
from maillab.smtp.received import received_header  # noqa: E402
from maillab.store import Store  # noqa: E402
from maillab.store.names import InvalidName, decode_mutf7, encode_mutf7, split_name  # noqa: E402
from maillab.topology import default_network  # noqa: E402
from maillab.users import Users  # noqa: E402


@dataclass
class Target:
    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    tokens: tuple[bytes, ...]
    max_len: int = 4096
    #: mutated inputs tests/test_fuzz.py runs (about 0.3 s of CPU each on the lab machine)
    ci_inputs: int = 3000


TARGETS: dict[str, Target] = {}


def target(name: str, tokens: tuple[bytes, ...], max_len: int = 4096, ci_inputs: int = 3000, *,
           seeds: Callable[[], list[bytes]]):
    def register(run: Callable[[bytes], None]) -> Callable[[bytes], None]:
        TARGETS[name] = Target(name, run, seeds, tokens, max_len, ci_inputs)
        return run
    return register


def _messages() -> list[bytes]:
    return [p.read_bytes() for p in sorted((DATA / "imap").glob("*.eml"))]


# -- IMAP ------------------------------------------------------------------------------

IMAP_TOKENS = (
    b"a ", b"UID ", b"FETCH ", b"SEARCH ", b"STORE ", b"APPEND ", b"LOGIN ", b"SELECT ", b"LIST ",
    b"STATUS ", b"COPY ", b"MOVE ", b"EXPUNGE", b"AUTHENTICATE PLAIN ", b"ID ", b"ENABLE ",
    b"CREATE ", b"RENAME ", b"IDLE", b"NOOP", b"EXAMINE ", b"CHARSET UTF-8 ", b"BODY[", b"BODY.PEEK[",
    b"HEADER.FIELDS (", b"HEADER.FIELDS.NOT (", b"MIME", b"TEXT", b"]", b"<0.10>", b"ENVELOPE",
    b"BODYSTRUCTURE", b"FLAGS", b"+FLAGS.SILENT ", b"(\\Seen \\Deleted)", b"1:*", b"*", b"1,2:3",
    b"4294967295", b"4294967296", b"{5}\r\nhello", b"{3+}\r\nabc", b"{0}\r\n", b'"quoted"', b'"a\\"b"',
    b"NIL", b"OR ", b"NOT ", b"(", b")", b"SENTSINCE 1-Jan-2020", b"BEFORE 31-Dec-2099", b"LARGER 10",
    b"HEADER Subject x", b"FROM alice", b"TO bob", b"KEYWORD $x", b"&AOQ-", b"INBOX", b"\r\n",
)
IMAP_SEEDS = [
    b"a1 LOGIN bob bob-pw\r\n", b"a2 SELECT INBOX\r\n", b"a3 FETCH 1:* (FLAGS ENVELOPE BODYSTRUCTURE)\r\n",
    b"a4 UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (FROM TO)] BODY[1.MIME] BODY[]<0.100>)\r\n",
    b"a5 SEARCH OR FROM alice (SINCE 1-Feb-1994 NOT SEEN) LARGER 100 HEADER X-Y z\r\n",
    b"a6 UID SEARCH CHARSET UTF-8 SUBJECT {4}\r\n\xc3\xa9t\xc3\r\n",
    b"a7 STORE 2:4 +FLAGS (\\Deleted)\r\n", b'a8 APPEND saved-messages (\\Seen) "07-Feb-1994 21:52:25 -0800" {10}\r\nhi there\r\n\r\n',
    b'a9 LIST "" *\r\n', b'a10 STATUS blurdybloop (UIDNEXT MESSAGES)\r\n', b"a11 COPY 2:4 meeting\r\n",
    b'a12 ID ("name" "sodr" "version" "19.34")\r\n', b"a13 AUTHENTICATE PLAIN AGJvYgBib2ItcHc=\r\n",
    b"a14 LIST (SPECIAL-USE) \"\" % RETURN (CHILDREN)\r\n", b"a15 CREATE Sent (USE (\\Sent))\r\n",
    b"a16 LOGIN {3+}\r\nbob {6+}\r\nbob-pw\r\n",
]


def feed_imap(parser: Parser, data: bytes) -> list[Command | ParseError | LiteralRefused]:
    """Feed bytes to the incremental parser as the driver does: lines, then literals."""
    out: list[Command | ParseError | LiteralRefused] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        result = parser.feed_line(data[pos:end])
        pos = end
        while isinstance(result, NeedLiteral):
            if pos + result.size > len(data):
                return out  # the client went away inside a literal
            parser.feed_literal(data[pos:pos + result.size])
            pos += result.size
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            result = parser.feed_line(data[pos:end])
            pos = end
        assert isinstance(result, (Command, ParseError, LiteralRefused)), result
        out.append(result)
    return out


def _imap_seeds() -> list[bytes]:
    return IMAP_SEEDS


@target("imap-command", IMAP_TOKENS, seeds=_imap_seeds)
def imap_command(data: bytes) -> None:
    feed_imap(Parser(max_literal=1024, max_command=4096, max_depth=8), data)
    for result in (parse_command(data),):
        assert isinstance(result, (Command, ParseError))


class _Fixture:
    """A store with the test messages in bob's INBOX, made once per process."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="maillab-fuzz-", dir=SCRATCH)
        self.store = Store(Path(self.dir.name) / "mail")
        self.users = Users({"bob@alpha.test": "bob-pw"})
        for raw in _messages()[:40]:
            self.store.deliver("bob@alpha.test", raw)
        self.limits = Limits(auth_failure_delay=0.0, imap_literal=4096)
        # Every imap-session input logs in, and LOGIN makes sure the user's seven
        # folders exist (two realpaths and three mkdirs each): a third of the target's
        # time, spent on the same directories. No input of the targets sharing this
        # store deletes a folder, so once per user is the same.
        ensure, ensured = self.store.ensure_user, set()

        def ensure_once(user: str) -> None:
            if user not in ensured:
                ensure(user)
                ensured.add(user)

        self.store.ensure_user = ensure_once


@cache
def fixture() -> _Fixture:
    return _Fixture()


#: Commands the session target leaves out: they change the store, which every later
#: input shares (their grammar is fuzzed by imap-command all the same).
_WRITES = {"APPEND", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "COPY", "MOVE",
           "EXPUNGE", "STORE", "SELECT", "CLOSE", "STARTTLS", "IDLE", "AUTHENTICATE"}


def _imap_session_seeds() -> list[bytes]:
    return IMAP_SEEDS + [b"b FETCH 1:* (BODY[1.2.HEADER] BODY[TEXT] RFC822.SIZE INTERNALDATE BODY)\r\n",
                         b"c SEARCH TEXT hello BODY x NOT OR SEEN 1:3 UID 2:*\r\n"]


@target("imap-session", IMAP_TOKENS, ci_inputs=1000, seeds=_imap_session_seeds)
def imap_session(data: bytes) -> None:
    """Commands over the stored test messages, in an EXAMINEd INBOX (read-only)."""
    from maillab.imap.responses import Output
    from maillab.imap.session import IMAPSession

    fx = fixture()
    s = IMAPSession(fx.store, fx.users, fx.limits, hostname="mail.alpha.test")
    out: list[Output] = list(s.greeting())
    out += s.execute(parse_command(b"l LOGIN bob bob-pw\r\n"))
    out += s.execute(parse_command(b"e EXAMINE INBOX\r\n"))
    with _stored_split():
        for cmd in feed_imap(Parser(max_literal=1024, max_command=4096, max_depth=8), data):
            if isinstance(cmd, LiteralRefused) or (isinstance(cmd, Command) and cmd.name in _WRITES):
                continue
            out += s.execute(cmd)
            if s.action == "close":
                break
    s.end()


_SPLITS: dict[bytes, object] = {}


@contextmanager
def _stored_split() -> Iterator[None]:
    """SEARCH TEXT/BODY/HEADER split every stored message again, for every input: most
    of this target's time went to splitting the same 40 messages (which the message
    target fuzzes). The split is a pure function of the bytes, so it is kept per
    stored message; the commands (the fuzzed part) still run in full."""
    real = message.parse

    def split(d: bytes):
        root = _SPLITS.get(d)
        if root is None:
            root = real(d)
            if len(_SPLITS) < 64:  # the stored messages (the session target writes none)
                _SPLITS[d] = root
        return root

    message.parse = split
    try:
        yield
    finally:
        message.parse = real


def drive_imap(s, data: bytes) -> None:
    """The IMAP driver's loop (``imap/server.py``) without sockets: lines, literals,
    a refused literal, the SASL and IDLE continuation lines, STARTTLS as if the
    handshake succeeded, until the session closes or the input ends."""
    parser = Parser(max_literal=1024, max_command=4096, max_depth=8)
    list(s.greeting())
    pos = 0
    while pos < len(data) and s.action != "close":
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line, pos = data[pos:end], end
        if s.mode != "command":
            list(s.continue_line(line))  # AUTHENTICATE's response, or DONE ending IDLE
            continue
        result = parser.feed_line(line)
        while isinstance(result, NeedLiteral):
            if pos + result.size > len(data):
                return  # the client went away inside a literal
            parser.feed_literal(data[pos:pos + result.size])
            pos += result.size
            end = data.find(b"\n", pos)
            end = len(data) if end < 0 else end + 1
            result, pos = parser.feed_line(data[pos:end]), end
        if isinstance(result, LiteralRefused):
            if not result.sync:
                return  # BAD and BYE: the LITERAL+ bytes cannot be skipped
            continue
        list(s.execute(result))
        if s.action == "starttls":
            s.tls_started()
            parser.reset()


class _WriteFixture:
    """A pristine store (bob's INBOX with a few test messages, a Sent folder) that every
    input starts from, so what one input writes never reaches the next."""

    USER = "bob@alpha.test"

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="maillab-fuzz-write-", dir=SCRATCH)
        self.template = Path(self.dir.name) / "template"
        store = Store(self.template)
        for raw in _messages()[:6]:
            store.deliver(self.USER, raw)
        store.mailbox(self.USER, "Sent", create=True).add(_messages()[6])
        # As the lab leaves a user's store: every folder LOGIN makes sure of is there
        # with its index, closed cleanly. Before, each input that logged in made the
        # special-use folders, the check after it created their indexes (SQLite files,
        # a UIDVALIDITY each), and every open scanned the folder again: the same work
        # for every input, most of this target's time.
        store.ensure_user(self.USER)
        for name in store.list_mailboxes(self.USER):
            store.mailbox(self.USER, name).messages()
        store.close()
        self.files = _tree(self.template)
        self.work = Path(self.dir.name) / "work"
        shutil.copytree(self.template, self.work)

    def changed(self) -> set[str]:
        """The paths (relative to the store) the last input added, removed or wrote."""
        now = _tree(self.work)
        return {p for p in now.keys() | self.files.keys() if now.get(p) != self.files.get(p)}

    def restore(self, changed: set[str]) -> None:
        """Put back the template's bytes and times where ``changed`` says they differ:
        what copying the whole template gave, for a few stat calls when an input
        wrote little (most of them)."""
        for rel in sorted(changed - self.files.keys()):  # added: parents before children
            path = self.work / rel
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                path.unlink()
        dirs = []
        for rel in sorted(changed & self.files.keys()):
            path, is_dir = self.work / rel, self.files[rel][0]
            if is_dir:
                path.mkdir(parents=True, exist_ok=True)
                dirs.append(rel)
            else:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                shutil.copy2(self.template / rel, path)
        # The directories' times last (removing and copying above changed them):
        # a folder's index trusts its directory times (dirsync.py).
        if changed:
            for rel, (is_dir, _size, mtime) in self.files.items():
                if is_dir and os.stat(self.work / rel).st_mtime_ns != mtime:
                    os.utime(self.work / rel, ns=(mtime, mtime))

    def folder_changed(self, name: str, changed: set[str]) -> bool:
        """Did the last input touch folder ``name`` (its Maildir++ directory, or for
        INBOX the user's own directory outside the other folders)?"""
        from maillab.store.names import folder_dirname, is_inbox

        prefix = self.USER + "/"
        if is_inbox(name):
            return any(p == self.USER or (p.startswith(prefix) and not p[len(prefix):].startswith("."))
                       for p in changed)
        top = prefix + folder_dirname(name)
        return any(p == top or p.startswith(top + "/") for p in changed)


def _tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under ``root`` (relative, and "" for root itself) with (is a
    directory, size, modification time in ns)."""
    st = os.stat(root)
    out = {"": (True, 0, st.st_mtime_ns)}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for e in entries:
                st = e.stat(follow_symlinks=False)
                is_dir = e.is_dir(follow_symlinks=False)
                path = f"{rel}/{e.name}" if rel else e.name
                out[path] = (is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns)
                if is_dir:
                    stack.append(path)
    return out


@cache
def write_fixture() -> _WriteFixture:
    return _WriteFixture()


def _imap_write_seeds() -> list[bytes]:
    login = b"l LOGIN bob bob-pw\r\n"
    return [login + b"s SELECT INBOX\r\n" + cmd for cmd in (
        b"a STORE 1:3 +FLAGS (\\Deleted \\Seen $Junk)\r\nb EXPUNGE\r\nc FETCH 1:* (UID FLAGS)\r\n",
        b"a COPY 2:* Sent\r\nb UID MOVE 1 Trash\r\nc STATUS Sent (MESSAGES UIDNEXT)\r\n",
        b'a APPEND INBOX (\\Flagged) "01-Jan-2024 10:00:00 +0000" {27}\r\nSubject: x\r\n\r\nhello there\r\n\r\n',
        b"a CREATE a/b/c\r\nb RENAME a/b x\r\nc DELETE x/c\r\nd LIST \"\" *\r\ne SUBSCRIBE INBOX\r\nf LSUB \"\" *\r\n",
        b"a IDLE\r\nDONE\r\nb UID EXPUNGE 1:2\r\nc CLOSE\r\nd UNSELECT\r\ne LOGOUT\r\n",
        b"a APPEND INBOX {5+}\r\nhello\r\nb UID STORE 1 FLAGS.SILENT ()\r\nc ENABLE UTF8=ACCEPT\r\n",
    )] + [b"a AUTHENTICATE PLAIN\r\nAGJvYgBib2ItcHc=\r\nb EXAMINE Sent\r\nc MOVE 1 INBOX\r\n",
          b"a STARTTLS\r\n" + login + b"b ID NIL\r\n"]


@target("imap-write", IMAP_TOKENS + (b"Trash", b"Sent", b"$Junk", b"UID MOVE ", b"UID EXPUNGE ", b"UNSELECT",
                                     b"DONE\r\n", b"SUBSCRIBE ", b"LSUB "),
        max_len=4096, ci_inputs=300, seeds=_imap_write_seeds)
def imap_write(data: bytes) -> None:
    """The whole IMAP session on a store of its own: every command, those that write
    (APPEND, STORE, COPY, MOVE, EXPUNGE, CREATE, RENAME, DELETE, SUBSCRIBE), IDLE and
    AUTHENTICATE with their continuation lines, STARTTLS. Afterwards a new session
    must still read every mailbox (nothing the first one wrote is unreadable)."""
    from maillab.imap.session import IMAPSession

    fx, wfx = fixture(), write_fixture()
    store = Store(wfx.work)
    s = IMAPSession(store, fx.users, fx.limits, hostname="mail.alpha.test")
    try:
        drive_imap(s, data)
    finally:
        s.end()
        store.close()
        changed = wfx.changed()
    try:
        # As after a restart: every mailbox and message readable. A folder this input
        # left byte for byte as the template's (none of its files written) reads as
        # the template did, so only the folders it touched are opened again.
        again = Store(wfx.work)
        for name in again.list_mailboxes(wfx.USER):
            if not wfx.folder_changed(name, changed):
                continue
            mailbox = again.mailbox(wfx.USER, name)
            uids = [m.uid for m in mailbox.messages()]
            assert uids == sorted(set(uids)), (name, uids)
            for uid in uids:
                mailbox.read(uid)
        again.close()
    finally:
        wfx.restore(changed | wfx.changed())


def imaplib_pieces(data: bytes) -> list[bytes | tuple[bytes, bytes]]:
    """Response bytes cut as imaplib hands them over: a line ending in ``{n}`` and the
    n octets after it become one (line, literal) tuple, other lines bytes."""
    import re

    pieces: list[bytes | tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line, pos = data[pos:end].rstrip(b"\r\n"), end
        m = re.search(rb"\{(\d{1,6})\}$", line)
        if m:
            size = int(m.group(1))
            pieces.append((line, data[pos:pos + size]))
            pos += size
        else:
            pieces.append(line)
    return pieces


def _imap_response_seeds() -> list[bytes]:
    return [b'1 (UID 4 FLAGS (\\Seen) RFC822.SIZE 44827 ENVELOPE ("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" '
            b'"IMAP4rev1 WG mtg summary and minutes" (("Terry Gray" NIL "gray" "cac.washington.edu")) NIL NIL '
            b'((NIL NIL "imap" "cac.washington.edu")) NIL NIL NIL "<B27397-0100000@cac.washington.edu>"))',
            b'2 (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
            b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff") "<960723163407.20117h@cac.washington.edu>" '
            b'"Compiler diff" "BASE64" 4554 73) "MIXED"))',
            b"3 (UID 9 BODY[HEADER.FIELDS (SUBJECT)]<0> {12}\r\nSubject: x\r\n)",
            b'(\\HasNoChildren \\Sent) "/" Sent', b'() NIL "&AOQ-"',
            # found: unbalanced, deep, other digits, an unclosed section, a short LIST line
            b"1 (UID 4", b"1 (" + b"(" * 600, "² (UID 4)".encode(), b"1 (BODY[HEADER x)", b'(\\Sent) "\xe4"']


@target("imap-response", (b"(", b")", b"NIL", b'"', b"\\", b"{5}\r\n", b"BODY[", b"]", b"<0>", b"UID ", b"FETCH ",
                          b"ENVELOPE ", b"BODYSTRUCTURE ", b"FLAGS ", b"4294967296", b"\xc2\xb2", b"\r\n"),
        max_len=2048, seeds=_imap_response_seeds)
def imap_response(data: bytes) -> None:
    """What the lab's IMAP client (``%imap``, the MIME tree and envelope views) reads
    from a server, which may be anyone's: FETCH data and LIST lines."""
    from maillab.clients.imap import ResponseSyntaxError, parse_fetch, parse_list_line

    try:
        parse_fetch(imaplib_pieces(data))
    except ResponseSyntaxError:
        pass
    for line in data.splitlines():
        try:
            parse_list_line(line)
        except ResponseSyntaxError:
            pass


class _Source:
    """search.Source over summaries of in-memory messages (what the session's does)."""

    def __init__(self, messages: list[bytes], summaries: dict[int, dict] | None = None) -> None:
        self.messages = messages
        self.summaries = summaries or {}  # the store caches each message's summary too

    def data(self, m: searching.Candidate) -> bytes:
        return self.messages[m.seq - 1]

    def header_texts(self, m: searching.Candidate, field: str, exact: bool) -> tuple[str, ...]:
        return searching.header_texts(self.messages[m.seq - 1], field, exact)

    def sent(self, m: searching.Candidate):
        summary = self.summaries.get(m.seq) or message.summarize(self.messages[m.seq - 1])
        date = summary["date"]
        return None if date is None else datetime.datetime.fromtimestamp(date, datetime.timezone.utc).date()


def _message_seeds() -> list[bytes]:
    return _messages()


@target("message", (b"\r\n", b"\r\n\r\n", b"Content-Type: ", b"multipart/mixed; boundary=", b"--b\r\n",
                    b"--b--", b"message/rfc822", b"text/plain; charset=", b"name*0*=", b"name*1=",
                    b"utf-8''%C3%A9", b"=?utf-8?B?w6k=?=", b"=?iso-8859-1?Q?a=E9?=", b"From: ",
                    b"To: ", b"Cc: ", b"Date: ", b"Subject: ", b"Content-Transfer-Encoding: base64",
                    b"quoted-printable", b"<a@b>", b'"x y" <a@b>', b"group: a@b, c@d;", b"(comment)",
                    b"@route:a@b", b"\\", b"\"", b"  ", b"\t", b"Mon, 1 Jan 2024 10:00:00 +0000"),
        max_len=8192, ci_inputs=600, seeds=_message_seeds)
def message_target(data: bytes) -> None:
    """MIME, ENVELOPE, BODYSTRUCTURE, sections and SEARCH over one stored message."""
    with _split_once(data):
        summary = message.summarize(data)
        assert summary["envelope"].startswith("(")
        for part, kind in (((), "HEADER"), ((1,), None), ((1,), "MIME"), ((2, 1), "TEXT"), ((1, 1, 1), None)):
            message.section(data, part, kind)
        message.section(data, (), "HEADER.FIELDS", ("FROM", "SUBJECT"))
        source = _Source([data], {1: summary})
        for key in (("FROM", b"a"), ("TEXT", b"x"), ("HEADER", "SUBJECT", b""),
                    ("SENTSINCE", datetime.date(2000, 1, 1)), ("BODY", b"\xc3\xa9")):
            test = searching.compile_key(key, charset="UTF-8", max_seq=1, max_uid=1)
            test(searching.Candidate(1, 1, frozenset(), len(data), 0.0, None, source))


@contextmanager
def _split_once(data: bytes) -> Iterator[None]:
    """Every call above splits the same message again (``message.parse``: ~75% of the
    target's time). The split is a pure function of the bytes, so it runs once per
    input here; what each call does with the tree is still run in full."""
    real = message.parse
    root = real(data)
    message.parse = lambda d: root if d is data else real(d)
    try:
        yield
    finally:
        message.parse = real


def _address_seeds() -> list[bytes]:
    return [b"a@b", b"Some Name <a@b>", b'"Doe, John" <j@d>, x@y', b"undisclosed-recipients:;",
            b"group: a@b, (c) <d@e>;, f@g", b"<@route,@r2:a@b>", b"a (comment) @ b . c",
            b"=?utf-8?q?J=C3=B6rg?= <j@x>"]


@target("addresses", (b"<", b">", b"@", b",", b";", b":", b'"', b"\\", b"(", b")", b" ", b".", b"[1.2.3.4]",
                      b"=?utf-8?q?x?=", b"a@b", b"Name <a@b>"), max_len=2048, seeds=_address_seeds)
def addresses(data: bytes) -> None:
    capped = parse_addresses(data)
    if len(capped) < MAX_ADDRESSES:
        # The cap never stopped the parse, so address_search_text's uncapped parse
        # would go the same way: its text from these (parsing twice was half the time)
        addresses_text(capped)
    else:
        address_search_text(data)
    decode_header(data)


# -- SMTP --------------------------------------------------------------------------------

SMTP_TOKENS = (b"<", b">", b"@", b'"', b"\\", b":", b",", b"[", b"]", b"IPv6:", b"127.0.0.1", b"alpha.test",
               b" SIZE=", b" BODY=8BITMIME", b" SMTPUTF8", b" RET=HDRS", b" ENVID=", b"%", b"!", b"\x00",
               b"\r\n", b"\r\n.\r\n", b"\n.\n", b"..", b"Received: ", b"AGJvYgBwdw==", b"=", b"*", b"\xc3\xa9")


def _smtp_path_seeds() -> list[bytes]:
    return [b"<bob@alpha.test>", b"<> SIZE=100", b'<"a\\"b"@alpha.test> BODY=8BITMIME',
            b"<@a,@b:u@alpha.test>", b"u@[127.0.0.1]", b"<u%x@alpha.test>", b"<j\xc3\xb6rg@alpha.test> SMTPUTF8"]


@target("smtp-path", SMTP_TOKENS, max_len=600, seeds=_smtp_path_seeds)
def smtp_path(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # the server answers 500 to a command that is not UTF-8
    except UnicodeDecodeError:
        return
    for what in ("sender", "recipient"):
        try:
            path, rest = policy.parse_path(text, what=what, allow_null=what == "sender")
        except policy.PathError:
            continue
        again = policy.parse_path(str(path), what=what, allow_null=True)[0]
        assert (again.local, again.domain, again.quoted) == (path.local, path.domain, path.quoted), path
        try:
            policy.parse_mail_params(rest, extended=True, size_limit=1000)
        except policy.PathError:
            pass
        if not path.null:
            try:
                policy.route_recipient(path, local_domains={"alpha.test"}, is_user=lambda a: a.startswith("b"),
                                       authenticated=bool(len(data) % 2), relay_available=True)
            except policy.PathError:
                pass
            received_header(helo=text[:50], peer_ip="127.0.0.1", by="mail.alpha.test", protocol="ESMTP",
                            id="X", recipient=path.address)


def _smtp_data_seeds() -> list[bytes]:
    chains = [p.read_bytes() for p in sorted((DATA / "received").glob("*.txt"))]
    return [b"Subject: x\r\n\r\n..dot\r\n.\r\n", b"a\nb\rc\r\n.\n", *chains]


@target("smtp-data", SMTP_TOKENS, max_len=8192, seeds=_smtp_data_seeds)
def smtp_data_target(data: bytes) -> None:
    text = smtp_data.scan(data)
    smtp_data.check_line_endings(text)
    smtp_data.check_line_length(text, 1000)
    smtp_data.check_hops(text.message)
    # scan() looks at the text in one vectorised pass: it must find what the plain
    # bytes methods find
    crlf = data.count(b"\r\n")
    assert text.bare_cr == (data.count(b"\r") != crlf) and text.bare_lf == (data.count(b"\n") != crlf)
    assert text.message == smtp_data.unstuff(data)


def _smtp_session_seeds() -> list[bytes]:
    return [b"EHLO c.test\r\nMAIL FROM:<alice@alpha.test> SIZE=100\r\nRCPT TO:<bob@alpha.test>\r\n"
            b"DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
            b"EHLO c.test\r\nAUTH PLAIN AGFsaWNlAGFsaWNlLXB3\r\nMAIL FROM:<alice@alpha.test>\r\n"
            b"RCPT TO:<carol@beta.test>\r\nRCPT TO:<\"a\\\"b\"@alpha.test>\r\nDATA\r\nhi\r\n.\r\n",
            b"HELO x\r\nAUTH LOGIN\r\nYWxpY2U=\r\nYWxpY2UtcHc=\r\nRSET\r\nNOOP\r\nVRFY bob\r\nSTARTTLS\r\n",
            b"EHLO x\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\nBDAT 5\r\nDATA\r\n.\r\n"]


@target("smtp-session", SMTP_TOKENS + (b"EHLO c.test\r\n", b"MAIL FROM:<alice@alpha.test>", b"RCPT TO:<bob@alpha.test>",
                                       b"DATA\r\n", b"AUTH PLAIN ", b"AUTH LOGIN\r\n", b"RSET\r\n", b"QUIT\r\n"),
        max_len=4096, ci_inputs=3000, seeds=_smtp_session_seeds)
def smtp_session(data: bytes) -> None:
    """The sans-IO SMTP session as its driver runs it: lines (with the driver's length
    check), hooks and deliveries answered, DATA read to <CRLF>.<CRLF> and un-stuffed."""
    from maillab.smtp.received import TLSInfo
    from maillab.smtp.session import Deliver, Hook, SMTPSession

    fx = fixture()
    submission = b"AUTH" in data  # the submission port after STARTTLS, or the MX port
    s = SMTPSession(hostname="mail.alpha.test", limits=fx.limits, local_domains=frozenset({"alpha.test"}),
                    is_user=lambda a: a.lower() in ("bob@alpha.test", "alice@alpha.test"),
                    authenticate=lambda login, pw: "alice@alpha.test" if (login, pw) == ("alice", "alice-pw") else None,
                    resolve=lambda login: "alice@alpha.test" if login == "alice" else None,
                    relay_available=True, submission=submission,
                    tls=TLSInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256) if submission else None)

    def settle(step):
        while not isinstance(step, policy.Reply):
            step = step.then("250 OK" if isinstance(step, Hook) else None)
        return step

    assert isinstance(s.greeting(), policy.Reply)
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        end = len(data) if end < 0 else end + 1
        line, pos = data[pos:end], end
        reply = s.give_up()
        if reply is None:
            reply = s.line_too_long() if len(line) > s.line_limit(line) else settle(s.receive(line))
        if reply.read_data:
            stop = data.find(smtp_data.END_OF_DATA, pos - 2)
            if stop < 0:
                return  # the client went away inside DATA: nothing delivered
            raw = b"\r\n" + data[pos:stop + len(smtp_data.END_OF_DATA)] if stop >= pos else b"\r\n.\r\n"
            pos = max(pos, stop + len(smtp_data.END_OF_DATA))
            reply = settle(s.end_of_data(smtp_data.scan(raw)))
        assert isinstance(reply, policy.Reply) and 200 <= reply.code < 600
        assert not isinstance(reply, (Deliver, Hook))
        if reply.close:
            return


def _sasl_seeds() -> list[bytes]:
    return [b"AGJvYgBib2ItcHc=", b"=", b"*", b"Ym9i", b"not base64!", b"AGFsaWNlAP8="]


@target("sasl", (b"=", b"*", b"AA==", b"\x00", b"YWxpY2U=", b"\xc3\xa9", b" "), max_len=512, seeds=_sasl_seeds)
def sasl(data: bytes) -> None:
    for raw in (data, data.decode("latin-1")):
        try:
            message_ = decode_response(raw)
        except SASLError:
            continue
        for parse in (parse_plain, login_value):
            try:
                parse(message_)
            except SASLError:
                pass


def _smtp_reply_seeds() -> list[bytes]:
    return [b"220 mx1.beta.test ESMTP ready\r\n",
            b"250-mx1.beta.test\r\n250-SIZE 10240000\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SMTPUTF8\r\n",
            b"550 5.1.1 <carol@beta.test>: Recipient address rejected\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n",
            b"421-4.7.0 try again\r\n421 4.7.0 later\r\n", b"250 2.0.0 Ok: queued as 4F2B1C\r\n",
            "²50 ok\r\n".encode()]  # found: isdigit() but not int()


@target("smtp-reply", (b"250-", b"250 ", b"220 ", b"354 ", b"421 ", b"550 ", b"5.1.1 ", b"4.7.0 ", b"SIZE ", b"STARTTLS",
                       b"PIPELINING", b"AUTH PLAIN LOGIN", b"\r\n", b"\xc2\xb2", b"-"),
        max_len=2048, seeds=_smtp_reply_seeds)
def smtp_reply(data: bytes) -> None:
    """What the relay's client reads from a next hop (a student's server on the class
    network says anything): reply lines, multi-line replies, enhanced codes, EHLO."""
    from maillab.relay.client import MAX_REPLY_LINE, ProtocolError, ReplyParser, ehlo_extensions

    parser = ReplyParser()
    for raw in data.splitlines(keepends=True):
        if len(raw) > MAX_REPLY_LINE:
            return  # the driver ends the session: "reply line too long"
        try:
            reply = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except ProtocolError:
            return  # the session with this MX ends; the next MX is tried
        if reply is not None:
            assert 0 <= reply.code <= 999
            str(reply), reply.status, reply.transient, reply.permanent
            ehlo_extensions(reply)


# -- POP3 ---------------------------------------------------------------------------------

class _POP3Backend:
    def __init__(self, fx: _Fixture) -> None:
        self.fx = fx

    def authenticate(self, login: str, password: str) -> str | None:
        return self.fx.users.authenticate(login, password)

    def password(self, login: str) -> str | None:
        try:
            return self.fx.users.password(login)
        except KeyError:
            return None

    def open_maildrop(self, address: str):
        from maillab.pop3.maildrop import Maildrop

        return Maildrop(self.fx.store.mailbox(address, "Pop", create=True))


def _pop3_seeds() -> list[bytes]:
    return [b"USER bob\r\nPASS bob-pw\r\nSTAT\r\nLIST\r\nRETR 1\r\nTOP 1 0\r\nUIDL\r\nDELE 1\r\nRSET\r\nQUIT\r\n",
            b"CAPA\r\nAUTH PLAIN AGJvYgBib2ItcHc=\r\nLIST 2\r\nUIDL 1\r\nNOOP\r\nQUIT\r\n",
            b"AUTH PLAIN\r\n*\r\nAPOP bob 0123456789abcdef0123456789abcdef\r\nQUIT\r\n"]


@target("pop3-session", (b"USER bob\r\n", b"PASS bob-pw\r\n", b"APOP bob ", b"AUTH PLAIN ", b"AGJvYgBib2ItcHc=",
                         b"STAT\r\n", b"LIST ", b"RETR ", b"TOP ", b"DELE ", b"RSET\r\n", b"UIDL", b"NOOP\r\n",
                         b"QUIT\r\n", b"CAPA\r\n", b"STLS\r\n", b"1", b"0", b"-1", b"4294967296", b"\r\n", b" "),
        max_len=1024, ci_inputs=3000, seeds=_pop3_seeds)
def pop3_session(data: bytes) -> None:
    """The RFC 1939 session in every state; QUIT's UPDATE deletes from a scratch folder
    that is refilled, so every input meets messages to act on."""
    from maillab.pop3.session import POP3Session

    fx = fixture()
    mb = fx.store.mailbox("bob@alpha.test", "Pop", create=True)
    if len(mb.messages()) < 3:
        for raw in _messages()[:3]:
            mb.add(raw)
    s = POP3Session(_POP3Backend(fx), auth_failure_delay=0.0)
    s.greeting()
    try:
        for line in data.splitlines(keepends=True):
            reply = s.receive(line)
            if getattr(reply, "close", False):
                break
    finally:
        s.end()


# -- Received chains -----------------------------------------------------------------------

def _received_seeds() -> list[bytes]:
    return [p.read_bytes() for p in sorted((DATA / "received").glob("*.txt"))]


@target("received", (b"Received: ", b"from ", b"by ", b"with ESMTPS ", b"id ", b"for <a@b>", b"; ", b"(", b")",
                     b"[127.0.0.1]", b"(using TLSv1.3 with cipher X)", b"Mon, 1 Jan 2024 10:00:00 +0000",
                     b"\r\n\t", b"9999", b"-2359", b"helo=", b"\\"), max_len=8192,
        ci_inputs=1000, seeds=_received_seeds)
def received(data: bytes) -> None:
    from maillab.views.relay import HopsView

    table = parse_hops(data)
    view = HopsView(table, "fuzz")
    repr(view)
    view._repr_html_()
    json.dumps(table.as_dicts(), default=str)


# -- message authentication (SPF, DKIM, ARC, DMARC) ------------------------------------------

class _AuthLookup:
    """What the lab DNS would answer for alpha.test's DKIM key, DMARC and SPF records
    (the look-ups of ``auth.lookup.LabLookup.query`` answered from memory: the
    resolver is the one part left out)."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        import dns.rdata

        self.records = {k: [dns.rdata.from_text("IN", k[1], v) for v in vs] for k, vs in records.items()}

    def resolve(self, name, rdtype, raise_on_no_answer=False, search=False):
        import dns.resolver

        key = (str(name).rstrip(".").lower(), rdtype)
        if key not in self.records:
            raise dns.resolver.NXDOMAIN()
        return type("Answer", (), {"rrset": self.records[key]})()


class _AuthFixture:
    def __init__(self) -> None:
        from maillab.auth.keys import DEFAULT_DMARC, DomainKey, _new_key

        self.key = DomainKey("alpha.test", "lab", _new_key(), Path("/nonexistent"))
        txt = self.key.record_text()
        self.resolver = _AuthLookup({
            ("lab._domainkey.alpha.test", "TXT"): [" ".join(f'"{txt[i:i + 250]}"' for i in range(0, len(txt), 250))],
            ("_dmarc.alpha.test", "TXT"): [f'"{DEFAULT_DMARC.replace("p=none", "p=reject")}"'],
            ("alpha.test", "TXT"): ['"v=spf1 ip4:127.0.0.0/8 include:beta.test -all"'],
            ("beta.test", "TXT"): ['"v=spf1 a mx ptr exists:%{i}.x.beta.test redirect=gamma.test"'],
            ("alpha.test", "A"): ["127.0.0.1"], ("alpha.test", "MX"): ["10 alpha.test."]})


@cache
def auth_fixture() -> _AuthFixture:
    return _AuthFixture()


def _auth_seeds() -> list[bytes]:
    from maillab.auth.send import seal, sign

    fx = auth_fixture()
    plain = (b"From: Alice <alice@alpha.test>\r\nTo: bob@beta.test\r\nSubject: hi\r\n"
             b"Message-ID: <1@alpha.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n\r\nHello\r\n")
    signed = sign(plain, fx.key)
    results = b"Authentication-Results: mx.beta.test; spf=pass smtp.mailfrom=alpha.test; dkim=pass (ok) header.d=alpha.test\r\n"
    return [plain, signed, seal(results + signed, fx.key, "mx.beta.test"),
            b"Authentication-Results: x; (((c))) dmarc=fail (p=reject) header.from=alpha.test\r\n" + plain,
            # found: comments removed one level per pass (quadratic in the depth)
            b"Authentication-Results: x; " + b"(" * 3000 + b")" * 3000 + b" spf=pass\r\n" + plain,
            # found: an ARC set's d= that is not UTF-8 (UnicodeDecodeError after verifying)
            seal(results + signed, fx.key, "mx.beta.test").replace(b"d=alpha.test;", b"d=alph\xe1.test;", 1),
            b"DKIM-Signature: s=a\rb\r\n\r\nx\r\n"]  # found: a bare CR from s= in the MX's own field


@target("auth", (b"DKIM-Signature: ", b"v=1; ", b"a=rsa-sha256; ", b"c=relaxed/simple; ", b"d=alpha.test; ",
                 b"s=lab; ", b"h=from:to:subject; ", b"bh=", b"b=", b"l=", b"i=1; ", b"cv=pass; ",
                 b"ARC-Seal: ", b"ARC-Message-Signature: ", b"ARC-Authentication-Results: ",
                 b"Authentication-Results: ", b"spf=pass ", b"dkim=fail ", b"dmarc=", b"From: ", b"@alpha.test",
                 b"(", b")", b";", b"\r\n", b"\r\n\t"),
        max_len=8192, ci_inputs=300, seeds=_auth_seeds)
def auth_target(data: bytes) -> None:
    """A received message as the MX judges it (``auth.receive.check``: SPF, DKIM, ARC,
    DMARC through pyspf, dkimpy and authres, against alpha.test's records), the
    ``Authentication-Results`` it adds on top, the ``%mail auth`` view, and the
    Authentication-Results/ARC/DKIM-Signature reading of ``%mail hops``."""
    from maillab.auth import Received
    from maillab.auth.headers import read as read_auth_headers
    from maillab.auth.lookup import LabLookup
    from maillab.auth.mta import _strip_our_results
    from maillab.auth.receive import check
    from maillab.views.auth import AuthView

    fx = auth_fixture()
    read_auth_headers(data)
    lookup = LabLookup("127.0.0.1", 53)
    lookup.resolver = fx.resolver
    message_ = _strip_our_results(data, "mx.beta.test")
    verdict = check(message_, lookup=lookup, authserv_id="mx.beta.test", ip="127.0.0.1", helo="mail.alpha.test",
                    mail_from="alice@alpha.test", trusted_sealers=frozenset({"alpha.test"}))
    field_ = verdict.header()
    # the field goes on top of the message: one field, whatever the message said
    assert "\r" not in field_.replace("\r\n", "") and all(
        rest[:1] in (" ", "\t") for rest in field_.replace("\r\n", "\n").split("\n")[1:]), field_
    view = AuthView(Received("mx.beta.test", ["bob@beta.test"], "", "", verdict,
                             field_.encode("utf-8") + b"\r\n" + message_))
    repr(view)
    view._repr_html_()


# -- DNS ---------------------------------------------------------------------------------

@cache
def _zones() -> LabZones:
    zones = LabZones()
    zones.build(default_network(), "127.0.0.1")
    return zones


def _dns_seeds() -> list[bytes]:
    import dns.message
    import dns.rdatatype

    out = []
    for name, rdtype in (("alpha.test", "MX"), ("mail.alpha.test", "A"), ("x.beta.test", "TXT"),
                         ("1.0.0.127.in-addr.arpa", "PTR"), ("alpha.test", "AXFR"), ("example.com", "A"),
                         ("_submission._tcp.alpha.test", "SRV"), ("alpha.test", "ANY")):
        q = dns.message.make_query(name, rdtype, use_edns=len(out) % 2 == 0)
        out.append(q.to_wire())
    return out


def _dns_wire_seeds() -> list[bytes]:
    return _dns_seeds()


@target("dns-wire", (b"\x00\x01", b"\x00\x0f", b"\xc0\x0c", b"\xc0\x00", b"\x05alpha\x04test\x00", b"\x00\x00\x29\x10\x00",
                     b"\x00\xfc", b"\x00\xff", b"\x3f", b"\xff" * 4), max_len=1024, ci_inputs=3000, seeds=_dns_wire_seeds)
def dns_wire(data: bytes) -> None:
    outcome = dns_server.handle_wire(_zones(), data, "udp")
    if outcome.wire is not None:
        assert len(outcome.wire) <= 65535
    if not outcome.question:
        # Dropped, or FORMERR before a question was read: nothing up to there looks
        # at the transport, so over TCP it goes the same way (most inputs: asking
        # again parsed every one twice)
        return
    dns_server.handle_wire(_zones(), data, "tcp")


def _zone_seeds() -> list[bytes]:
    return [_zones().text(n).encode() for n in _zones().names()]


@cache
def _loop():
    import asyncio

    return asyncio.new_event_loop()


def _route_seeds() -> list[bytes]:
    """Responses to the relay's MX and A questions (the question is put in by the target)."""
    import dns.message

    out = []
    for name, rdtype in (("beta.test", "MX"), ("mx1.beta.test", "A"), ("beta.test", "A"), ("alpha.test", "MX")):
        query = dns.message.make_query(name, rdtype)
        wire = dns_server.handle_wire(_zones(), query.to_wire(), "udp").wire or b""
        if len(wire) >= 12:  # the header, then the sections after the question (as long as the query's)
            out.append(wire[:12] + wire[len(query.to_wire()):])
    # found: opcode STATUS in the header; an A record of class 0x21 as glue of an authoritative MX answer
    out.append(b"\x00\x00\x90\x00" + out[0][4:])
    out.append(b"\x00\x00\x85\x00\x00\x01\x00\x01\x00\x00\x00\x01\xc0\x0c\x00\x0f\x00\x01\x00\x00\x00\x3c\x00\x08"
               b"\x00\x0a\x03mx1\xc0\x0c\xc0\x27\x00\x01\x00\x21\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x02")
    return out


@target("dns-route", (b"\xc0\x0c", b"\x00\x0f\x00\x01", b"\x00\x01\x00\x01", b"\x00\x05\x00\x01", b"\x00\x00\x0e\x10",
                      b"\x00\x04\x7f\x00\x00\x01", b"\x00\x0a", b"\x03mx1\x04beta\x04test\x00", b"\x84\x00", b"\x00\x00"),
        max_len=1024, ci_inputs=2000, seeds=_route_seeds)
def dns_route(data: bytes) -> None:
    """What the relay makes of the answers its stub resolver gets (``relay.mx.find_route``
    over ``dns.stub.StubResolver``): the input is the response to every question, with
    the question as asked (the stub drops any other) and the header's ID and QR bit."""
    import asyncio
    import random

    import dns.exception
    import dns.flags

    from maillab.dns.stub import HEADER_SIZE, StubResolver
    from maillab.relay.mx import RouteError, find_route

    class Stub(StubResolver):
        async def _ask(self, query, wire):
            # the input as the datagram that comes back, with the ID and the question
            # the server echoes (anything else never reaches the lookup), through the
            # stub's own matching and decoding
            qid = 0x1234
            future = asyncio.get_running_loop().create_future()
            self._pending[qid] = (wire[HEADER_SIZE:], future)
            head = data[:HEADER_SIZE].ljust(HEADER_SIZE, b"\0")
            self._received(qid.to_bytes(2, "big") + head[2:] + wire[HEADER_SIZE:] + data[HEADER_SIZE:])
            self._pending.pop(qid)
            if not future.done():
                raise dns.exception.Timeout(timeout=self.timeout)  # dropped: the lookup times out
            response = self._decode(future.result())
            if response.flags & dns.flags.TC:  # the stub asks again over TCP; here nobody answers
                raise dns.exception.Timeout(timeout=self.timeout)
            return response

    async def run() -> None:
        stub = Stub("127.0.0.1", 53, 1.0)
        try:
            route = await find_route("beta.test", stub, self_names=["mail.alpha.test"], rng=random.Random(0))
            assert route.targets and all(t.addresses for t in route.targets)
            route.as_dict()
        except RouteError:
            pass

    _loop().run_until_complete(run())


@target("zone-text", (b"$ORIGIN ", b"$TTL 300\n", b"@ ", b"IN ", b"SOA ", b"MX 10 ", b"A 127.0.0.1", b"TXT \"v=spf1\"",
                      b"CNAME ", b"SRV 0 1 25 ", b"(", b")", b";", b"\n", b"\\", b"*.", b"$INCLUDE /etc/passwd"),
        max_len=4096, ci_inputs=1000, seeds=_zone_seeds)
def zone_text(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parse_zone("alpha.test", text)
    except ZoneError:
        pass


# -- the class DNS (UPDATE, TSIG) ---------------------------------------------------------

class _ClassFixture:
    def __init__(self) -> None:
        from maillab.classnet import ClassDNS

        self.dir = tempfile.TemporaryDirectory(prefix="maillab-fuzz-class-", dir=SCRATCH)
        self.server = ClassDNS(Path(self.dir.name) / "class", port=0,
                               limits=Limits(class_update_rate=1e9, class_update_burst=10**9))
        self.key = self.server.keys.add("alice")


@cache
def class_fixture() -> _ClassFixture:
    return _ClassFixture()


def _class_seeds() -> list[bytes]:
    import dns.rdata
    import dns.update

    from maillab.classnet.keys import tsig_key

    fx = class_fixture()
    key = tsig_key(fx.key.name, fx.key.secret)
    out = []
    for signed in (True, False):
        for i, (name, rdtype, value) in enumerate((
                ("mail.alice.class.test.", "A", "127.0.77.1"), ("alice.class.test.", "MX", "10 mail.alice.class.test."),
                ("bob.class.test.", "TXT", '"x"'), ("class.test.", "NS", "ns.evil."))):
            msg = dns.update.UpdateMessage("class.test.", keyring=key if signed else None)
            msg.add(name, 60, dns.rdata.from_text("IN", rdtype, value))
            msg.delete("old.alice.class.test.")
            if i % 2:
                msg.present("mail.alice.class.test.")
            out.append(msg.to_wire())
    return out + _dns_seeds()


@target("class-dns", (b"\x28\x00", b"\x00\xfa\x00\xff", b"\x05alice\x05class\x04test\x00", b"\xc0\x0c",
                      b"\x0bhmac-sha256", b"\x00\x06", b"\x00\xfe", b"\x00\x01\x00\x01"),
        max_len=1024, ci_inputs=1500, seeds=_class_seeds)
def class_dns(data: bytes) -> None:
    """The class DNS: queries and signed UPDATEs through ``ClassDNS.handle`` (a bug there
    answers SERVFAIL and records "internal error", which counts as a finding), and the
    UPDATE policy itself on the message read without its signature."""
    import dns.exception
    import dns.message
    import dns.name
    import dns.rdata
    import dns.update
    import dns.zone

    from maillab.classnet import policy as class_policy

    fx = class_fixture()
    fx.server.updates.clear()
    fx.server.handle(data, ("127.0.0.1", 53), "udp")
    errors = [u for u in fx.server.updates if "internal error" in u.reason]
    assert not errors, errors
    try:
        msg = dns.message.from_wire(data, keyring=lambda _m, _n: False)  # read, not verified
    except (dns.exception.DNSException, ValueError, UnicodeError):
        return
    if isinstance(msg, dns.update.UpdateMessage) and msg.zone:
        zone = dns.zone.Zone(fx.server.origin, relativize=False)
        with zone.writer() as txn:
            txn.add(fx.server.origin, 60, dns.rdata.from_text("IN", "SOA", "ns h 1 60 60 600 60"))
        class_policy.process(zone, msg, dns.name.from_text(fx.key.name), max_records=64, max_changes=64)


# -- mailbox names ---------------------------------------------------------------------------

def _names_seeds() -> list[bytes]:
    return [b"INBOX", b"Sent", b"a/b/c", b"&ZeVnLIqe-", b"~root", b"../x", b"&AC8-"]


@target("mailbox-name", (b"&", b"-", b"&AC8-", b"&AC4ALg-", b"..", b"/", b".", b"INBOX", b"~", b"\x00", b"&-"),
        max_len=512, seeds=_names_seeds)
def mailbox_name(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        name = decode_mutf7(text)
    except InvalidName:
        return
    try:
        split_name(name)
    except InvalidName:
        return
    assert decode_mutf7(encode_mutf7(name)) == name


# -- the mutator (CI) and the atheris entry point (scripts/fuzz) ---------------------------

def mutate(rng: random.Random, data: bytes, target: Target, corpus: list[bytes]) -> bytes:
    """One seeded mutation: byte flips, inserts, deletes, token inserts, splices, and
    repeats of a chunk (the shape super-linear inputs have)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randint(0, len(buf))
        if op == 0 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif op == 2 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op in (3, 4):
            buf[pos:pos] = rng.choice(target.tokens)
        elif op == 5 and corpus:
            other = rng.choice(corpus)
            cut = rng.randint(0, len(other))
            buf[pos:] = other[cut:]
        elif op == 6 and buf:
            chunk = bytes(buf[pos:pos + rng.randint(1, 8)]) or b" "
            buf[pos:pos] = chunk * rng.randint(2, 64)
        elif op == 7:
            buf[pos:pos] = str(rng.choice([0, 1, 2**31, 2**32, 10**30])).encode()
    return bytes(buf[:target.max_len])


def run_seeded(t: Target, count: int, seed: int) -> list[tuple[bytes, str]]:
    """The seeds, then ``count`` mutants; returns (input, traceback) for each failure."""
    import traceback

    rng = random.Random(seed)
    corpus = [s[:t.max_len] for s in t.seeds()] or [b""]
    failures: list[tuple[bytes, str]] = []
    inputs = list(corpus)
    inputs += [mutate(rng, rng.choice(corpus), t, corpus) for _ in range(count)]
    for data in inputs:
        try:
            t.run(data)
        except Exception:  # noqa: BLE001 - every exception is a finding
            failures.append((data, traceback.format_exc(limit=6)))
            if len(failures) >= 5:
                break
    return failures


def main(argv: list[str], instrument: bool = True) -> None:
    import atheris

    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit("usage: fuzz_targets.py TARGET [libFuzzer flags]; targets: " + ", ".join(TARGETS))
    t = TARGETS[argv[1]]
    work = Path(os.environ.get("MAILLAB_FUZZ_DIR", "/tmp/maillab-fuzz")) / t.name
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(t.seeds()):
        (work / "corpus" / f"seed-{i}").write_bytes(seed[:t.max_len])
    (work / "dict").write_text("".join('"' + "".join(f"\\x{b:02x}" for b in tok) + '"\n' for tok in t.tokens))
    t.run(b"")  # build fixtures before instrumenting, so they do not count as coverage
    if instrument:  # tests/fuzz_run.py instruments only maillab, email and dns, at import
        atheris.instrument_all()
    given = [a for a in argv[2:] if not a.startswith("-")]  # files to replay (a crash-*), or corpus dirs
    args = [argv[0], *argv[2:], f"-dict={work / 'dict'}", f"-max_len={t.max_len}",
            f"-artifact_prefix={work}/", *([] if given else [str(work / "corpus")])]
    atheris.Setup(args, cpu_bounded(t.run, float(os.environ.get("MAILLAB_FUZZ_SLOW", "1.0"))))
    atheris.Fuzz()


class SlowInput(Exception):
    """One input took more CPU than any linear parse of ``max_len`` bytes should."""


def cpu_bounded(run: Callable[[bytes], None], limit: float) -> Callable[[bytes], None]:
    """``run``, failing an input that costs over ``limit`` seconds of this thread's CPU.

    libFuzzer's -timeout (10 s, wall clock) catches hangs; a quadratic parser meets
    it only on inputs far longer than ``max_len``. At a few KB every target takes
    milliseconds (tens under instrumentation), so a second of CPU is the shape of a
    super-linear path, kept as a crash file to scale up and measure
    (``tests/test_linear.py``). CPU time of this thread, so a loaded machine does
    not make an input slow."""
    import time

    def timed(data: bytes) -> None:
        start = time.thread_time()
        run(data)
        spent = time.thread_time() - start
        if spent > limit:
            raise SlowInput(f"{spent:.2f} s of CPU for {len(data)} bytes")

    return timed


if __name__ == "__main__":
    main(sys.argv)
