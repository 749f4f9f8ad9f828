"""FETCH (RFC 3501 6.4.5, responses 7.4.2), and UID FETCH (6.4.8).

ENVELOPE, BODY and BODYSTRUCTURE come from a summary parsed once per message
and kept in the mailbox index; their wire form is cached per mailbox too
(:mod:`maillab.store.reading`), so a warm ``FETCH 1:* ENVELOPE`` parses
nothing. Message bytes are read with one system call and handed to the driver
as literal parts of a :class:`~maillab.imap.responses.Response`, never copied
into the text around them.

A message another session expunged, which this session still shows until it may
announce the EXPUNGE (RFC 3501 7.4.1), is a *ghost*
(:meth:`~maillab.imap.selected_mailbox.SelectedMailbox.ghost`). FETCH answers
what is still known of it as usual (UID, FLAGS, RFC822.SIZE and INTERNALDATE
while the store keeps them, ENVELOPE/BODY/BODYSTRUCTURE while their wire form is
cached), which is all a client syncing flags asks. A ghost whose answer would need
the file that is gone gets no FETCH response, every other message is answered,
and FETCH ends ``NO [EXPUNGEISSUED]`` (RFC 2180 4.1.2, RFC 5530). UID FETCH ends
``OK [EXPUNGEISSUED]`` instead: its EXPUNGE responses come before the tagged
reply, so the client learns that the UID is gone, and a UID that does not exist
is ignored without an error (RFC 3501 6.4.8), as UID STORE does.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ...store import Mailbox
from ...store.locking import share_turn
from ...store.reading import WIRE_ITEMS_MAX, caches, read_wire, remember
from ...store.table import UNKNOWN, UNKNOWN_DATE
from ..flags import flags_text
from ..responses import Bad, No, Output, Response, lines
from ..selected_mailbox import SelectedMailbox
from ..states import SELECTED_ONLY
from ..verbs import STAR, Fetch, FetchItem

if TYPE_CHECKING:
    from ..session import IMAPSession

#: The tagged replies when a ghost's answer needed its file (see the module docstring).
GONE_NO = "[EXPUNGEISSUED] some of the requested messages no longer exist"
GONE_OK = "[EXPUNGEISSUED] UID FETCH completed; some of the messages were expunged by another session"

#: A FETCH that sets \Seen sets it for this many messages at a time.
SEEN_BATCH = 256

#: The items that need the message's bytes (not only the index and its cached summary).
_DATA_ITEMS = ("RFC822", "RFC822.HEADER", "RFC822.TEXT", "BODY[]")
_SUMMARY_ITEMS = ("ENVELOPE", "BODY", "BODYSTRUCTURE")
#: The items the index answers alone (RFC822.SIZE and INTERNALDATE once measured).
_INDEX_ITEMS = frozenset({"UID", "FLAGS", "RFC822.SIZE", "INTERNALDATE"})
#: Messages per batch when only the index is needed: one hold of the mailbox lock
#: and one response object (a block of lines) per batch.
INDEX_BATCH = 1024
_SEEN = frozenset({"\\Seen"})


#: A FETCH this small (messages, octets in all) that sets no flag and parses no MIME
#: structure is answered on the lab loop when the mailbox lock is free (:func:`light`).
LIGHT_MESSAGES = 16
LIGHT_OCTETS = 256 * 1024
#: The sections such a FETCH may ask for: split at the header's end, no part found.
_LIGHT_KINDS = (None, "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT")


def light(s: IMAPSession, cmd: Fetch) -> bool:
    """Whether ``cmd`` is a FETCH the lab loop may answer itself, holding the mailbox
    lock it took without waiting (the caller holds it): a few messages (the sequence
    set names at most :data:`LIGHT_MESSAGES`, without ``*``), their sizes known and
    at most :data:`LIGHT_OCTETS` in all, no item that sets \\Seen (its flush waits
    for the disk), nor ENVELOPE/BODY/BODYSTRUCTURE (a parse, and a cache written),
    nor a part of the MIME structure, and no rescan due (its listing and index writes
    are a worker's, with the listing off the lock). Such a FETCH is a few file reads and a format:
    handing it to a worker thread and its result back to the loop cost more than it
    does, and on a busy machine each of those two wake-ups waits for a CPU and the
    interpreter (benchmarks/store_lock.py: a reader's FETCH beside a writer)."""
    view = s.selected
    if view is None:
        return False
    named = 0
    for a, b in cmd.sequence_set:
        if a == STAR or b == STAR:
            return False
        named += abs(b - a) + 1
        if named > LIGHT_MESSAGES:
            return False
    for item in cmd.items:
        if item.name in _SUMMARY_ITEMS or item.name in ("RFC822", "RFC822.TEXT") and not view.readonly:
            return False
        if item.section is not None and (item.section.part or item.section.kind not in _LIGHT_KINDS
                                         or not (item.peek or view.readonly)):
            return False
    if not view.mailbox.in_step():
        return False  # files added or renamed by another tool: a worker rescans, off the lock
    try:
        indexes = view.resolve(cmd.sequence_set, cmd.uid)
    except Bad:
        return False
    t = view.mailbox.table
    total = 0
    for idx in indexes:
        slot = t.slot(view.uids[idx])
        if slot is None:
            continue  # a ghost: answered from what the table kept
        if t.crlf[slot] == UNKNOWN or t.sizes[slot] == UNKNOWN or t.dates[slot] == UNKNOWN_DATE:
            return False  # measuring reads the file: a worker's job
        total += t.sizes[slot]
    return total <= LIGHT_OCTETS


def internaldate_text(t: float) -> str:
    """RFC 3501 date-time, in the server's local time zone like Dovecot's."""
    lt = time.localtime(t)
    off = lt.tm_gmtoff // 60
    sign = "+" if off >= 0 else "-"
    off = abs(off)
    return (f'"{lt.tm_mday:2d}-{time.strftime("%b", lt)}-{lt.tm_year:04d} '
            f'{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{off // 60:02d}{off % 60:02d}"')


def summary(mb: Mailbox, uid: int, data: bytes | None = None) -> dict[str, Any]:
    """ENVELOPE, BODY, BODYSTRUCTURE and the Date of a message: parsed once, then
    kept in the mailbox index (never re-parsed while the index is warm)."""
    cache = mb.get_cache(uid)
    if cache is None or "bodystructure" not in cache:
        from .. import message

        if data is None:
            info = mb.get(uid)
            data = read_wire(mb, info) if info is not None else mb.read_crlf(uid)
        cache = dict(message.summarize(data))
        mb.set_cache(uid, cache)
    return cache


def fetch(s: IMAPSession, cmd: Fetch) -> Iterator[Output]:
    """One ``* n FETCH (...)`` per message; BODY[] and RFC822 set \\Seen (not BODY.PEEK[])."""
    items = cmd.items
    view = s.view()
    mb = view.mailbox
    if cmd.uid and not any(i.name == "UID" for i in items):
        items = (FetchItem("UID"), *items)  # RFC 3501 6.4.8: UID FETCH always reports UIDs
    needs_data = any(i.name in _DATA_ITEMS for i in items)
    sets_seen = not view.readonly and any(
        i.name in ("RFC822", "RFC822.TEXT") or (i.name == "BODY[]" and not i.peek) for i in items)
    wants_flags = any(i.name == "FLAGS" for i in items)
    missing = False
    seen_changed = False
    wire_items = caches(mb).wire_items
    labelled = [(item, item.label.encode()) for item in items]  # BODY[...] names, once
    if any(i.name in _SUMMARY_ITEMS for i in items) or needs_data:
        from .. import message
    else:
        message = None  # type: ignore[assignment]
    indexes = view.resolve(cmd.sequence_set, cmd.uid)
    if not sets_seen and all(i.name in _INDEX_ITEMS for i in items):
        missing = yield from _from_index(view, [i.name for i in items], indexes)
        return _gone(cmd.uid) if missing else None
    needs_info = needs_data or any(i.name in ("RFC822.SIZE", "INTERNALDATE") for i in items)
    seen_set: set[int] = set()
    for pos, idx in enumerate(indexes):
        share_turn()  # (no mailbox lock held here)
        if sets_seen and pos % SEEN_BATCH == 0:
            # \Seen for the next messages in one index transaction, just before
            # they are sent (a client gone mid-FETCH leaves the rest unseen)
            seen_set = _set_seen(view, indexes[pos:pos + SEEN_BATCH])
            seen_changed = seen_changed or bool(seen_set)
        uid = view.uids[idx]
        info = mb.get(uid) if needs_info else None
        flags_now = info.flags if info is not None else mb.flags(uid)
        ghost = None
        if flags_now is None:  # expunged elsewhere, still shown here
            if needs_data:
                missing = True
                continue
            ghost = view.ghost(idx)
            flags_now = ghost.flags
        data: bytes | None = None
        if needs_data:
            assert info is not None
            try:
                data = read_wire(mb, info)
            except FileNotFoundError:
                missing = True
                continue
        extra_flags = uid in seen_set and not wants_flags  # RFC 3501 6.4.5: report the \Seen we set
        buf = bytearray(b"* %d FETCH (" % (idx + 1))
        parts: list[bytes] = []
        literals: list[int] = []
        first = True
        for item, item_label in labelled:
            if not first:
                buf += b" "
            first = False
            name = item.name
            if name == "UID":
                buf += b"UID %d" % uid
            elif name == "FLAGS":
                buf += ("FLAGS (" + view.flags_text(uid, flags_now) + ")").encode()
                view.report(idx, flags_now)
            elif name == "RFC822.SIZE":
                size = info.crlf_size if info is not None else ghost.crlf_size if ghost else None
                if size is None:
                    missing = True
                    break
                buf += b"RFC822.SIZE %d" % size
            elif name == "INTERNALDATE":
                date = info.internaldate if info is not None else ghost.internaldate if ghost else None
                if date is None:
                    missing = True
                    break
                buf += ("INTERNALDATE " + internaldate_text(date)).encode()
            elif name in _SUMMARY_ITEMS:
                item_bytes = wire_items.get((uid, name))
                if item_bytes is None:
                    if ghost is not None:
                        missing = True
                        break
                    try:
                        parsed = summary(mb, uid, data)
                    except FileNotFoundError:
                        missing = True
                        break
                    item_bytes = name.encode() + b" " + parsed[name.lower()].encode("utf-8")
                    remember(wire_items, (uid, name), item_bytes, WIRE_ITEMS_MAX)
                buf += item_bytes
            else:
                assert data is not None and message is not None
                if name == "RFC822":
                    body = _no_nul(data)
                elif name == "RFC822.HEADER":
                    body = message.section(data, (), "HEADER")
                elif name == "RFC822.TEXT":
                    body = message.section(data, (), "TEXT")
                else:
                    sec = item.section
                    assert sec is not None
                    if not sec.part and sec.kind is None:
                        body = _no_nul(data)
                    else:
                        body = message.section(data, sec.part, sec.kind, sec.fields)
                    if item.partial is not None:
                        origin, count = item.partial
                        body = body[origin:origin + count]
                buf += b"%s {%d}\r\n" % (item_label, len(body))
                parts.append(bytes(buf))
                literals.append(len(parts))
                parts.append(body)
                buf = bytearray()
        else:
            if extra_flags:
                buf += (" FLAGS (" + view.flags_text(uid, flags_now) + ")").encode()
                view.report(idx, flags_now)
            buf += b")\r\n"
            parts.append(bytes(buf))
            yield Response(tuple(parts), tuple(literals))
    if seen_changed:
        if s.limits.smtp_fsync:
            mb.flush()  # the \Seen set on the disk before the OK: one round for every batch
        s.on_change(s.user or "", view.name)
    return _gone(cmd.uid) if missing else None


def _gone(uid: bool) -> str:
    """The tagged reply's text when a ghost could not be answered (NO for FETCH)."""
    if not uid:
        raise No(GONE_NO)
    return GONE_OK


def _set_seen(view: SelectedMailbox, indexes: Sequence[int]) -> set[int]:
    """Add \\Seen to those of these messages that lack it; returns the ones changed."""
    _, changed = view.mailbox.change_flags([view.uids[i] for i in indexes],
                                           lambda old, seen: old | seen, _SEEN)
    return set(changed)


def _from_index(view: SelectedMailbox, names: list[str], indexes: Sequence[int]) -> Iterator[Output]:
    """FETCH of index items only (``1:* (UID FLAGS)``, what a client syncing flags
    asks): a batch of messages per lock hold, formatted straight into one block
    of lines. The view's UIDs, the mailbox's and this session's \\Recent are all
    ascending, so each message's row is found by walking them side by side.
    Returns whether some ghost could not be answered (its size or date not kept)."""
    mb = view.mailbox
    t = mb.table
    uids = view.uids
    measured = "RFC822.SIZE" in names or "INTERNALDATE" in names
    uid_first = names == ["UID", "FLAGS"]
    uid_flags = uid_first or names == ["FLAGS", "UID"]
    recent = view.recent.uids
    departed = t.departed
    texts: dict[int, str] = {}  # flag-set number * 2 + recent -> the FLAGS list
    missing = False
    for start in range(0, len(indexes), INDEX_BATCH):
        batch = indexes[start:start + INDEX_BATCH]
        if measured:
            mb.measure([uids[i] for i in batch])
        out: list[str] = []
        with mb.lock:
            flagsets, flag_ids, reported = t.flagsets, t.flag_ids, view.flag_ids
            rows, state, n = t.uids, t.state, len(t.uids)
            slot = bisect.bisect_left(rows, uids[batch[0]]) - 1
            r = bisect.bisect_left(recent, uids[batch[0]])
            nr = len(recent)
            for idx in batch:
                uid = uids[idx]
                slot += 1
                if slot >= n or rows[slot] != uid:
                    slot = bisect.bisect_left(rows, uid)
                    if slot >= n or rows[slot] != uid:
                        slot -= 1  # the next UID's row is looked for from here
                ghost = None
                if slot < 0 or rows[slot] != uid or not state[slot]:
                    # expunged elsewhere: the store's last record, or what we last said
                    ghost = departed.get(uid) or (reported[idx], UNKNOWN, UNKNOWN_DATE)
                while r < nr and recent[r] < uid:
                    r += 1
                fid = flag_ids[slot] if ghost is None else ghost[0]
                key = 2 * fid + (r < nr and recent[r] == uid)
                text = texts.get(key)
                if text is None:
                    text = texts[key] = flags_text(flagsets[fid], key & 1 == 1)
                if uid_flags:
                    reported[idx] = fid
                    out.append(f"* {idx + 1} FETCH (UID {uid} FLAGS ({text}))" if uid_first
                               else f"* {idx + 1} FETCH (FLAGS ({text}) UID {uid})")
                    continue
                parts = []
                for name in names:
                    if name == "UID":
                        parts.append(f"UID {uid}")
                    elif name == "FLAGS":
                        reported[idx] = fid
                        parts.append(f"FLAGS ({text})")
                    elif name == "RFC822.SIZE":
                        size = t.crlf[slot] if ghost is None else ghost[1]
                        if ghost is not None and size == UNKNOWN:
                            break
                        parts.append(f"RFC822.SIZE {max(size, 0)}")
                    else:
                        date = t.dates[slot] if ghost is None else ghost[2]
                        if ghost is not None and date == UNKNOWN_DATE:
                            break
                        parts.append("INTERNALDATE " + internaldate_text(
                            date if date != UNKNOWN_DATE else 0.0))
                else:
                    out.append(f"* {idx + 1} FETCH ({' '.join(parts)})")
                    continue
                missing = True  # a ghost whose size or date the store no longer has
        if out:
            yield lines(out)
    return missing


def _no_nul(data: bytes) -> bytes:
    """NUL is not a CHAR8 (RFC 3501 9): sent as 0x80, as Dovecot and message.section() do."""
    return data.replace(b"\0", b"\x80") if b"\0" in data else data


#: command -> (handler, the states that accept it)
COMMANDS = {Fetch: (fetch, SELECTED_ONLY)}
