"""A user's mailbox at a glance: date, from, subject (RFC 2047 words decoded), size.

Read straight from the lab's store (the same Maildir files POP3 and IMAP serve),
not through a protocol: this is the ground truth the protocol views are checked
against.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING

from ..imap.decoding import field_text
from .status import text_table
from .theme import breakable, card_table, page

if TYPE_CHECKING:
    from ..lab import Lab

_HEADER_LIMIT = 256 * 1024  # enough for any sane header section; bodies are not read


@dataclass(frozen=True)
class InboxRow:
    uid: int
    date: str
    sender: str
    subject: str
    size: int  # octets as the protocols count them (CRLF line ends)
    flags: str
    path: str


def _header_section(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(_HEADER_LIMIT)
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = head.find(sep)
        if i >= 0:
            return head[: i + len(sep)]
    return head


def header_fields(header_section: bytes) -> tuple[str, str, str]:
    """Date, From and Subject of a message's header section, decoded for a row."""
    # Read as written (the compat32 parser: no address or comment grammar) and decoded
    # by the IMAP server's linear RFC 2047 decoder. email.policy.default parsed every
    # From: it was shown with a grammar that is quadratic on some hostile values, and
    # anyone may send one to an MX: "From: (a)(a)..." of 30 KB took 20 s, "From: a"
    # and 60,000 dots 72 s, of the kernel, for one row of %mail inbox
    # (tests/test_linear.py).
    msg = BytesHeaderParser().parsebytes(header_section)
    return field_text(msg, "Date"), field_text(msg, "From"), field_text(msg, "Subject")


def read_inbox(lab: Lab, user: str, folder: str = "INBOX") -> tuple[str, list[InboxRow]]:
    """The resolved address of ``user`` (full address or unambiguous local part) and its rows."""
    address = lab.users.resolve(user) or user.lower()
    mailbox = lab.store.mailbox(address, folder)
    rows = []
    for info in mailbox.messages():
        path = mailbox.path / info.subdir / info.filename
        try:
            date, sender, subject = header_fields(_header_section(path))
        except OSError:
            continue  # expunged between listing and reading
        rows.append(InboxRow(
            uid=info.uid,
            # no Date: field (a message typed by hand): the arrival time, as an RFC 5322 date
            date=date or formatdate(info.internaldate, localtime=True),
            sender=sender,
            subject=subject,
            size=info.crlf_size,
            flags=" ".join(sorted(info.flags)),
            path=str(path),
        ))
    return address, rows


#: The columns of a message summary, (head, key of the row's dict): the inbox read
#: from the store and the envelopes IMAP sent (views/mailbox.py) read alike.
MESSAGE_COLUMNS = (("UID", "uid"), ("date", "date"), ("from", "from"), ("subject", "subject"),
                   ("size", "size"), ("flags", "flags"))


def message_table(rows: Iterable[dict[str, object]]) -> str:
    """A list of messages as an ``ml-cards`` table (theme): one row per message at a
    projector's width, and in a narrow output (800 px, 150% zoom) one card per
    message, its UID on top, each fact under its label and the subject across the
    card, instead of a table scrolling sideways past its sender and subject."""
    return card_table([t for t, _ in MESSAGE_COLUMNS], (
        [breakable(r[k]) if k == "from" else html.escape(str(r[k])) for _, k in MESSAGE_COLUMNS] for r in rows),
        wide=("subject",))


class Inbox:
    """What ``%mail inbox USER`` returns."""

    def __init__(self, lab: Lab, user: str, folder: str = "INBOX") -> None:
        self.folder = folder
        self.address, self.rows = read_inbox(lab, user, folder)

    def __len__(self) -> int:
        return len(self.rows)

    def _dicts(self) -> list[dict[str, object]]:
        return [{"uid": r.uid, "date": r.date, "from": r.sender, "subject": r.subject,
                 "size": r.size, "flags": r.flags} for r in self.rows]

    def __repr__(self) -> str:
        title = f"{self.address} {self.folder}: {len(self.rows)} message(s)"
        if not self.rows:
            return title
        cols = [(c, c) for c in ("uid", "date", "from", "subject", "size", "flags")]
        return f"{title}\n{text_table(self._dicts(), cols)}"

    def _repr_html_(self) -> str:
        return page(self._html_body(), kind="inbox")

    def _html_body(self) -> str:
        title = (f"<b>{html.escape(self.address)}</b> {html.escape(self.folder)}: "
                 f"{len(self.rows)} message(s)")
        if not self.rows:
            return title
        return title + message_table(self._dicts())
