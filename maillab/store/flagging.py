"""Changing messages' flags: a rename for the standard flags, an index row for all.

The standard flags live in the file name (the Maildir info, ``:2,FS``: what mutt and
Dovecot read); keywords only in the index (``maillab-index.sqlite``). A flag change is
therefore a rename (when the letters change, or the file leaves ``new/``) and an index
row, written in that order under the mailbox lock, a batch at a time: a STORE 1:* on
100,000 messages lets other sessions in between batches.

The scan after an unclean stop takes the standard flags from the name and the keywords
from the index (:mod:`maillab.store.dirsync`), so a change of only standard flags (the
rename decides) or only keywords (one index commit) is all or nothing per message after
a crash. One that changes both is two writes: a ``kill -9`` between them, or a power cut
inside the round that makes both durable, can leave the new standard flags with the old
keywords, or the reverse. That STORE was never acknowledged, and the state is one that
acknowledged commands could have made (a STORE of the standard flags alone): see the
crash consistency section of ``docs/security-tests.md`` for why it is not made one write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .filenames import info_letters
from .locking import MailboxLock
from .table import CUR, NEW, SUBDIRS, MessageTable

if TYPE_CHECKING:
    from .mailbox import MessageInfo

__all__ = ["BATCH", "Flagging"]

#: Messages changed (renamed, removed) per hold of the mailbox lock: a STORE or
#: EXPUNGE of 100,000 messages lets other sessions in between batches.
BATCH = 512


class Flagging:
    """The part of :class:`~maillab.store.mailbox.Mailbox` that changes flags."""

    path: Path
    lock: MailboxLock
    table: MessageTable
    _db: sqlite3.Connection
    _dir_stamp: tuple[int, int] | None

    def _rows_written(self) -> None: ...
    def _rows_ready(self) -> None: ...
    def _in_sync(self) -> bool: ...
    def _begin_change(self) -> bool: ...
    def _own_change_done(self, was_in_sync: bool) -> None: ...
    def _logged(self, kind: int, uid: int) -> None: ...
    def sync(self) -> bool: ...
    def flush(self, subdirs: Iterable[str] = ("new", "cur")) -> None: ...
    def get(self, uid: int) -> MessageInfo | None: ...
    def flags(self, uid: int) -> frozenset[str] | None: ...

    def set_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        """Replace the flags of ``uid``; standard flags go into the file name too."""
        with self.lock:
            if self.table.slot(uid) is None:
                raise KeyError(uid)
            self.set_flags_many({uid: frozenset(flags)})
            info = self.get(uid)
            if info is None:
                raise KeyError(uid)
            return info

    def set_flags_many(self, changes: dict[int, frozenset[str]]) -> dict[int, MessageInfo]:
        """:meth:`set_flags` for many messages (IMAP STORE 1:*), a batch per index
        transaction. UIDs that no longer exist (or whose file another tool removed)
        are left out of the result."""
        done, _ = self.change_flags(changes, lambda old, wanted: wanted)
        return {uid: info for uid in done if (info := self.get(uid)) is not None}

    def change_flags(self, uids: Iterable[int] | dict[int, frozenset[str]],
                     how: Any, arg: Any = None, *, sync: bool = False,
                     ) -> tuple[dict[int, frozenset[str]], list[int]]:
        """Set each message's flags to ``how(old flags, arg)`` (``arg``: the value in
        ``uids`` when it is a dict), a batch of :data:`BATCH` messages per hold of the
        lock and per index transaction, so the new flags are computed from the
        current ones. Returns the flags now of every message still there, and the
        UIDs whose flags changed.

        Renames go through open directory handles and each batch's index rows are
        written with one statement: a STORE is renames and little else. With
        ``sync`` the renames and index rows are on the disk before this returns
        (:meth:`flush`, once for all the batches: a STORE 1:* waits for one round,
        not an fsync per message), so an IMAP STORE OK survives a power cut.
        """
        wanted = uids if isinstance(uids, dict) else None
        order = list(uids)
        out: dict[int, frozenset[str]] = {}
        changed: list[int] = []
        touched: set[str] = set()  # the directories a rename changed
        self._rows_ready()  # rows still in a blob (a copy-in): written a chunk per hold
        for start in range(0, len(order), BATCH):
            rows: list[tuple[str, str, str, int]] = []
            with self.lock:
                self._rows_written()
                was_in_sync = self._begin_change()
                dirs = {sub: os.open(self.path / sub, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                        for sub in ("new", "cur")}
                try:
                    for uid in order[start:start + BATCH]:
                        value = wanted[uid] if wanted is not None else arg
                        try:
                            row = self._flag_one(uid, how, value, dirs, touched, out)
                        except FileNotFoundError:  # renamed or removed by another tool (mutt):
                            # start over from what the directories say, once; a message gone
                            # is left out (its caller answers NO, not OK for a change not made)
                            was_in_sync, self._dir_stamp = False, None
                            self.sync()
                            try:
                                row = self._flag_one(uid, how, value, dirs, touched, out)
                            except FileNotFoundError:
                                continue
                        if row is not None:
                            rows.append(row)
                            changed.append(uid)
                finally:
                    for fd in dirs.values():
                        os.close(fd)
                    # whatever was renamed is written to the index, even after an error
                    if rows:
                        self._db.execute("BEGIN")
                        try:
                            self._db.executemany(
                                "UPDATE messages SET subdir = ?, filename = ?, flags = ?"
                                " WHERE uid = ?", rows)
                            self._db.execute("COMMIT")
                        except BaseException:
                            self._db.execute("ROLLBACK")
                            raise
                    self._own_change_done(was_in_sync)
        if sync and changed:
            self.flush(sorted(touched))  # keywords only: the index log alone
        return out, changed

    def _flag_one(self, uid: int, how: Any, value: Any, dirs: dict[str, int], touched: set[str],
                  out: dict[int, frozenset[str]]) -> tuple[str, str, str, int] | None:
        """:meth:`change_flags` for one message (under the lock): the index row to write,
        or None; FileNotFoundError when its file is not where the table says."""
        t = self.table
        slot = t.slot(uid)
        if slot is None:
            return None
        old = t.flagsets[t.flag_ids[slot]]
        flags = frozenset(how(old, value))
        if flags == old:
            out[uid] = old
            return None
        state, filename = t.state[slot], t.filename(slot)
        letters = info_letters(flags)
        if state == NEW or info_letters(old) != letters:
            new_name = f"{t.key(slot)}:2,{letters}"
            os.rename(filename, new_name, src_dir_fd=dirs[SUBDIRS[state]], dst_dir_fd=dirs["cur"])
            touched.update((SUBDIRS[state], "cur"))
            state, filename = CUR, new_name
        t.move(slot, state, flags, filename)
        self._logged(1, uid)
        out[uid] = flags
        return (SUBDIRS[state], filename, " ".join(sorted(flags)), uid)

    def add_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        with self.lock:
            current = self.flags(uid)
            if current is None:
                raise KeyError(uid)
            return self.set_flags(uid, current | frozenset(flags))

    def remove_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        with self.lock:
            current = self.flags(uid)
            if current is None:
                raise KeyError(uid)
            return self.set_flags(uid, current - frozenset(flags))

