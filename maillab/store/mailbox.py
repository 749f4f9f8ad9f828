"""One mailbox: a real Maildir plus an index of UIDs, flags and cached summaries.

The Maildir (``new/``, ``cur/``, ``tmp/``) is the truth for *which* messages
exist, so real tools (mutt, Dovecot, ``ls``) can read and even change it. The
index beside it (``maillab-index.sqlite``) adds what IMAP needs and a Maildir
cannot hold: a UIDVALIDITY, a UID per message that is never reused, keywords, and
cached parse results (envelope, body structure) so FETCH never re-parses.

Delivery is atomic: the message is written in ``tmp/`` and renamed into
``new/``; a crash mid-write leaves only a file in ``tmp/`` that no reader lists.

Standard flags are mirrored in the file name (``:2,FRS``, the Maildir "info"),
so flags set over IMAP show up in mutt and the other way round.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

INDEX_FILE = "maillab-index.sqlite"

#: IMAP system flags <-> Maildir info letters (https://cr.yp.to/proto/maildir.html).
FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "$Forwarded": "P",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_FLAGS = {v: k for k, v in FLAG_LETTERS.items()}

#: How many recent changes a mailbox remembers for its readers (IMAP sessions
#: catching up). A reader further behind than this rescans the whole mailbox once.
CHANGE_LOG_SIZE = 20_000

_counter = itertools.count(1)
_HOSTNAME = socket.gethostname().replace("/", "\\057").replace(":", "\\072")


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


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Build many long-lived objects without the cyclic garbage collector: loading
    100,000 index rows would otherwise set off a full collection every few
    thousand allocations (3.3 s instead of 1.0 s here), and none of them is garbage."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def crlf_size(data: bytes) -> int:
    """Size of ``data`` once every bare LF is written as CRLF."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """Every line ending as CRLF (files written by other tools often use bare LF)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _sizes_from_key(key: str) -> tuple[int | None, int | None]:
    """The ``,S=<size>`` and ``,W=<CRLF size>`` a Maildir name may carry."""
    size = crlf = None
    for part in key.split(",")[1:]:
        if part.startswith("S=") and part[2:].isdigit():
            size = int(part[2:])
        elif part.startswith("W=") and part[2:].isdigit():
            crlf = int(part[2:])
    return size, crlf


def _info_for(flags: Iterable[str]) -> str:
    return "".join(sorted(FLAG_LETTERS[f] for f in flags if f in FLAG_LETTERS))


def _flags_from_filename(filename: str) -> set[str]:
    if ":2," not in filename:
        return set()
    letters = filename.rsplit(":2,", 1)[1]
    return {LETTER_FLAGS[c] for c in letters if c in LETTER_FLAGS}


