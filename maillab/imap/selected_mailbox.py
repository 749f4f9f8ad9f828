"""The selected mailbox as one IMAP session sees it (RFC 3501 2.3.1, 5.2, 7.4.1).

A :class:`SelectedMailbox` holds this session's numbering (message sequence number
-> UID) and the flags it last told the client. Other sessions, SMTP deliveries
and tools like mutt change the mailbox under it; the view catches up only at
moments RFC 3501 7.4.1 allows. New messages (EXISTS) and flag changes (FETCH)
may be announced after any command; an EXPUNGE never during FETCH, STORE or
SEARCH, because the client may be using sequence numbers in a pipelined
command. Until then an expunged message stays in this session's numbering as a
"ghost" that FETCH answers with ``NO [EXPUNGEISSUED]``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from ..store import Mailbox, MessageInfo
from .flags import flags_text
from .responses import Bad, Output, line
from .verbs import STAR, SeqSet

#: Mailbox meta: the highest UID some session has seen as \Recent.
RECENT_META = "imap-recent-uid"


class SelectedMailbox:
    """This session's picture of its selected mailbox (RFC 3501 2.3.1)."""

    def __init__(self, mailbox: Mailbox, name: str, readonly: bool) -> None:
        self.mailbox = mailbox
        self.name = name
        self.readonly = readonly
        self.uids: list[int] = []  # index + 1 = message sequence number
        self.flags: dict[int, frozenset[str]] = {}  # as last reported to the client
        self.recent: set[int] = set()
        self.max_uid = 0
        self.seen = -1  # the mailbox's change number this view has caught up with
        self.pending_gone: set[int] = set()  # expunged, not yet announced (7.4.1)

    def __len__(self) -> int:
        return len(self.uids)

    def flags_text(self, uid: int, flags: frozenset[str]) -> str:
        """FETCH FLAGS' list for a message, \\Recent included if this session holds it."""
        return flags_text(flags, uid in self.recent)

    def claim_recent(self, uids: list[int]) -> set[int]:
        """\\Recent: a message is recent in exactly one session, the first to see it
        (RFC 3501 2.3.2). EXAMINE looks without claiming."""
        if not uids:
            return set()
        mb = self.mailbox
        with mb.lock:
            mark = int(mb.get_meta(RECENT_META, "0") or 0)
            recent = {u for u in uids if u > mark}
            if recent and not self.readonly:
                mb.set_meta(RECENT_META, max(uids))
        return recent

    def resolve(self, seqs: SeqSet, uid: bool) -> list[int]:
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
            return list(range(*spans[0]))
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

    def catch_up(self, allow_expunge: bool) -> Iterator[Output]:
        """The untagged EXPUNGE, FETCH (flags), EXISTS and RECENT responses that bring
        the client's picture up to date (RFC 3501 5.2, 7.4.1).

        Work in proportion to what changed since this view last caught up (the
        mailbox's change log), not to the mailbox: an idle NOOP costs two stat calls.
        """
        mb = self.mailbox
        with mb.lock:
            changes = mb.changes_since(self.seen) if self.seen >= 0 else None
            if changes is None:
                yield from self._rescan(allow_expunge)
                return
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
            infos = {u: mb.get(u) for u in (*flagged, *arrived)}
        if allow_expunge and self.pending_gone:
            yield from self._expunged(self.pending_gone)
            self.pending_gone = set()
        for u in sorted(flagged):
            info = infos[u]
            if info is None or u > self.max_uid or info.flags == self.flags.get(u):
                continue
            idx = bisect.bisect_left(self.uids, u)
            if idx < len(self.uids) and self.uids[idx] == u:
                self.flags[u] = info.flags
                yield line(f"* {idx + 1} FETCH (UID {u} FLAGS ({self.flags_text(u, info.flags)}))")
        yield from self._arrived([i for u in sorted(set(arrived)) if (i := infos[u]) is not None])

    def _expunged(self, gone: set[int]) -> Iterator[Output]:
        indexes = [i for i, u in enumerate(self.uids) if u in gone]
        # Descending, so each number is still right when the client applies it.
        for i in reversed(indexes):
            yield line(f"* {i + 1} EXPUNGE")
        if indexes:
            for i in indexes:
                self.flags.pop(self.uids[i], None)
                self.recent.discard(self.uids[i])
            self.uids = [u for u in self.uids if u not in gone]

    def _arrived(self, arrived: list[MessageInfo]) -> Iterator[Output]:
        if not arrived:
            return
        new = [i.uid for i in arrived]
        self.max_uid = new[-1]
        for i in arrived:
            self.flags[i.uid] = i.flags
        self.uids.extend(new)
        self.recent |= self.claim_recent(new)
        yield line(f"* {len(self.uids)} EXISTS")
        yield line(f"* {len(self.recent)} RECENT")

    def _rescan(self, allow_expunge: bool) -> Iterator[Output]:
        """Catch up by comparing with every message (when the change log does not
        reach back far enough)."""
        mb = self.mailbox
        with mb.lock:
            current = mb.messages()
            self.seen = mb.changes
        present = {i.uid: i for i in current}
        if allow_expunge:
            yield from self._expunged({u for u in self.uids if u not in present})
            self.pending_gone = set()
        for idx, u in enumerate(self.uids):
            info = present.get(u)
            if info is not None and info.flags != self.flags.get(u):
                self.flags[u] = info.flags
                yield line(f"* {idx + 1} FETCH (UID {u} FLAGS ({self.flags_text(u, info.flags)}))")
        yield from self._arrived([i for i in current if i.uid > self.max_uid])
