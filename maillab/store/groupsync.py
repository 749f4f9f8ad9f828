"""fsyncs of directories and index logs, shared by concurrent writers (group commit).

A message's file is fsync'ed before its rename into ``new/``; the rename itself is a
change of the directory, and survives a power cut only once the directory is
fsync'ed too (Dovecot's Maildir save does the same: ``fdatasync()`` of ``new/`` and
``cur/`` after its renames). The index's log (sqlite's ``-wal`` file, written with
``synchronous=NORMAL``, so not synced at each commit) must reach the disk at the same
moment, or a restart after a power cut could hand an acknowledged message's UID to
another message (RFC 3501 2.3.1.1).

On a journalling file system each of these fsyncs waits for a journal commit, and one
commit carries every change made before it. So writers do not fsync alone: each hands
its paths to :meth:`GroupSync.sync` and waits; one waiter at a time (the leader)
fsyncs everything asked for since the previous round, and every writer whose paths
were in that round returns when it ends. Eight SMTP sessions delivering at once share
one round, as a database's transactions share one log flush.

An SMTP delivery does not wait for its round (:meth:`GroupSync.sync_later`): its 250
waits for one durability point, its file fsync'ed in ``tmp/`` with a completeness
mark (:mod:`maillab.store.delivering`), as Postfix's 250 waits for its queue file. The
round that makes its rename and index row last runs afterwards on the group's own
thread, shared with whatever else was asked for meanwhile.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["GroupSync", "GROUP", "fsync_now", "mkdir_durable", "names_last_with_file_fsync", "replace_file"]

log = logging.getLogger(__name__)

#: How long the round after SMTP deliveries (sync_later) waits for more to share it (s).
LATER_GATHER = 0.01
#: Failed rounds remembered for their waiters (a waiter is told within a round or two).
_FAILURES_KEPT = 64


class GroupSync:
    """Rounds of fsyncs; :meth:`sync` returns once a round that started after the
    call has fsync'ed the caller's paths."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: set[str] = set()  # asked for, not yet in a round
        self._next = 1  # the round that takes what is asked for now
        self._done = 0  # the last round that ended
        self._running = False
        self._failures: dict[int, OSError] = {}
        #: rounds run and paths asked for (a test or a benchmark reads them)
        self.rounds = 0
        self.requests = 0
        # sync_later: callbacks waiting for a round, and the thread that runs it for them
        self._later: list[Callable[[OSError | None], None]] = []
        self._later_busy = False
        self._later_thread: threading.Thread | None = None

    def sync(self, paths: Iterable[str]) -> None:
        """Until every path in ``paths`` (directories and files) is fsync'ed, in a
        round shared with whoever else asked meanwhile. A path that no longer exists
        (a folder deleted meanwhile) has nothing left to keep. Raises OSError when
        the round's fsync failed: the caller must not acknowledge."""
        with self._cond:
            self._pending.update(paths)
            self.requests += 1
            mine = self._next
            while self._done < mine:
                if self._running:
                    self._cond.wait()
                    continue
                # Lead a round: whatever was asked for up to now, ours included.
                self._running = True
                todo, self._pending = self._pending, set()
                round_ = self._next
                self._next += 1
                failure: OSError | None = None
                self._cond.release()
                try:
                    failure = _fsync_all(todo)
                except BaseException:  # the others of this round must not take it as done
                    failure = OSError(errno.EIO, "fsync round interrupted")
                    raise
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = round_
                    self.rounds += 1
                    if failure is not None:
                        self._failures[round_] = failure
                        for old in [r for r in self._failures if r <= round_ - _FAILURES_KEPT]:
                            del self._failures[old]
                    self._cond.notify_all()
            failure = self._failures.get(mine)
        if failure is not None:
            raise OSError(failure.errno, failure.strerror, failure.filename)


    def sync_later(self, paths: Iterable[str], then: Callable[[OSError | None], None]) -> None:
        """:meth:`sync` without waiting: ``then(None)`` once a round that started after
        this call has fsync'ed ``paths`` (``then(error)`` when it failed), called on the
        group's own thread. Requests made while a round runs share the next one."""
        with self._cond:
            self._pending.update(paths)
            self._later.append(then)
            if self._later_thread is None:
                self._later_thread = threading.Thread(target=self._run_later, name="maillab-groupsync",
                                                      daemon=True)
                self._later_thread.start()
            self._cond.notify_all()

    def settle(self, timeout: float | None = None) -> bool:
        """Until every :meth:`sync_later` so far has had its round and its callback
        (a store closing). False when ``timeout`` ran out first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._later and not self._later_busy, timeout)

    def _run_later(self) -> None:
        while True:
            with self._cond:
                while not self._later:
                    self._cond.wait()
            # One connection acknowledges a message every millisecond or two: the
            # deliveries of the next few share this round instead of each having its
            # own three fsyncs beside the next message's (nobody waits for it).
            time.sleep(LATER_GATHER)
            with self._cond:
                batch, self._later = self._later, []
                self._later_busy = True
            failure: OSError | None = None
            try:
                self.sync(())  # a round that starts now: it takes every path of the batch
            except OSError as exc:
                failure = exc
            for then in batch:
                try:
                    then(failure)
                except Exception:  # one caller's bookkeeping must not stop the others'
                    log.exception("a callback after a group fsync round failed")
            with self._cond:
                self._later_busy = False
                self._cond.notify_all()


def replace_file(path: Path, data: bytes, *, sync: bool = True) -> None:
    """``path`` replaced as a whole: ``data`` written to ``<name>.tmp`` beside it and
    renamed over it, so a reader sees the old file or the new one, never half of
    it. With ``sync`` the data is on the disk before the rename can name it; the
    rename itself lasts once the caller's round syncs the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_now(paths: Iterable[str]) -> None:
    """fsync ``paths`` now, in this thread, outside any round (a caller that must not
    wait for what others asked a round for). OSError when one failed."""
    failure = _fsync_all(set(paths))
    if failure is not None:
        raise failure


