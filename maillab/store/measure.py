"""Sizes and arrival dates the index learns from the files themselves.

A Maildir indexed from its names alone (see :mod:`maillab.store.dirsync`) knows a
message's size on disk when the name carries ``S=``, its CRLF size when it carries
``W=``, and its arrival date not at all. RFC822.SIZE, POP3 LIST and INTERNALDATE
need them exact, so the first time one is asked for, the file is stat'ed (and
read, if a size is missing or the name's size is wrong), a batch at a time
outside the mailbox lock, and the index keeps the result.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from .locking import MailboxLock
from .table import UNKNOWN, UNKNOWN_DATE, MessageTable

#: Files measured per hold of the mailbox lock.
MEASURE_BATCH = 512


def crlf_size(data: bytes) -> int:
    """Size of ``data`` once every bare LF is written as CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF (files written by other tools often use bare LF)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def measure_file(path: str, size: int, crlf: int) -> tuple[int, int, float]:
    """(size, CRLF size, mtime) of a file: the file is read only when its name did not
    tell both sizes, or told a size it does not have."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if crlf == UNKNOWN or size != st.st_size:
            data = os.read(fd, st.st_size + 1)
            if len(data) > st.st_size:  # it grew since the stat: read to its end
                parts = [data]
                while more := os.read(fd, 1 << 20):
                    parts.append(more)
                data = b"".join(parts)
            size, crlf = len(data), crlf_size(data)
    finally:
        os.close(fd)
    return size, crlf, st.st_mtime


class Measuring:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that fills in what the
    index does not know yet."""

    path: Path
    lock: MailboxLock
    table: MessageTable
    _db: sqlite3.Connection
    # (size, CRLF size, date, uid) learnt since the last write: persisted in batches
    # (losing them in a crash only means measuring again)
    _measured: list[tuple[int, int, float, int]]
    _pending: bool
    _sizes_learnt: int

    def _known(self, slot: int) -> bool:
        t = self.table
        return t.crlf[slot] != UNKNOWN and t.sizes[slot] != UNKNOWN and t.dates[slot] != UNKNOWN_DATE

    def measure(self, uids: Iterable[int]) -> None:
        """Learn the sizes and arrival dates the index does not know yet of these
        messages, from their files: a batch at a time, reading outside the lock so
        other sessions (and the lab loop waiting on this lock) go on meanwhile."""
        todo = list(uids)
        t = self.table
        for start in range(0, len(todo), MEASURE_BATCH):
            with self.lock:
                jobs = []
                for uid in todo[start:start + MEASURE_BATCH]:
                    slot = t.slot(uid)
                    if slot is not None and not self._known(slot):
                        jobs.append((uid, os.path.join(self.path, t.relpath(slot)),
                                     t.sizes[slot], t.crlf[slot]))
            if not jobs:
                continue
            if self._pending and len(self._measured) >= 3 * MEASURE_BATCH:
                self._rows_ready()  # the sizes saved below update rows: none left in a blob
            found = {}
            for uid, path, size, crlf in jobs:
                try:
                    found[uid] = measure_file(path, size, crlf)
                except FileNotFoundError:
                    pass  # renamed meanwhile: measured again under the lock, below
            with self.lock:
                for uid, *_ in jobs:
                    slot = t.slot(uid)
                    if slot is None or self._known(slot):
                        continue
                    got = found.get(uid)
                    if got is None:
                        try:
                            got = measure_file(os.path.join(self.path, t.relpath(slot)),
                                           t.sizes[slot], t.crlf[slot])
                        except FileNotFoundError:
                            continue  # removed by another tool: the next sync forgets it
                    t.sizes[slot], t.crlf[slot] = got[0], got[1]
                    if t.dates[slot] == UNKNOWN_DATE:
                        t.dates[slot] = got[2]
                    self._measured.append((got[0], got[1], t.dates[slot], uid))
                    self._sizes_learnt += 1
                if len(self._measured) >= 4 * MEASURE_BATCH:
                    self._save_measured()

    def _rows_written(self) -> None: ...
    def _rows_ready(self) -> None: ...

    def _save_measured(self) -> None:
        if self._measured:
            self._rows_written()
            rows, self._measured = self._measured, []
            self._db.execute("BEGIN")
            self._db.executemany(
                "UPDATE messages SET size = ?, crlf_size = ?, internaldate = ? WHERE uid = ?", rows)
            self._db.execute("COMMIT")
