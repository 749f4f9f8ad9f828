"""How the index's rows go into sqlite and come back: loaded at open (from the blob
a clean close wrote, or row by row), and written a little later than the UIDs they hold.

A first SELECT of a Maildir of 100,000 files used to insert 100,000 rows into the
sqlite index before it could answer: a quarter of a second of CPU on an idle
machine (most of it binding parameters), far more on a busy one. Now a large batch
of newly indexed rows is committed as one blob (the
:class:`~maillab.store.table.MessageTable` format) in the same transaction as the
UIDNEXT that covers it, so it is exactly as safe as rows: after ``kill -9`` the next
start turns the blob into rows before anything else, and every UID names the same
file as before (RFC 3501 2.3.1.1: a UID is never reused or moved to another message).

The blob becomes rows of ``messages`` on a background thread, a chunk per hold of
the mailbox lock once nobody has used the mailbox for :data:`QUIET` seconds, or all
at once when a statement must change one of those rows (a flag, an expunge, a size
learnt from the file), and at the latest when the mailbox is closed.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

from ..runtime import collector_paused
from .locking import MailboxLock
from .table import STATES, SUBDIRS, MessageTable

#: New rows from one sync below this many go into the index as rows at once.
DEFER_MIN = 1_024
#: Rows turned from the blob into index rows per hold of the mailbox lock.
CHUNK = 1_024
#: Seconds the mailbox must have been left alone before the background thread writes.
QUIET = 0.5

_INSERT = ("INSERT OR IGNORE INTO messages"
           " (uid, key, subdir, filename, size, crlf_size, internaldate, flags)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def rows_of(table: MessageTable, start: int, end: int) -> Iterator[tuple[Any, ...]]:
    """The ``messages`` rows of slots ``start`` to ``end`` of ``table`` (live rows)."""
    text = [" ".join(sorted(flags)) for flags in table.flagsets]
    for slot in range(start, end):
        yield (table.uids[slot], table.key(slot), SUBDIRS[table.state[slot]], table.filename(slot),
               table.sizes[slot], table.crlf[slot], table.dates[slot], text[table.flag_ids[slot]])


class DeferredRows:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that loads the index and
    writes rows late."""

    lock: MailboxLock
    table: MessageTable
    _db: sqlite3.Connection
    _cache: dict[int, dict[str, Any]]

    def _checkpoint_later(self) -> None: ...

    def _init_deferred(self) -> None:
        self._db.execute("CREATE TABLE IF NOT EXISTS pending (first_uid INTEGER PRIMARY KEY,"
                         " data BLOB NOT NULL, done INTEGER NOT NULL DEFAULT 0)")
        self._pending = self._db.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is not None
        self._expansion: tuple[int, MessageTable, int] | None = None  # (first UID, rows, done)
        self._cache_later: set[int] = set()  # caches set while their row was in a blob
        self._expander = False  # the background thread runs
        self._closed = False
        self._last_use = time.monotonic()

    def _load(self) -> None:
        """The index into memory: the snapshot the last clean close wrote (one blob,
        then deleted: from the first change on, the rows are the truth), or row by row."""
        self._rows_written()  # rows left in a blob by a process that did not close
        if self._db.execute("SELECT 1 FROM snapshot WHERE id = 1").fetchone() is not None:
            try:
                with self._db.blobopen("snapshot", "data", 1, readonly=True) as blob:
                    table = MessageTable.load(blob.read)
                self._db.execute("DELETE FROM snapshot")
                count, top = self._db.execute("SELECT count(*), max(uid) FROM messages").fetchone()
                if count == len(table) and (top or 0) == (table.uids[-1] if table.live else 0):
                    self.table = table
                    return
            except (ValueError, KeyError, TypeError, sqlite3.Error):
                self._db.execute("DELETE FROM snapshot")  # not what close() wrote: the rows are the truth
        table = self.table
        flagsets: dict[str, frozenset[str]] = {}
        with collector_paused():
            for uid, key, subdir, filename, size, crlf, date, flags in self._db.execute(
                "SELECT uid, key, subdir, filename, size, crlf_size, internaldate, flags"
                " FROM messages ORDER BY uid"
            ):
                fs = flagsets.get(flags)
                if fs is None:
                    fs = flagsets[flags] = frozenset(f for f in flags.split(" ") if f)
                table.append(uid, key, STATES[subdir], fs, size, crlf, date, filename)

    def _new_rows(self, start: int, blob: bytes | None = None) -> None:
        """Write the table's rows from slot ``start`` on (just indexed; the caller's
        transaction is open): as rows when they are few, else as one blob (``blob``:
        made already, outside the lock)."""
        t = self.table
        if len(t.uids) - start < DEFER_MIN:
            self._db.executemany(_INSERT, rows_of(t, start, len(t.uids)))
            return
        self._db.execute("INSERT INTO pending (first_uid, data) VALUES (?, ?)",
                         (t.uids[start], blob if blob is not None else t.rows_bytes(start)))
        # (No checkpoint at this commit: copying ~10 MB of log into the database and
        # two fsyncs would make the SELECT wait; checkpoints run on a thread of
        # their own, without the lock: see checkpointing.py.)
        self._pending = True
        self._expand_later()

    def _rows_written(self) -> None:
        """Every row of the index in ``messages`` now, committed: called under the
        lock, outside any transaction, before a statement that changes rows. Writers
        call :meth:`_rows_ready` before they take the lock, so this finds nothing to do
        unless another copy-in was indexed in between."""
        if self._pending:
            self._expand(None)

    def _rows_ready(self) -> None:
        """Without the lock (the caller holds none, or it only makes the holds
        re-entrant): the blobs' rows written a :data:`CHUNK` per hold of the lock,
        each chunk's rows made into parameters before the lock is taken, so that a
        writer's first change after a large copy-in (its STORE, EXPUNGE, a close)
        lets readers in between chunks instead of holding the mailbox for every row
        (50,000 rows: ~260 ms in one hold before)."""
        while self._pending and not self._closed:
            self._expand_chunk()
            self.lock.let_waiters_in()

    def _expand_chunk(self) -> None:
        """One :data:`CHUNK` of a blob's rows: made into parameters outside the lock,
        written under it."""
        with self.lock:
            if not self._pending:
                return
            if self._expansion is None:
                self._load_expansion()
                if self._expansion is None:
                    return
            expansion = self._expansion
        first, rows, done = expansion
        end = min(len(rows.uids), done + CHUNK)
        params = list(rows_of(rows, done, end))  # (the blob's table is never changed)
        with self.lock:
            if self._expansion is expansion:  # nobody wrote these meanwhile
                self._expand_prepared(params)

    def _load_expansion(self) -> None:
        """Under the lock: the first blob left, read into :attr:`_expansion` (or
        nothing left: not pending)."""
        row = self._db.execute("SELECT first_uid, done FROM pending ORDER BY first_uid LIMIT 1").fetchone()
        if row is None:
            self._pending = False
            return
        with self._db.blobopen("pending", "data", row[0], readonly=True) as blob:
            self._expansion = (row[0], MessageTable.load(blob.read), row[1])

    def _expand_prepared(self, params: list[tuple[Any, ...]]) -> None:
        """Under the lock: the next rows of the blob being expanded (``params``, made
        from it by :meth:`_rows_ready`) written, in one transaction."""
        assert self._expansion is not None
        first, rows, done = self._expansion
        end = done + len(params)
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, params)
            if end == len(rows.uids):
                db.execute("DELETE FROM pending WHERE first_uid = ?", (first,))
                self._expansion = None
                self._pending = db.execute("SELECT 1 FROM pending LIMIT 1").fetchone() is not None
            else:  # (how far in memory only: see _expand)
                self._expansion = (first, rows, end)
            if not self._pending:
                self._write_cache_later()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self._expansion = None  # read again from the index next time
            self._pending = True
            raise
        self._checkpoint_later()

    def _write_cache_later(self) -> None:
        """Inside the transaction that wrote the last blob's last rows: the parse
        caches set while their rows were in a blob."""
        if self._cache_later:
            self._db.executemany("UPDATE messages SET cache = ? WHERE uid = ?",
                                 [(json.dumps(self._cache[uid]), uid) for uid in self._cache_later
                                  if uid in self._cache])
            self._cache_later.clear()

    def _expand(self, limit: int | None) -> None:
        """Turn up to ``limit`` rows (None: all) from blobs into rows, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            left = limit
            while left is None or left > 0:
                if self._expansion is None:
                    self._load_expansion()
                    if self._expansion is None:
                        break
                first, rows, done = self._expansion
                end = len(rows.uids) if left is None else min(len(rows.uids), done + left)
                db.executemany(_INSERT, rows_of(rows, done, end))
                if end == len(rows.uids):
                    db.execute("DELETE FROM pending WHERE first_uid = ?", (first,))
                    self._expansion = None
                else:
                    # How far it got is kept in memory only: an UPDATE of the pending row
                    # rewrites its whole blob (~4 MB for 50,000 rows) into the log. Rows of
                    # a blob not written to its end are never changed or deleted (every
                    # statement that would first writes them all: _rows_written), so after
                    # a crash writing them again from the first (INSERT OR IGNORE) is exact.
                    self._expansion = (first, rows, end)
                if left is not None:
                    left -= end - done
            if not self._pending:
                self._write_cache_later()
            db.execute("COMMIT")
            self._checkpoint_later()
        except BaseException:
            db.execute("ROLLBACK")
            self._expansion = None  # read again from the index next time
            self._pending = True
            raise

    def _expand_later(self) -> None:
        """Start the background thread that writes the blobs' rows (if not running)."""
        if self._expander:
            return
        self._expander = True

        def run() -> None:
            try:
                time.sleep(QUIET)
                while True:
                    idle = time.monotonic() - self._last_use
                    if idle < QUIET:
                        time.sleep(QUIET - idle)
                        continue
                    with self.lock:
                        if self._closed or not self._pending:
                            self._expander = False
                            return
                    self._expand_chunk()
                    time.sleep(0.001)  # others' turn at the lock and the interpreter
            except (sqlite3.Error, ValueError):
                # the mailbox went away meanwhile: the next open expands what is left
                self._expander = False

        threading.Thread(target=run, name="maillab-index-rows", daemon=True).start()
