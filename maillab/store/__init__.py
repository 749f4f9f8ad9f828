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
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .groupsync import GROUP, mkdir_durable, replace_file
from .mailbox import Mailbox, MessageInfo, crlf_size, to_crlf
from .moving import begin_move, end_move, finish_moves, undo_move
from .names import InvalidName, folder_dirname, is_inbox, name_from_dirname, split_name

__all__ = ["Store", "Mailbox", "MessageInfo", "InvalidName", "MailboxExists", "NoSuchMailbox",
           "SPECIAL_USE", "crlf_size", "to_crlf"]

#: Folders every user gets, with their RFC 6154 SPECIAL-USE attribute.
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk"}
#: A deleted folder's directory until its files are gone (no leading ".": not a folder).
TRASH_PREFIX = "maillab-deleting-"


class NoSuchMailbox(LookupError):
    pass


class MailboxExists(FileExistsError):
    pass


class Store:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        mkdir_durable(self.root)  # its name in the lab's directory lasts (its users' folders are in it)
        self._lock = threading.RLock()
        self._open: dict[tuple[str, str], Mailbox] = {}
        # Folders being opened (a first open indexes the Maildir: 100,000 files take a
        # while), outside the store's lock so that other folders open meanwhile.
        self._opening: set[tuple[str, str]] = set()
        self._opened = threading.Condition(self._lock)
        self._listeners: list[Callable[[str, str, MessageInfo], None]] = []
        # The UIDVALIDITY files' read-then-replace (with its fsync), apart from the
        # store's lock so that folders being opened do not wait for that fsync.
        self._uidvalidity_lock = threading.Lock()

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
        # An open folder without the lock (one dict read): every SMTP delivery, SELECT
        # and POP3 login asks here. (CREATE, RENAME and DELETE take the lock only
        # around their checks and renames; their fsyncs follow its release.) (One that a DELETE closes right
        # after this is the same race as right after the lock was released.)
        mb = self._open.get(key)
        if mb is not None:
            return mb
        with self._lock:
            self._opened.wait_for(lambda: key not in self._opening)
            mb = self._open.get(key)
            if mb is not None:
                return mb
            path = self.folder_path(user, name)
            if not (path / "cur").is_dir() and not create:
                raise NoSuchMailbox(name)
            self._opening.add(key)
        mb = self._open_marked(key, path)
        # a MOVE out of it that a crash cut short (see moving.py): finished now
        finish_moves(mb, lambda target: self.mailbox(user, target) if self.exists(user, target) else None,
                     sync=True)
        return mb

    def _open_marked(self, key: tuple[str, str], path: Path) -> Mailbox:
        """Open (index) the folder ``key`` at ``path``, which the caller marked as being
        opened under the store's lock: done outside that lock, then unmarked."""
        user, name = key
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

    def create_mailbox(self, user: str, name: str, *, sync: bool = False) -> Mailbox:
        """A new folder. With ``sync`` its directories and index are on the disk, and
        the user's directory that names it, before this returns (CREATE's OK)."""
        key = (user.lower(), self.canonical_name(name))
        with self._lock:
            # (a RENAME to this name may be under way: it marks it as being opened)
            self._opened.wait_for(lambda: key not in self._opening)
            path = self.folder_path(*key)
            if (path / "cur").is_dir():
                raise MailboxExists(name)
            self._opening.add(key)
            stale = self._open.pop(key, None)  # its directory removed by another tool
        if stale is not None:
            stale.close()
        # made and indexed outside the store's lock (its UIDVALIDITY and index reach the
        # disk: fsyncs), as any folder's first open is
        mb = self._open_marked(key, path)
        if sync:
            mb.flush(("tmp", "new", "cur"))  # the first flush: the folder's parents too
        return mb

    def delete_mailbox(self, user: str, name: str, *, sync: bool = False) -> None:
        """Remove a folder and its messages. Its directory is first renamed out of the
        folder names (Dovecot does the same with ``..DOVECOT-TRASH``): one step that a
        crash or a power cut either made or not, never half a folder left to list. With
        ``sync`` that rename is on the disk (the user's directory fsync'ed) before the
        files go and before this returns (DELETE's OK)."""
        if is_inbox(name):
            raise InvalidName("INBOX cannot be deleted")
        user = user.lower()
        name = self.canonical_name(name)
        root = self.user_root(user)
        with self._lock:
            self._opened.wait_for(lambda: (user, name) not in self._opening)
            path = self.folder_path(user, name)
            if not (path / "cur").is_dir():
                raise NoSuchMailbox(name)
            mb = self._open.pop((user, name), None)
            trash = root / f"{TRASH_PREFIX}{time.time_ns()}"
            os.rename(path, trash)
        # Closed after the store's lock (its index written and fsync'ed, now under the
        # trash name: nobody opens it there), so folders being opened meanwhile do not
        # wait for it; a session that still holds the object works in the trash, as
        # one that used it just before the DELETE did.
        if mb is not None:  # (not "if mb": its len() would wait for its lock)
            mb.close()
        if sync:
            GROUP.sync([os.fspath(root)])
        for entry in os.listdir(root):  # this one, and any a crash left behind
            if entry.startswith(TRASH_PREFIX):
                shutil.rmtree(root / entry, ignore_errors=True)

    def rename_mailbox(self, user: str, old: str, new: str, *, sync: bool = False) -> None:
        """Rename a folder and its children (Maildir++ keeps children as siblings).
        Each renamed folder gets a new UIDVALIDITY (a client that knew another folder
        of the new name must not take these UIDs for its). With ``sync`` the renames
        are on the disk (the user's directory fsync'ed) before this returns.

        INBOX is special (RFC 3501 6.3.5): its messages move to a new folder of the
        new name, INBOX stays, empty, and its children stay where they are."""
        user = user.lower()
        old, new = self.canonical_name(old), self.canonical_name(new)
        if is_inbox(new):
            raise MailboxExists(new)
        if is_inbox(old):
            self._empty_inbox_into(user, new, sync)
            return
        root = self.user_root(user)
        with self._lock:
            self._opened.wait_for(lambda: all(u != user for u, _ in self._opening))
            if not self.exists(user, old):
                raise NoSuchMailbox(old)
            if self.exists(user, new):
                raise MailboxExists(new)
            moves = [(n, new + n[len(old):]) for n in self.list_mailboxes(user)
                     if n == old or n.startswith(old + "/")]
            # Every folder involved counts as being opened until the renames are done:
            # nobody opens, creates, deletes or renames one meanwhile (they wait), so the
            # closes and the index writes, with their fsyncs, run after the store's
            # lock, and other users' folders (and this user's others) open meanwhile.
            busy = {(user, n) for pair in moves for n in pair}
            self._opening |= busy
            closing = [mb for mb in (self._open.pop((user, src), None) for src, _ in moves) if mb is not None]
        try:
            for mb in closing:
                mb.close()
            # on the disk before any folder shows under its new name
            first = self._next_uidvalidity(user, len(moves))
            for uidvalidity, (src, dst) in enumerate(moves, first):
                dst_path = self.folder_path(user, dst)
                os.rename(self.folder_path(user, src), dst_path)
                # closed: sqlite checkpoints the log into the index file and fsyncs it
                mb = Mailbox(dst_path, dst, uidvalidity_source=lambda v=uidvalidity: v)
                mb.set_meta("uidvalidity", uidvalidity)
                mb.close()
        finally:
            with self._lock:
                self._opening -= busy
                self._opened.notify_all()
        if sync:
            GROUP.sync([os.fspath(root)])

    def _empty_inbox_into(self, user: str, new: str, sync: bool) -> None:
        """RENAME INBOX: every message copied into a new folder, then expunged from
        INBOX, as MOVE does and with its plan (:mod:`.moving`): a crash or a power cut
        between the two is finished when INBOX is next opened, so each message ends in
        exactly one of them."""
        inbox = self.mailbox(user, "INBOX")
        target = self.create_mailbox(user, new, sync=sync)
        infos = inbox.messages()
        plan = begin_move(inbox, target, [i.uid for i in infos], sync=sync) if infos else None
        moved = []
        try:
            for info in infos:
                try:
                    data = inbox.read(info.uid)
                except (KeyError, FileNotFoundError):
                    continue  # expunged meanwhile
                self.notify(user, target.name, target.add(data, info.flags, info.internaldate,
                                                          sync=sync, flush=False))
                moved.append(info.uid)
            if sync:
                target.flush()
            inbox.remove(moved, sync=sync)
        except Exception:  # failed partway: rolled back now, as a MOVE is (the new folder stays)
            if plan is not None:
                undo_move(inbox, target, plan, sync=sync)
            raise
        if plan is not None:
            end_move(plan)  # after the expunge's round

    def _next_uidvalidity(self, user: str, count: int = 1) -> int:
        """A UIDVALIDITY never handed out before for this user, even within one second
        (the first of ``count`` consecutive ones).

        The last one handed out is on the disk before the new mailbox can use it: a
        power cut that lost it would let the next mailbox of that name get the same
        or a lower value, a change RFC 3501 2.3.1.1 does not allow. So the file is
        replaced as a whole (a temporary file fsync'ed, renamed over it), and the
        directory that names it is fsync'ed in a shared round (:mod:`.groupsync`)."""
        root = self.user_root(user)
        with self._uidvalidity_lock:
            f = root / "maillab-uidvalidity"
            root.mkdir(parents=True, exist_ok=True)
            try:
                last = int(f.read_text())
            except (FileNotFoundError, ValueError):
                last = 0
            value = max(int(time.time()), last + 1)
            replace_file(f, str(value + count - 1).encode())
        GROUP.sync([os.fspath(root)])  # outside the locks: other folders open meanwhile
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

    def accept(self, user: str, data: bytes, folder: str = "INBOX", *, crlf_only: bool = False) -> MessageInfo:
        """An SMTP delivery (:meth:`Mailbox.accept`): in ``new/`` and indexed when this
        returns, after one fsync (the file's, marked complete in ``tmp/``); listeners are
        told after the round that makes the rename and the index row last."""
        mb = self.mailbox(user, folder, create=True)
        return mb.accept(data, crlf_only=crlf_only, then=lambda info: self.notify(user, mb.name, info))

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
        GROUP.settle(timeout=30)  # the rounds of deliveries already acknowledged
        with self._lock:
            self._opened.wait_for(lambda: not self._opening)
            for mb in self._open.values():
                mb.close()
            self._open.clear()
