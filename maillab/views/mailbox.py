"""Summaries first: a mailbox over IMAP, listed before anything is downloaded.

POP3 knows one way to show a mailbox: download every message (RETR) and parse it
on the client. IMAP lets the server do the parsing: ``FETCH 1:* (UID FLAGS
RFC822.SIZE ENVELOPE)`` returns date, sender, subject and size of every message
(RFC 3501 6.4.5, 7.4.2) in a few hundred octets each, and the user then downloads
only what they open (``UID FETCH n BODY.PEEK[]``).

:class:`MailboxView` makes that visible. It drives a recording IMAP client (see
:mod:`maillab.clients.imap`) and counts, from that client's own events, how many
octets each step took on the wire, next to what POP3 would have had to download
(every message in full). It renders as text (terminals, tests), as HTML, and as
an ipywidgets panel where the user picks messages to download.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from ..clients.imap import connect, parse_fetch
from .status import text_table

if TYPE_CHECKING:
    from ..clients.imap import RecordingIMAP4
    from ..lab import Lab

ENVELOPE_ITEMS = "(UID FLAGS RFC822.SIZE ENVELOPE)"
#: What POP3 adds around each RETR'd message: "RETR n", "+OK ..." and the final ".".
POP3_PER_MESSAGE = len(b"RETR 1\r\n") + len(b"+OK message follows\r\n") + len(b".\r\n")


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


ROW_COLUMNS = (("UID", "uid"), ("date", "date"), ("from", "from"), ("subject", "subject"),
               ("size", "size"), ("flags", "flags"))


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
class MailboxView:
    """Envelopes of ``mailbox`` first; bodies only on request; every step's octets counted."""

    client: RecordingIMAP4
    mailbox: str = "INBOX"
    rows: list[EnvelopeRow] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    downloaded: dict[int, bytes] = field(default_factory=dict)
    _mark: int = 0
    _widget: Any = None

    @classmethod
    def open(cls, lab: Lab, user: str, mailbox: str = "INBOX", *, tls: str = "starttls",
             timeout: float = 10.0) -> MailboxView:
        """Connect (TLS + LOGIN), SELECT, FETCH the envelopes: three counted steps."""
        view = cls(connect(lab, user, tls=tls, login=True, timeout=timeout), mailbox)
        view._step("connect, TLS, LOGIN")  # everything so far in this session
        view.load()
        return view

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
            items = parse_fetch(data) if typ == "OK" and data and data[0] else []
            body = items[0].get("BODY[]", b"") if items else b""
            if not isinstance(body, bytes):
                raise LookupError(f"no message with UID {uid}")
            got[uid] = self.downloaded[uid] = body
            self._step(f"download UID {uid} ({len(body)} octets)")
        self._refresh()
        return got

    # -- the comparison ------------------------------------------------------------------
    @property
    def imap_total(self) -> int:
        return sum(s.total for s in self.steps)

    @property
    def pop3_total(self) -> int:
        """At least what POP3 must download to show the same list: every message in full."""
        return sum(r.size + POP3_PER_MESSAGE for r in self.rows)

    def cost_rows(self) -> list[dict[str, Any]]:
        rows = [{"step": s.name, "sent": s.sent, "received": s.received, "total": s.total}
                for s in self.steps]
        rows.append({"step": "IMAP, all steps", "sent": sum(s.sent for s in self.steps),
                     "received": sum(s.received for s in self.steps), "total": self.imap_total})
        rows.append({"step": f"POP3 would download (RETR x {len(self.rows)})", "sent": "",
                     "received": "", "total": self.pop3_total})
        return rows

    # -- renderings ----------------------------------------------------------------------
    def text(self) -> str:
        head = f"{self.mailbox}: {len(self.rows)} messages, {sum(r.size for r in self.rows)} octets on the server"
        costs = text_table(self.cost_rows(), (("step", "step"), ("sent", "sent"),
                                               ("received", "received"), ("total octets", "total")))
        return "\n".join([head, text_table([r.as_dict() for r in self.rows], ROW_COLUMNS), "",
                          "What each step cost on the wire:", costs])

    def __repr__(self) -> str:
        return self.text()

    def _html_tables(self) -> str:
        def table(rows: list[dict[str, Any]], cols: tuple[tuple[str, str], ...]) -> str:
            head = "".join(f"<th style='text-align:left'>{html.escape(t)}</th>" for t, _ in cols)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k, '')))}</td>" for _, k in cols)
                           + "</tr>" for r in rows)
            return f"<table><tr>{head}</tr>{body}</table>"

        ratio = (self.pop3_total / self.imap_total) if self.imap_total else 0
        return (f"<b>{html.escape(self.mailbox)}</b>: {len(self.rows)} messages"
                + table([r.as_dict() for r in self.rows], ROW_COLUMNS)
                + "<p><b>What each step cost on the wire</b> (octets, from this client's transcript)</p>"
                + table(self.cost_rows(), (("step", "step"), ("sent", "sent"), ("received", "received"),
                                           ("total", "total")))
                + f"<p>POP3 would have moved <b>{ratio:.1f}x</b> as many octets.</p>")

    def _repr_html_(self) -> str:
        return self._html_tables()

    def widget(self) -> Any:
        """An ipywidgets panel: pick messages, press Download, watch the costs grow."""
        import ipywidgets as w

        options = [(f"{r.uid}: {r.date}  {r.sender[:30]}  {r.subject[:50]}  ({r.size} B)", r.uid)
                   for r in self.rows]
        picker = w.SelectMultiple(options=options, rows=min(12, max(3, len(options))),
                                  layout=w.Layout(width="100%"))
        button = w.Button(description="Download selected", icon="download")
        out = w.HTML(self._html_tables())

        def on_click(_b: Any) -> None:
            if picker.value:
                self.download(list(picker.value))

        button.on_click(on_click)
        self._widget = out
        return w.VBox([picker, button, out])

    def _refresh(self) -> None:
        if self._widget is not None:
            self._widget.value = self._html_tables()

    def close(self) -> None:
        try:
            self.client.logout()
        except Exception:
            self.client.shutdown()