class Mailbox:
    """A Maildir folder with its index. One instance per folder per process
    (the :class:`~maillab.store.Store` hands them out), guarded by one lock."""

    def __init__(self, path: Path, name: str, *, uidvalidity_source: Any = None) -> None:
        self.path = Path(path)
        self.name = name
        self.lock = threading.RLock()
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path / INDEX_FILE), check_same_thread=False,
                                   isolation_level=None)
        # WAL with synchronous=NORMAL: commits are atomic and survive a process crash
        # without an fsync per message.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
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
            """
        )
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "uidvalidity" not in meta:
            uv = uidvalidity_source() if uidvalidity_source else int(time.time())
            self._set_meta("uidvalidity", uv)
            self._set_meta("uidnext", 1)
            self._set_meta("highestmodseq", 1)
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        self.uidvalidity: int = int(meta["uidvalidity"])
        self.uidnext: int = int(meta["uidnext"])
        self._messages: dict[int, MessageInfo] = {}
        self._by_key: dict[str, int] = {}
        # One shared frozenset per distinct flag list: a large mailbox has a handful.
        flagsets: dict[str, frozenset[str]] = {}
        with _collector_paused():
            for uid, key, subdir, filename, size, crlf, date, flags in self._db.execute(
                "SELECT uid, key, subdir, filename, size, crlf_size, internaldate, flags FROM messages"
            ):
                fs = flagsets.get(flags)
                if fs is None:
                    fs = flagsets[flags] = frozenset(f for f in flags.split(" ") if f)
                self._messages[uid] = MessageInfo(uid, key, subdir, filename, size, crlf, date, fs)
                self._by_key[key] = uid
        self._cache: dict[int, dict[str, Any]] = {}
        # The change log: every insert, flag/file change and removal gets the next
        # number, so a reader that remembers the number it last saw learns what changed
        # since (IMAP untagged updates) without looking at every message.
        self.changes = 0
        self._log: deque[tuple[int, str, int]] = deque(maxlen=CHANGE_LOG_SIZE)
        self._dir_stamp: tuple[int, int] | None = None
        # The directory times when this index last matched them (written at close):
        # unchanged means nothing was added, renamed or removed since, so a restart
        # skips the scan of every file name.
        if meta.get("dir-stamp") == "{} {}".format(*self._stamp()):
            self._dir_stamp = self._stamp()
        self.sync()

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

    def _stamp(self) -> tuple[int, int]:
        return (os.stat(self.path / "new").st_mtime_ns, os.stat(self.path / "cur").st_mtime_ns)

    def _in_sync(self) -> bool:
        return self._dir_stamp == self._stamp()

    def _own_change_done(self, was_in_sync: bool) -> None:
        # Our own rename/unlink changes the directory times; if nothing else had
        # changed before it, the index is still complete and needs no rescan.
        self._dir_stamp = self._stamp() if was_in_sync else None

    def sync(self) -> bool:
        """Reconcile the index with the directories: files added, renamed or
        removed by other tools. Returns True when anything changed."""
        with self.lock:
            stamp = self._stamp()
            if stamp == self._dir_stamp:
                return False
            on_disk: dict[str, tuple[str, str]] = {}
            entries: dict[str, os.DirEntry[str]] = {}
            for sub in ("new", "cur"):
                for entry in os.scandir(self.path / sub):
                    if entry.name.startswith("."):
                        continue
                    key = entry.name.split(":", 1)[0]
                    on_disk[key] = (sub, entry.name)
                    entries[key] = entry
            changed = False
            self._db.execute("BEGIN")
            try:
                for key, uid in list(self._by_key.items()):
                    if key not in on_disk:
                        self._forget(uid)
                        changed = True
                        continue
                    sub, filename = on_disk[key]
                    info = self._messages[uid]
                    if (sub, filename) != (info.subdir, info.filename):
                        # renamed by another tool: its flags are in the new name
                        keywords = {f for f in info.flags if f not in FLAG_LETTERS}
                        flags = frozenset(_flags_from_filename(filename) | keywords)
                        self._replace(replace(info, subdir=sub, filename=filename, flags=flags))
                        changed = True
                new_keys = [k for k in on_disk if k not in self._by_key]
                if new_keys:
                    changed = True
                    with _collector_paused():
                        self._index_new(new_keys, on_disk, entries)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._dir_stamp = self._stamp()
            return changed

    def _index_new(self, keys: list[str], on_disk: dict[str, tuple[str, str]],
                   entries: dict[str, os.DirEntry[str]]) -> None:
        """Give UIDs to files found on disk, in arrival order (the file's mtime;
        Maildir names start with the delivery time). A file is read only when its
        name lacks the sizes (``,S=`` and ``,W=``, as Dovecot and we write them)."""
        stats: dict[str, os.stat_result] = {}
        for key in keys:
            try:
                stats[key] = entries[key].stat()
            except FileNotFoundError:
                continue  # removed while we looked: the next sync forgets it
        ordered = sorted(stats, key=lambda k: (stats[k].st_mtime, k))
        rows = []
        for key in ordered:
            sub, filename = on_disk[key]
            size, crlf = _sizes_from_key(key)
            if size != stats[key].st_size or crlf is None:
                try:
                    fd = os.open(entries[key].path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    data = os.read(fd, stats[key].st_size + 1)
                finally:
                    os.close(fd)
                size, crlf = len(data), crlf_size(data)
            uid = self.uidnext
            self.uidnext += 1
            flags = frozenset(_flags_from_filename(filename))
            info = MessageInfo(uid, key, sub, filename, size, crlf, stats[key].st_mtime, flags)
            self._messages[uid] = info
            self._by_key[key] = uid
            self._logged("new", uid)
            rows.append((uid, key, sub, filename, size, crlf, info.internaldate, " ".join(sorted(flags))))
        self._db.executemany(
            "INSERT INTO messages (uid, key, subdir, filename, size, crlf_size, internaldate, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self._set_meta("uidnext", self.uidnext)

    def _logged(self, kind: str, uid: int) -> None:
        self.changes += 1
        self._log.append((self.changes, kind, uid))

    def changes_since(self, seen: int) -> list[tuple[str, int]] | None:
        """What changed after change number ``seen``: ("new" | "flags" | "gone", uid)
        in order, after picking up outside changes; None when the log no longer
        reaches back that far (the caller rescans). Cost: the changes, not the mailbox."""
        with self.lock:
            self.sync()
            behind = self.changes - seen
            if behind <= 0:
                return []
            if behind > len(self._log):
                return None
            return [(kind, uid) for _, kind, uid in
                    itertools.islice(self._log, len(self._log) - behind, None)]

    def _insert(self, key: str, subdir: str, filename: str, size: int, crlf: int,
                internaldate: float, flags: frozenset[str]) -> MessageInfo:
        uid = self.uidnext
        self.uidnext += 1
        info = MessageInfo(uid, key, subdir, filename, size, crlf, internaldate, flags)
        self._db.execute(
            "INSERT INTO messages (uid, key, subdir, filename, size, crlf_size, internaldate, flags)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, key, subdir, filename, size, crlf, internaldate, " ".join(sorted(flags))),
        )
        self._set_meta("uidnext", self.uidnext)
        self._messages[uid] = info
        self._by_key[key] = uid
        self._logged("new", uid)
        return info

    def _replace(self, info: MessageInfo) -> None:
        self._db.execute(
            "UPDATE messages SET subdir = ?, filename = ?, flags = ? WHERE uid = ?",
            (info.subdir, info.filename, " ".join(sorted(info.flags)), info.uid),
        )
        self._messages[info.uid] = info
        self._logged("flags", info.uid)

    def _forget(self, uid: int) -> None:
        self._cache.pop(uid, None)
        info = self._messages.pop(uid)
        self._by_key.pop(info.key, None)
        self._db.execute("DELETE FROM messages WHERE uid = ?", (uid,))
        self._logged("gone", uid)

    # -- reading -----------------------------------------------------------------
    def messages(self) -> list[MessageInfo]:
        """All messages in UID order (after picking up outside changes)."""
        with self.lock:
            self.sync()
            return [self._messages[u] for u in sorted(self._messages)]

    def get(self, uid: int) -> MessageInfo | None:
        with self.lock:
            return self._messages.get(uid)

    def __len__(self) -> int:
        with self.lock:
            return len(self._messages)

    def file_path(self, uid: int) -> Path:
        info = self._messages[uid]
        return self.path / info.subdir / info.filename

    def read(self, uid: int) -> bytes:
        """The message exactly as stored."""
        with self.lock:
            path = self.file_path(uid)
        return path.read_bytes()

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
            self._db.execute("UPDATE messages SET cache = ? WHERE uid = ?", (json.dumps(cache), uid))

    # -- writing -----------------------------------------------------------------
    def add(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None, *,
            crlf_only: bool = False, sync: bool = False) -> MessageInfo:
        """Deliver ``data`` atomically (tmp -> new, or cur when it already has flags).

        ``crlf_only``: the caller has checked that every line ends in CRLF (SMTP
        refuses anything else), so the CRLF size is the size, without a look at
        every octet. ``sync``: the file's data reaches the disk (fsync) before its
        name appears in new/, as the Maildir spec asks of a delivery agent, so that
        an SMTP 250 survives a power cut, not only a crash of the process.
        """
        flags = frozenset(flags)
        now = time.time()
        key = f"{int(now)}.M{int((now % 1) * 1e6)}P{os.getpid()}Q{next(_counter)}.{_HOSTNAME}"
        crlf = len(data) if crlf_only else crlf_size(data)
        key += f",S={len(data)},W={crlf}"
        tmp = self.path / "tmp" / key
        with open(tmp, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
        if internaldate is not None:
            os.utime(tmp, (internaldate, internaldate))
        subdir = "cur" if flags else "new"
        filename = f"{key}:2,{_info_for(flags)}" if flags else key
        with self.lock:
            was_in_sync = self._in_sync()
            try:
                os.rename(tmp, self.path / subdir / filename)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            self._db.execute("BEGIN")
            info = self._insert(key, subdir, filename, len(data), crlf,
                                internaldate if internaldate is not None else now, flags)
            self._db.execute("COMMIT")
            self._own_change_done(was_in_sync)
            return info

    def set_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        """Replace the flags of ``uid``; standard flags go into the file name too."""
        with self.lock:
            info = self._messages[uid]
            flags = frozenset(flags)
            if flags == info.flags:
                return info
            subdir, filename = info.subdir, info.filename
            new_info_letters = _info_for(flags)
            if _info_for(info.flags) != new_info_letters or subdir == "new":
                filename = f"{info.key}:2,{new_info_letters}"
                # Moving new/ -> cur/ is what "no longer new" means in Maildir.
                was_in_sync = self._in_sync()
                os.rename(self.path / info.subdir / info.filename, self.path / "cur" / filename)
                subdir = "cur"
                self._own_change_done(was_in_sync)
            info = replace(info, subdir=subdir, filename=filename, flags=flags)
            self._replace(info)
            return info

    def set_flags_many(self, changes: dict[int, frozenset[str]]) -> dict[int, MessageInfo]:
        """:meth:`set_flags` for many messages in one index transaction (IMAP STORE 1:*).

        UIDs that no longer exist (or whose file another tool removed) are left
        out of the result. Renames go through open directory handles and the
        index rows are written with one statement: STORE on 2,000 messages is
        2,000 renames and little else.
        """
        out: dict[int, MessageInfo] = {}
        rows: list[tuple[str, str, str, int]] = []
        with self.lock:
            was_in_sync = self._in_sync()
            dirs = {sub: os.open(self.path / sub, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                    for sub in ("new", "cur")}
            try:
                for uid, wanted in changes.items():
                    info = self._messages.get(uid)
                    if info is None:
                        continue
                    flags = frozenset(wanted)
                    if flags == info.flags:
                        out[uid] = info
                        continue
                    subdir, filename = info.subdir, info.filename
                    letters = _info_for(flags)
                    if subdir == "new" or _info_for(info.flags) != letters:
                        filename = f"{info.key}:2,{letters}"
                        try:
                            os.rename(info.filename, filename,
                                      src_dir_fd=dirs[info.subdir], dst_dir_fd=dirs["cur"])
                        except FileNotFoundError:
                            was_in_sync = False  # changed behind our back: rescan next time
                            continue
                        subdir = "cur"
                    info = MessageInfo(uid, info.key, subdir, filename, info.size, info.crlf_size,
                                       info.internaldate, flags)
                    self._messages[uid] = info
                    self._logged("flags", uid)
                    rows.append((subdir, filename, " ".join(sorted(flags)), uid))
                    out[uid] = info
            finally:
                for fd in dirs.values():
                    os.close(fd)
                # whatever was renamed is written to the index, even after an error
                if rows:
                    self._db.execute("BEGIN")
                    try:
                        self._db.executemany(
                            "UPDATE messages SET subdir = ?, filename = ?, flags = ? WHERE uid = ?", rows)
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.execute("ROLLBACK")
                        raise
                self._own_change_done(was_in_sync)
        return out

    def add_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        with self.lock:
            return self.set_flags(uid, self._messages[uid].flags | frozenset(flags))

    def remove_flags(self, uid: int, flags: Iterable[str]) -> MessageInfo:
        with self.lock:
            return self.set_flags(uid, self._messages[uid].flags - frozenset(flags))

    def remove(self, uids: Iterable[int]) -> list[int]:
        """Delete messages for good (POP3 UPDATE, IMAP EXPUNGE). Returns the UIDs removed."""
        removed = []
        with self.lock:
            was_in_sync = self._in_sync()
            self._db.execute("BEGIN")
            try:
                for uid in sorted(set(uids)):
                    if uid not in self._messages:
                        continue
                    try:
                        os.unlink(self.file_path(uid))
                    except FileNotFoundError:
                        pass
                    self._forget(uid)
                    removed.append(uid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._own_change_done(was_in_sync)
        return removed

    def close(self) -> None:
        with self.lock:
            try:
                if self._in_sync():
                    self._set_meta("dir-stamp", "{} {}".format(*self._stamp()))
                else:
                    self._db.execute("DELETE FROM meta WHERE key = 'dir-stamp'")
            except (OSError, sqlite3.Error):
                pass  # the folder was deleted or renamed: nothing to remember
            self._db.close()
