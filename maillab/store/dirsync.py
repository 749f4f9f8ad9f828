"""Keeping a mailbox's index in step with its Maildir directories.

Other tools (mutt, Dovecot, ``cp``, a Maildir copied in) add, rename and remove
files behind the lab's back. Two ``stat`` calls tell whether ``new/`` or ``cur/``
changed since the index last matched them; only then are the directories listed
and compared with the index. Files found for the first time are indexed from
their directory entries alone, as Dovecot does: UIDs in the delivery order their
names tell, flags from the info, sizes from ``S=``/``W=``; no file is opened or
stat'ed (:mod:`maillab.store.measure` fills in the rest when asked).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple, TypeVar

from ..frozen import IntRing
from ..runtime import collector_paused
from .deferred import DEFER_MIN
from .filenames import FLAG_LETTERS, arrival_sorted, flags_from_filename, sizes_from_keys
from .locking import MailboxLock
from .table import NEW, STATES, UNKNOWN, UNKNOWN_DATE, MessageTable

T = TypeVar("T")
#: Every message file in new/ and cur/: keys, names and where each is, side by side.
_Listing = tuple[list[str], list[str], bytearray]
#: Files to index, in delivery order: keys, names, states, sizes, CRLF sizes, infos.
_NewFiles = tuple[list[str], list[str], bytearray, list[int], list[int], list[str]]
#: What differs: slots gone, (slot, listing position) renamed, the files to index (or None).
_Diff = tuple[list[int], list[tuple[int, int]], _NewFiles | None]

#: How many recent changes a mailbox remembers for its readers (IMAP sessions
#: catching up). A reader further behind than this rescans the whole mailbox once.
CHANGE_LOG_SIZE = 20_000
#: Files found new by one sync indexed per hold of the lock (a copy-in of 50,000:
#: ~4 ms a hold, not ~20 ms for all of them).
APPLY_CHUNK = 8_192
#: Above this many messages, outside changes noticed from the lab loop are picked
#: up by a background thread (comparing names costs ~1 ms per 1,000 messages).
INLINE_SYNC_MAX = 5_000


class DirectorySync:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that reads the directories."""

    path: Path
    lock: MailboxLock
    table: MessageTable
    uidnext: int
    changes: int
    _db: sqlite3.Connection
    _log: IntRing
    _dir_stamp: tuple[int, int] | None
    _syncing: bool
    _last_use: float
    _own_changes: int  # renames this process made in new/ and cur/ (see _begin_change)
    _applying: bool  # a sync applies a large copy-in a chunk per hold (see sync)

    def _set_meta(self, key: str, value: object) -> None: ...
    def _move(self, slot: int, state: int, flags: frozenset[str], filename: str) -> None: ...
    def _forget(self, slot: int) -> None: ...
    def _new_rows(self, start: int, blob: bytes | None = None) -> None: ...
    def _rows_written(self) -> None: ...
    def _rows_ready(self) -> None: ...
    def _checkpoint_later(self) -> None: ...

    def _stamp(self) -> tuple[int, int]:
        base = os.fspath(self.path)  # no pathlib joins: every delivery asks twice
        return (os.stat(f"{base}/new").st_mtime_ns, os.stat(f"{base}/cur").st_mtime_ns)

    def _in_sync(self) -> bool:
        return self._dir_stamp == self._stamp()

    def in_step(self) -> bool:
        """Whether the index matched the directories at their last change (two
        ``stat`` calls): no rescan is due."""
        return self._in_sync()

    def _begin_change(self) -> bool:
        """Under the lock, before this process renames files into, within or out of
        ``new/`` and ``cur/``: whether the index matched the directories until now. A
        :meth:`sync` listing them meanwhile, outside the lock, lists them again."""
        self._own_changes += 1
        return self._in_sync()

    def _own_change_done(self, was_in_sync: bool) -> None:
        # Our own rename/unlink changes the directory times; if nothing else had
        # changed before it, the index is still complete and needs no rescan.
        self._dir_stamp = self._stamp() if was_in_sync else None
        self._checkpoint_later()  # (after the commit that came with the change)

    def sync(self, cap: int | None = None) -> bool:
        """Reconcile the index with the directories: files added, renamed or
        removed by other tools. Returns True when anything changed. With ``cap``
        (the lab loop's inline sync), directories listing more files than that are
        left to a background thread."""
        # No cyclic collection while 100,000 names are listed: nothing made here is
        # garbage, and in a lab process a full collection walks every object it has.
        # The lists and dicts of the listing die inside _reconcile, before the
        # collector resumes, so its first collection after finds little to walk.
        with self.lock:
            self._last_use = time.monotonic()  # (rows left in a blob wait: see deferred.py)
            stamp = self._stamp()
            if stamp == self._dir_stamp or self._applying:
                return False  # (a sync applying a copy-in a chunk at a time: it shows as it goes)
            own = self._own_changes
            table = self.table
            edits = table.edits
            copy = table.copy_to_compare()
            first = self.uidnext
        # The listing (getdents of 100,000 names: tens of ms of disk and kernel time)
        # and its comparison with a copy of the index (hundreds of ms under load) without
        # the lock. The listing holds if neither this process (the count of its own
        # changes) nor another tool (the directory times) changed the directories
        # meanwhile, else it is listed again under the lock, as it always was; the
        # comparison holds if the index did not change either (its edit count), else
        # it is made again under the lock. Only its result is applied under the lock.
        with collector_paused():
            listing = self._listing()
            if cap is not None and len(listing[0]) > cap:
                del copy, listing
                self._sync_in_background()
                return False
            diff: _Diff | None = _compare(copy, listing)
            # Files found new: their rows, the blob that writes them and their UIDs
            # made here too, from UIDNEXT as it was (used if still so under the lock).
            prepared = _prepare_chunks(copy, diff[2], first) if diff is not None and diff[2] else None
        del copy
        if diff is not None and (diff[0] or diff[1]):  # rows to change: any still in a blob written first, a chunk per hold
            self._rows_ready()
        with self.lock, collector_paused():
            now = self._stamp()
            if now == self._dir_stamp or self._applying:
                return False  # another thread synced meanwhile
            if now != stamp or self._own_changes != own:
                stamp, listing, diff = now, self._listing(), None
            if diff is None or self.table is not table or table.edits != edits:
                diff, prepared = _compare(self.table, listing), None
            gone, moved, new = diff
            chunks = _chunked(new)
            preps: list[_Prepared | None] = list(prepared) if prepared is not None else [None] * len(chunks)
            # The times are taken before the listing: whatever changes during it
            # changes them again, and the next sync looks again.
            changed = self._apply(listing, (gone, moved, chunks[0]), preps[0])
            if len(chunks) == 1:
                self._synced(stamp)
                return changed
            self._applying = True
        # A large copy-in: the rest of its files a chunk per hold of the lock (each
        # with its UIDs, blob and UIDNEXT in one transaction), so a reader waits for
        # one chunk at most. Other syncs return meanwhile (the files are not in the
        # index yet: they would index them again); readers see the mailbox grow.
        try:
            for chunk, prep in zip(chunks[1:], preps[1:], strict=True):
                self.lock.let_waiters_in()
                with self.lock:
                    self._apply(listing, ([], [], chunk), prep)
            with self.lock:
                self._synced(stamp)
        finally:
            self._applying = False
        return True

    def _synced(self, stamp: tuple[int, int]) -> None:
        """Under the lock, once a sync's differences are applied: the index matches the
        directories as they were at ``stamp``."""
        self.table.maybe_compact()
        self._dir_stamp = stamp
        self._checkpoint_later()

    def _listing(self) -> _Listing:
        """Every message file in new/ and cur/ (dot files left out): keys, names and
        where each is (NEW or CUR), side by side."""
        base = os.fspath(self.path)
        names: list[str] = []
        states = bytearray()
        for sub in ("new", "cur"):
            listed = os.listdir(f"{base}/{sub}")
            text = "\n".join(listed)
            if text.startswith(".") or "\n." in text:
                listed = [name for name in listed if not name.startswith(".")]
            names += listed
            states += bytes([STATES[sub]]) * len(listed)
        return [name.partition(":")[0] for name in names], names, states

    def _apply(self, listing: _Listing, diff: _Diff, prepared: _Prepared | None = None) -> bool:
        """Under the lock: the index made to match the listing (what :func:`_compare`
        found different; the new rows as :func:`_prepare` made them outside the lock,
        when UIDNEXT and the flag sets are as they were), in one transaction."""
        keys, names, states = listing
        gone, moved, new = diff
        table = self.table
        if gone or moved:
            self._rows_written()  # the rows they change exist (not only in a blob)
        self._db.execute("BEGIN")
        try:
            for slot in gone:
                self._forget(slot)
            for slot, i in moved:
                # renamed by another tool: its flags are in the new name
                flags = table.flagsets[table.flag_ids[slot]]
                keywords = {f for f in flags if f not in FLAG_LETTERS}
                self._move(slot, states[i], frozenset(flags_from_filename(names[i]) | keywords),
                           names[i])
            if new is not None:
                if (prepared is not None and prepared.uids[0] == self.uidnext
                        and len(table.flagsets) == prepared.flagsets_before
                        and len(table._keys) == prepared.key_base):
                    self._index_prepared(prepared)
                else:
                    self._index_new(new)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return bool(gone or moved or new is not None)

    def _sync_in_background(self) -> None:
        if self._syncing or self._stamp() == self._dir_stamp:
            return
        self._syncing = True

        def run() -> None:
            try:
                self.sync()
            except Exception:  # the folder went away meanwhile: the next sync reports it
                pass
            finally:
                self._syncing = False

        threading.Thread(target=run, name="maillab-sync", daemon=True).start()

    def _index_prepared(self, prepared: _Prepared) -> None:
        """Under the lock: the rows :func:`_prepare` made, their blob and UIDNEXT (a
        memcpy per column and one blob written: for 50,000 files ~20 ms instead of
        the ~90 ms of making them here)."""
        table = self.table
        start = len(table.uids)
        for flags in prepared.flagsets[prepared.flagsets_before:prepared.flagsets_after]:
            table.flag_id(flags)  # (the same numbers: the table had the copy's first ones)
        table.append_rows(prepared.rows, prepared.key_ends)
        uids = prepared.uids
        self._log.extend(range(max(uids[0], uids.stop - CHANGE_LOG_SIZE) << 2, uids.stop << 2, 4))
        self.changes += len(uids)
        self.uidnext = uids.stop
        self._new_rows(start, prepared.blob)
        self._set_meta("uidnext", self.uidnext)

    def _index_new(self, new: _NewFiles) -> None:
        """Give UIDs to the files :func:`_arrange_new` put in delivery order, from their
        names alone: no file is opened or even stat'ed here. Everything is done a
        column at a time (100,000 names: a few passes in C, not Python per name), and
        the new rows are written with the new UIDNEXT (as one blob: see
        :mod:`maillab.store.deferred`)."""
        table = self.table
        first = self.uidnext
        start = len(table.uids)
        uids = _fill(table, new, first)
        self._log.extend(range(max(first, uids.stop - CHANGE_LOG_SIZE) << 2, uids.stop << 2, 4))
        self.changes += len(uids)
        self.uidnext = uids.stop
        self._new_rows(start)
        self._set_meta("uidnext", self.uidnext)


