"""The lab's mail store: one Maildir++ tree per user under ``<lab dir>/mail/``.

::

    mail/bob@alpha.test/            INBOX (a Maildir: new/ cur/ tmp/)
    mail/bob@alpha.test/.Sent/      the folder "Sent"
    mail/bob@alpha.test/.Archive.2024/   the folder "Archive/2024"

SMTP delivers into it, POP3 and IMAP read the same files and the same index, so
a message read over POP3 shows as \\Seen in IMAP.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .groupsync import GROUP, replace_file
from .mailbox import Mailbox, MessageInfo, crlf_size, to_crlf
from .names import InvalidName, folder_dirname, is_inbox, name_from_dirname, split_name

__all__ = ["Store", "Mailbox", "MessageInfo", "InvalidName", "MailboxExists", "NoSuchMailbox",
           "SPECIAL_USE", "crlf_size", "to_crlf"]

#: Folders every user gets, with their RFC 6154 SPECIAL-USE attribute.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}


class NoSuchMailbox(LookupError):
    pass


class MailboxExists(FileExistsError):
    pass


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._open: dict[tuple[str, str], Mailbox] = {}
        # Folders being opened (a first open indexes the Maildir: 100,000 files take a
        # while), outside the store's lock so that other folders open meanwhile.
        self._opening: set[tuple[str, str]] = set()
        self._opened = threading.Condition(self._lock)
        self._listeners: list[Callable[[str, str, MessageInfo], None]] = []

    # -- users -------------------------------------------------------------------
    def user_root(self, user: str) -> Path:
        user = user.lower()
        if not user or "/" in user or "\0" in user or user.startswith("."):
            raise InvalidName(f"invalid user name {user!r}")
        return self.root / user

    def ensure_user(self, user: str) -> None:
        """Create the user's INBOX and special-use folders if they do not exist yet.

        Only the Maildir directories are made here; each folder's index is created
        when the folder is first opened, which keeps lab start-up fast.
        """
        for name in ("INBOX", *SPECIAL_USE):
            path = self.folder_path(user, name)
            for sub in ("tmp", "new", "cur"):
                (path / sub).mkdir(parents=True, exist_ok=True)

    def users(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and (p / "cur").is_dir())

    # -- folders -----------------------------------------------------------------
    def folder_path(self, user: str, name: str) -> Path:
        """Where folder ``name`` of ``user`` lives; refuses names that would leave
        the user's directory (checked on the resolved path, separator-aware)."""
        root = self.user_root(user)
        path = root if is_inbox(name) else root / folder_dirname(name)
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root + os.sep):
            raise InvalidName("mailbox name leaves the user's store")
        return path

    def canonical_name(self, name: str) -> str:
        return "/".join(split_name(name))

    def exists(self, user: str, name: str) -> bool:
        return (self.folder_path(user, name) / "cur").is_dir()

    def mailbox(self, user: str, name: str = "INBOX", create: bool = False) -> Mailbox:
        """The one shared :class:`Mailbox` object for ``user``'s folder ``name``."""
        user = user.lower()
        name = self.canonical_name(name)
        key = (user, name)
        with self._lock:
            self._opened.wait_for(lambda: key not in self._opening)
            mb = self._open.get(key)
            if mb is not None:
                return mb
            path = self.folder_path(user, name)
            if not (path / "cur").is_dir() and not create:
                raise NoSuchMailbox(name)
            self._opening.add(key)
        try:
            mb = Mailbox(path, name, uidvalidity_source=lambda: self._next_uidvalidity(user))
        except BaseException:
            with self._lock:
                self._opening.discard(key)
                self._opened.notify_all()
            raise
        with self._lock:
            self._opening.discard(key)
            self._open[key] = mb
            self._opened.notify_all()
        return mb

    def list_mailboxes(self, user: str) -> list[str]:
        root = self.user_root(user)
        names = ["INBOX"] if (root / "cur").is_dir() else []
        if root.is_dir():
            for entry in sorted(os.listdir(root)):
                name = name_from_dirname(entry)
                if name and (root / entry / "cur").is_dir():
                    names.append(name)
        return names

    def create_mailbox(self, user: str, name: str) -> Mailbox:
        with self._lock:
            if self.exists(user, name):
                raise MailboxExists(name)
            return self.mailbox(user, name, create=True)

    def delete_mailbox(self, user: str, name: str) -> None:
        if is_inbox(name):
            raise InvalidName("INBOX cannot be deleted")
        user = user.lower()
        name = self.canonical_name(name)
        with self._lock:
            self._opened.wait_for(lambda: (user, name) not in self._opening)
            path = self.folder_path(user, name)
            if not (path / "cur").is_dir():
                raise NoSuchMailbox(name)
            mb = self._open.pop((user, name), None)
            if mb:
                mb.close()
            shutil.rmtree(path)

    def rename_mailbox(self, user: str, old: str, new: str) -> None:
        """Rename a folder and its children (Maildir++ keeps children as siblings)."""
        user = user.lower()
        old, new = self.canonical_name(old), self.canonical_name(new)
        if is_inbox(old) or is_inbox(new):
            raise InvalidName("renaming INBOX is not supported in the lab")
        with self._lock:
            self._opened.wait_for(lambda: all(u != user for u, _ in self._opening))
            if not self.exists(user, old):
                raise NoSuchMailbox(old)
            if self.exists(user, new):
                raise MailboxExists(new)
            moves = [(n, new + n[len(old):]) for n in self.list_mailboxes(user)
                     if n == old or n.startswith(old + "/")]
            for src, dst in moves:
                mb = self._open.pop((user, src), None)
                if mb:
                    mb.close()
                src_path, dst_path = self.folder_path(user, src), self.folder_path(user, dst)
                os.rename(src_path, dst_path)
                # A renamed mailbox is a new mailbox to IMAP clients: new UIDVALIDITY.
                Mailbox(dst_path, dst).close()
                self._reset_uidvalidity(user, dst_path)

    def _reset_uidvalidity(self, user: str, path: Path) -> None:
        db = sqlite3.connect(str(path / "maillab-index.sqlite"))
        with db:
            db.execute("UPDATE meta SET value = ? WHERE key = 'uidvalidity'",
                       (str(self._next_uidvalidity(user)),))
        db.close()

    def _next_uidvalidity(self, user: str) -> int:
        """A UIDVALIDITY never handed out before for this user, even within one second.

        The last one handed out is on the disk before the new mailbox can use it: a
        power cut that lost it would let the next mailbox of that name get the same
        or a lower value, a change RFC 3501 2.3.1.1 does not allow. So the file is
        replaced as a whole (a temporary file fsync'ed, renamed over it), and the
        directory that names it is fsync'ed in a shared round (:mod:`.groupsync`)."""
        root = self.user_root(user)
        with self._lock:
            f = root / "maillab-uidvalidity"
            root.mkdir(parents=True, exist_ok=True)
            try:
                last = int(f.read_text())
            except (FileNotFoundError, ValueError):
                last = 0
            value = max(int(time.time()), last + 1)
            replace_file(f, str(value).encode())
        GROUP.sync([os.fspath(root)])  # outside the lock: other folders open meanwhile
        return value

    # -- delivery ----------------------------------------------------------------
    def deliver(self, user: str, data: bytes, folder: str = "INBOX",
                flags: tuple[str, ...] = (), *, crlf_only: bool = False, sync: bool = False) -> MessageInfo:
        """Store a message for ``user`` and tell listeners (IMAP IDLE, views).
        ``crlf_only`` and ``sync``: see :meth:`Mailbox.add`."""
        mb = self.mailbox(user, folder, create=True)
        info = mb.add(data, flags, crlf_only=crlf_only, sync=sync)
        self.notify(user, mb.name, info)
        return info

    def notify(self, user: str, folder: str, info: MessageInfo) -> None:
        for cb in list(self._listeners):
            try:
                cb(user.lower(), folder, info)
            except Exception:
                pass

    def subscribe(self, callback: Callable[[str, str, MessageInfo], None]) -> Callable[[], None]:
        """Call ``callback(user, folder, info)`` whenever a message is delivered."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def close(self) -> None:
        with self._lock:
            self._opened.wait_for(lambda: not self._opening)
            for mb in self._open.values():
                mb.close()
            self._open.clear()
