"""One mailbox: a real Maildir plus an index of UIDs, flags and cached summaries.

The Maildir (``new/``, ``cur/``, ``tmp/``) is the truth for *which* messages
exist, so real tools (mutt, Dovecot, ``ls``) can read and even change it. The
index beside it (``maillab-index.sqlite``) adds what IMAP needs and a Maildir
cannot hold: a UIDVALIDITY, a UID per message that is never reused, keywords, and
cached parse results (envelope, body structure) so FETCH never re-parses. In
memory the index is a :class:`~maillab.store.table.MessageTable` (a few compact
columns, not an object per message).

Delivery is atomic: the message is written in ``tmp/`` and renamed into
``new/``; a crash mid-write leaves only a file in ``tmp/`` that no reader lists.
With ``sync`` (what the servers pass, ``Limits.smtp_fsync``) a change also survives a
power cut before it is acknowledged: the file is fsync'ed before its rename, and the
directories and the index's log after it (:meth:`Mailbox.flush`, a round shared with
concurrent writers: :mod:`maillab.store.groupsync`). An SMTP delivery
(:meth:`~maillab.store.delivering.Delivering.accept`) is acknowledged after the file's
fsync alone, as Postfix does; its round follows the 250.

Standard flags are mirrored in the file name (``:2,FRS``, the Maildir "info"),
so flags set over IMAP show up in mutt and the other way round.

Files that arrive from outside (a Maildir copied in, mutt, Dovecot) are indexed
from their directory entries alone, as Dovecot does: UIDs in delivery order of
their names, flags from the info, sizes from ``S=``/``W=`` when the name has them.
What the name does not tell (the CRLF size, the arrival date) is read from the
file the first time someone asks, outside the lock, and kept.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import json
import logging
import os
import sqlite3
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..frozen import IntRing
from .checkpointing import Checkpointing
from .deferred import DeferredRows
from .delivering import EXPUNGED, Delivering
from .dirsync import CHANGE_LOG_SIZE, INLINE_SYNC_MAX, DirectorySync
from .flagging import BATCH, Flagging
from .groupsync import GROUP
from .locking import MailboxLock
from .measure import Measuring, crlf_size, to_crlf
from .table import STATES, SUBDIRS, UNKNOWN_DATE, MessageTable

log = logging.getLogger(__name__)

__all__ = ["CHANGE_LOG_SIZE", "Mailbox", "MessageInfo", "Snapshot", "count_above", "crlf_size",
           "to_crlf"]

INDEX_FILE = "maillab-index.sqlite"

_KINDS = ("new", "flags", "gone")


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What the index knows about one message."""

    uid: int
    key: str  # the unique part of the Maildir file name
    subdir: str  # "new" or "cur"
    filename: str  # current file name inside subdir
    size: int  # bytes on disk
    crlf_size: int  # bytes with every line ending as CRLF: what IMAP RFC822.SIZE and POP3 LIST report
    internaldate: float  # when it arrived (IMAP INTERNALDATE), seconds since the epoch
    flags: frozenset[str] = field(default_factory=frozenset)

    @property
    def relpath(self) -> str:
        return f"{self.subdir}/{self.filename}"


class Snapshot(NamedTuple):
    """Every message's UID and flags at one moment (what an IMAP SELECT starts from):
    two fresh arrays, and the mailbox's table of flag sets they number into."""

    uids: array[int]
    flag_ids: array[int]
    flagsets: list[frozenset[str]]  # append-only: shared, never copied
    changes: int  # the change number this snapshot is at
    uidnext: int


