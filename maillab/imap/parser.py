"""The IMAP command grammar (RFC 3501 section 9), as a sans-IO parser.

The driver feeds it what arrives on the wire: a line, and when that line ends in
a literal announcement ``{N}`` (or ``{N+}``, RFC 7888 LITERAL+), exactly N bytes,
then the next line, and so on. The parser answers each step with one of:

* :class:`NeedLiteral` - read N bytes next (after sending ``+`` when ``sync``);
* :class:`Command` - a complete, well-formed command;
* :class:`ParseError` - the command is malformed (answer BAD; ``tag`` is None
  when not even a tag could be read, and then the reply is ``* BAD``);
* :class:`LiteralRefused` - the announced literal is over the limit. Its bytes
  are never read: a synchronizing literal gets a tagged NO [TOOBIG] and the next
  line is a new command (the client waits for "+", which never comes); a
  non-synchronizing one is already on its way, so the connection must close.

Nothing here touches a socket, so every rule is testable with plain bytes.
"""

from __future__ import annotations

import calendar
import datetime
import re
from dataclasses import dataclass, field
from typing import Any

from .flags import SYSTEM_FLAGS

#: "*" in a sequence set; 0 is never a valid message number or UID.
STAR = 0

SeqSet = tuple[tuple[int, int], ...]

MAX_NUMBER = 4294967295  # number = 1*DIGIT ; unsigned 32-bit (RFC 3501 section 9)
#: More digits than any number the grammar allows (leading zeros aside): refused before
#: int(), which is quadratic in the digits and raises past sys.get_int_max_str_digits().
MAX_DIGITS = 20

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+")  # ASTRING-CHAR minus "+"
# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c\x7e]+")
_ASTRING = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c\x7e]+")  # ATOM-CHAR + "]"
_LIST_CHARS = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c\x7e]+")  # + "%" "*" "]"
_NUMBER = re.compile(rb"\d+")
_SEQ_SET = re.compile(rb"(?:\d+|\*)(?::(?:\d+|\*))?(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_PART = re.compile(rb"[1-9]\d*(?:\.[1-9]\d*)*")
_DATE_TIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}

_SYSTEM_BY_UPPER = {f.upper(): f for f in (*SYSTEM_FLAGS, "\\Recent")}


# -- what the parser hands back ---------------------------------------------------

@dataclass(frozen=True)
class NeedLiteral:
    size: int
    sync: bool  # True: send "+ ..." first (RFC 3501 7.5); False: LITERAL+ bytes follow at once


@dataclass(frozen=True)
class LiteralRefused:
    tag: str | None
    size: int
    sync: bool


@dataclass(frozen=True)
class ParseError:
    tag: str | None
    text: str
    command: str | None = None


@dataclass(frozen=True)
class Section:
    """A BODY[...] section (RFC 3501 6.4.5): part path, then what of that part."""

    part: tuple[int, ...] = ()
    kind: str | None = None  # None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()

    def spec(self) -> str:
        text = ".".join(map(str, self.part))
        if self.kind:
            text = f"{text}.{self.kind}" if text else self.kind
        if self.kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            text += " (" + " ".join(self.fields) + ")"
        return text


@dataclass(frozen=True)
class FetchItem:
    """One fetch attribute. ``name`` is ENVELOPE, FLAGS, INTERNALDATE, RFC822,
    RFC822.HEADER, RFC822.SIZE, RFC822.TEXT, BODY, BODYSTRUCTURE, UID or
    BODY[] (a section, in ``section``, possibly with a ``partial``)."""

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (origin, octet count)
    peek: bool = False

    @property
    def label(self) -> str:
        """How the item is named in the FETCH response (BODY.PEEK[x] answers as BODY[x])."""
        if self.section is None:
            return self.name
        text = f"BODY[{self.section.spec()}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}>"
        return text


@dataclass(frozen=True)
class Command:
    tag: str
    name: str  # upper case; "FETCH" also for UID FETCH (then uid=True)
    args: tuple[Any, ...] = ()
    uid: bool = False

    @property
    def display(self) -> str:
        return f"UID {self.name}" if self.uid else self.name


