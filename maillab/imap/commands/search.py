"""SEARCH (RFC 3501 6.4.4, response 7.2.5), and UID SEARCH (6.4.8).

The key tree from the parser is compiled once per command by
:func:`maillab.imap.search.compile_key`; this handler feeds it one candidate per
message, with what the index knows (flags, size, dates) and a source for what
it does not (header texts and the message bytes, read through the store's
caches so a warm header search opens no file).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...store import Mailbox
from ...store.locking import share_turn
from ...store.reading import TEXTS_MAX, caches, header_field, read_header, read_wire, remember
from .. import search as searching
from ..responses import No, Output, line
from ..states import SELECTED_ONLY
from ..verbs import Search
from .fetch import summary

if TYPE_CHECKING:
    from ..session import IMAPSession


def search(s: IMAPSession, cmd: Search) -> Iterator[Output]:
    """``* SEARCH`` with the matching sequence numbers (UIDs for UID SEARCH)."""
    view = s.view()
    mb = view.mailbox
    try:
        test = searching.compile_key(cmd.key, charset=cmd.charset, max_seq=len(view.uids),
                                     max_uid=view.uids[-1] if view.uids else 0)
    except searching.BadCharset:
        raise No(f"[BADCHARSET ({' '.join(searching.CHARSETS)})] unsupported charset"
                 " or text not in it") from None
    source = MailboxSource(mb)
    recent = view.recent
    hits: list[str] = []
    measured = _needs_measuring(cmd.key)
    if measured:
        mb.measure(view.uids)  # a batch at a time, rather than one get() at a time
    for seq, uid in enumerate(view.uids, 1):
        share_turn()  # over a large mailbox's bodies this takes seconds: others go first now and then
        info = mb.get(uid) if measured else mb.unmeasured(uid)
        if info is None:
            continue  # expunged elsewhere: no longer matches anything
        flags = info.flags | {"\\Recent"} if uid in recent else info.flags
        cand = searching.Candidate(seq, uid, flags, info.crlf_size, info.internaldate,
                                   info, source)
        try:
            if test(cand):
                hits.append(str(uid if cmd.uid else seq))
        except FileNotFoundError:
            continue
    yield line("* SEARCH" + "".join(" " + h for h in hits))
    return None


#: Keys that need RFC822.SIZE, INTERNALDATE or the message bytes (read through the
#: indexed sizes): with none of them, a file indexed by its name alone is not measured.
_MEASURED_KEYS = frozenset({"LARGER", "SMALLER", "BEFORE", "ON", "SINCE", "BODY", "TEXT"})


def _needs_measuring(key: tuple[Any, ...]) -> bool:
    kind = key[0]
    if kind == "AND":
        return any(_needs_measuring(k) for k in key[1])
    if kind == "OR":
        return _needs_measuring(key[1]) or _needs_measuring(key[2])
    if kind == "NOT":
        return _needs_measuring(key[1])
    return kind in _MEASURED_KEYS


class MailboxSource:
    """What a SEARCH reads beyond the index (a :class:`maillab.imap.search.Source`)."""

    def __init__(self, mb: Mailbox) -> None:
        self.mb = mb
        self.texts = caches(mb).texts

    def data(self, m: searching.Candidate) -> bytes:
        return read_wire(self.mb, m.info)

    def header_texts(self, m: searching.Candidate, field: str, exact: bool) -> tuple[str, ...]:
        key = (m.uid, field, exact)
        texts = self.texts.get(key)
        if texts is None:
            block = header_field(read_header(self.mb, m.info), field)
            texts = searching.header_texts(block, field, exact)
            remember(self.texts, key, texts, TEXTS_MAX)
        return texts

    def sent(self, m: searching.Candidate) -> datetime.date | None:
        parsed = summary(self.mb, m.uid)
        if parsed.get("date") is None:
            return None
        # the sender's calendar day: the Date header's own zone (RFC 3501 6.4.4)
        local = parsed["date"] + 60 * (parsed.get("date_tz") or 0)
        return datetime.datetime.fromtimestamp(local, datetime.timezone.utc).date()


#: command -> (handler, the states that accept it)
COMMANDS = {Search: (search, SELECTED_ONLY)}
