"""The IMAP command grammar (RFC 3501 section 9), as a sans-IO parser.

The driver feeds it what arrives on the wire: a line, and when that line ends in
a literal announcement ``{N}`` (or ``{N+}``, RFC 7888 LITERAL+), exactly N bytes,
then the next line, and so on. The parser answers each step with one of:

* :class:`NeedLiteral` - read N bytes next (after sending ``+`` when ``sync``);
* a :class:`~maillab.imap.verbs.Command` - a complete, well-formed command, one
  typed dataclass per verb (``Login``, ``Fetch``, ``Store``...);
* :class:`ParseError` - the command is malformed (answer BAD; ``tag`` is None
  when not even a tag could be read, and then the reply is ``* BAD``);
* :class:`LiteralRefused` - the announced literal is over the limit. Its bytes
  are never read: a synchronizing literal gets a tagged NO [TOOBIG] and the next
  line is a new command (the client waits for "+", which never comes); a
  non-synchronizing one is already on its way, so the connection must close.

Nothing here touches a socket, so every rule is testable with plain bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .reader import ASTRING, Malformed, Reader, bounded_int
from .verbs import (
    Append,
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchItem,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    Starttls,
    Status,
    Store,
    Subscribe,
    Unselect,
    Unsubscribe,
)

_LITERAL_AT_END = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+")  # ASTRING-CHAR minus "+"
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_PART = re.compile(rb"[1-9]\d*(?:\.[1-9]\d*)*")

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


# -- command grammars ----------------------------------------------------------------
#
# One function per verb (or per shape several verbs share): it reads the arguments
# after the verb and returns that verb's typed command. ``uid`` is True after "UID".

Grammar = Callable[[Reader, str, bool], Command]


def _bare(cls: type[Command]) -> Grammar:
    """A command without arguments (CAPABILITY, NOOP, CHECK...)."""
    def grammar(r: Reader, tag: str, uid: bool) -> Command:
        return cls(tag)
    return grammar


def _one_mailbox(cls: type[Delete] | type[Subscribe] | type[Unsubscribe]) -> Grammar:
    """A command whose one argument is a mailbox name (DELETE, SUBSCRIBE, UNSUBSCRIBE)."""
    def grammar(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        return cls(tag, r.astring())
    return grammar


def _select(cls: type[Select]) -> Grammar:
    """SELECT and EXAMINE (RFC 3501 6.3.1-2)."""
    def grammar(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        name = r.astring()
        if r.maybe_sp():  # select-params (e.g. CONDSTORE): accepted and ignored
            _generic_list(r, 1)
        return cls(tag, name)
    return grammar


def _create(r: Reader, tag: str, uid: bool) -> Create:
    r.sp()
    name = r.astring()
    uses: list[str] = []
    if r.maybe_sp():  # RFC 6154 CREATE-SPECIAL-USE: (USE (\Sent))
        params = _generic_list(r, 1)
        for i, item in enumerate(params):
            if isinstance(item, str) and item.upper() == "USE" and i + 1 < len(params):
                uses = [str(x) for x in params[i + 1]]
    return Create(tag, name, tuple(uses))


def _rename(r: Reader, tag: str, uid: bool) -> Rename:
    r.sp()
    old = r.astring()
    r.sp()
    return Rename(tag, old, r.astring())


def _login(r: Reader, tag: str, uid: bool) -> Login:
    r.sp()
    user = r.astring()
    r.sp()
    return Login(tag, user, r.astring())


def _authenticate(r: Reader, tag: str, uid: bool) -> Authenticate:
    r.sp()
    mech = r.atom().upper()
    initial = None
    if r.maybe_sp():  # RFC 4959 SASL-IR: base64 or "=" for an empty response
        initial = r.match(re.compile(rb"[A-Za-z0-9+/]*={0,2}"), "a base64 response").decode()
    return Authenticate(tag, mech, initial)


def _list(r: Reader, tag: str, uid: bool) -> List:
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
    return List(tag, ref, pattern, tuple(selection), tuple(returns))


def _lsub(r: Reader, tag: str, uid: bool) -> Lsub:
    r.sp()
    ref = r.astring()
    r.sp()
    return Lsub(tag, ref, r.list_mailbox())


STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "DELETED")


def _status(r: Reader, tag: str, uid: bool) -> Status:
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
            raise Malformed(f"unknown STATUS item {item}")
    return Status(tag, name, tuple(items))


def _append(r: Reader, tag: str, uid: bool) -> Append:
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
        raise Malformed("APPEND needs the message as a literal {size}")
    data = r.literal()
    return Append(tag, name, tuple(flags or ()), when, data)


def _store(r: Reader, tag: str, uid: bool) -> Store:
    r.sp()
    seqs = r.seq_set()
    r.sp()
    if r.peek() == b"(":  # RFC 7162 UNCHANGEDSINCE: not supported (no CONDSTORE)
        raise Malformed("STORE modifiers are not supported")
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
    return Store(tag, seqs, mode, silent, tuple(flags), uid=uid)


def _copy(cls: type[Copy]) -> Grammar:
    """COPY and MOVE (RFC 3501 6.4.7, RFC 6851)."""
    def grammar(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        seqs = r.seq_set()
        r.sp()
        return cls(tag, seqs, r.astring(), uid=uid)
    return grammar


def _expunge(r: Reader, tag: str, uid: bool) -> Expunge:
    if not uid:
        return Expunge(tag)
    r.sp()  # RFC 4315 2.1: UID EXPUNGE takes the UIDs it may remove
    return Expunge(tag, r.seq_set(), uid=True)


def _id(r: Reader, tag: str, uid: bool) -> Id:
    r.sp()
    if r.peek(3).upper() == b"NIL":
        r.pos += 3
        return Id(tag, None)
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
            raise Malformed("too many ID parameters")
    r.expect(b")")
    return Id(tag, params)


def _enable(r: Reader, tag: str, uid: bool) -> Enable:
    caps = []
    while r.maybe_sp():
        caps.append(r.atom().upper())
    if not caps:
        raise Malformed("ENABLE needs at least one capability")
    return Enable(tag, tuple(caps))


def _generic_list(r: Reader, depth: int) -> list[Any]:
    """A parenthesized list of atoms, strings and nested lists (select params, ID)."""
    if depth > r.max_depth:
        raise Malformed("parentheses nested too deeply")
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
            items.append(r.match(ASTRING, "a list item").decode("ascii"))
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


def _section(r: Reader) -> Section:
    r.expect(b"[")
    part: tuple[int, ...] = ()
    m = _SECTION_PART.match(r.data, r.pos)
    if m:
        part = tuple(bounded_int(x) for x in m.group().split(b"."))
        r.pos = m.end()
        if r.peek() == b".":
            r.pos += 1
        elif r.peek() != b"]":
            raise Malformed("bad section")
    kind: str | None = None
    fields: tuple[str, ...] = ()
    if r.peek() != b"]":
        kind = r.match(re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.I),
                       "HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT or MIME").decode().upper()
        if kind == "MIME" and not part:
            raise Malformed("MIME needs a part number")
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


def _fetch_item(r: Reader) -> FetchItem:
    name = r.match(_FETCH_NAME, "a fetch attribute").decode().upper()
    if r.peek() == b"[":
        if name not in ("BODY", "BODY.PEEK"):
            raise Malformed(f"{name}[...] is not supported")
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
        raise Malformed(f"unknown fetch attribute {name}")
    return FetchItem(name)


def _fetch(r: Reader, tag: str, uid: bool) -> Fetch:
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
        raise Malformed("FETCH modifiers are not supported")
    return Fetch(tag, seqs, tuple(items), uid=uid)


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


def _search_key(r: Reader, depth: int) -> SearchKey:
    if depth > r.max_depth:
        raise Malformed("search keys nested too deeply")
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
    raise Malformed(f"unknown search key {word}")


def _search(r: Reader, tag: str, uid: bool) -> Search:
    r.sp()
    charset = None
    if r.data[r.pos:r.pos + 8].upper() == b"CHARSET ":
        r.pos += 8
        charset = r.astring().decode("ascii", "replace").upper()
        r.sp()
    if r.data[r.pos:r.pos + 7].upper() == b"RETURN ":
        raise Malformed("SEARCH RETURN (ESEARCH) is not supported")
    keys = [_search_key(r, 1)]
    while r.maybe_sp():
        keys.append(_search_key(r, 1))
    return Search(tag, charset, keys[0] if len(keys) == 1 else ("AND", tuple(keys)), uid=uid)


#: verb -> its grammar. Which state allows it is the session's business.
GRAMMAR: dict[str, Grammar] = {
    "CAPABILITY": _bare(Capability), "NOOP": _bare(Noop), "LOGOUT": _bare(Logout),
    "ID": _id,
    "STARTTLS": _bare(Starttls), "AUTHENTICATE": _authenticate, "LOGIN": _login,
    "SELECT": _select(Select), "EXAMINE": _select(Examine), "CREATE": _create,
    "DELETE": _one_mailbox(Delete), "RENAME": _rename, "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe), "LIST": _list, "LSUB": _lsub, "STATUS": _status,
    "APPEND": _append, "IDLE": _bare(Idle), "NAMESPACE": _bare(Namespace), "ENABLE": _enable,
    "CHECK": _bare(Check), "CLOSE": _bare(Close), "UNSELECT": _bare(Unselect),
    "EXPUNGE": _expunge, "SEARCH": _search, "FETCH": _fetch, "STORE": _store,
    "COPY": _copy(Copy), "MOVE": _copy(Move),
}
#: The verbs with a UID form (RFC 3501 6.4.8, RFC 4315, RFC 6851); same grammars, uid=True.
UID_VERBS = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"})


def parse_command(data: bytes, max_depth: int = 32) -> Command | ParseError:
    """Parse one complete command (its lines and literals exactly as received)."""
    m = _TAG.match(data)
    tag = m.group().decode("ascii") if m else None
    if tag is None or data[m.end():m.end() + 1] != b" ":  # type: ignore[union-attr]
        return ParseError(None, "missing or invalid tag")
    r = Reader(data, max_depth)
    r.pos = m.end() + 1  # type: ignore[union-attr]
    name = ""
    uid = False
    try:
        name = r.atom().upper()
        if name == "UID":
            r.sp()
            name = r.atom().upper()
            uid = True
        grammar = GRAMMAR.get(name) if not uid or name in UID_VERBS else None
        if grammar is None:
            return ParseError(tag, f"unknown command {'UID ' if uid else ''}{name}", name or None)
        command = grammar(r, tag, uid)
        r.end()
    except Malformed as exc:
        return ParseError(tag, f"{'UID ' if uid else ''}{name}: {exc}", name or None)
    return command


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
