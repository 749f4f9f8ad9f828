"""The lexical layer of IMAP (RFC 3501 section 9): a cursor over one complete command.

:class:`Reader` reads atoms, numbers, quoted strings, literals, astrings, flags,
sequence sets and dates out of a command's bytes (its lines and literals as
received), raising :class:`Malformed` with a message a student can act on. The
command grammars in :mod:`maillab.imap.parser` are written with it.
"""

from __future__ import annotations

import calendar
import datetime
import re

from .flags import SYSTEM_FLAGS
from .verbs import STAR, SeqSet

MAX_NUMBER = 4294967295  # number = 1*DIGIT ; unsigned 32-bit (RFC 3501 section 9)
#: More digits than any number the grammar allows (leading zeros aside): refused before
#: int(), which is quadratic in the digits and raises past sys.get_int_max_str_digits().
MAX_DIGITS = 20

# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5e-\x7a\x7c\x7e]+")
ASTRING = re.compile(rb"[\x21\x23\x24\x26\x27\x2b-\x5b\x5d-\x7a\x7c\x7e]+")  # ATOM-CHAR + "]"
_LIST_CHARS = re.compile(rb"[\x21\x23-\x27\x2a-\x5b\x5d-\x7a\x7c\x7e]+")  # + "%" "*" "]"
_NUMBER = re.compile(rb"\d+")
_SEQ_SET = re.compile(rb"(?:\d+|\*)(?::(?:\d+|\*))?(?:,(?:\d+|\*)(?::(?:\d+|\*))?)*")
_DATE_TIME = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
MONTHS = {m.upper(): i for i, m in enumerate(calendar.month_abbr) if m}

_SYSTEM_BY_UPPER = {f.upper(): f for f in (*SYSTEM_FLAGS, "\\Recent")}


class Malformed(Exception):
    """The command does not follow the grammar; the text says where and why."""


class Reader:
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
            raise Malformed(f"unexpected characters at the end: {self._context()}")

    def _context(self) -> str:
        return self.data[self.pos:self.pos + 20].decode("ascii", "replace").rstrip("\r\n")

    def sp(self) -> None:
        if self.peek() != b" ":
            raise Malformed(f"expected a space at {self._context()!r}")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.peek() == b" ":
            self.pos += 1
            return True
        return False

    def expect(self, token: bytes) -> None:
        if self.data[self.pos:self.pos + len(token)].upper() != token.upper():
            raise Malformed(f"expected {token.decode()!r} at {self._context()!r}")
        self.pos += len(token)

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.data, self.pos)
        if not m:
            raise Malformed(f"expected {what} at {self._context()!r}")
        self.pos = m.end()
        return m.group()

    def atom(self) -> str:
        return self.match(_ATOM, "an atom").decode("ascii")

    def number(self, nonzero: bool = False) -> int:
        value = bounded_int(self.match(_NUMBER, "a number"))
        if value > MAX_NUMBER or (nonzero and value == 0):
            raise Malformed("number out of range")
        return value

    def quoted(self) -> bytes:
        self.pos += 1  # the opening DQUOTE
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise Malformed("unterminated quoted string")
            c = data[self.pos]
            if c == 0x22:
                self.pos += 1
                return bytes(out)
            if c == 0x5C:
                nxt = data[self.pos + 1:self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise Malformed("only \\\" and \\\\ may be escaped in a quoted string")
                out += nxt
                self.pos += 2
                continue
            if c in (0x0D, 0x0A, 0x00):
                raise Malformed("CR, LF or NUL inside a quoted string")
            out.append(c)
            self.pos += 1

    def literal(self) -> bytes:
        m = re.compile(rb"\{(\d+)\+?\}\r?\n").match(self.data, self.pos)
        if not m:
            raise Malformed("malformed literal")
        size = bounded_int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise Malformed("literal shorter than announced")
        self.pos = start + size
        return self.data[start:start + size]

    def string(self) -> bytes:
        c = self.peek()
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        raise Malformed(f"expected a string at {self._context()!r}")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (b'"', b"{"):
            return self.string()
        return self.match(ASTRING, "an atom or string")

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
                raise Malformed("\\* is not a flag")
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
            raise Malformed(f"bad date {raw!r} (use e.g. 1-Feb-2024)")
        try:
            return datetime.date(int(m.group(3)), MONTHS[m.group(2).upper()], int(m.group(1)))
        except ValueError:
            raise Malformed(f"bad date {raw!r}") from None

    def date_time(self) -> float:
        if self.peek() != b'"':
            raise Malformed("expected a quoted date-time")
        raw = self.quoted().decode("ascii", "replace")
        m = _DATE_TIME.match(raw)
        if not m or m.group(2).upper() not in MONTHS:
            raise Malformed(f"bad date-time {raw!r} (use e.g. \"01-Feb-2024 10:00:00 +0000\")")
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        try:
            tz = datetime.timezone((1 if sign == "+" else -1)
                                   * datetime.timedelta(hours=int(zh), minutes=int(zm)))
            when = datetime.datetime(int(year), MONTHS[mon.upper()], int(day), int(hh), int(mm),
                                     int(ss), tzinfo=tz)
        except ValueError:
            raise Malformed(f"bad date-time {raw!r}") from None
        return when.timestamp()


def bounded_int(digits: bytes | str) -> int:
    if len(digits) > MAX_DIGITS:
        raise Malformed("number out of range")
    return int(digits)


def _seq_number(text: str) -> int:
    if text == "*":
        return STAR
    n = bounded_int(text)
    if n == 0 or n > MAX_NUMBER:
        raise Malformed("message numbers and UIDs are between 1 and 4294967295")
    return n
