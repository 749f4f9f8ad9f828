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

import gc
import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .filenames import FLAG_LETTERS, arrival_order, flags_from_filename, key_of, sizes_from_key
from .table import NEW, STATES, SUBDIRS, UNKNOWN, UNKNOWN_DATE, MessageTable

#: How many recent changes a mailbox remembers for its readers (IMAP sessions
#: catching up). A reader further behind than this rescans the whole mailbox once.
CHANGE_LOG_SIZE = 20_000
#: Above this many messages, outside changes noticed from the lab loop are picked
#: up by a background thread (comparing names costs ~1 ms per 1,000 messages).
INLINE_SYNC_MAX = 5_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """Build many long-lived objects without the cyclic garbage collector: indexing
    100,000 files would otherwise set off a full collection every few thousand
    allocations, and none of them is garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class DirectorySync:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that reads the directories."""

    path: Path
    lock: threading.RLock
    table: MessageTable
    uidnext: int
    changes: int
    _db: sqlite3.Connection
    _log: deque[int]
    _dir_stamp: tuple[int, int] | None
    _syncing: bool

    def _set_meta(self, key: str, value: object) -> None: ...
    def _move(self, slot: int, state: int, flags: frozenset[str], filename: str) -> None: ...
    def _forget(self, slot: int) -> None: ...

    def _stamp(self) -> tuple[int, int]:
        base = os.fspath(self.path)  # no pathlib joins: every delivery asks twice
        return (os.stat(f"{base}/new").st_mtime_ns, os.stat(f"{base}/cur").st_mtime_ns)

    def _in_sync(self) -> bool:
        return self._dir_stamp == self._stamp()

    def _own_change_done(self, was_in_sync: bool) -> None:
        # Our own rename/unlink changes the directory times; if nothing else had
        # changed before it, the index is still complete and needs no rescan.
        self._dir_stamp = self._stamp() if was_in_sync else None

    def sync(self) -> bool:
        """Reconcile the index with the directories: files added, renamed or
        removed by other tools. Returns True when anything changed."""
        # No cyclic collection while 100,000 names are listed: nothing made here is
        # garbage, and in a lab process a full collection walks every object it has.
        with self.lock, collector_paused():
            stamp = self._stamp()
            if stamp == self._dir_stamp:
                return False
            # The times are taken before the listing: whatever changes during it
            # changes them again, and the next sync looks again.
            on_disk: dict[str, tuple[int, str]] = {}
            for sub in ("new", "cur"):
                state = STATES[sub]
                with os.scandir(self.path / sub) as entries:
                    for entry in entries:
                        name = entry.name
                        if not name.startswith("."):
                            on_disk[key_of(name)] = (state, name)
            changed = False
            table = self.table
            self._db.execute("BEGIN")
            try:
                known = table.keys_by_slot() if table.live else {}
                for key, slot in known.items():
                    found = on_disk.get(key)
                    if found is None:
                        self._forget(slot)
                        changed = True
                    elif found != (table.state[slot], table.filename(slot)):
                        # renamed by another tool: its flags are in the new name
                        state, filename = found
                        flags = table.flagsets[table.flag_ids[slot]]
                        keywords = {f for f in flags if f not in FLAG_LETTERS}
                        self._move(slot, state, frozenset(flags_from_filename(filename) | keywords),
                                   filename)
                        changed = True
                new_keys = [k for k in on_disk if k not in known] if known else list(on_disk)
                if new_keys:
                    changed = True
                    self._index_new(new_keys, on_disk)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            table.maybe_compact()
            self._dir_stamp = stamp
            return changed

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

    def _index_new(self, keys: list[str], on_disk: dict[str, tuple[int, str]]) -> None:
        """Give UIDs to files found on disk, in the order their names say they were
        delivered, from the names alone: no file is opened or even stat'ed here."""
        table = self.table
        # (state, info) -> (flag set number, name unusual?, flags as the index writes them):
        # a mailbox has a handful of distinct infos (":2,S", ":2,", ...)
        by_info: dict[tuple[int, str], tuple[int, bool, str]] = {}
        uids: list[int] = []
        names: list[str] = []
        states = bytearray()
        fids: list[int] = []
        sizes: list[int] = []
        crlfs: list[int] = []
        odd: dict[int, str] = {}
        rows = []
        uid = self.uidnext
        for key in sorted(keys, key=arrival_order):
            state, filename = on_disk[key]
            info = filename[len(key):]
            known = by_info.get((state, info))
            if known is None:
                flags = frozenset(flags_from_filename(filename))
                fid = table.flag_id(flags)
                usual = "" if state == NEW else ":2," + table.letters[fid]
                known = by_info[(state, info)] = (fid, info != usual, " ".join(sorted(flags)))
            fid, unusual, text = known
            if unusual:
                odd[uid] = filename
            size, crlf = sizes_from_key(key)
            if size is None or crlf is None:
                size = size if size is not None else UNKNOWN
                crlf = UNKNOWN  # counted from the file when first asked for
            uids.append(uid)
            names.append(key)
            states.append(state)
            fids.append(fid)
            sizes.append(size)
            crlfs.append(crlf)
            rows.append((uid, key, SUBDIRS[state], filename, size, crlf, UNKNOWN_DATE, text))
            uid += 1
        table.extend(uids, names, states, fids, sizes, crlfs, UNKNOWN_DATE, odd)
        self._log.extend(u << 2 for u in uids[-CHANGE_LOG_SIZE:])
        self.changes += len(uids)
        self.uidnext = uid
        self._db.executemany(
            "INSERT INTO messages (uid, key, subdir, filename, size, crlf_size, internaldate, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._set_meta("uidnext", self.uidnext)