class _Prepared(NamedTuple):
    """New rows made outside the lock, for a table with ``flagsets_before`` flag sets,
    ``key_base`` octets of keys and UIDNEXT ``uids[0]``."""

    rows: MessageTable  # the new rows alone (their flag numbers the copy's)
    key_ends: array[int]  # where each key ends once appended to the table
    blob: bytes | None  # the rows as a pending blob (None: few enough to insert)
    uids: range
    flagsets: list[frozenset[str]]
    flagsets_before: int
    flagsets_after: int
    key_base: int


def _chunked(new: _NewFiles | None) -> list[_NewFiles | None]:
    """The files to index, :data:`APPLY_CHUNK` at a time (one item, None: none)."""
    if new is None or len(new[0]) <= APPLY_CHUNK:
        return [new]
    return [tuple(column[i:i + APPLY_CHUNK] for column in new)  # type: ignore[misc]
            for i in range(0, len(new[0]), APPLY_CHUNK)]


def _prepare_chunks(copy: MessageTable, new: _NewFiles, first: int) -> list[_Prepared]:
    """:func:`_prepare` for each of :func:`_chunked`'s pieces, one after the other."""
    out: list[_Prepared] = []
    base = len(copy._keys)
    for chunk in _chunked(new):
        assert chunk is not None
        prep = _prepare(copy, chunk, first, base)
        out.append(prep)
        first, base = prep.uids.stop, base + len(prep.rows._keys)
    return out


