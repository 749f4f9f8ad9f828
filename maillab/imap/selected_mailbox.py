"""The selected mailbox as one IMAP session sees it (RFC 3501 2.3.1, 5.2, 7.4.1).

A :class:`SelectedMailbox` holds this session's numbering (message sequence number
-> UID) and the flags it last told the client. Other sessions, SMTP deliveries
and tools like mutt change the mailbox under it; the view catches up only at
moments RFC 3501 7.4.1 allows. New messages (EXISTS) and flag changes (FETCH)
may be announced after any command; an EXPUNGE never during FETCH, STORE or
SEARCH, because the client may be using sequence numbers in a pipelined
command. Until then an expunged message stays in this session's numbering as a
*ghost* (:meth:`SelectedMailbox.ghost`): what the session still knows of it (UID,
flags, and the size and date the store kept) is answered as usual, like RFC 2180
4.1.1's messages kept available; only what needs the file that is gone (BODY[],
ENVELOPE not cached) is refused, RFC 2180 4.1.2's ``NO [EXPUNGEISSUED]`` (RFC 5530).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import compress
from typing import NamedTuple

from ..store import Mailbox
from ..store.mailbox import Snapshot
from ..store.table import UNKNOWN, UNKNOWN_DATE
from .flags import flags_text
from .responses import Bad, Output, line, lines
from .verbs import STAR, SeqSet

#: Mailbox meta: the highest UID some session has seen as \Recent.
RECENT_META = "imap-recent-uid"
#: Untagged responses per :class:`~maillab.imap.responses.Response` when many are due
#: (EXPUNGE of 100,000 messages): one object and one write per batch, not per line.
LINES_PER_RESPONSE = 1024


class UidSet:
    r"""An ascending set of UIDs in one array (\Recent of a 100,000-message SELECT)."""

    __slots__ = ("uids",)

    def __init__(self, uids: Iterable[int] = ()) -> None:
        self.uids = array("I", sorted(uids))

    def __contains__(self, uid: object) -> bool:
        i = bisect.bisect_left(self.uids, uid)  # type: ignore[call-overload]
        return i < len(self.uids) and self.uids[i] == uid

    def __len__(self) -> int:
        return len(self.uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self.uids)

    def add_above(self, uids: array[int]) -> None:
        """Add ascending UIDs that are all above the ones held."""
        self.uids.extend(uids)

    def discard_all(self, gone: set[int]) -> None:
        if gone and self.uids:
            self.uids = array("I", (u for u in self.uids if u not in gone))


class Ghost(NamedTuple):
    """A message expunged by someone else that this session still shows (its EXPUNGE
    not announced yet): its last flags, and its RFC822.SIZE and INTERNALDATE when
    the store kept them (None: not known any more)."""

    flags: frozenset[str]
    crlf_size: int | None
    internaldate: float | None


class SelectedMailbox:
    """This session's picture of its selected mailbox (RFC 3501 2.3.1).

    ``uids[i]`` is the UID of message sequence number ``i + 1``; ``flag_ids[i]`` the
    flags last told to the client, as a number into the mailbox's table of flag
    sets (``mailbox.table.flagsets``). Both are arrays: a SELECT of 100,000
    messages copies two blocks of memory, not 100,000 objects.
    """

    def __init__(self, mailbox: Mailbox, name: str, readonly: bool) -> None:
        self.mailbox = mailbox
        self.name = name
        self.readonly = readonly
        self.uids = array("I")  # index + 1 = message sequence number
        self.flag_ids = array("I")  # as last reported to the client
        self.flagsets = mailbox.table.flagsets  # shared, append-only
        self.recent = UidSet()
        self.max_uid = 0
        self.seen = -1  # the mailbox's change number this view has caught up with
        self.pending_gone: set[int] = set()  # expunged, not yet announced (7.4.1)

    def start(self, snap: Snapshot) -> None:
        """Begin with the mailbox as it is now (SELECT)."""
        self.uids, self.flag_ids, self.flagsets = snap.uids, snap.flag_ids, snap.flagsets
        self.seen = snap.changes
        self.max_uid = max(self.max_uid, snap.uidnext - 1, self.uids[-1] if self.uids else 0)
        self.recent = UidSet()
        self.recent.add_above(self.claim_recent(self.uids))

    def behind(self) -> int:
        """Changes (and held-back expunges) this view has yet to announce. Read without
        the mailbox lock: a hint for where to compute the next catch-up, never for
        what it says."""
        return max(self.mailbox.changes - self.seen, 0) + len(self.pending_gone)

    def __len__(self) -> int:
        return len(self.uids)

    def flags_at(self, idx: int) -> frozenset[str]:
        """The flags last told to the client for message ``idx + 1``."""
        return self.flagsets[self.flag_ids[idx]]

    def report(self, idx: int, flags: frozenset[str]) -> None:
        """The client has now been told these flags of message ``idx + 1``."""
        if self.flagsets[self.flag_ids[idx]] != flags:
            with self.mailbox.lock:
                self.flag_ids[idx] = self.mailbox.table.flag_id(flags)

    def ghost(self, idx: int) -> Ghost:
        """What is still known of message ``idx + 1`` when its file and index row are
        gone: the store's last record of it (flags as the expunging session left
        them, \\Deleted mostly), or else the flags this session last reported."""
        mb = self.mailbox
        with mb.lock:
            row = mb.table.departed.get(self.uids[idx])
            if row is None:
                return Ghost(self.flags_at(idx), None, None)
            fid, crlf, date = row
            flags = mb.table.flagsets[fid]
        return Ghost(flags, None if crlf == UNKNOWN else crlf, None if date == UNKNOWN_DATE else date)

    def flags_text(self, uid: int, flags: frozenset[str]) -> str:
        """FETCH FLAGS' list for a message, \\Recent included if this session holds it."""
        return flags_text(flags, uid in self.recent)

    def claim_recent(self, uids: array[int]) -> array[int]:
        """\\Recent: a message is recent in exactly one session, the first to see it
        (RFC 3501 2.3.2). EXAMINE looks without claiming. ``uids`` ascending; returns
        the ones that are recent here (a tail of them)."""
        if not uids:
            return array("I")
        mb = self.mailbox
        with mb.lock:
            mark = int(mb.get_meta(RECENT_META, "0") or 0)
            recent = uids[bisect.bisect_right(uids, mark):]
            if recent and not self.readonly:
                mb.set_meta(RECENT_META, uids[-1])
        return recent
    def resolve(self, seqs: SeqSet, uid: bool) -> Sequence[int]:
        """Indexes (sequence number - 1) named by a sequence set, ascending, each once.

        Each range becomes an index interval (UIDs by binary search), the intervals
        are merged, and only then expanded: linear in the answer, whatever the
        client wrote (``1:*,1:*,...`` or ``1,2,3,...,2000``).
        """
        uids = self.uids
        n = len(uids)
        spans: list[tuple[int, int]] = []  # [lo, hi) index intervals
        if not uid:
            for a, b in seqs:
                if n == 0 and (a == STAR or b == STAR):
                    continue
                a = n if a == STAR else a
                b = n if b == STAR else b
                if a > b:
                    a, b = b, a
                if b > n:
                    raise Bad(f"message sequence number {b} does not exist (EXISTS is {n})")
                spans.append((a - 1, b))
        elif uids:
            top = uids[-1]
            for a, b in seqs:
                a = top if a == STAR else a
                b = top if b == STAR else b
                if a > b:
                    a, b = b, a
                lo, hi = bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)
                if lo < hi:
                    spans.append((lo, hi))
        if len(spans) == 1:
            return range(*spans[0])  # 1:* of 100,000: no list of 100,000 numbers
        spans.sort()
        out: list[int] = []
        end = 0
        for lo, hi in spans:
            lo = max(lo, end)
            if lo < hi:
                out.extend(range(lo, hi))
                end = hi
        return out

    def gone(self) -> bool:
        """The folder was deleted or renamed by another session."""
        return not (self.mailbox.path / "cur").is_dir()

    def catch_up(self, allow_expunge: bool, wait: bool = True) -> Iterator[Output]:
        """The untagged EXPUNGE, FETCH (flags), EXISTS and RECENT responses that bring
        the client's picture up to date (RFC 3501 5.2, 7.4.1).

        Work in proportion to what changed since this view last caught up (the
        mailbox's change log), not to the mailbox: an idle NOOP costs two stat calls.
        With ``wait`` false (a command answered on the lab loop) nothing is reported
        while another thread holds the mailbox (a large STORE, a first indexing):
        the updates come with a later command, which RFC 3501 allows.
        """
        mb = self.mailbox
        if wait:  # (on a worker) outside changes picked up first: the directories listed without the lock
            mb.sync()
        if not mb.lock.acquire(blocking=wait):
            return
        try:
            changes = mb.changes_since(self.seen, inline=wait) if self.seen >= 0 else None
            if changes is None:
                snap = mb.snapshot()
                lo = bisect.bisect_right(snap.uids, self.max_uid)
                new, fids = snap.uids[lo:], snap.flag_ids[lo:]
            else:
                self.seen = mb.changes
                flagged: dict[int, None] = {}
                arrived: list[int] = []
                for kind, uid in changes:
                    if kind == "gone":
                        if uid <= self.max_uid:
                            self.pending_gone.add(uid)
                    elif kind == "flags":
                        flagged[uid] = None
                    elif uid > self.max_uid:
                        arrived.append(uid)
                t = mb.table
                now: dict[int, int] = {}
                for u in (*flagged, *arrived):
                    slot = t.slot(u)
                    if slot is not None:
                        now[u] = t.flag_ids[slot]
                arrived_now = sorted(u for u in set(arrived) if u in now)
                new, fids = array("I", arrived_now), array("I", (now[u] for u in arrived_now))
            # claimed while the lock is held: on the loop, never waited for (below, it could be)
            recent = self.claim_recent(new)
        finally:
            mb.lock.release()
        if changes is None:
            yield from self._rescan(snap, allow_expunge, new, fids, recent)
            return
        if allow_expunge and self.pending_gone:
            yield from self._expunged(self.pending_gone)
            self.pending_gone = set()
        out: list[str] = []
        for u in sorted(flagged):
            fid = now.get(u)
            if fid is None or u > self.max_uid:
                continue
            idx = bisect.bisect_left(self.uids, u)
            if idx < len(self.uids) and self.uids[idx] == u and self._differs(idx, fid):
                self.flag_ids[idx] = fid
                out.append(f"* {idx + 1} FETCH (UID {u} FLAGS ({self.flags_text(u, self.flagsets[fid])}))")
        yield from _batched(out)
        yield from self._arrived(new, fids, recent)

    def _differs(self, idx: int, fid: int) -> bool:
        old = self.flag_ids[idx]
        return old != fid and self.flagsets[old] != self.flagsets[fid]

    def _expunged(self, gone: set[int]) -> Iterator[Output]:
        uids = self.uids
        if len(gone) < 64:
            indexes = sorted(i for u in gone if (i := bisect.bisect_left(uids, u)) < len(uids)
                             and uids[i] == u)
        else:
            indexes = [i for i, u in enumerate(uids) if u in gone]
        # Descending, so each number is still right when the client applies it.
        yield from _batched([f"* {i + 1} EXPUNGE" for i in reversed(indexes)])
        if not indexes:
            return
        self.recent.discard_all(gone)
        if len(indexes) < 64:
            for i in reversed(indexes):
                del self.uids[i]
                del self.flag_ids[i]
        else:
            keep = bytearray(b"\1") * len(uids)
            for i in indexes:
                keep[i] = 0
            self.uids = array("I", compress(self.uids, keep))
            self.flag_ids = array("I", compress(self.flag_ids, keep))

    def _arrived(self, new: array[int], fids: array[int], recent: array[int]) -> Iterator[Output]:
        if not new:
            return
        self.max_uid = new[-1]
        self.uids.extend(new)
        self.flag_ids.extend(fids)
        self.recent.add_above(recent)
        yield line(f"* {len(self.uids)} EXISTS")
        yield line(f"* {len(self.recent)} RECENT")

    def _rescan(self, snap: Snapshot, allow_expunge: bool, new: array[int], fids: array[int],
                recent: array[int]) -> Iterator[Output]:
        """Catch up by comparing with every message (when the change log does not
        reach back far enough); ``new`` arrived since, ``recent`` of them claimed."""
        self.seen = snap.changes
        present = dict(zip(snap.uids, snap.flag_ids, strict=True))
        gone = {u for u in self.uids if u not in present}
        if allow_expunge:
            yield from self._expunged(gone)
            self.pending_gone = set()
        else:
            self.pending_gone |= gone
        out: list[str] = []
        for idx, u in enumerate(self.uids):
            fid = present.get(u)
            if fid is not None and self._differs(idx, fid):
                self.flag_ids[idx] = fid
                out.append(f"* {idx + 1} FETCH (UID {u} FLAGS ({self.flags_text(u, self.flagsets[fid])}))")
        yield from _batched(out)
        yield from self._arrived(new, fids, recent)


def _batched(texts: list[str]) -> Iterator[Output]:
    for start in range(0, len(texts), LINES_PER_RESPONSE):
        yield lines(texts[start:start + LINES_PER_RESPONSE])
