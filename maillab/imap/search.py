"""SEARCH (RFC 3501 6.4.4): a parsed search-key tree, compiled into one test per message.

The parser (:mod:`maillab.imap.parser`) turns ``OR (FROM bob SINCE 1-Feb-2024) NOT
UNSEEN`` into nested tuples; :func:`compile_key` turns those into a Python
function once per command, so 2,000 messages cost 2,000 calls, not 2,000 walks
of the tree. Keys that only need the index (flags, sizes, dates, UIDs,
sequence numbers) never open a message; header, body and text keys read the
message and delegate the matching (RFC 2047 decoding, MIME decoding) to
:mod:`maillab.imap.message`.

A multi-key search is an AND of its keys (RFC 3501: "the result is the
intersection"); the cheap keys are tried first so a header search restricted
to ``UNSEEN`` only opens unseen messages.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .parser import STAR, SeqSet

#: Charsets SEARCH accepts (RFC 3501 requires US-ASCII; RFC 9051 makes UTF-8 the rule).
CHARSETS = ("UTF-8", "US-ASCII")


class BadCharset(ValueError):
    """SEARCH CHARSET names a charset we do not know, or the text is not in it."""


@dataclass
class Candidate:
    """One message as a search sees it."""

    seq: int
    uid: int
    flags: frozenset[str]  # including \\Recent when it is recent in this session
    size: int  # RFC822.SIZE
    internaldate: float
    load: Callable[[], bytes]  # the message bytes (read only when a key needs them)
    load_header: Callable[[str], bytes]  # the lines of one header field (cached by the session)
    sent: Callable[[], datetime.date | None]  # the date of its Date: header

    _data: bytes | None = None

    def data(self) -> bytes:
        if self._data is None:
            self._data = self.load()
        return self._data


Test = Callable[[Candidate], bool]

#: How costly a key is, so an AND can try cheap ones first.
_COST = {"HEADER": 2, "BODY": 3, "TEXT": 3, "SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1}


def _cost(key: tuple[Any, ...]) -> int:
    kind = key[0]
    if kind in ("AND",):
        return max((_cost(k) for k in key[1]), default=0)
    if kind == "OR":
        return max(_cost(key[1]), _cost(key[2]))
    if kind == "NOT":
        return _cost(key[1])
    return _COST.get(kind, 0)


def in_seq_set(seqs: SeqSet, n: int, star: int) -> bool:
    """Is ``n`` in the sequence set, where ``*`` means ``star`` (RFC 3501 9, seq-range)?"""
    for a, b in seqs:
        a = star if a == STAR else a
        b = star if b == STAR else b
        if a > b:
            a, b = b, a
        if a <= n <= b:
            return True
    return False


def _local_date(t: float) -> datetime.date:
    return datetime.date(*time.localtime(t)[:3])


def decode_needle(raw: bytes, charset: str | None) -> str:
    cs = (charset or "US-ASCII").upper()
    if cs not in CHARSETS:
        raise BadCharset(cs)
    try:
        # US-ASCII clients send UTF-8 anyway (imaplib with a literal); accept it.
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCharset(cs) from None


def compile_key(key: tuple[Any, ...], *, charset: str | None, max_seq: int, max_uid: int,
                matcher: Any) -> Test:
    """Compile a search-key tree into one test.

    ``matcher`` supplies ``header_matches(data, name, needle)``, ``body_matches(data,
    needle)`` and ``text_matches(data, needle)`` (normally :mod:`maillab.imap.message`).
    """
    kind = key[0]
    if kind == "ALL":
        return lambda m: True
    if kind == "AND":
        tests = [compile_key(k, charset=charset, max_seq=max_seq, max_uid=max_uid,
                             matcher=matcher) for k in sorted(key[1], key=_cost)]
        if len(tests) == 1:
            return tests[0]
        return lambda m: all(t(m) for t in tests)
    if kind == "OR":
        a = compile_key(key[1], charset=charset, max_seq=max_seq, max_uid=max_uid, matcher=matcher)
        b = compile_key(key[2], charset=charset, max_seq=max_seq, max_uid=max_uid, matcher=matcher)
        return lambda m: a(m) or b(m)
    if kind == "NOT":
        inner = compile_key(key[1], charset=charset, max_seq=max_seq, max_uid=max_uid,
                            matcher=matcher)
        return lambda m: not inner(m)
    if kind == "FLAG":
        flag, present = key[1], key[2]
        lflag = flag.lower()
        if flag.startswith("\\"):
            return lambda m: (flag in m.flags) == present
        # keywords are case-insensitive (RFC 3501 2.3.2)
        return lambda m: any(f.lower() == lflag for f in m.flags) == present
    if kind == "RECENT":
        return lambda m: "\\Recent" in m.flags
    if kind == "NEW":
        return lambda m: "\\Recent" in m.flags and "\\Seen" not in m.flags
    if kind == "OLD":
        return lambda m: "\\Recent" not in m.flags
    if kind == "SEQ":
        seqs = key[1]
        return lambda m: in_seq_set(seqs, m.seq, max_seq)
    if kind == "UID":
        seqs = key[1]
        return lambda m: in_seq_set(seqs, m.uid, max_uid)
    if kind == "LARGER":
        n = key[1]
        return lambda m: m.size > n
    if kind == "SMALLER":
        n = key[1]
        return lambda m: m.size < n
    if kind in ("BEFORE", "ON", "SINCE"):
        day = key[1]
        # RFC 3501: internal date, "disregarding time and timezone"
        if kind == "BEFORE":
            return lambda m: _local_date(m.internaldate) < day
        if kind == "ON":
            return lambda m: _local_date(m.internaldate) == day
        return lambda m: _local_date(m.internaldate) >= day
    if kind in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        day = key[1]

        def sent(m: Candidate, op: str = kind) -> bool:
            d = m.sent()
            if d is None:
                return False
            return d < day if op == "SENTBEFORE" else d == day if op == "SENTON" else d >= day

        return sent
    if kind == "HEADER":
        name, needle = key[1], decode_needle(key[2], charset)
        return lambda m: bool(matcher.header_matches(m.load_header(name), name, needle))
    if kind == "BODY":
        needle = decode_needle(key[1], charset)
        return lambda m: bool(matcher.body_matches(m.data(), needle))
    if kind == "TEXT":
        needle = decode_needle(key[1], charset)
        return lambda m: bool(matcher.text_matches(m.data(), needle))
    raise ValueError(f"unknown search key {kind}")
