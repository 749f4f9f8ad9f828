"""The maildrop a POP3 session works on, and the lock that makes it exclusive.

RFC 1939 section 8: "the POP3 server acquires an exclusive-access lock on the
maildrop" when a client enters the TRANSACTION state, so two clients cannot
delete the same messages from under each other. A second login gets
``-ERR [IN-USE]`` (RFC 2449 section 8.1.2). The lock lives in this process
(every lab server runs in it) and is released on QUIT, on a dropped connection,
on an error and on the idle timeout: whatever ends the session.

A :class:`Maildrop` is the session's snapshot: message numbers 1..N are fixed at
login, so mail arriving during the session is only seen at the next login
(RFC 1939 section 5: numbers "do not change during the session").
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..store import Mailbox, MessageInfo, Store
from ..users import Users


def crlf_only(data: bytes) -> bytes:
    """Every line end as CRLF, a bare CR included (RFC 1939 3: responses are lines
    ended by CRLF). A bare CR left in would let a client that splits lines on CR
    see a "." line the server never sent, and take what follows for the next
    response; the relay normalises the same way (maillab.relay.client.encode_data).

    LIST counts the stored CRLF size (``MessageInfo.crlf_size``), so a file with a
    bare CR is sent one octet longer per CR than LIST said. SMTP refuses bare CR,
    so only IMAP APPEND, ``store.deliver`` and files put into the Maildir by hand
    bring one.
    """
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


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
    info: MessageInfo
    unique_id: str  # the UIDL (RFC 1939 section 7): unique and persistent


class Maildrop:
    """A locked, numbered snapshot of one mailbox for one POP3 session."""

    def __init__(self, mailbox: Mailbox) -> None:
        key = _lock_key(mailbox)
        with _locks_guard:
            if key in _locked:
                raise InUse()
            _locked.add(key)
        self.mailbox = mailbox
        self._released = False
        try:
            infos = mailbox.messages()
        except Exception as exc:
            self.release()
            raise StoreFailure(str(exc)) from exc
        # UIDVALIDITY.UID: unique across the mailbox's life and persistent, since
        # UIDs are never reused and UIDVALIDITY only changes when the mailbox is
        # recreated (then every client must re-download anyway).
        self.entries = [Entry(n, info, f"{mailbox.uidvalidity}.{info.uid}")
                        for n, info in enumerate(infos, start=1)]

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, number: int) -> Entry | None:
        if 1 <= number <= len(self.entries):
            return self.entries[number - 1]
        return None

    def read(self, entry: Entry) -> bytes:
        """The message with CRLF line ends only (what goes on the wire)."""
        try:
            data = self.mailbox.read(entry.info.uid)
        except (KeyError, FileNotFoundError) as exc:
            raise StoreFailure(f"message {entry.number} is no longer in the mailbox") from exc
        except OSError as exc:
            raise StoreFailure(str(exc)) from exc
        # Maildir files never change, so when the file already has its CRLF size
        # every LF has its CR; one more count tells whether every CR has its LF.
        if len(data) == entry.info.crlf_size and data.count(b"\r") == data.count(b"\n"):
            return data
        return crlf_only(data)

    def mark_seen(self, entry: Entry) -> None:
        """RETR means "read": the shared index gets \\Seen so IMAP shows it read."""
        try:
            info = self.mailbox.get(entry.info.uid)
            if info is not None and "\\Seen" not in info.flags:
                self.mailbox.add_flags(entry.info.uid, ["\\Seen"])
        except (KeyError, OSError):
            pass  # a message removed meanwhile by IMAP: nothing to mark

    def remove(self, entries: list[Entry]) -> list[int]:
        """The UPDATE state's work: remove the marked messages for good."""
        try:
            return self.mailbox.remove([e.info.uid for e in entries])
        except Exception as exc:
            raise StoreFailure(str(exc)) from exc

    def release(self) -> None:
        if not self._released:
            self._released = True
            with _locks_guard:
                _locked.discard(_lock_key(self.mailbox))


class StoreBackend:
    """Users and maildrops, as the POP3 session asks for them (its ``Backend``): the
    lab's servers pass the lab's store and users; tests pass their own."""

    def __init__(self, store: Store, users: Users) -> None:
        self.store, self.users = store, users

    def authenticate(self, login: str, password: str) -> str | None:
        return self.users.authenticate(login, password)

    def password(self, login: str) -> str | None:
        try:
            return self.users.password(login)
        except KeyError:
            return None

    def open_maildrop(self, address: str) -> Maildrop:
        return Maildrop(self.store.mailbox(address, "INBOX", create=True))