# -- the tokenizer ---------------------------------------------------------------

class _Syntax(Exception):
    pass


class _Reader:
    """A cursor over one complete command (lines and literals, as on the wire)."""

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def peek(self, n: int = 1) -> bytes:
        return self.data[self.pos:self.pos + n]

    def at_end(self) -> bool:
        return self.data[self.pos:] in (b"\r\n", b"\n", b"")

    def end(self) -> None:
        if not self.at_end():
            raise _Syntax(f"unexpected characters at the end: {self._context()}")

    def _context(self) -> str:
        return self.data[self.pos:self.pos + 20].decode("ascii", "replace").rstrip("\r\n")

    def sp(self) -> None:
        if self.peek() != b" ":
            raise _Syntax(f"expected a space at {self._context()!r}")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == b" ":
            self.pos += 1
            return True
        return False

    def expect(self, token: bytes) -> None:
        if self.data[self.pos:self.pos + len(token)].upper() != token.upper():
            raise _Syntax(f"expected {token.decode()!r} at {self._context()!r}")
        self.pos += len(token)

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.data, self.pos)
        if not m:
            raise _Syntax(f"expected {what} at {self._context()!r}")
        self.pos = m.end()
        return m.group()

    def atom(self) -> str:
        return self.match(_ATOM, "an atom").decode("ascii")

    def number(self, nonzero: bool = False) -> int:
        value = _int(self.match(_NUMBER, "a number"))
        if value > MAX_NUMBER or (nonzero and value == 0):
            raise _Syntax("number out of range")
        return value

    def quoted(self) -> bytes:
        self.pos += 1  # the opening DQUOTE
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise _Syntax("unterminated quoted string")
            c = data[self.pos]
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                nxt = data[self.pos + 1:self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise _Syntax("only \\\" and \\\\ may be escaped in a quoted string")
                out += nxt
                self.pos += 2
                continue
            if c in (0x0D, 0x0A, 0x00):
                raise _Syntax("CR, LF or NUL inside a quoted string")
            out.append(c)
            self.pos += 1

    def literal(self) -> bytes:
        m = re.compile(rb"\{(\d+)\+?\}\r?\n").match(self.data, self.pos)
        if not m:
            raise _Syntax("malformed literal")
        size = _int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise _Syntax("literal shorter than announced")
        self.pos = start + size
        return self.data[start:start + size]

    def string(self) -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise _Syntax(f"expected a string at {self._context()!r}")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self.match(_ASTRING, "an atom or string")

    def nstring(self) -> bytes | None:
        if self.data[self.pos:self.pos + 3].upper() == b"NIL":
            self.pos += 3
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self.match(_LIST_CHARS, "a mailbox pattern")

    def flag(self) -> str:
        if self.peek() == b"\\":
            self.pos += 1
            if self.peek() == b"*":
                raise _Syntax("\\* is not a flag")
            name = "\\" + self.atom()
            return _SYSTEM_BY_UPPER.get(name.upper(), name)
        return self.atom()

    def flag_list(self) -> list[str]:
        self.expect(b"(")
        flags: list[str] = []
        if self.peek() != b")":
            flags.append(self.flag())
            while self.maybe_sp():
                flags.append(self.flag())
        self.expect(b")")
        return flags

    def seq_set(self) -> SeqSet:
        raw = self.match(_SEQ_SET, "a sequence set").decode("ascii")
        ranges = []
        for item in raw.split(","):
            lo, _, hi = item.partition(":")
            a = _seq_number(lo)
            ranges.append((a, _seq_number(hi) if hi else a))
        return tuple(ranges)

    def date(self) -> datetime.date:
        quoted = self.peek() == b'"'
        raw = (self.quoted() if quoted else self.match(_ATOM, "a date")).decode("ascii", "replace")
        m = _DATE.match(raw)
        if not m or m.group(2).upper() not in MONTHS:
            raise _Syntax(f"bad date {raw!r} (use e.g. 1-Feb-2024)")
        try:
            return datetime.date(int(m.group(3)), MONTHS[m.group(2).upper()], int(m.group(1)))
        except ValueError:
            raise _Syntax(f"bad date {raw!r}") from None

    def date_time(self) -> float:
        if self.peek() != b'"':
            raise _Syntax("expected a quoted date-time")
        raw = self.quoted().decode("ascii", "replace")
        m = _DATE_TIME.match(raw)
        if not m or m.group(2).upper() not in MONTHS:
            raise _Syntax(f"bad date-time {raw!r} (use e.g. \"01-Feb-2024 10:00:00 +0000\")")
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        try:
            tz = datetime.timezone((1 if sign == "+" else -1)
                                   * datetime.timedelta(hours=int(zh), minutes=int(zm)))
            when = datetime.datetime(int(year), MONTHS[mon.upper()], int(day), int(hh), int(mm),
                                     int(ss), tzinfo=tz)
        except ValueError:
            raise _Syntax(f"bad date-time {raw!r}") from None
        return when.timestamp()


def _int(digits: bytes | str) -> int:
    if len(digits) > MAX_DIGITS:
        raise _Syntax("number out of range")
    return int(digits)


def _seq_number(text: str) -> int:
    if text == "*":
        return STAR
    n = _int(text)
    if n == 0 or n > MAX_NUMBER:
        raise _Syntax("message numbers and UIDs are between 1 and 4294967295")
    return n


# -- command grammars ----------------------------------------------------------------

def _no_args(r: _Reader) -> tuple[Any, ...]:
    return ()


def _mailbox_arg(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    return (r.astring(),)


def _select(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    name = r.astring()
    if r.maybe_sp():  # select-params (e.g. CONDSTORE): accepted and ignored
        _generic_list(r, 1)
    return (name,)


def _create(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    name = r.astring()
    uses: list[str] = []
    if r.maybe_sp():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent))
        params = _generic_list(r, 1)
        for i, item in enumerate(params):
            if isinstance(item, str) and item.upper() == "USE" and i + 1 < len(params):
                uses = [str(x) for x in params[i + 1]]
    return (name, tuple(uses))


def _rename(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    old = r.astring()
    r.sp()
    return (old, r.astring())


def _login(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    user = r.astring()
    r.sp()
    return (user, r.astring())


def _authenticate(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    mech = r.atom().upper()
    initial = None
    if r.maybe_sp():  # RFC 4959 SASL-IR: base64 or "=" for an empty response
        initial = r.match(re.compile(rb"[A-Za-z0-9+/]*={0,2}"), "a base64 response").decode()
    return (mech, initial)


def _list(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    selection: list[str] = []
    if r.peek() == b"(":  # RFC 5258 list-select-opts (e.g. SPECIAL-USE, SUBSCRIBED)
        selection = [str(x).upper() for x in _generic_list(r, 1)]
        r.sp()
    ref = r.astring()
    r.sp()
    pattern = r.list_mailbox()
    returns: list[str] = []
    if r.maybe_sp():
        r.expect(b"RETURN")
        r.sp()
        returns = [str(x).upper() for x in _generic_list(r, 1) if isinstance(x, str)]
    return (ref, pattern, tuple(selection), tuple(returns))


def _lsub(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    ref = r.astring()
    r.sp()
    return (ref, r.list_mailbox())


STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED")


def _status(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    name = r.astring()
    r.sp()
    r.expect(b"(")
    items = [r.atom().upper()]
    while r.maybe_sp():
        items.append(r.atom().upper())
    r.expect(b")")
    for item in items:
        if item not in STATUS_ITEMS:
            raise _Syntax(f"unknown STATUS item {item}")
    return (name, tuple(items))


def _append(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    name = r.astring()
    r.sp()
    flags: list[str] | None = None
    when: float | None = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.peek() != b"{":
        raise _Syntax("APPEND needs the message as a literal {size}")
    data = r.literal()
    return (name, tuple(flags or ()), when, data)


def _store(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    seqs = r.seq_set()
    r.sp()
    if r.peek() == b"(":  # RFC 7162 UNCHANGEDSINCE: not supported (no CONDSTORE)
        raise _Syntax("STORE modifiers are not supported")
    item = r.match(re.compile(rb"[+-]?FLAGS(?:\.SILENT)?", re.I), "+FLAGS, -FLAGS or FLAGS").upper()
    mode = item[:1].decode() if item[:1] in (b"+", b"-") else ""
    silent = item.endswith(b".SILENT")
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        flags = [r.flag()]
        while r.maybe_sp():
            flags.append(r.flag())
    return (seqs, mode, silent, tuple(flags))


def _copy(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    seqs = r.seq_set()
    r.sp()
    return (seqs, r.astring())


def _uid_expunge(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    return (r.seq_set(),)


def _id(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    if r.peek(3).upper() == b"NIL":
        r.pos += 3
        return (None,)
    r.expect(b"(")
    params: dict[str, str | None] = {}
    while r.peek() != b")":
        key = r.string().decode("utf-8", "replace")
        r.sp()
        value = r.nstring()
        params[key] = None if value is None else value.decode("utf-8", "replace")
        if not r.maybe_sp():
            break
        if len(params) > 30:  # RFC 2971: at most 30 pairs
            raise _Syntax("too many ID parameters")
    r.expect(b")")
    return (params,)


def _enable(r: _Reader) -> tuple[Any, ...]:
    caps = []
    while r.maybe_sp():
        caps.append(r.atom().upper())
    if not caps:
        raise _Syntax("ENABLE needs at least one capability")
    return (tuple(caps),)


def _generic_list(r: _Reader, depth: int) -> list[Any]:
    """A parenthesized list of atoms, strings and nested lists (select params, ID)."""
    if depth > r.max_depth:
        raise _Syntax("parentheses nested too deeply")
    r.expect(b"(")
    items: list[Any] = []
    while r.peek() != b")":
        c = r.peek()
        if c == b"(":
            items.append(_generic_list(r, depth + 1))
        elif c in (b'"', b"{"):
            items.append(r.string().decode("utf-8", "replace"))
        elif c == b"\\":
            items.append(r.flag())
        else:
            items.append(r.match(_ASTRING, "a list item").decode("ascii"))
        if not r.maybe_sp():
            break
    r.expect(b")")
    return items


# FETCH (RFC 3501 6.4.5) ----------------------------------------------------------

_FETCH_SIMPLE = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                 "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID"}
FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _section(r: _Reader) -> Section:
    r.expect(b"[")
    part: tuple[int, ...] = ()
    m = _SECTION_PART.match(r.data, r.pos)
    if m:
        part = tuple(_int(x) for x in m.group().split(b"."))
        r.pos = m.end()
        if r.peek() == b".":
            r.pos += 1
        elif r.peek() != b"]":
            raise _Syntax("bad section")
    kind: str | None = None
    fields: tuple[str, ...] = ()
    if r.peek() != b"]":
        kind = r.match(re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.I),
                       "HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME").decode().upper()
        if kind == "MIME" and not part:
            raise _Syntax("MIME needs a part number")
        if kind.startswith("HEADER.FIELDS"):
            r.sp()
            r.expect(b"(")
            names = [r.astring()]
            while r.maybe_sp():
                names.append(r.astring())
            r.expect(b")")
            fields = tuple(n.decode("ascii", "replace").upper() for n in names)
    r.expect(b"]")
    return Section(part, kind, fields)


def _fetch_item(r: _Reader) -> FetchItem:
    name = r.match(_FETCH_NAME, "a fetch attribute").decode().upper()
    if r.peek() == b"[":
        if name not in ("BODY", "BODY.PEEK"):
            raise _Syntax(f"{name}[...] is not supported")
        section = _section(r)
        partial = None
        if r.peek() == b"<":
            r.pos += 1
            origin = r.number()
            r.expect(b".")
            count = r.number(nonzero=True)
            r.expect(b">")
            partial = (origin, count)
        return FetchItem("BODY[]", section, partial, peek=name == "BODY.PEEK")
    if name not in _FETCH_SIMPLE:
        raise _Syntax(f"unknown fetch attribute {name}")
    return FetchItem(name)


def _fetch(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    seqs = r.seq_set()
    r.sp()
    items: list[FetchItem] = []
    if r.peek() == b"(":
        r.pos += 1
        items.append(_fetch_item(r))
        while r.maybe_sp():
            items.append(_fetch_item(r))
        r.expect(b")")
    else:
        m = _FETCH_NAME.match(r.data, r.pos)
        word = m.group().decode().upper() if m else ""
        if word in FETCH_MACROS and r.data[m.end():m.end() + 1] != b"[":  # type: ignore[union-attr]
            r.pos = m.end()  # type: ignore[union-attr]
            items = [FetchItem(n) for n in FETCH_MACROS[word]]
        else:
            items.append(_fetch_item(r))
    if r.maybe_sp():  # RFC 4466 fetch modifiers (CHANGEDSINCE): not supported
        raise _Syntax("FETCH modifiers are not supported")
    return (seqs, tuple(items))


# SEARCH (RFC 3501 6.4.4) ---------------------------------------------------------

_SEARCH_FLAGS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
_SEARCH_HEADERS = {"FROM", "TO", "CC", "BCC", "SUBJECT"}
_SEARCH_DATES = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}


def _search_key(r: _Reader, depth: int) -> tuple[Any, ...]:
    if depth > r.max_depth:
        raise _Syntax("search keys nested too deeply")
    c = r.peek()
    if c == b"(":
        r.pos += 1
        keys = [_search_key(r, depth + 1)]
        while r.maybe_sp():
            keys.append(_search_key(r, depth + 1))
        r.expect(b")")
        return ("AND", tuple(keys))
    if c == b"*" or c.isdigit():
        return ("SEQ", r.seq_set())
    word = r.atom().upper()
    if word in ("ALL", "NEW", "OLD", "RECENT"):
        return (word,)
    if word in _SEARCH_FLAGS:
        flag, present = _SEARCH_FLAGS[word]
        return ("FLAG", flag, present)
    if word in ("KEYWORD", "UNKEYWORD"):
        r.sp()
        return ("FLAG", r.flag(), word == "KEYWORD")
    if word in _SEARCH_HEADERS:
        r.sp()
        return (word, r.astring())
    if word == "HEADER":
        r.sp()
        name = r.astring().decode("ascii", "replace")
        r.sp()
        return ("HEADER", name.upper(), r.astring())
    if word in ("BODY", "TEXT"):
        r.sp()
        return (word, r.astring())
    if word in _SEARCH_DATES:
        r.sp()
        return (word, r.date())
    if word in ("LARGER", "SMALLER"):
        r.sp()
        return (word, r.number())
    if word == "UID":
        r.sp()
        return ("UID", r.seq_set())
    if word == "NOT":
        r.sp()
        return ("NOT", _search_key(r, depth + 1))
    if word == "OR":
        r.sp()
        a = _search_key(r, depth + 1)
        r.sp()
        return ("OR", a, _search_key(r, depth + 1))
    raise _Syntax(f"unknown search key {word}")


def _search(r: _Reader) -> tuple[Any, ...]:
    r.sp()
    charset = None
    if r.data[r.pos:r.pos + 8].upper() == b"CHARSET ":
        r.pos += 8
        charset = r.astring().decode("ascii", "replace").upper()
        r.sp()
    if r.data[r.pos:r.pos + 7].upper() == b"RETURN ":
        raise _Syntax("SEARCH RETURN (ESEARCH) is not supported")
    keys = [_search_key(r, 1)]
    while r.maybe_sp():
        keys.append(_search_key(r, 1))
    return (charset, keys[0] if len(keys) == 1 else ("AND", tuple(keys)))


#: command -> its argument grammar. Which state allows it is the session's business.
GRAMMAR = {
    "CAPABILITY": _no_args, "NOOP": _no_args, "LOGOUT": _no_args, "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select, "EXAMINE": _select, "CREATE": _create, "DELETE": _mailbox_arg,
    "RENAME": _rename, "SUBSCRIBE": _mailbox_arg, "UNSUBSCRIBE": _mailbox_arg,
    "LIST": _list, "LSUB": _lsub, "STATUS": _status, "APPEND": _append,
    "CHECK": _no_args, "CLOSE": _no_args, "EXPUNGE": _no_args, "SEARCH": _search,
    "FETCH": _fetch, "STORE": _store, "COPY": _copy, "MOVE": _copy,
    "IDLE": _no_args, "NAMESPACE": _no_args, "ID": _id, "ENABLE": _enable, "UNSELECT": _no_args,
}
UID_COMMANDS = {"FETCH": _fetch, "STORE": _store, "SEARCH": _search, "COPY": _copy,
                "MOVE": _copy, "EXPUNGE": _uid_expunge}


def parse_command(data: bytes, max_depth: int = 32) -> Command | ParseError:
    """Parse one complete command (its lines and literals exactly as received)."""
    m = _TAG.match(data)
    tag = m.group().decode("ascii") if m else None
    if tag is None or data[m.end():m.end() + 1] != b" ":  # type: ignore[union-attr]
        return ParseError(None, "missing or invalid tag")
    r = _Reader(data, max_depth)
    r.pos = m.end() + 1  # type: ignore[union-attr]
    name = ""
    uid = False
    try:
        name = r.atom().upper()
        grammar = GRAMMAR.get(name)
        if name == "UID":
            r.sp()
            name = r.atom().upper()
            uid = True
            grammar = UID_COMMANDS.get(name)
        if grammar is None:
            return ParseError(tag, f"unknown command {'UID ' if uid else ''}{name}", name or None)
        args = grammar(r)
        r.end()
    except _Syntax as exc:
        return ParseError(tag, f"{'UID ' if uid else ''}{name}: {exc}", name or None)
    return Command(tag, name, args, uid)


# -- the incremental front end -----------------------------------------------------

@dataclass
class Parser:
    """Collects one command's lines and literals, then parses it.

    ``max_literal`` is checked when a literal is announced, before a byte of it
    is read; ``max_command`` bounds everything one command may accumulate.
    """

    max_literal: int
    max_command: int
    max_depth: int = 32
    _parts: list[bytes] = field(default_factory=list)
    _size: int = 0
    _expecting: int | None = None

    @property
    def in_command(self) -> bool:
        """True between the first line of a command and its end (literals pending)."""
        return bool(self._parts)

    def reset(self) -> None:
        self._parts = []
        self._size = 0
        self._expecting = None

    def current_tag(self) -> str | None:
        first = self._parts[0] if self._parts else b""
        m = _TAG.match(first)
        return m.group().decode("ascii") if m and first[m.end():m.end() + 1] == b" " else None

    def first_line(self) -> bytes:
        return self._parts[0] if self._parts else b""

    def feed_line(self, line: bytes) -> Command | ParseError | NeedLiteral | LiteralRefused:
        if self._expecting is not None:
            raise RuntimeError("a literal is expected, not a line")
        self._parts.append(line)
        self._size += len(line)
        m = _LITERAL_AT_END.search(line)
        if m:
            size, sync = int(m.group(1)), not m.group(2)
            if size > self.max_literal or self._size + size > self.max_command:
                refused = LiteralRefused(self.current_tag(), size, sync)
                self.reset()
                return refused
            self._expecting = size
            return NeedLiteral(size, sync)
        data = b"".join(self._parts)
        self.reset()
        return parse_command(data, self.max_depth)

    def feed_literal(self, data: bytes) -> None:
        if self._expecting is None or len(data) != self._expecting:
            raise RuntimeError("literal of the wrong size")
        self._parts.append(data)
        self._size += len(data)
        self._expecting = None


def parse_tag(line: bytes) -> str | None:
    """The tag of a line, when it has a valid one (for answering a line we will not parse)."""
    m = _TAG.match(line)
    return m.group().decode("ascii") if m and line[m.end():m.end() + 1] == b" " else None
