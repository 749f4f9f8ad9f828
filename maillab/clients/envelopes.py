"""Summaries first: list a mailbox over IMAP before anything is downloaded.

POP3 knows one way to show a mailbox: download every message (RETR) and parse it
on the client. IMAP lets the server do the parsing: ``FETCH 1:* (UID FLAGS
RFC822.SIZE ENVELOPE)`` returns date, sender, subject and size of every message
(RFC 3501 6.4.5, 7.4.2) in a few hundred octets each, and the user then downloads
only what they open (``UID FETCH n BODY.PEEK[]``).

:class:`EnvelopeClient` does exactly that with a recording IMAP client (see
:mod:`maillab.clients.imap`) and counts, from that client's own events, how many
octets each step took on the wire. :class:`maillab.views.mailbox.MailboxView`
draws what it holds, next to what POP3 would have had to download.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .imap import connect, parse_fetch

if TYPE_CHECKING:
    from ..lab import Lab
    from .imap import RecordingIMAP4

ENVELOPE_ITEMS = "(UID FLAGS RFC822.SIZE ENVELOPE)"


def decode_words(value: bytes | str | None) -> str:
    """A header value with RFC 2047 encoded words (``=?utf-8?b?...?=``) decoded."""
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        return str(make_header(decode_header(text)))
    except (ValueError, LookupError, UnicodeError):
        return text  # a broken encoded word is shown as it came


def format_address(addr: list[Any] | None) -> str:
    """One ENVELOPE address ``(name adl mailbox host)`` (RFC 3501 7.4.2) for display."""
    if not addr:
        return ""
    name, _adl, mailbox, host = (list(addr) + [None] * 4)[:4]
    email = "@".join(x.decode("utf-8", "replace") for x in (mailbox, host) if x)
    shown = decode_words(name)
    return f"{shown} <{email}>" if shown else email


def short_date(value: bytes | None) -> str:
    if not value:
        return ""
    text = value.decode("utf-8", "replace")
    try:
        return parsedate_to_datetime(text).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, IndexError):
        return text


@dataclass(frozen=True)
class EnvelopeRow:
    """One message as the server summarised it."""

    seq: int
    uid: int
    date: str
    sender: str
    subject: str
    size: int
    flags: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "date": self.date, "from": self.sender, "subject": self.subject,
                "size": self.size, "flags": " ".join(self.flags)}


def envelope_rows(fetch_data: list[Any]) -> list[EnvelopeRow]:
    """imaplib's answer to FETCH (UID FLAGS RFC822.SIZE ENVELOPE) -> rows."""
    rows = []
    for item in parse_fetch(fetch_data):
        env = item.get("ENVELOPE") or [None] * 10
        senders = env[2] or []
        rows.append(EnvelopeRow(
            seq=item["SEQ"], uid=item.get("UID", 0), date=short_date(env[0]),
            sender=format_address(senders[0]) if senders else "",
            subject=decode_words(env[1]), size=int(item.get("RFC822.SIZE", 0)),
            flags=tuple(str(f) for f in item.get("FLAGS", []))))
    return rows


@dataclass
class Step:
    """One thing the client did, and what it cost on the wire."""

    name: str
    sent: int
    received: int

    @property
    def total(self) -> int:
        return self.sent + self.received


@dataclass
class EnvelopeClient:
    """Envelopes of ``mailbox`` first; bodies only on request; every step's octets counted."""

    client: RecordingIMAP4
    mailbox: str = "INBOX"
    rows: list[EnvelopeRow] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    downloaded: dict[int, bytes] = field(default_factory=dict)
    _mark: int = 0

    @classmethod
    def open(cls, lab: Lab, user: str, mailbox: str = "INBOX", *, tls: str = "starttls",
             timeout: float = 10.0) -> EnvelopeClient:
        """Connect (TLS + LOGIN), EXAMINE, FETCH the envelopes: three counted steps."""
        walk = cls(connect(lab, user, tls=tls, login=True, timeout=timeout), mailbox)
        walk._step("connect, TLS, LOGIN")  # everything so far in this session
        try:
            walk.load()
        except BaseException:
            walk.close()
            raise
        return walk

    def _step(self, name: str) -> Step:
        sent, received = self.client.wire_bytes(since=self._mark)
        self._mark = self.client.last_seq()
        step = Step(name, sent, received)
        self.steps.append(step)
        return step

    def load(self) -> list[EnvelopeRow]:
        """EXAMINE (read-only: looking must not change flags) and FETCH the summaries."""
        self._mark = self.client.last_seq()
        typ, data = self.client.select(self.mailbox, readonly=True)
        if typ != "OK":
            raise LookupError(f"cannot open {self.mailbox}: {data!r}")
        self._step(f"EXAMINE {self.mailbox}")
        count = int(data[0] or 0)
        if count:
            typ, data = self.client.fetch("1:*", ENVELOPE_ITEMS)
            if typ != "OK":  # e.g. NO [UNAVAILABLE] (RFC 5530): say so, do not parse it as data
                raise LookupError(f"FETCH of the envelopes failed: {typ} {_said(data)}")
            self.rows = envelope_rows(data)
        else:
            self.rows = []
        self._step(f"FETCH envelopes of {count} messages")
        return self.rows

    def download(self, uids: list[int] | int) -> dict[int, bytes]:
        """Download whole messages, one UID FETCH BODY.PEEK[] each (a counted step each)."""
        got = {}
        for uid in [uids] if isinstance(uids, int) else list(uids):
            self._mark = self.client.last_seq()
            typ, data = self.client.uid("FETCH", str(uid), "(BODY.PEEK[])")
            if typ != "OK":
                raise LookupError(f"UID FETCH {uid} failed: {typ} {_said(data)}")
            items = parse_fetch(data) if data and data[0] else []
            body = items[0].get("BODY[]", b"") if items else b""
            if not isinstance(body, bytes):
                raise LookupError(f"no message with UID {uid}")
            got[uid] = self.downloaded[uid] = body
            self._step(f"download UID {uid} ({len(body)} octets)")
        return got

    def close(self) -> None:
        try:
            self.client.logout()
        except Exception:
            try:
                self.client.shutdown()
            except OSError:  # already gone (the lab stopped, the server closed it)
                pass


def _said(data: list[Any]) -> str:
    """The text of a tagged NO/BAD as imaplib hands it over."""
    first = data[0] if data else b""
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)
