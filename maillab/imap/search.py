"""SEARCH (RFC 3501 6.4.4): a parsed search-key tree, compiled into one test per message.

The parser (:mod:`maillab.imap.parser`) turns ``OR (FROM bob SINCE 1-Feb-2024) NOT
UNSEEN`` into nested tuples; :func:`compile_key` turns those into a Python
function once per command, so 2,000 messages cost 2,000 calls, not 2,000 walks
of the tree. Keys that only need the index (flags, sizes, dates, UIDs,
sequence numbers) never open a message; body and text keys read the message
and delegate the matching (RFC 2047 decoding, MIME decoding) to
:mod:`maillab.imap.message`; header keys compare the decoded field texts the
session keeps per message, so a warm header search parses nothing.

A multi-key search is an AND of its keys (RFC 3501: "the result is the
intersection"); the cheap keys are tried first so a header search restricted
to ``UNSEEN`` only opens unseen messages.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import message
from .decoding import decode_header, fold_case
from .envelope import address_search_text
from .verbs import STAR, SeqSet

#: The address keys of RFC 3501 6.4.4 (SUBJECT is the other header key).
ADDRESS_KEYS = ("FROM", "TO", "CC", "BCC")
#: Charsets SEARCH accepts (RFC 3501 requires US-ASCII; RFC 9051 makes UTF-8 the rule).
CHARSETS = ("UTF-8", "US-ASCII")


class BadCharset(ValueError):
    """SEARCH CHARSET names a charset we do not know, or the text is not in it."""


class Source(Protocol):
    """Where a search gets what the index does not hold (the session, with its caches)."""

    def data(self, m: Candidate) -> bytes: ...
    def header_texts(self, m: Candidate, field: str, exact: bool) -> Sequence[str]: ...
    def sent(self, m: Candidate) -> datetime.date | None: ...


class Candidate:
    """One message as a search sees it."""

    __slots__ = ("seq", "uid", "flags", "size", "internaldate", "info", "source", "_data")

    def __init__(self, seq: int, uid: int, flags: frozenset[str], size: int, internaldate: float,
                 info: Any, source: Source) -> None:
        self.seq = seq
        self.uid = uid
        self.flags = flags  # including \Recent when it is recent in this session
        self.size = size  # RFC822.SIZE
        self.internaldate = internaldate
        self.info = info  # the index entry, for the source
        self.source = source
        self._data: bytes | None = None

    def data(self) -> bytes:
        """The message bytes (read only when a key needs them, then kept)."""
        if self._data is None:
            self._data = self.source.data(self)
        return self._data

    def header_texts(self, field: str, exact: bool) -> Sequence[str]:
        return self.source.header_texts(self, field, exact)

    def sent(self) -> datetime.date | None:
        """The day of its Date: header, in the sender's zone."""
        return self.source.sent(self)


def header_texts(data: bytes, field: str, exact: bool) -> tuple[str, ...]:
    """The texts SEARCH compares for ``field`` in a header block, case-folded, one per
    occurrence: exactly what :func:`maillab.imap.message.header_matches` looks at.

    They do not depend on the needle, so the session keeps them per message and a
    warm header search is a substring test per message, with no parsing.
    """
    name = field.lower()
    out = []
    for f in message.parse(data).named(name):
        if not exact and name in message.ADDRESS_FIELDS:
            value = address_search_text(f.value)
        else:
            value = message._joined(f.value)  # noqa: SLF001 - the same unfolding as header_matches
            if not exact and name == "subject":
                value = message._LWSP_RUN.sub(b" ", value).strip(b" ")  # noqa: SLF001
        out.append(fold_case(decode_header(value)))
    return tuple(out)


Test = Callable[[Candidate], bool]

#: How costly a key is, so an AND can try cheap ones first.
_COST = {"HEADER": 2, **dict.fromkeys((*ADDRESS_KEYS, "SUBJECT"), 2), "BODY": 3, "TEXT": 3,
         "SENTBEFORE": 1, "SENTON": 1, "SENTSINCE": 1}


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


def compile_key(key: tuple[Any, ...], *, charset: str | None, max_seq: int, max_uid: int) -> Test:
    """Compile a search-key tree into one test.

    Text keys compare case-folded Unicode (decoded RFC 2047 words and MIME bodies,
    :mod:`maillab.imap.message`); header keys use the texts of :func:`header_texts`.
    """
    kind = key[0]
    if kind == "ALL":
        return lambda m: True
    if kind == "AND":
        tests = [compile_key(k, charset=charset, max_seq=max_seq, max_uid=max_uid)
                 for k in sorted(key[1], key=_cost)]
        if len(tests) == 1:
            return tests[0]
        return lambda m: all(t(m) for t in tests)
    if kind == "OR":
        a = compile_key(key[1], charset=charset, max_seq=max_seq, max_uid=max_uid)
        b = compile_key(key[2], charset=charset, max_seq=max_seq, max_uid=max_uid)
        return lambda m: a(m) or b(m)
    if kind == "NOT":
        inner = compile_key(key[1], charset=charset, max_seq=max_seq, max_uid=max_uid)
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
    if kind in ("HEADER", *ADDRESS_KEYS, "SUBJECT"):
        # HEADER compares the field as written; FROM/TO/CC/BCC/SUBJECT as Dovecot reads
        # them (addresses in one normal form, runs of blanks in a subject as one space)
        exact = kind == "HEADER"
        name, raw = (key[1], key[2]) if exact else (kind, key[1])
        want = fold_case(decode_needle(raw, charset))
        if not want:  # RFC 3501 6.4.4: an empty string matches every message with the field
            return lambda m: bool(m.header_texts(name, exact))
        return lambda m: any(want in t for t in m.header_texts(name, exact))
    if kind == "BODY":
        needle = decode_needle(key[1], charset)
        return lambda m: bool(message.body_matches(m.data(), needle))
    if kind == "TEXT":
        needle = decode_needle(key[1], charset)
        return lambda m: bool(message.text_matches(m.data(), needle))
    raise ValueError(f"unknown search key {kind}")
