"""The maildrop a POP3 session works on, and the lock that makes it exclusive.

RFC 1939 section 4: "the POP3 server then acquires an exclusive-access lock on
the maildrop" when a client enters the TRANSACTION state, so two clients cannot
delete the same messages from under each other. A second login gets
``-ERR [IN-USE]`` (RFC 2449 section 8.1.2). The lock lives in this process
(every lab server runs in it) and is released on QUIT, on a dropped connection,
on an error and on the idle timeout: whatever ends the session.

A :class:`Maildrop` is the session's snapshot: message numbers 1..N are fixed at
login, so mail arriving during the session is only seen at the next login
(RFC 1939 section 5: numbers "do not change during the session"). It keeps the
store's list of messages as it is (one entry per message is made only when asked
for), so a login on 100,000 messages costs one listing of the index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ..limits import Limits
from ..store import Mailbox, Store
from ..store.moving import moved_to
from ..users import Users
from .wire import PLANS_SEEN, crlf_only, plan_for

log = logging.getLogger("maillab.pop3")


class InUse(Exception):
    """Another session holds the lock on this maildrop."""


class StoreFailure(Exception):
    """The store could not do what was asked (answered with -ERR [SYS/TEMP])."""


_locks_guard = threading.Lock()
_locked: set[tuple[str, str]] = set()


def _lock_key(mailbox: Mailbox) -> tuple[str, str]:
    return (str(mailbox.path), mailbox.name)


def locked(mailbox: Mailbox) -> bool:
    """Whether a POP3 session currently holds ``mailbox``."""
    with _locks_guard:
        return _lock_key(mailbox) in _locked


@dataclass(frozen=True)
class Entry:
    """One message as this session numbers it."""

    number: int  # 1-based message number of RFC 1939
    uid: int  # its UID in the store
    size: int  # octets as sent (every line end a CRLF): what LIST and STAT count
    unique_id: str  # the UIDL (RFC 1939 section 7): unique and persistent


class Maildrop:
    """A locked, numbered snapshot of one mailbox for one POP3 session."""

    def __init__(self, mailbox: Mailbox, *, sync: bool = False) -> None:
        """``sync``: removals are on the disk before UPDATE's +OK (``Limits.smtp_fsync``)."""
        key = _lock_key(mailbox)
        with _locks_guard:
            if key in _locked:
                raise InUse()
            _locked.add(key)
        self.mailbox = mailbox
        self.sync = sync
        self._released = False
        self._seen_unflushed = False  # \Seen marked since the last flush (UPDATE flushes it)
        self._also_flush: set[Mailbox] = set()  # folders a message RETR read was moved to
        try:
            # message n is _uids[n - 1], _sizes[n - 1]: two arrays, no object per message
            self._uids, self._sizes = mailbox.listing()
            self.uidvalidity = mailbox.uidvalidity
        except Exception as exc:
            self.release()
            raise StoreFailure(str(exc)) from exc
        self.octets = sum(self._sizes)  # what STAT counts
        self._where = str(mailbox.path)

    def __len__(self) -> int:
        return len(self._uids)

    def unique_id(self, uid: int) -> str:
        # UIDVALIDITY.UID: unique across the mailbox's life and persistent, since
        # UIDs are never reused and UIDVALIDITY only changes when the mailbox is
        # recreated (then every client must re-download anyway).
        return f"{self.uidvalidity}.{uid}"

    def entry(self, number: int) -> Entry | None:
        if 1 <= number <= len(self._uids):
            uid = self._uids[number - 1]
            return Entry(number, uid, self._sizes[number - 1], self.unique_id(uid))
        return None

    def size_of(self, number: int) -> int | None:
        """The size of message ``number`` (what :meth:`entry` says, without making one)."""
        return self._sizes[number - 1] if 1 <= number <= len(self._uids) else None

    def numbered(self) -> Iterator[tuple[int, int, int]]:
        """(number, UID, size) of every message of the snapshot, in order."""
        return zip(range(1, len(self._uids) + 1), self._uids, self._sizes, strict=True)

    def read(self, entry: Entry) -> tuple[bytes, tuple[int, ...] | None]:
        """The message with CRLF line ends only (what goes on the wire), and where its
        lines that start with "." start (what dot-stuffing changes): see :mod:`.wire`."""
        try:
            data = self.mailbox.read(entry.uid)
        except (KeyError, FileNotFoundError) as exc:
            raise StoreFailure(f"message {entry.number} is no longer in the mailbox") from exc
        except OSError as exc:
            raise StoreFailure(str(exc)) from exc
        # A message never changes once delivered (RFC 3501 2.3.1.1: a UID names one
        # message, for as long as the UIDVALIDITY lasts): what one look at it found
        # holds for every later read of it.
        key = (self._where, self.uidvalidity, entry.uid, len(data))
        plan = PLANS_SEEN.get(key)
        if plan is None:
            plan = plan_for(data, entry.size)
            PLANS_SEEN.put(key, plan)
        return (data if plan.crlf else crlf_only(data)), plan.dots

    def mark_seen(self, entries: list[Entry], follow_moves: bool = True) -> list[Entry]:
        """RETR means "read": the shared index gets \\Seen so IMAP shows it read,
        for many messages in one index transaction (a pipelined download). Returns
        the entries left unmarked: those an IMAP MOVE took to another folder, when
        ``follow_moves`` is false (the lab loop, which holds this mailbox's lock and
        must not wait for another's: the driver marks them on a worker thread)."""
        try:
            moved = []
            with self.mailbox.lock:  # no IMAP STORE between reading the flags and writing them
                changes = {}
                for entry in entries:
                    flags = self.mailbox.flags(entry.uid)
                    if flags is None:
                        moved.append(entry.uid)
                    elif "\\Seen" not in flags:
                        changes[entry.uid] = flags | {"\\Seen"}
                if changes:
                    self._seen_unflushed = True  # before: a batch may rename, then fail
                    # (not set_flags_many: its index entries per message, unused here, cost
                    # a look-up each while the loop holds the lock)
                    self.mailbox.change_flags(changes, _wanted)
            if moved and not follow_moves:
                gone = set(moved)
                return [entry for entry in entries if entry.uid in gone]
            for uid in moved:
                # an IMAP MOVE took it away after RETR read it: the RETR came first, so
                # the copy is \Seen (a message expunged is simply gone)
                where = moved_to(self.mailbox, uid)
                if where is not None:
                    self._seen_unflushed = True
                    self._also_flush.add(where[0])
                    where[0].change_flags([where[1]], lambda old, seen: old | seen, frozenset({"\\Seen"}))
        except (KeyError, OSError):
            pass  # a message removed meanwhile by IMAP: nothing to mark
        except Exception:  # the flag is a courtesy to IMAP: never worth a failed download
            log.exception("marking retrieved messages \\Seen failed")
        return []

    def remove(self, entries: list[Entry]) -> list[int]:
        """The UPDATE state's work: remove the marked messages for good. With ``sync``
        the removals and the \\Seen marked during the session (renamed into ``cur/``
        on the lab loop, unsynced: a RETR promises no flag) are on the disk before
        the +OK, in one fsync round."""
        try:
            removed = self.mailbox.remove([e.uid for e in entries])
            if self.sync and (removed or self._seen_unflushed):
                self._flush()
            return removed
        except Exception as exc:
            raise StoreFailure(str(exc)) from exc

    @property
    def seen_unflushed(self) -> bool:
        """Whether \\Seen marked during the session still waits for its fsync round."""
        return self.sync and self._seen_unflushed

    def flush_seen(self) -> None:
        """The session ended without QUIT: no UPDATE state, nothing deleted, but what
        RETR marked \\Seen stays marked, as in Dovecot's pop3 (a RETR, then the
        connection dropped: the message is \\Seen at the next login; a DELE is not
        carried out). With ``sync`` it reaches the disk here, on a worker thread: a
        session's \\Seen is on the disk once the session is over, however it ended
        (nothing acknowledged it; this only makes the rule one rule)."""
        if not self.seen_unflushed:
            return
        try:
            self._flush()
        except Exception:  # nobody waits for it: logged, and the next flush covers it
            log.exception("flushing the \\Seen of a session that ended without QUIT failed")

    def _flush(self) -> None:
        self.mailbox.flush()
        for folder in self._also_flush:
            folder.flush()
        self._seen_unflushed = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            with _locks_guard:
                _locked.discard(_lock_key(self.mailbox))


class StoreBackend:
    """Users and maildrops, as the POP3 session asks for them (its ``Backend``): the
    lab's servers pass the lab's store and users; tests pass their own."""

    def __init__(self, store: Store, users: Users, limits: Limits | None = None) -> None:
        self.store, self.users, self.limits = store, users, limits

    def authenticate(self, login: str, password: str) -> str | None:
        return self.users.authenticate(login, password)

    def password(self, login: str) -> str | None:
        try:
            return self.users.password(login)
        except KeyError:
            return None

    def open_maildrop(self, address: str) -> Maildrop:
        return Maildrop(self.store.mailbox(address, "INBOX", create=True),
                        sync=self.limits is not None and self.limits.smtp_fsync)


def _wanted(old: frozenset[str], wanted: frozenset[str]) -> frozenset[str]:
    return wanted
