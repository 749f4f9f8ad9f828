"""Bounces: the delivery status notification (DSN) an MTA sends back to the sender.

A DSN (RFC 3464) is a ``multipart/report; report-type=delivery-status`` message
(RFC 6522) with three parts:

1. ``text/plain`` for people: what failed and what the remote server said;
2. ``message/delivery-status`` for programs: one block about the message
   (``Reporting-MTA``, ``Arrival-Date``), then one block per failed recipient
   (``Final-Recipient``, ``Action: failed``, ``Status: 5.7.1``, ``Remote-MTA``,
   ``Diagnostic-Code: smtp; 550 5.7.1 ...``);
3. the original message (``message/rfc822``), or only its header when large
   (``text/rfc822-headers``).

It is sent from the null reverse-path ``MAIL FROM:<>`` (RFC 5321 4.5.5), so a
bounce can never bounce back: that is what stops bounce loops.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, formatdate, make_msgid

from .diagnosis import said

#: Above this, only the original's header goes back (Postfix does the same past a limit).
FULL_ORIGINAL_LIMIT = 100 * 1024


@dataclass
class FailedRecipient:
    address: str
    status: str  # RFC 3463, e.g. "5.7.1"
    diagnostic: str  # what the remote server said ("550 5.7.1 ..."), or our own reason
    remote_mta: str | None = None  # the MX host that said it
    last_attempt: float | None = None
    command: str | None = None  # the command the reply answered (RCPT TO, end of DATA, ...)
    action: str = "failed"  # or "delayed" for a warning
    reply: str | None = None  # the remote's SMTP reply, verbatim, when one decided
    remote_address: str | None = None  # the address of remote_mta


def _date(ts: float | None) -> str:
    return format_datetime(datetime.fromtimestamp(ts or time.time(), timezone.utc).astimezone())


def original_header(data: bytes) -> bytes:
    """The original message's header block (everything up to the first empty line)."""
    norm = data.replace(b"\r\n", b"\n")
    head = norm.split(b"\n\n", 1)[0]
    return head.replace(b"\n", b"\r\n") + b"\r\n"


def build_dsn(
    *,
    reporting_mta: str,
    sender: str,
    failed: list[FailedRecipient],
    original: bytes,
    queue_id: str,
    arrival: float,
) -> bytes:
    """The DSN as the bytes of an RFC 5322 message (CRLF line endings)."""
    boundary = f"maillab-dsn-{secrets.token_hex(8)}"
    domain = reporting_mta
    delayed = all(f.action == "delayed" for f in failed)
    subject = ("Delayed Mail (still being retried)" if delayed
               else "Undelivered Mail Returned to Sender")
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{domain}>",
        f"To: <{sender}>",
        f"Subject: {subject}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {make_msgid('dsn', domain=domain)}",
        "Auto-Submitted: auto-replied",  # RFC 3834: no auto-responder answers this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    human = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        ("Your message has not been delivered yet; the mail system will keep trying."
         if delayed else
         "I'm sorry to have to inform you that your message could not be delivered"
         " to one or more recipients. It's attached below."),
        "",
    ]
    for f in failed:
        # A reply alone is said with its host and the command it answered (Postfix's
        # words); any other diagnostic already says where the session ended.
        if f.reply and f.remote_mta and f.diagnostic == f.reply:
            human.append(f"<{f.address}>: {said(f.remote_mta, f.remote_address, f.reply, f.command)}")
        else:
            human.append(f"<{f.address}>: {f.diagnostic}")
    status = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Maillab-Queue-ID: {queue_id}",
        f"Arrival-Date: {_date(arrival)}",
    ]
    for f in failed:
        status += [
            "",
            # No Original-Recipient: that field carries a client's ORCPT parameter and
            # "MUST NOT appear" without one (RFC 3461 6.3 d); the lab offers no DSN
            # extension, so none was given (after a forward it would also name the
            # wrong address: the one forwarded to, not the one the sender wrote).
            f"Final-Recipient: rfc822; {f.address}",
            f"Action: {f.action}",
            f"Status: {f.status}",
        ]
        if f.remote_mta:
            status.append(f"Remote-MTA: dns; {f.remote_mta}")
        # RFC 3464 2.3.6: the actual reply of the remote MTA when there is one (the
        # command it answered is in the human-readable part); else our own words.
        if f.reply:
            status.append(f"Diagnostic-Code: smtp; {f.reply}")
        else:
            kind = "smtp" if f.diagnostic[:3].isdigit() else "x-maillab"
            status.append(f"Diagnostic-Code: {kind}; {f.diagnostic}")
        status.append(f"Last-Attempt-Date: {_date(f.last_attempt)}")
    if len(original) <= FULL_ORIGINAL_LIMIT:
        third_type, third = "message/rfc822", original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    else:
        third_type, third = "text/rfc822-headers", original_header(original)
    crlf = "\r\n"
    parts = [
        crlf.join(header), "",
        "This is a MIME-encapsulated message.", "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8", "",
        crlf.join(human), "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status", "",
        crlf.join(status), "",
        f"--{boundary}",
        f"Content-Description: {'Undelivered Message' if third_type == 'message/rfc822' else 'Undelivered Message Headers'}",
        f"Content-Type: {third_type}",
        "Content-Transfer-Encoding: 8bit", "", "",
    ]
    body = crlf.join(parts).encode("utf-8")
    if not third.endswith(b"\r\n"):
        third += b"\r\n"
    return body + third + f"\r\n--{boundary}--\r\n".encode()