class Mailbox(Checkpointing, DeferredRows, DirectorySync, Flagging, Measuring, Delivering):  # (before the parts that declare its methods)
    """A Maildir folder with its index. One instance per folder per process
    (the :class:`~maillab.store.Store` hands them out), guarded by one lock.

    :attr:`table` may be read directly, under :attr:`lock`, by code that needs many
    messages' UIDs and flags at once (IMAP FETCH FLAGS, SELECT).
    """

    def __init__(self, path: Path, name: str, *, uidvalidity_source: Any = None) -> None:
        self.path = Path(path)
        self.name = name
        self.lock = MailboxLock()  # (an RLock that gives a worker's turn back while it waits)
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path / INDEX_FILE), check_same_thread=False,
                                   isolation_level=None)
        # WAL with synchronous=NORMAL: commits are atomic and survive a process crash
        # without an fsync per message.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._init_checkpointing(self.path / INDEX_FILE)  # (and not inside a commit: checkpointing.py)
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS messages (
                uid INTEGER PRIMARY KEY,
                key TEXT UNIQUE NOT NULL,
                subdir TEXT NOT NULL,
                filename TEXT NOT NULL,
                size INTEGER NOT NULL,
                crlf_size INTEGER NOT NULL,
                internaldate REAL NOT NULL,
                flags TEXT NOT NULL DEFAULT '',
                cache TEXT
            );
            CREATE TABLE IF NOT EXISTS snapshot (id INTEGER PRIMARY KEY CHECK (id = 1),
                                                 data BLOB NOT NULL);
            """
        )
        self._init_deferred()
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "uidvalidity" not in meta:
            uv = uidvalidity_source() if uidvalidity_source else int(time.time())
            self._db.execute("BEGIN")  # a kill between these: a folder that never opens
            self._set_meta("uidvalidity", uv)
            self._set_meta("uidnext", 1)
            self._set_meta("highestmodseq", 1)
            self._db.execute("COMMIT")
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self.uidvalidity: int = int(meta["uidvalidity"])
        self.uidnext: int = int(meta["uidnext"])
        #: The index in memory (read under :attr:`lock`).
        self.table = MessageTable()
        self._load()
        self._cache: dict[int, dict[str, Any]] = {}
        # Sizes and dates learnt from files since the last write (persisted in batches:
        # losing them in a crash only means measuring again).
        self._measured: list[tuple[int, int, float, int]] = []
        self._sizes_learnt = 0  # counts them (a close's copy of the table is stale when it moved)
        # The change log: every insert, flag/file change and removal gets the next
        # number, so a reader that remembers the number it last saw learns what changed
        # since (IMAP untagged updates) without looking at every message. An entry is
        # ``uid << 2 | kind`` (kind: an index into _KINDS).
        self.changes = 0
        self._log = IntRing(CHANGE_LOG_SIZE)  # not a deque: 20,000 ints every collection visits
        self._dir_stamp: tuple[int, int] | None = None
        self._syncing = False  # a background sync is running
        self._applying = False  # a sync is applying a large copy-in, a chunk per hold
        self._own_changes = 0
        # The folder's own directory entries (index, log, new/ cur/) fsync'ed once
        # since this process opened it: the first flush includes them.
        self._parents_flushed = False
        # Deliveries renamed out of tmp/ (accept) and those whose rename a round has
        # fsync'ed: while they differ, every flush fsyncs tmp/ too (delivering.py).
        self._tmp_renamed = self._tmp_synced = 0
        # The accept log's records above its watermark, delivered at open (delivering.py)
        self._accepted_at_open: list[str] = []
        recovered = self._recover_tmp()  # (and opens the accept log: self._accepted)
        # The directory times when this index last matched them (written at close):
        # unchanged means nothing was added, renamed or removed since, so a restart
        # skips the scan of every file name.
        if meta.get("dir-stamp") == "{} {}".format(*self._stamp()) and not recovered:
            self._dir_stamp = self._stamp()
        if "dir-stamp" in meta:
            # Good for this one open: a stop that is not a clean close must scan again.
            # After a power cut the index log may keep a row (a flag change's new name,
            # a delivery) whose rename, and the directory time with it, was lost; the
            # old time would then skip the scan that puts them right. (The delete is
            # in the log before any later row, so it is on the disk whenever they are.)
            self._db.execute("DELETE FROM meta WHERE key = 'dir-stamp'")
        self.sync()
        if recovered or self._accepted_at_open:  # indexed now: on the disk before anyone is told, then unmarked
            self.flush(("tmp", "new", "cur"))
            self._unmark(recovered)
        if self._accepted_at_open:  # their files on the disk too: then the accept log's watermark past them
            for path in self._accepted_at_open:
                with contextlib.suppress(FileNotFoundError):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)
            self._accepted.restart(0)
            self._accepted_at_open = []

    # -- index bookkeeping -------------------------------------------------------
    def _set_meta(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            return row[0] if row else default

    def set_meta(self, key: str, value: Any) -> None:
        with self.lock:
            self._set_meta(key, value)
            self._checkpoint_later()

    def _logged(self, kind: int, uid: int) -> None:
        self.changes += 1
        self._log.append(uid << 2 | kind)

    def changes_since(self, seen: int, inline: bool = True) -> list[tuple[str, int]] | None:
        """What changed after change number ``seen``: ("new" | "flags" | "gone", uid)
        in order, after picking up outside changes; None when the log no longer
        reaches back that far (the caller rescans). Cost: the changes, not the mailbox.

        With ``inline`` false (the caller is the lab loop) outside changes to a large
        mailbox, or that make it large, are picked up by a background thread instead
        (comparing 100,000 file names takes longer than the loop may stall): they show
        in a later call.
        """
        if inline:
            self.sync()  # (lists the directories without the lock, if the caller holds none)
        elif len(self.table) <= INLINE_SYNC_MAX:
            # on the loop: inline only while the directories are small too (a copy-in of
            # 50,000 files into a small mailbox is indexed by the background thread)
            self.sync(cap=INLINE_SYNC_MAX)
        with self.lock:
            if not (inline or len(self.table) <= INLINE_SYNC_MAX):
                self._sync_in_background()
            behind = self.changes - seen
            if behind <= 0:
                return []
            if behind > len(self._log):
                return None
            return [(_KINDS[e & 3], e >> 2) for e in self._log.newest(behind)]

    def _insert(self, key: str, subdir: str, filename: str, size: int, crlf: int,
                internaldate: float, flags: frozenset[str]) -> MessageInfo:
        uid = self.uidnext
        self.uidnext += 1
        self._db.execute(
            "INSERT INTO messages (uid, key, subdir, filename, size, crlf_size, internaldate, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, key, subdir, filename, size, crlf, internaldate, " ".join(sorted(flags))),
        )
        self._set_meta("uidnext", self.uidnext)
        self.table.append(uid, key, STATES[subdir], flags, size, crlf, internaldate, filename)
        self._logged(0, uid)
        return MessageInfo(uid, key, subdir, filename, size, crlf, internaldate, flags)

    def _move(self, slot: int, state: int, flags: frozenset[str], filename: str) -> None:
        self._db.execute(
            "UPDATE messages SET subdir = ?, filename = ?, flags = ? WHERE uid = ?",
            (SUBDIRS[state], filename, " ".join(sorted(flags)), self.table.uids[slot]),
        )
        self.table.move(slot, state, flags, filename)
        self._logged(1, self.table.uids[slot])

    def _forget(self, slot: int) -> None:
        self._db.execute("DELETE FROM messages WHERE uid = ?", (self.table.uids[slot],))
        self._forgotten(slot)

    def _forgotten(self, slot: int) -> None:
        """The memory's side of a removal whose index row is deleted: the table, the
        read cache, the change log."""
        uid = self.table.uids[slot]
        self._cache.pop(uid, None)
        self.table.remove(slot)
        self._logged(2, uid)

    def _info(self, slot: int) -> MessageInfo:
        t = self.table
        size, crlf, date = t.sizes[slot], t.crlf[slot], t.dates[slot]
        # still unknown only when the file vanished before it could be measured
        return MessageInfo(t.uids[slot], t.key(slot), SUBDIRS[t.state[slot]], t.filename(slot),
                           max(size, 0), max(crlf, 0), date if date != UNKNOWN_DATE else 0.0,
                           t.flagsets[t.flag_ids[slot]])

    # -- reading -----------------------------------------------------------------
    def messages(self) -> list[MessageInfo]:
        """All messages in UID order (after picking up outside changes), sizes and
        dates complete (files indexed by name only are measured now)."""
        self.sync()
        with self.lock:
            unknown = [self.table.uids[s] for s in self.table.live_slots() if not self._known(s)]
        self.measure(unknown)
        with self.lock:
            return [self._info(s) for s in self.table.live_slots()]

    def snapshot(self) -> Snapshot:
        """Every message's UID and flags now (after picking up outside changes)."""
        self.sync()
        with self.lock:
            t = self.table
            return Snapshot(t.live_uids(), t.live_flag_ids(), t.flagsets, self.changes, self.uidnext)

    def get(self, uid: int) -> MessageInfo | None:
        """One message's index entry (measured first if the index lacks its sizes)."""
        with self.lock:
            slot = self.table.slot(uid)
            if slot is None:
                return None
            if self._known(slot):
                return self._info(slot)
        self.measure([uid])
        with self.lock:
            slot = self.table.slot(uid)
            return None if slot is None else self._info(slot)

    def unmeasured(self, uid: int) -> MessageInfo | None:
        """One message's index entry as it is: sizes and date the index does not know
        yet are 0 (for readers that need only the file name and flags: a header
        SEARCH). Anything that reads the bytes or reports a size uses :meth:`get`."""
        with self.lock:
            slot = self.table.slot(uid)
            return None if slot is None else self._info(slot)

    def flags(self, uid: int) -> frozenset[str] | None:
        """The flags of ``uid`` (None when it does not exist): no file is looked at."""
        with self.lock:
            slot = self.table.slot(uid)
            return None if slot is None else self.table.flagsets[self.table.flag_ids[slot]]

    def uids_with_flag(self, flag: str) -> list[int]:
        """The UIDs of the messages that have ``flag``, ascending."""
        with self.lock:
            t = self.table
            having = {i for i, fs in enumerate(t.flagsets) if flag in fs}
            return [t.uids[s] for s in t.live_slots() if t.flag_ids[s] in having]

    def listing(self) -> tuple[array[int], array[int]]:
        """Every message's UID and CRLF size (POP3 STAT and LIST), ascending by UID:
        two fresh arrays, sizes measured first where the index lacks them."""
        self.sync()
        with self.lock:
            unknown = [self.table.uids[s] for s in self.table.live_slots() if not self._known(s)]
        self.measure(unknown)
        with self.lock:
            t = self.table
            sizes = t.crlf[:] if not t.holes else array("q", itertools.compress(t.crlf, t.state))
            if sizes and min(sizes) < 0:  # still unknown only when the file vanished meanwhile
                sizes = array("q", (max(size, 0) for size in sizes))
            return t.live_uids(), sizes

    def total_size(self) -> int:
        """The sum of RFC822.SIZE over the mailbox (IMAP STATUS SIZE)."""
        return sum(i.crlf_size for i in self.messages())

    def __len__(self) -> int:
        with self.lock:
            return len(self.table)

    def file_path(self, uid: int) -> Path:
        return Path(self._file_name(uid))

    def _file_name(self, uid: int) -> str:
        with self.lock:
            slot = self.table.slot(uid)
            if slot is None:
                raise KeyError(uid)
            return f"{os.fspath(self.path)}/{self.table.relpath(slot)}"

    def read(self, uid: int) -> bytes:
        """The message exactly as stored."""
        # A plain name and an unbuffered file: a POP3 download reads thousands of
        # messages a second, and a pathlib join and a buffered reader cost each one.
        with open(self._file_name(uid), "rb", buffering=0) as f:
            return f.readall()

    def read_crlf(self, uid: int) -> bytes:
        """The message with CRLF line endings, as the wire protocols send it."""
        return to_crlf(self.read(uid))

    def get_cache(self, uid: int) -> dict[str, Any] | None:
        """Parse results cached for ``uid`` (envelope, body structure, ...).

        Kept in memory after the first read and persisted in the index, so a
        warm mailbox answers FETCH ENVELOPE without opening a single message.
        """
        with self.lock:
            if uid in self._cache:
                return self._cache[uid]
            row = self._db.execute("SELECT cache FROM messages WHERE uid = ?", (uid,)).fetchone()
            cache = json.loads(row[0]) if row and row[0] else None
            if cache is not None:
                self._cache[uid] = cache
            return cache

    def set_cache(self, uid: int, cache: dict[str, Any]) -> None:
        with self.lock:
            self._cache[uid] = cache
            if self._pending:  # its row may still be in a blob: written again after it
                self._cache_later.add(uid)
            self._db.execute("UPDATE messages SET cache = ? WHERE uid = ?", (json.dumps(cache), uid))
            self._checkpoint_later()

    # -- writing -----------------------------------------------------------------
    def add(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None, *,
            crlf_only: bool = False, sync: bool = False, flush: bool = True) -> MessageInfo:
        """Deliver ``data`` atomically (tmp -> new, or cur when it already has flags).

        ``crlf_only``: the caller has checked that every line ends in CRLF (SMTP
        refuses anything else), so the CRLF size is the size, without a look at
        every octet. ``sync``: the file's data reaches the disk (fsync) before its
        name appears in new/, as the Maildir spec asks of a delivery agent, and the
        rename and the index row reach it before this returns (:meth:`flush`), so
        that an SMTP 250 or an APPEND OK survives a power cut, not only a crash of
        the process. With ``flush`` false the caller flushes later, once for many
        messages (an IMAP COPY).
        """
        flags = frozenset(flags)
        now = time.time()
        key, crlf, fd = self._write_tmp(data, internaldate, crlf_only=crlf_only, sync=sync)
        os.close(fd)
        info = self._link(key, len(data), crlf, internaldate if internaldate is not None else now, flags)
        if sync and flush:
            self.flush((info.subdir,))  # outside the lock: concurrent deliveries share the round
        return info

    def flush(self, subdirs: Iterable[str] = ("new", "cur")) -> None:
        """Make the changes made so far to ``subdirs`` (renames, new files, removals)
        and to the index survive a power cut: fsync of the directories and of the
        index's log (sqlite's WAL, committed with ``synchronous=NORMAL``, i.e. not
        synced at commit), in a round shared with concurrent writers
        (:data:`~maillab.store.groupsync.GROUP`). The first flush of a folder also
        fsyncs the directories that name it and its index. Blocks (a worker thread's
        work); OSError when the disk refused: the change must not be acknowledged."""
        base = os.fspath(self.path)
        paths = [f"{base}/{sub}" for sub in subdirs]
        paths.append(f"{base}/{INDEX_FILE}-wal")
        if not self._parents_flushed:
            paths += [base, os.path.dirname(base)]
        renamed = self._tmp_renamed
        if renamed > self._tmp_synced:  # an accepted delivery's old name not yet gone for good
            paths.append(f"{base}/tmp")
        GROUP.sync(paths)
        self._parents_flushed = True
        with self.lock:
            self._tmp_synced = max(self._tmp_synced, renamed)

    def remove(self, uids: Iterable[int], unless: Any = None, *, sync: bool = False,
               expected: dict[int, frozenset[str]] | None = None) -> list[int]:
        """Delete messages for good (POP3 UPDATE, IMAP EXPUNGE), a batch per hold of
        the lock and per index transaction; with ``unless``, not those whose flags
        at that moment make ``unless(flags)`` true, nor (``expected``) those whose flags
        are not ``expected[uid]`` (a MOVE's changed originals). Returns the UIDs removed. With
        ``sync`` the removals are on the disk before this returns (:meth:`flush`):
        a message whose deletion was acknowledged does not come back after a power cut.

        Under the lock a file is only renamed out of ``new/``/``cur/`` into ``tmp/``
        (:data:`EXPUNGED`: a few microseconds, a change of two directories) and its row
        deleted; the unlink, which on ext4 costs milliseconds a file (the blocks are
        freed), follows once the lock is released, so other sessions' FETCH, a
        delivery, a POP3 RETR do not wait for it. A crash in between leaves the file in
        ``tmp/``, where no reader lists it and the next open deletes it."""
        removed: list[int] = []
        todo = sorted(set(uids))
        t = self.table
        base = os.fspath(self.path)
        self._rows_ready()  # rows still in a blob (a copy-in): written a chunk per hold
        # A message delivered moments ago may still have its accept log record: retired
        # first, or a restart after a power cut (or a kill) would deliver it again.
        self._accepted.settle(lambda: self.flush(("tmp", "new", "cur")))
        for start in range(0, len(todo), BATCH):
            doomed: list[str] = []
            try:
                with self.lock:
                    self._rows_written()
                    was_in_sync = self._begin_change()
                    chosen: list[tuple[int, str, str]] = []  # slot, where its file was, is now ("": gone)
                    try:
                        for uid in todo[start:start + BATCH]:
                            slot = t.slot(uid)
                            if slot is None:
                                continue
                            flags = t.flagsets[t.flag_ids[slot]]
                            if unless and unless(flags) or expected is not None and expected.get(uid) != flags:
                                continue
                            here, trash = f"{base}/{t.relpath(slot)}", f"{base}/tmp/{EXPUNGED}{t.filename(slot)}"
                            try:
                                os.rename(here, trash)
                            except FileNotFoundError:
                                trash = ""  # removed by another tool already: only its row goes
                            chosen.append((slot, here, trash))
                        self._db.execute("BEGIN")
                        try:
                            self._db.executemany("DELETE FROM messages WHERE uid = ?",
                                                 [(t.uids[slot],) for slot, _, _ in chosen])
                            self._db.execute("COMMIT")
                        except BaseException:
                            self._db.execute("ROLLBACK")
                            raise
                    except BaseException:
                        # Nothing of this batch is removed: its rows stayed, its files go
                        # back where they were, and the table was not touched yet.
                        for _, here, trash in reversed(chosen):
                            if trash:
                                os.rename(trash, here)
                        raise
                    for slot, _, trash in chosen:
                        removed.append(t.uids[slot])
                        self._forgotten(slot)
                        if trash:
                            doomed.append(trash)
                    self._own_change_done(was_in_sync)
                    t.maybe_compact()
            finally:  # (renamed out of every reader's sight already: no lock)
                for trash in doomed:
                    try:
                        os.unlink(trash)
                    except FileNotFoundError:
                        pass
        if sync and removed:
            self.flush()
        return removed

    def close(self) -> None:
        """Write the table as one blob for the next open (the store's close at lab
        stop, DELETE, RENAME), and close the index. The heavy part runs before the
        last hold of the lock: rows still in a blob (a copy-in) written a chunk per
        hold and the blob of the table made from a copy; under the lock only what
        changed meanwhile is redone, and the index closed while a second connection
        keeps it open, so sqlite's checkpoint at the close of its last connection (the
        log with the snapshot just written: ~4 MB and two fsyncs for 50,000 rows)
        runs after the lock, before this returns."""
        try:  # delivered messages off the accept log: a clean stop leaves nothing to redo
            self._accepted.settle(lambda: self.flush())
        except OSError as exc:  # the next open redoes them from the log
            log.warning("%s: the accept log not settled at close: %s", self.path, exc)
        self._accepted.close()
        blob, edits, learnt, last = b"", -1, -1, None
        try:
            self._rows_ready()
            with self.lock:
                self._save_measured()
                copy, edits, learnt = self.table.copy_to_save(), self.table.edits, self._sizes_learnt
            blob = copy.to_bytes()
            del copy
            last = sqlite3.connect(self._index_uri, uri=True, isolation_level=None, timeout=5)
            last.execute("SELECT count(*) FROM meta").fetchone()  # (the log opened: its close checkpoints)
        except (OSError, sqlite3.Error):
            pass  # the folder was deleted or renamed: the lock's part below finds out
        try:
            with self.lock:
                self._closed = True
                try:
                    self._rows_written()
                    self._save_measured()  # (measured meanwhile: the table below has them)
                    if self.table.edits != edits or self._sizes_learnt != learnt or not blob:
                        blob = self.table.to_bytes()
                    self._db.execute("INSERT OR REPLACE INTO snapshot (id, data) VALUES (1, ?)", (blob,))
                    if self._in_sync():
                        self._set_meta("dir-stamp", "{} {}".format(*self._stamp()))
                    else:
                        self._db.execute("DELETE FROM meta WHERE key = 'dir-stamp'")
                except (OSError, sqlite3.Error):
                    pass  # the folder was deleted or renamed: nothing to remember
                self._db.close()
        finally:
            if last is not None:
                last.close()  # the last connection: sqlite checkpoints and removes the log


def count_above(uids: array[int], mark: int) -> int:
    """How many of the ascending ``uids`` are above ``mark``."""
    return len(uids) - bisect.bisect_right(uids, mark)