def _prepare(copy: MessageTable, new: _NewFiles, first: int, base: int) -> _Prepared:
    """Outside the lock: what :meth:`DirectorySync._index_new` does to the table, on a
    table of the new rows alone (flag sets interned into ``copy``, UIDs from
    ``first``, keys after ``base`` octets), with the blob that writes them."""
    before = len(copy.flagsets)
    rows = MessageTable()
    rows.flagsets, rows.letters, rows._flag_id = copy.flagsets, copy.letters, copy._flag_id
    uids = _fill(rows, new, first)
    ends = array("Q", map(base.__add__, rows._key_ends)) if base else rows._key_ends
    blob = rows.rows_bytes(0) if len(uids) >= DEFER_MIN else None
    return _Prepared(rows, ends, blob, uids, copy.flagsets, before, len(copy.flagsets), base)


def _fill(table: MessageTable, new: _NewFiles, first: int) -> range:
    """Append the files :func:`_arrange_new` put in delivery order to ``table`` with
    UIDs from ``first``, a column at a time (100,000 names: a few passes in C, not
    Python per name); the UIDs given."""
    keys, names, states, sizes, crlfs, infos = new
    # A mailbox has a handful of distinct (state, info) pairs (":2,S", ":2,", ...):
    # each one's flag set number, and whether its names are unusual.
    fid_of: dict[tuple[int, str], int] = {}
    unusual: set[tuple[int, str]] = set()
    for state, info in set(zip(states, infos, strict=True)):
        fid = fid_of[(state, info)] = table.flag_id(frozenset(flags_from_filename(info)))
        if info != ("" if state == NEW else ":2," + table.letters[fid]):
            unusual.add((state, info))
    fids = list(map(fid_of.__getitem__, zip(states, infos, strict=True)))
    odd = ({first + i: names[i] for i, pair in enumerate(zip(states, infos, strict=True)) if pair in unusual}
           if unusual else {})
    uids = range(first, first + len(keys))
    table.extend(uids, keys, states, fids, sizes, crlfs, UNKNOWN_DATE, odd)
    return uids


