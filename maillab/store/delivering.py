"""Writing a message into a Maildir: a file in ``tmp/``, renamed into ``new/``.

:meth:`~maillab.store.mailbox.Mailbox.add` (IMAP APPEND, COPY, a DSN) writes,
fsyncs (with ``sync``) and renames, then flushes ``new/`` and the index before it
returns. An SMTP delivery is acknowledged after one durability point, as Postfix's is.

Postfix's 250 waits for one fsync: its queue file's. cleanup(8) writes the message
into the queue, marks the finished file by setting its owner-execute bit, fsyncs it
and answers; the delivery into the mailbox happens after the 250, and a queue file
found at start without the mark was never acknowledged and is thrown away.

The lab's Maildir does the same with an accept log as its queue (:meth:`Delivering.accept`):

1. the message is written as ``tmp/<key>`` (no fsync), and as a record into the
   folder's accept log (:mod:`.acceptlog`), a synchronous write in place that needs no
   file-system journal commit: the one durability point the 250 waits for. A message
   too large for the log's free space takes the older path instead: its file gets the
   owner-execute bit (:data:`MARK`: complete) and is fsync'ed. On ext4, XFS and btrfs
   the fsync of a new file also commits its name in ``tmp/``, which Postfix relies on;
   POSIX does not promise it, so on any other file system (FUSE, NFS, another OS:
   :func:`.groupsync.names_last_with_file_fsync`) ``tmp/`` is fsync'ed too before the
   250 (a power cut on ``tests/powercut.py``'s conservative model lost the
   acknowledged message without it);
2. it is renamed into ``new/`` and indexed (no fsync: the reader sees it at once);
3. the 250;
4. afterwards, in a round shared with every other writer
   (:meth:`~maillab.store.groupsync.GroupSync.sync_later`): ``new/`` and the index's
   ``-wal`` are fsync'ed (``tmp/`` too on the older path), then the file itself and its
   record is retired (on the older path: the mark is taken off).

A power cut between 3 and 4 is redone from the record at the next open
(:mod:`.acceptlog`). On the older path it may undo the rename: the file is then back in ``tmp/``,
whole (fsync'ed) and marked. Opening the mailbox (:meth:`Delivering._recover_tmp`)
renames such files into ``new/``, where the index picks them up, and deletes the lab's
unmarked files, which were never acknowledged (and the files of expunged messages
that a crash left there between their rename and their unlink: :data:`EXPUNGED`). A file whose key is also in ``new/`` or
``cur/`` is a second name of a delivered message and is removed, so each message is
delivered once. Until step 4, every other flush of the mailbox (an EXPUNGE, a STORE)
fsyncs ``tmp/`` as well: an acknowledged deletion or flag change of the message must
not be undone by its old name coming back in ``tmp/``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import re
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .acceptlog import LOG_FILE, AcceptLog
from .filenames import info_letters
from .groupsync import GROUP, fsync_now, names_last_with_file_fsync
from .locking import MailboxLock
from .measure import crlf_size

if TYPE_CHECKING:
    from .mailbox import MessageInfo

__all__ = ["EXPUNGED", "MARK", "Delivering"]

log = logging.getLogger(__name__)

#: A finished file in ``tmp/`` (Postfix's queue files use the same bit).
MARK = stat.S_IXUSR
#: The prefix of an expunged message's name in ``tmp/`` between its rename out of
#: ``new/`` or ``cur/`` (under the mailbox lock) and its unlink (after it):
#: :meth:`~maillab.store.mailbox.Mailbox.remove`. The next open deletes any a crash left.
EXPUNGED = "expunged."
# The lab's file names (Mailbox._write_tmp): seconds, microseconds, pid, count, host,
# size; other tools' files in tmp/ are never touched.
_OURS = re.compile(r"(\d+)\.M\d+P(\d+)Q\d+\.[^,/]*,S=(\d+),W=\d+\Z")
_counter = itertools.count(1)
_HOSTNAME = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
# This process's files in tmp/ not yet renamed (keys): a folder opened again meanwhile
# (a RENAME) must not take them for leftovers of a crash.
_WRITING: set[str] = set()


class Delivering:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that writes new messages."""

    path: Path
    lock: MailboxLock
    _db: sqlite3.Connection
    _parents_flushed: bool
    _tmp_renamed: int
    _tmp_synced: int
    _accepted: AcceptLog
    _accepted_at_open: list[str]

    def _in_sync(self) -> bool: ...
    def _begin_change(self) -> bool: ...
    def _own_change_done(self, was_in_sync: bool) -> None: ...
    def _insert(self, key: str, subdir: str, filename: str, size: int, crlf: int,
                internaldate: float, flags: frozenset[str]) -> MessageInfo: ...
    def flush(self, subdirs: Iterable[str] = ("new", "cur")) -> None: ...

    def _write_tmp(self, data: bytes, internaldate: float | None, *, crlf_only: bool, sync: bool,
                   mark: int = 0) -> tuple[str, int, int]:
        """``data`` written as a new file in ``tmp/`` (its name: the key), fsync'ed with
        ``sync``, its mode or'ed with ``mark`` before that (:meth:`accept`).
        Returns the key, the CRLF size and the open file descriptor (the caller's)."""
        now = time.time()
        key = f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOSTNAME}"
        crlf = len(data) if crlf_only else crlf_size(data)
        key += f",S={len(data)},W={crlf}"
        # Plain strings and file descriptors: an SMTP server delivering thousands of
        # small messages a second feels every pathlib join and buffered-file layer.
        tmp = f"{os.fspath(self.path)}/tmp/{key}"
        _WRITING.add(key)  # until _link renamed it, or it is gone
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with memoryview(data) as view:
                written = 0
                while written < len(view):
                    written += os.write(fd, view[written:])
            if internaldate is not None:  # before the fsync, which then keeps it too
                os.utime(fd, (internaldate, internaldate))
            if mark:  # complete: only now may a restart take it for a message
                os.fchmod(fd, os.fstat(fd).st_mode | mark)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            _WRITING.discard(key)
            raise
        return key, crlf, fd

    def _link(self, key: str, size: int, crlf: int, internaldate: float,
              flags: frozenset[str]) -> MessageInfo:
        """``tmp/<key>`` renamed into ``new/`` (``cur/`` with flags) and indexed."""
        base = os.fspath(self.path)
        subdir = "cur" if flags else "new"
        filename = f"{key}:2,{info_letters(flags)}" if flags else key
        with self.lock:
            was_in_sync = self._begin_change()
            try:
                os.rename(f"{base}/tmp/{key}", f"{base}/{subdir}/{filename}")
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{base}/tmp/{key}")
                raise
            finally:
                _WRITING.discard(key)
            self._db.execute("BEGIN")
            info = self._insert(key, subdir, filename, size, crlf, internaldate, flags)
            self._db.execute("COMMIT")
            self._own_change_done(was_in_sync)
        return info

    @functools.cached_property
    def _tmp_name_lasts(self) -> bool:
        """Whether a new file's fsync also makes its name in ``tmp/`` durable here."""
        return names_last_with_file_fsync(f"{os.fspath(self.path)}/tmp")

    def accept(self, data: bytes, *, crlf_only: bool = False,
               then: Callable[[MessageInfo], None] | None = None) -> MessageInfo:
        """Deliver ``data`` into ``new/`` once it is on the disk: its record written to
        the folder's accept log (:mod:`.acceptlog`), or, when it does not fit there,
        its file whole, marked and fsync'ed in ``tmp/`` (the module's steps 1-2); the
        caller may acknowledge when this returns. The round that makes the file, its
        rename and the index row last follows on the group's thread, then
        ``then(info)`` (listeners: IMAP IDLE)."""
        key, crlf, fd = self._write_tmp(data, None, crlf_only=crlf_only, sync=False)
        base = os.fspath(self.path)
        record = None
        try:
            record = self._accepted.append(key, data, fd)
            if record is None:  # the older path: the file is its own durability point
                os.fchmod(fd, os.fstat(fd).st_mode | MARK)
                os.fsync(fd)
                # Its name in tmp/ must last too. POSIX promises it only with an fsync
                # of tmp/ (tests/test_power_cut.py lost the 250's message without it);
                # ext4, XFS and btrfs commit it with the file's fsync (as Postfix
                # assumes), where the directory's fsync would cost a second cache flush
                # per message (one connection: 271 -> 174 msg/s). Its own fsync, not a
                # group round: a round would also carry the previous deliveries' tmp/,
                # new/ and -wal (their sync_later), which the 250 must not wait for
                # (271 -> 84 msg/s).
                if self._parents_flushed and not self._tmp_name_lasts:
                    fsync_now((f"{base}/tmp",))
            if not self._parents_flushed:  # a folder's first delivery: tmp/ and its parents too
                self.flush(("tmp",))
            with self.lock:
                info = self._link(key, len(data), crlf, time.time(), frozenset())
                if record is None:
                    self._tmp_renamed += 1
                renamed = self._tmp_renamed
        except BaseException:  # not acknowledged: not left for a restart to deliver
            if record is not None:
                self._accepted.cancel(record)
            os.close(fd)
            _unlink(f"{base}/tmp/{key}")
            _WRITING.discard(key)
            raise
        if record is not None:
            self._accepted.linked(record)

        def settled(failure: OSError | None) -> None:
            if failure is not None:  # the mark (or the record) stays: a restart finds the message
                log.warning("fsync after the delivery of %s failed: %s", key, failure)
                if record is None:
                    os.close(fd)
                return
            if record is not None:
                try:
                    self._accepted.synced(record)
                except OSError as exc:  # the record stays; the next settle or open retries
                    log.warning("fsync of the delivered %s failed: %s", key, exc)
                    return
            else:
                try:
                    with self.lock:
                        self._tmp_synced = max(self._tmp_synced, renamed)
                    os.fchmod(fd, os.fstat(fd).st_mode & ~MARK)
                finally:
                    os.close(fd)
            if then is not None:
                then(info)

        paths = (f"{base}/new", f"{base}/maillab-index.sqlite-wal")
        GROUP.sync_later(paths if record is not None else (f"{base}/tmp", *paths), settled)
        return info

    def _recover_tmp(self) -> list[str]:
        """At open: the lab's marked, whole files in ``tmp/`` renamed into ``new/`` (once:
        not when ``new/`` or ``cur/`` has the key already), its unmarked ones deleted.
        Returns the keys renamed (the caller indexes them, flushes, then unmarks)."""
        base = os.fspath(self.path)
        whole: list[str] = []
        with os.scandir(f"{base}/tmp") as entries:
            for entry in entries:
                if entry.name.startswith(EXPUNGED):  # an expunge's file a crash left (Mailbox.remove)
                    _unlink(f"{base}/tmp/{entry.name}")
                    continue
                m = _OURS.match(entry.name)
                if m is None or entry.name in _WRITING:
                    continue  # not the lab's, or this process's own delivery under way
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode) and st.st_mode & MARK and st.st_size == int(m.group(3)):
                    whole.append(entry.name)
                else:
                    _unlink(f"{base}/tmp/{entry.name}")  # never acknowledged
        self._accepted = AcceptLog(f"{base}/{LOG_FILE}")
        records = self._accepted.recover()
        if not whole and not records:
            return []
        there = {name.partition(":")[0]: f"{base}/{sub}/{name}"
                 for sub in ("new", "cur") for name in os.listdir(f"{base}/{sub}")}
        recovered = []
        for key in sorted(whole):
            if key in there:
                _unlink(f"{base}/tmp/{key}")
            else:
                os.rename(f"{base}/tmp/{key}", f"{base}/new/{key}")
                there[key] = f"{base}/new/{key}"
                recovered.append(key)
        rewritten = 0
        for rec in records:  # acknowledged by their accept log records, not yet retired
            if not _OURS.match(rec.key) or "/" in rec.key:
                continue
            path = there.get(rec.key)
            if path is not None and _same(path, rec.data):
                continue
            tmp = f"{base}/tmp/{rec.key}"
            with open(tmp, "wb") as f:
                f.write(rec.data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path or f"{base}/new/{rec.key}")
            if path is None:
                recovered.append(rec.key)
            else:
                rewritten += 1
        if recovered or rewritten:
            log.info("%s: %d acknowledged deliveries found in tmp/ or the accept log and delivered,"
                     " %d files rewritten from the accept log", base, len(recovered), rewritten)
        if records:  # on the disk (fsync'ed, flushed by the caller) before the watermark passes them
            self._accepted_at_open = [there.get(r.key, f"{base}/new/{r.key}") for r in records]
        return recovered

    def _unmark(self, keys: list[str]) -> None:
        """The recovered files' mark taken off, once their renames are on the disk."""
        base = os.fspath(self.path)
        for key in keys:
            try:
                os.chmod(f"{base}/new/{key}", os.stat(f"{base}/new/{key}").st_mode & ~MARK)
            except FileNotFoundError:
                pass  # read and renamed, or deleted, already


def _same(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except FileNotFoundError:
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
