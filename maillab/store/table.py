"""The index of one mailbox in memory: one compact column per field, rows in UID order.

A 100,000-message mailbox held as a Python object per message costs ~1 KB a
message and a copy of every object per IMAP SELECT. Here each field is one
``array`` (4 or 8 bytes a message), the file-name keys share one ``bytearray``,
and flag sets are interned: a message's flags are a small number into
:attr:`MessageTable.flagsets` (a large mailbox has a handful of distinct sets).
A session's view copies two arrays (a ``memcpy``), not 100,000 objects.

Rows are appended in UID order (UIDs only grow) and a removed row becomes a hole
(state 0) until holes outnumber the live rows; then the columns are compacted.
A row's number (its *slot*) is therefore only stable while the mailbox lock is
held; callers outside the store speak UIDs.

Sizes and the arrival date may be *unknown* (:data:`UNKNOWN`, :data:`UNKNOWN_DATE`):
indexing a new Maildir lists directory entries only, like Dovecot, and the
mailbox fills them in from the file the first time someone asks.
"""

from __future__ import annotations

import bisect
import json
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate, compress, islice

from .filenames import info_letters

#: A size (on disk or CRLF) not known yet: the file has not been read.
UNKNOWN = -1
#: An arrival date not known yet: the file has not been looked at (stat).
UNKNOWN_DATE = float("-inf")

#: Row states: where the file is (Maildir ``new/`` or ``cur/``), or removed.
GONE, NEW, CUR = 0, 1, 2
SUBDIRS = {NEW: "new", CUR: "cur"}
STATES = {"new": NEW, "cur": CUR}
#: Removed rows whose flags, size and date are kept (the most recent ones): what an
#: IMAP session that still shows such a message may answer about it (RFC 2180 4.1).
DEPARTED_MAX = 4096