#: File systems whose fsync of a new file also makes its name durable (statfs f_type):
#: ext2/3/4 (one journal commit carries the directory change with the inode; without a
#: journal, ext4_sync_parent), XFS (the log force carries it), btrfs (the tree log
#: records the new inode's parent entries). Postfix's queue relies on the same.
_NAMES_WITH_FILE_FSYNC = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs"}


def names_last_with_file_fsync(path: str) -> bool:
    """Whether, on the file system of directory ``path``, a new file's fsync also
    makes its name in ``path`` durable. False when unknown (POSIX promises it only
    with an fsync of the directory): other file systems, FUSE, another OS."""
    if not sys.platform.startswith("linux"):
        return False
    buf = ctypes.create_string_buffer(256)  # struct statfs (120 bytes on x86-64); f_type first
    if _libc().statfs(os.fsencode(path), buf) != 0:
        return False
    return struct.unpack_from("l", buf)[0] & 0xFFFFFFFF in _NAMES_WITH_FILE_FSYNC


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mkdir_durable(path: Path) -> None:
    """``path`` made, with any missing parents, each new directory named for good: a
    mkdir is a change of the parent directory, lost in a power cut until the parent
    is fsync'ed (the store's root and the relay spool, made at a lab's first start,
    would otherwise take every message in them along: tests/test_power_cut.py).
    An existing ``path`` costs one stat."""
    path = Path(path)
    if path.is_dir():
        return
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    GROUP.sync([os.fspath(m.parent) for m in missing])


def _fsync_all(paths: set[str]) -> OSError | None:
    """fsync each path: files first (their data, and the journal commit that also
    carries the renames), then directories. The first failure, or None."""
    failure = None
    for path in sorted(paths, key=lambda p: (os.path.isdir(p), p)):
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            continue
        except OSError as exc:
            failure = failure or exc
            continue
        try:
            os.fsync(fd)
        except OSError as exc:
            # EINVAL: a file system that cannot fsync a directory; nothing more to do there.
            if exc.errno != errno.EINVAL:
                failure = failure or OSError(exc.errno, exc.strerror, path)
        finally:
            os.close(fd)
    return failure


#: The one instance of the process: every mailbox and the relay spool share its rounds.
GROUP = GroupSync()
