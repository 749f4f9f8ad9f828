"""The accept log: an SMTP delivery's durability point in one synchronous write.

Postfix's 250 waits for one fsync, its queue file's. The lab's did too (the message's
file marked and fsync'ed in ``tmp/``), but the fsync of a *new* file commits the file
system's journal (the inode, its blocks, its name) and then flushes the disk cache:
on this project's disk, with one connection and nothing else to overlap it, most of a
message's time (benchmarks/README.md, "Round seven").

Here the message is also written, with its key, as one record into a log file of the
folder, ``maillab-accepted.log``: created once, filled with zeros and fsync'ed (so its
blocks exist and its size never changes), then opened with ``O_DSYNC`` and written
in place. Such a write returns once its data is on the disk and needs no journal
commit (no metadata changes: the same blocks, the same size; ``O_DSYNC``, like
``fdatasync``, does not wait for the modification time). That write is the 250's
durability point (:meth:`Delivering.accept <maillab.store.delivering.Delivering.accept>`);
the Maildir file, renamed into ``new/`` and indexed as before, becomes durable in the
round after the 250 (the file fsync'ed, ``new/`` and the index log too), which retires
its record.

The file is a ring of 4 KiB blocks. Block 0 holds the *watermark*: every record up to
that sequence number is retired. A record starts at a block boundary: a header (magic,
sequence number, sizes, CRC-32 of it all), the key, the message, zeros up to the next
block. A torn write (a power cut in the middle) fails its CRC and is ignored: it was
never acknowledged.

Opening the folder reads the records above the watermark (:func:`unretired`): a record
whose key is in ``new/`` or ``cur/`` with the same content is already delivered; one
whose file is missing is written again (a lost rename), one whose file differs is
rewritten. Then the folder is flushed and the watermark moved past them.

A message that is expunged must not come back from its record, so :meth:`AcceptLog.settle`
retires every record whose message is delivered (its file fsync'ed, the folder's
directories and index log too, then the watermark written) before an expunge or a close
of the folder (:meth:`~maillab.store.mailbox.Mailbox.remove`). A flag change renames the
file within ``new/`` and ``cur/`` under the same key: the record is then skipped.

The round that retires the last record under way also writes the watermark (once at
the end of a burst of deliveries).

A record that does not fit (a message larger than the free part of the ring) is not
written, nor is one into a log another process holds (``flock``: a second lab on the
same directory): the delivery then takes the older path, its file marked and fsync'ed
in ``tmp/`` (:mod:`maillab.store.delivering`).
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LOG_FILE", "AcceptLog", "Record", "unretired"]

LOG_FILE = "maillab-accepted.log"
#: The unit of the ring (a page, a disk sector multiple): records start on it.
BLOCK = 4096
#: The ring's size: a folder's records not yet retired (a round retires them every
#: ~10 ms) fit many times over; a larger message takes the older path.
SIZE = 1 << 20

_HEAD = struct.Struct("<4sQI")  # magic, watermark, CRC-32 of the first two
_REC = struct.Struct("<4sQIHI")  # magic, sequence number, message size, key size, CRC-32
_HEAD_MAGIC = b"MLAH"
_REC_MAGIC = b"MLAR"
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class Record:
    """A record not yet retired (in memory, or read back at open)."""

    seq: int
    offset: int
    blocks: int
    key: str = ""
    data: bytes = b""
    fd: int = -1  # the message's file (its fsync retires the record)
    linked: bool = False  # renamed into new/ and indexed
    syncing: bool = False  # the round's thread is in the file's fsync
    done: bool = False


def _record(seq: int, key: str, data: bytes) -> bytes:
    name = key.encode()
    crc = zlib.crc32(data, zlib.crc32(name, zlib.crc32(_REC.pack(_REC_MAGIC, seq, len(data), len(name), 0))))
    raw = _REC.pack(_REC_MAGIC, seq, len(data), len(name), crc) + name + data
    return raw + bytes(-len(raw) % BLOCK)


def _head(watermark: int) -> bytes:
    crc = zlib.crc32(_HEAD.pack(_HEAD_MAGIC, watermark, 0))
    return _HEAD.pack(_HEAD_MAGIC, watermark, crc).ljust(BLOCK, b"\0")


def unretired(path: str) -> tuple[int, list[Record]]:
    """The log at ``path`` read back: the highest sequence number in it (watermark or
    record) and its whole records above the watermark, oldest first. (0, []) without
    a log or with a log whose head is not whole (never used)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return 0, []
    if len(raw) < BLOCK:
        return 0, []
    magic, watermark, crc = _HEAD.unpack_from(raw)
    if magic != _HEAD_MAGIC or crc != zlib.crc32(_HEAD.pack(_HEAD_MAGIC, watermark, 0)):
        return 0, []
    top, found = watermark, []
    offset = BLOCK
    while offset + _REC.size <= len(raw):
        magic, seq, size, key_size, crc = _REC.unpack_from(raw, offset)
        end = offset + _REC.size + key_size + size
        if magic == _REC_MAGIC and end <= len(raw):
            start = offset + _REC.size
            name, data = raw[start:start + key_size], raw[start + key_size:end]
            if zlib.crc32(data, zlib.crc32(name, zlib.crc32(_REC.pack(_REC_MAGIC, seq, size, key_size, 0)))) == crc:
                top = max(top, seq)
                blocks = -(-(end - offset) // BLOCK)
                if seq > watermark:
                    found.append(Record(seq, offset, blocks, name.decode(errors="replace"), data))
                offset += blocks * BLOCK
                continue
        offset += BLOCK
    found.sort(key=lambda r: r.seq)
    return top, found


class AcceptLog:
    """A folder's accept log (one per :class:`~maillab.store.mailbox.Mailbox`), safe
    for concurrent delivery threads. The file is made at the first :meth:`append`."""

    def __init__(self, path: str, last_seq: int = 0) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._seq = last_seq  # the last sequence number given out
        self._watermark = last_seq  # the one on the disk
        self._head = BLOCK  # where the next record goes
        self._records: deque[Record] = deque()  # written, not retired, in ring order
        self._broken = False  # the file cannot be made or written: the older path for good

    # -- the 250's path (a delivery thread) --------------------------------------
    def append(self, key: str, data: bytes, fd: int) -> Record | None:
        """The message ``data`` under ``key`` (its file open as ``fd``) on the disk
        when this returns; None when it does not fit (the caller takes the older
        path). OSError when the disk refused: not acknowledged."""
        raw_size = -(-(_REC.size + len(key.encode()) + len(data)) // BLOCK) * BLOCK
        with self._lock:
            if self._broken or raw_size > SIZE - BLOCK:
                return None
            if self._fd < 0:
                try:
                    self._make()
                except OSError:
                    self._broken = True
                    return None
            offset = self._room(raw_size)
            if offset is None:
                return None
            self._seq += 1
            rec = Record(self._seq, offset, raw_size // BLOCK, key, fd=fd)
            self._records.append(rec)
            self._head = offset + raw_size
        try:
            os.pwrite(self._fd, _record(rec.seq, key, data), offset)
        except BaseException:
            with self._lock:  # never acknowledged: its place is free again, its bytes torn or unread
                rec.done, rec.fd = True, -1
                self._drop_done()
            raise
        return rec

    def cancel(self, rec: Record) -> None:
        """``rec``'s delivery failed after its write (not acknowledged): its record
        blanked, so that no restart delivers it (best effort: a disk that refuses this
        too may deliver it once more after a restart, as a client's retry would)."""
        with self._lock:
            rec.fd = -1  # the caller's
            if not rec.done:
                try:
                    os.pwrite(self._fd, bytes(BLOCK), rec.offset)
                except OSError:
                    pass
                rec.done = True
                self._drop_done()

    def linked(self, rec: Record) -> None:
        """``rec``'s message is renamed into ``new/`` and indexed (a round or a
        :meth:`settle` that starts from now on may retire it)."""
        with self._lock:
            rec.linked = True

    # -- after the 250 (the group's round thread) --------------------------------
    def synced(self, rec: Record) -> None:
        """A round that started after :meth:`linked` fsync'ed ``new/`` and the index
        log: the file's own data now, then the record is retired and the file closed.
        OSError leaves it to the next :meth:`settle` (or to the next open)."""
        with self._lock:
            if rec.done:  # a settle retired it meanwhile
                self._close_file(rec)
                return
            rec.syncing = True
        try:
            os.fsync(rec.fd)
        finally:
            with self._lock:
                rec.syncing = False
        with self._lock:
            rec.done = True
            self._close_file(rec)
            self._drop_done()
            if not self._records and self._watermark < self._seq:
                # Nothing under way: the watermark past every record now (one write at
                # the end of a burst), so that a kill or a power cut later redoes nothing,
                # not even a message another program deleted meanwhile.
                os.pwrite(self._fd, _head(self._seq), 0)
                self._watermark = self._seq

    def _close_file(self, rec: Record) -> None:
        if rec.fd >= 0 and not rec.syncing:
            os.close(rec.fd)
            rec.fd = -1

    # -- before an expunge or a close (a worker thread) --------------------------
    def settle(self, sync: Callable[[], None]) -> None:
        """Every record whose message is delivered retired, and the watermark on the
        disk past them, before this returns: ``sync()`` fsyncs the folder's
        directories and index log (a round), then each file is fsync'ed. Records of
        deliveries still under way stay (their messages cannot be expunged yet)."""
        with self._lock:
            if self._fd < 0 or (not self._records and self._watermark == self._seq):
                return
            todo = [r for r in self._records if r.linked and not r.done]
        if todo:
            sync()
        with self._lock:
            for rec in todo:
                if not rec.done:  # (the round may have retired it meanwhile)
                    os.fsync(rec.fd)
                    rec.done = True
                    self._close_file(rec)  # (unless the round's thread is in its fsync: it closes)
            self._drop_done()
            mark = self._records[0].seq - 1 if self._records else self._seq
            if mark > self._watermark:
                os.pwrite(self._fd, _head(mark), 0)
                self._watermark = mark

    def recover(self) -> list[Record]:
        """At open: the records above the watermark (:func:`unretired`), and the log
        taken for this process. Another process that has it (a second lab on the same
        directory) keeps it: this one then delivers on the older path and redoes nothing."""
        with self._lock:
            try:
                if not os.path.exists(self.path) or not self._open():
                    return []
            except OSError:  # (a file system that refuses O_DSYNC, a read-only one)
                self._broken = True
                return []
            top, records = unretired(self.path)
            self._seq = self._watermark = top
            return records

    def _open(self) -> bool:
        """The file opened for synchronous writes in place and locked for this process;
        False (and the older path for good) when another process holds it."""
        fd = os.open(self.path, os.O_WRONLY | os.O_DSYNC | _CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            self._broken = True
            return False
        self._fd = fd
        return True

    def restart(self, seq: int) -> None:
        """At open, after the records above the watermark were delivered and flushed:
        the watermark moved to ``seq`` (the highest number in the file), the ring empty."""
        with self._lock:
            self._seq = max(self._seq, seq)
            if self._fd >= 0:
                os.pwrite(self._fd, _head(self._seq), 0)
            self._watermark = self._seq

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            for rec in self._records:  # the round never came: the next open delivers them
                self._close_file(rec)  # (one in the round's fsync: closed there)

    # -- the ring ----------------------------------------------------------------
    def _make(self) -> None:
        """The file at its full size, zeros on the disk (its blocks allocated and
        written, so later writes change no metadata), the head written, the file and
        its name fsync'ed; then opened for synchronous writes in place."""
        if not (os.path.exists(self.path) and os.path.getsize(self.path) == SIZE):
            tmp = self.path + ".tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _CLOEXEC, 0o600)
            try:
                os.write(fd, _head(self._seq))
                zeros = bytes(256 * BLOCK)
                for offset in range(BLOCK, SIZE, len(zeros)):
                    os.pwrite(fd, zeros[:SIZE - offset], offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            folder = os.open(os.path.dirname(self.path), os.O_RDONLY | _CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        if not self._open():
            raise BlockingIOError("the accept log is another process's")

    def _room(self, size: int) -> int | None:
        """Where a record of ``size`` octets goes: after the newest record, or at the
        start once the oldest ones there are retired; None when the ring is full."""
        if not self._records:
            return BLOCK
        tail = self._records[0].offset
        if self._records[-1].offset >= tail:  # not wrapped: free [head, SIZE) and [BLOCK, tail)
            if self._head + size <= SIZE:
                return self._head
            return BLOCK if BLOCK + size <= tail else None
        return self._head if self._head + size <= tail else None  # wrapped: free [head, tail)

    def _drop_done(self) -> None:
        while self._records and self._records[0].done:
            self._records.popleft()