class MessageTable:
    """The index rows of one mailbox, column by column (see the module docstring)."""

    __slots__ = ("uids", "state", "flag_ids", "sizes", "crlf", "dates", "_key_ends", "_keys",
                 "odd_names", "flagsets", "letters", "_flag_id", "live", "departed", "edits")

    def __init__(self) -> None:
        self.uids = array("I")
        self.state = bytearray()
        self.flag_ids = array("I")
        self.sizes = array("q")
        self.crlf = array("q")
        self.dates = array("d")
        self._key_ends = array("Q")  # where each row's key ends in _keys
        self._keys = bytearray()
        #: File names that are not the usual ``key`` (new/) or ``key:2,<letters>`` (cur/),
        #: by UID: files renamed by other tools (unsorted or unknown info letters).
        self.odd_names: dict[int, str] = {}
        #: Every distinct flag set seen, by number (append-only: numbers never change).
        self.flagsets: list[frozenset[str]] = []
        #: The Maildir info letters of each flag set, by number.
        self.letters: list[str] = []
        self._flag_id: dict[frozenset[str], int] = {}
        self.live = 0
        #: UID -> (flag-set number, CRLF size, arrival date) of the last removed rows,
        #: oldest first, at most :data:`DEPARTED_MAX`: another IMAP session may still
        #: show them until it can announce the EXPUNGE (RFC 3501 7.4.1).
        self.departed: dict[int, tuple[int, int, float]] = {}
        #: Counts the changes to rows (added, moved, removed) and compactions: a
        #: comparison made on a :meth:`copy_to_compare` holds while it is unchanged.
        self.edits = 0

    # -- flag sets ---------------------------------------------------------------------
    def flag_id(self, flags: frozenset[str]) -> int:
        """The number of this flag set (interned on first use)."""
        fid = self._flag_id.get(flags)
        if fid is None:
            fid = self._flag_id[flags] = len(self.flagsets)
            self.flagsets.append(flags)
            self.letters.append(info_letters(flags))
        return fid

    # -- rows --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.live

    @property
    def holes(self) -> int:
        return len(self.uids) - self.live

    def append(self, uid: int, key: str, state: int, flags: frozenset[str], size: int,
               crlf: int, date: float, filename: str | None = None) -> None:
        """A new row; ``uid`` must be above every UID in the table."""
        if self.uids and uid <= self.uids[-1]:
            raise ValueError(f"UID {uid} is not above the last UID {self.uids[-1]}")
        self.uids.append(uid)
        self.state.append(state)
        fid = self.flag_id(flags)
        self.flag_ids.append(fid)
        self.sizes.append(size)
        self.crlf.append(crlf)
        self.dates.append(date)
        self._keys += key.encode("utf-8", "surrogateescape")
        self._key_ends.append(len(self._keys))
        if filename is not None and filename != self.usual_name(key, state, fid):
            self.odd_names[uid] = filename
        self.live += 1
        self.edits += 1

    def extend(self, uids: Sequence[int], keys: Sequence[str], states: bytes,
               flag_ids: Sequence[int], sizes: Sequence[int], crlf: Sequence[int], date: float,
               odd_names: dict[int, str]) -> None:
        """Many new rows at once (a Maildir indexed from its file names), ascending
        UIDs above every UID in the table; ``flag_ids`` from :meth:`flag_id`."""
        if not uids:
            return
        if self.uids and uids[0] <= self.uids[-1]:
            raise ValueError(f"UID {uids[0]} is not above the last UID {self.uids[-1]}")
        self.uids.extend(array("I", uids))
        self.state += states
        self.flag_ids.extend(array("I", flag_ids))
        self.sizes.extend(array("q", sizes))
        self.crlf.extend(array("q", crlf))
        self.dates.extend(array("d", [date]) * len(uids))
        base = len(self._keys)
        text = "".join(keys)
        if text.isascii():  # the usual names: a character is an octet
            self._keys += text.encode("ascii")
            lengths: Iterable[int] = map(len, keys)
        else:
            encoded = [k.encode("utf-8", "surrogateescape") for k in keys]
            self._keys += b"".join(encoded)
            lengths = map(len, encoded)
        self._key_ends.extend(islice(accumulate(lengths, initial=base), 1, None))
        self.odd_names.update(odd_names)
        self.live += len(uids)
        self.edits += 1

    def append_rows(self, rows: MessageTable, key_ends: array[int]) -> None:
        """The rows of ``rows`` (new, ascending UIDs above every UID here, flag-set
        numbers already this table's) appended, a memcpy per column; ``key_ends``:
        their key ends offset by this table's key octets (made outside the lock)."""
        if not rows.uids:
            return
        if self.uids and rows.uids[0] <= self.uids[-1]:
            raise ValueError(f"UID {rows.uids[0]} is not above the last UID {self.uids[-1]}")
        self.uids += rows.uids
        self.state += rows.state
        self.flag_ids += rows.flag_ids
        self.sizes += rows.sizes
        self.crlf += rows.crlf
        self.dates += rows.dates
        self._keys += rows._keys
        self._key_ends += key_ends
        self.odd_names.update(rows.odd_names)
        self.live += rows.live
        self.edits += 1

    def slot(self, uid: int) -> int | None:
        """The row of a live ``uid`` (valid while the mailbox lock is held)."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid and self.state[i]:
            return i
        return None

    def key(self, slot: int) -> str:
        start = self._key_ends[slot - 1] if slot else 0
        return self._keys[start:self._key_ends[slot]].decode("utf-8", "surrogateescape")

    def usual_name(self, key: str, state: int, fid: int) -> str:
        return key if state == NEW else f"{key}:2,{self.letters[fid]}"

    def filename(self, slot: int) -> str:
        odd = self.odd_names.get(self.uids[slot])
        return odd if odd is not None else self.usual_name(self.key(slot), self.state[slot],
                                                           self.flag_ids[slot])

    def relpath(self, slot: int) -> str:
        return f"{SUBDIRS[self.state[slot]]}/{self.filename(slot)}"

    def move(self, slot: int, state: int, flags: frozenset[str], filename: str) -> None:
        """The row's file now lives at ``state``/``filename`` with these flags."""
        fid = self.flag_id(flags)
        self.edits += 1
        self.state[slot] = state
        self.flag_ids[slot] = fid
        uid = self.uids[slot]
        if filename == self.usual_name(self.key(slot), state, fid):
            self.odd_names.pop(uid, None)
        else:
            self.odd_names[uid] = filename

    def remove(self, slot: int) -> None:
        departed = self.departed
        if len(departed) >= DEPARTED_MAX:
            del departed[next(iter(departed))]
        departed[self.uids[slot]] = (self.flag_ids[slot], self.crlf[slot], self.dates[slot])
        self.state[slot] = GONE
        self.odd_names.pop(self.uids[slot], None)
        self.live -= 1
        self.edits += 1

    def live_slots(self) -> Iterator[int]:
        """The slots of live rows, in UID order."""
        if not self.holes:
            return iter(range(len(self.uids)))
        return compress(range(len(self.uids)), self.state)

    def live_uids(self) -> array[int]:
        """Every live UID, ascending: a new array (a memcpy when there are no holes)."""
        return self.uids[:] if not self.holes else array("I", compress(self.uids, self.state))

    def live_flag_ids(self) -> array[int]:
        """The flag-set number of every live row, in UID order (a new array)."""
        if not self.holes:
            return self.flag_ids[:]
        return array("I", compress(self.flag_ids, self.state))

    def keys_by_slot(self) -> dict[str, int]:
        """Key -> slot of every live row (a sync that compares with the directories)."""
        ends = self._key_ends
        keys = self._keys.decode("utf-8", "surrogateescape") if self._keys.isascii() else None
        out: dict[str, int] = {}
        start = 0
        for slot, end in enumerate(ends):
            if self.state[slot]:
                out[keys[start:end] if keys is not None else self.key(slot)] = slot
            start = end
        return out

    def copy_to_compare(self) -> MessageTable:
        """What a comparison with the directories reads (keys, states, flags, file
        names of every slot), copied column by column (a few ``memcpy``: ~1 ms for
        100,000 rows) under the lock, to be compared outside it."""
        copy = MessageTable()
        copy.uids, copy.state, copy.flag_ids = self.uids[:], self.state[:], self.flag_ids[:]
        copy._key_ends, copy._keys = self._key_ends[:], self._keys[:]
        copy.odd_names = self.odd_names.copy()
        copy.flagsets, copy.letters, copy._flag_id = self.flagsets[:], self.letters[:], self._flag_id.copy()
        copy.live = self.live
        return copy

    def copy_to_save(self) -> MessageTable:
        """Every column (sizes and dates too), copied under the lock (a few ``memcpy``)
        so that a close serialises it (:meth:`to_bytes`) outside the lock."""
        copy = self.copy_to_compare()
        copy.sizes, copy.crlf, copy.dates = self.sizes[:], self.crlf[:], self.dates[:]
        copy.edits = self.edits
        return copy

    def compact(self) -> None:
        """Drop the holes left by removed rows (slots change)."""
        if not self.holes:
            return
        self.edits += 1
        keep = bytes(self.state)
        ends, keys = self._key_ends, self._keys
        new_keys = bytearray()
        new_ends = array("Q")
        start = 0
        for slot, end in enumerate(ends):
            if keep[slot]:
                new_keys += keys[start:end]
                new_ends.append(len(new_keys))
            start = end
        self._keys, self._key_ends = new_keys, new_ends
        self.uids = array("I", compress(self.uids, keep))
        self.flag_ids = array("I", compress(self.flag_ids, keep))
        self.sizes = array("q", compress(self.sizes, keep))
        self.crlf = array("q", compress(self.crlf, keep))
        self.dates = array("d", compress(self.dates, keep))
        self.state = bytearray(compress(self.state, keep))

    def maybe_compact(self) -> None:
        """Compact once holes outnumber live rows (amortised: each removal pays O(1))."""
        if self.holes > max(1024, self.live):
            self.compact()

    # -- on disk: the whole table as one blob (a restart loads it instead of every row) --
    _COLUMNS = ("uids", "state", "flag_ids", "sizes", "crlf", "dates", "_key_ends", "_keys")

    def to_bytes(self) -> bytes:
        """The table as one blob: the length of a JSON header (8 octets), the header
        (column lengths, flag sets, odd names), then each column's bytes. Compacted first."""
        self.compact()
        return self.rows_bytes(0)

    def rows_bytes(self, start: int) -> bytes:
        """The rows from slot ``start`` on (none of them removed) as a table blob of
        their own (:meth:`load` reads it): rows just indexed, written as one blob."""
        if self.state.find(GONE, start) >= 0:
            raise ValueError("rows_bytes: removed rows in the range")
        key_base = self._key_ends[start - 1] if start else 0
        ends = memoryview(self._key_ends)[start:]
        if key_base:
            ends = memoryview(array("Q", [end - key_base for end in ends]))
        # views, not copies: a 100,000-row table is ~9 MB
        columns = [*(memoryview(getattr(self, name))[start:] for name in self._COLUMNS[:6]),
                   ends, memoryview(self._keys)[key_base:]]
        first = self.uids[start] if start < len(self.uids) else 0
        head = json.dumps({
            "lengths": [c.nbytes for c in columns],
            "flagsets": [sorted(f) for f in self.flagsets],
            "odd": [[u, n] for u, n in self.odd_names.items() if u >= first],
        }).encode("utf-8", "surrogateescape")
        try:
            return b"".join([len(head).to_bytes(8, "big"), head, *columns])
        finally:
            for c in columns:
                c.release()  # the columns may grow again

    @classmethod
    def load(cls, read: Callable[[int], bytes]) -> MessageTable:
        """The table :meth:`to_bytes` wrote, read a piece at a time by ``read(n)`` (an
        sqlite blob handle: no copy of the whole blob is ever held). ValueError if it
        does not add up."""
        size = int.from_bytes(read(8), "big")
        head = json.loads(read(size).decode("utf-8", "surrogateescape"))
        table = cls()
        for fs in head["flagsets"]:
            table.flag_id(frozenset(fs))
        table.odd_names = {int(u): n for u, n in head["odd"]}
        for name, length in zip(cls._COLUMNS, head["lengths"], strict=True):
            chunk = read(length)
            if len(chunk) != length:
                raise ValueError("index snapshot is cut short")
            column = getattr(table, name)
            if isinstance(column, bytearray):
                column += chunk
            else:
                column.frombytes(chunk)
            del chunk
        if read(1) or len({len(table.uids), len(table.state), len(table.flag_ids), len(table.sizes),
                           len(table.crlf), len(table.dates), len(table._key_ends)}) != 1:
            raise ValueError("index snapshot does not add up")
        table.live = len(table.state) - table.state.count(0)
        return table