def _compare(table: MessageTable, listing: _Listing) -> _Diff:
    """How the index ``table`` differs from the directories' ``listing``: the slots
    whose file is gone, those renamed (slot, position in the listing), and the files
    it lacks, arranged for indexing (:func:`_arrange_new`; None if there are none)."""
    keys, names, states = listing
    # key -> position in the listing (a key listed in new/ and in cur/: cur's)
    where = dict(zip(keys, range(len(keys)), strict=True))
    gone: list[int] = []  # slots whose file is no longer there
    moved: list[tuple[int, int]] = []  # (slot, position in the listing): renamed
    if table.live:
        known = table.keys_by_slot()
        for key, slot in known.items():
            i = where.get(key)
            if i is None:
                gone.append(slot)
            elif states[i] != table.state[slot] or names[i] != table.filename(slot):
                moved.append((slot, i))
        found: list[int] | None = [i for key, i in where.items() if key not in known]
    elif keys:  # everything listed is new: all of it (None), or each key once
        found = None if len(where) == len(keys) else list(where.values())
    else:
        found = []
    return gone, moved, (_arrange_new(listing, found) if found is None or found else None)


def _arrange_new(listing: _Listing, found: list[int] | None) -> _NewFiles:
    """The files at positions ``found`` (None: all) of the listing in the order their
    names say they were delivered, with the sizes and flag infos their names tell:
    the part of indexing them that needs no index (outside the lock with the
    comparison; a sort of integers and a few passes in C)."""
    keys, names, states = listing
    if found is not None:
        keys = _take(keys, found)
    order = arrival_sorted(keys)
    keys = _take(keys, order)
    if found is not None:
        order = _take(found, order)
    names = _take(names, order)
    states = bytearray(_take(states, order))
    sizes, crlfs = sizes_from_keys(keys)
    if UNKNOWN in sizes:  # a size the name does not tell: the CRLF size neither
        crlfs = [c if s != UNKNOWN else UNKNOWN for s, c in zip(sizes, crlfs, strict=True)]
    infos = [name[len(key):] for name, key in zip(names, keys, strict=True)]
    return keys, names, states, sizes, crlfs, infos


def _take(items: Sequence[T], positions: Sequence[int]) -> list[T]:
    """``[items[i] for i in positions]``, in C."""
    if len(positions) > 1:
        return list(itemgetter(*positions)(items))
    return [items[i] for i in positions]
