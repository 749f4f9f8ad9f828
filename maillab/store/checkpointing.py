"""Copying the index's log into its database (a sqlite checkpoint) without the mailbox lock.

The index is written in WAL mode: each commit appends to ``maillab-index.sqlite-wal``,
and now and then the log is copied into the database file and starts over. sqlite does
that by itself (``wal_autocheckpoint``, every 1,000 pages) inside the commit that
crosses the mark, on the connection that commits, so under :attr:`Mailbox.lock`: a
delivery's or a ``set_cache``'s commit then wrote ~4 MB and waited for two fsyncs (the
log's, then the database's, with ``synchronous=NORMAL``) while every other session's
command waited for the lock.

So the automatic checkpoint is off, and after about :data:`CHECKPOINT_CHANGES` rows
changed on the mailbox's connection a thread of its own runs a ``PASSIVE`` checkpoint
through a second, short-lived connection. In WAL mode a checkpoint and the writers
work side by side (sqlite's own locks keep each frame whole), so nobody waits for its
fsyncs. What a crash finds is sqlite's business either way: a checkpoint cut short is
redone from the log at the next open.

The log starts over (from its first frame) only at a write that finds every frame
copied: a checkpoint that ran while others committed leaves it growing. Writers that
never pause that long (a continuous stream of deliveries) would grow it without end,
so once it holds :data:`WAL_FRAMES_MAX` frames the next writer checkpoints under the
lock, as sqlite would have (the copy is short by then: the background copied the
rest), and the log starts over; never the lab loop (its few commits, \\Recent claimed
by a NOOP, leave it to the next writer on a worker thread).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

__all__ = ["CHECKPOINT_CHANGES", "WAL_FRAMES_MAX", "Checkpointing"]

#: Rows changed on a mailbox's connection between two checkpoints (a commit writes
#: two or three pages to the log: ~1,000-1,500 pages, sqlite's own mark).
CHECKPOINT_CHANGES = 500
#: Frames (pages) in the log at which a writer checkpoints under the lock (sqlite's
#: own mark is 1,000; the log is at most ~12 MB).
WAL_FRAMES_MAX = 3_000


class Checkpointing:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that checkpoints its index."""

    path: Path
    _db: sqlite3.Connection

    def _init_checkpointing(self, index: Path) -> None:
        self._db.execute("PRAGMA wal_autocheckpoint = 0")  # never inside a commit (under the lock)
        self._index_uri = f"{index.resolve().as_uri()}?mode=rw"  # never creates a lost folder's index
        self._changes_checkpointed = self._db.total_changes
        self._checkpointing = False
        self._wal_frames = 0  # in the log at the last checkpoint
        #: checkpoints run (a test reads it)
        self.checkpoints = 0

    def _checkpoint_later(self) -> None:
        """After a commit, under :attr:`lock`: a checkpoint on a thread of its own when
        enough has been written since the last (cheap when not)."""
        if self._db.total_changes - self._changes_checkpointed < CHECKPOINT_CHANGES:
            return
        self._changes_checkpointed = self._db.total_changes
        if self._wal_frames >= WAL_FRAMES_MAX and not _on_a_loop():  # never finished beside the writers
            busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames == copied:
                self._wal_frames = 0  # (starts over at the next commit: we hold the lock)
            self.checkpoints += 1
            return
        if self._checkpointing:
            return
        self._checkpointing = True
        threading.Thread(target=self.checkpoint, name="maillab-checkpoint", daemon=True).start()

    def checkpoint(self) -> None:
        """Copy what the index's log holds into its database now (blocks on the disk,
        never on :attr:`lock`). A folder deleted meanwhile has nothing left to copy."""
        try:
            db = sqlite3.connect(self._index_uri, uri=True, isolation_level=None, timeout=5)
            try:
                db.execute("PRAGMA synchronous=NORMAL")  # the log fsync'ed before, the database after
                _, self._wal_frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self.checkpoints += 1
            finally:
                db.close()
        except sqlite3.Error:
            pass  # gone, or busy: the next one copies it
        finally:
            self._checkpointing = False


def _on_a_loop() -> bool:
    """Whether this thread runs an event loop (the lab loop claiming \\Recent with a
    commit under a lock it took without waiting): never a checkpoint's fsyncs there."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
