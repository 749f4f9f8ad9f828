"""Composing a message: what a mail client does before it ever opens a socket.

A message is a header section, a blank line and a body (RFC 5322 2.1). Headers are
ASCII on the wire, so a Subject like ``你好, Bob`` travels as an RFC 2047
encoded-word (``=?utf-8?b?...?=``); attachments turn the body into a
``multipart/mixed`` tree and an HTML body into ``multipart/alternative`` with a
plain-text part first (RFC 2046 5.1.4: the last part is the preferred one).

``email.message.EmailMessage`` with ``email.policy.SMTP`` does the encoding; this
module decides the structure and the headers every message must have (RFC 5322
3.6: Date and From; Message-ID "SHOULD" be there).
"""

from __future__ import annotations

import html as html_lib
import mimetypes
import re
from collections.abc import Iterable, Sequence
from copy import deepcopy
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, localtime, make_msgid
from pathlib import Path

#: A header line of the header block at the top of a body ("Subject: hi").
_HEADER_LINE = re.compile(r"^([!-9;-~]+):[ \t]?(.*)$")  # RFC 5322 2.2: field name = printable ASCII but ":"
_CONTINUATION = re.compile(r"^[ \t]+\S")

#: Headers that hold addresses (parsed and re-encoded as address lists).
ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to", "sender")


def split_header_block(text: str) -> tuple[list[tuple[str, str]], str]:
    """Split a leading header block off ``text``.

    The block counts only when every line before the first blank line is a header
    line (or a folded continuation of one) and the blank line exists: otherwise
    the whole text is body, so a body that happens to start with "Note: ..."
    stays a body.
    """
    lines = text.splitlines()
    headers: list[tuple[str, str]] = []
    for i, line in enumerate(lines):
        if line.strip() == "":
            if headers:
                return headers, "\n".join(lines[i + 1:]) + ("\n" if text.endswith("\n") else "")
            return [], text
        m = _HEADER_LINE.match(line)
        if m:
            headers.append((m.group(1), m.group(2).strip()))
        elif headers and _CONTINUATION.match(line):
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        else:
            return [], text
    return [], text


def _addresses(values: Iterable[str]) -> list[str]:
    """Flatten "a@x, b@y" and repeated options into one list of address strings."""
    out: list[str] = []
    for name, addr in getaddresses([v for v in values if v]):
        if addr:
            out.append(str(Address(display_name=name, addr_spec=addr)) if name else addr)
    return out


def _html_to_text(markup: str) -> str:
    """A readable plain-text alternative for an HTML body (crude on purpose)."""
    text = re.sub(r"(?is)<(script|style).*?</\1>", "", markup)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</h\d>|</li>", "\n", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html_lib.unescape(text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def compose(
    *,
    sender: str | None = None,
    to: Sequence[str] = (),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    subject: str | None = None,
    body: str = "",
    html: str | bool | None = None,
    attachments: Sequence[str | Path] = (),
    headers: Iterable[tuple[str, str]] = (),
    parse_header_block: bool = True,
) -> EmailMessage:
    """Build a MIME message.

    ``body`` may begin with a header block (``Subject: ...``, blank line, text);
    options given as arguments win over the block. ``html=True`` means the body is
    HTML; a string is an HTML alternative to the plain ``body``. Each path in
    ``attachments`` becomes a part of a ``multipart/mixed`` message.
    """
    block: list[tuple[str, str]] = []
    if parse_header_block:
        block, body = split_header_block(body)
    fields: dict[str, list[str]] = {}
    for name, value in [*block, *headers]:
        fields.setdefault(name.lower(), []).append(value)
    names = {name.lower(): name for name, _ in [*block, *headers]}

    def take(name: str, given: Sequence[str] | str | None) -> list[str]:
        if given:
            fields.pop(name, None)
            return [given] if isinstance(given, str) else list(given)
        return fields.pop(name, [])

    msg = EmailMessage(policy=policy.SMTP)
    from_ = _addresses(take("from", sender))
    if not from_:
        raise ValueError("a message needs a sender (--from, or a From: line in the header block)")
    msg["From"] = ", ".join(from_)
    for header, given in (("To", to), ("Cc", cc), ("Bcc", bcc)):
        addrs = _addresses(take(header.lower(), given))
        if addrs:
            msg[header] = ", ".join(addrs)
    if not (msg["To"] or msg["Cc"] or msg["Bcc"]):
        raise ValueError("a message needs at least one recipient (--to, or a To: line)")
    subjects = take("subject", subject)
    if subjects:
        msg["Subject"] = subjects[-1]
    dates = fields.pop("date", [])
    msg["Date"] = dates[-1] if dates else format_datetime(localtime())
    ids = fields.pop("message-id", [])
    domain = Address(addr_spec=getaddresses([from_[0]])[0][1]).domain or None
    msg["Message-ID"] = ids[-1] if ids else make_msgid(domain=domain)
    for key, values in fields.items():
        if key in ("mime-version", "content-type", "content-transfer-encoding"):
            continue  # the MIME structure below decides these
        for value in values:
            msg[names[key]] = value

    if html is True:
        msg.set_content(_html_to_text(body))
        msg.add_alternative(body, subtype="html")
    elif isinstance(html, str):
        msg.set_content(body)
        msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(body)

    for path in attachments:
        p = Path(path).expanduser()
        ctype, encoding = mimetypes.guess_type(p.name)
        if ctype is None or encoding is not None:
            ctype = "application/octet-stream"  # e.g. .tar.gz: send the bytes as they are
        maintype, subtype = ctype.split("/", 1)
        data = p.read_bytes()
        if maintype == "text":
            try:
                msg.add_attachment(data.decode("utf-8"), subtype=subtype, filename=p.name)
                continue
            except UnicodeDecodeError:
                maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=p.name)
    for part in msg.walk():
        if part is not msg:
            # RFC 2045 4: MIME-Version is needed at the top level only; the email
            # package repeats it in every part it builds.
            del part["MIME-Version"]
    return msg


def envelope(msg: EmailMessage) -> tuple[str, list[str]]:
    """The SMTP envelope a message implies: MAIL FROM and every RCPT TO (Bcc included).

    RFC 5321 3.3 keeps envelope and header apart; a client builds the envelope
    from the headers and then sends the message without its Bcc line.
    """
    sender = getaddresses([str(msg["Sender"] or msg["From"] or "")])[0][1]
    rcpts = [a for _n, a in getaddresses([str(v) for h in ("To", "Cc", "Bcc")
                                          for v in msg.get_all(h, [])]) if a]
    return sender, list(dict.fromkeys(rcpts))


def wire_bytes(msg: EmailMessage) -> bytes:
    """The message as it goes into DATA: CRLF line ends, no Bcc line (RFC 5322 3.6.3)."""
    copy = deepcopy(msg)
    del copy["Bcc"]
    return copy.as_bytes(policy=policy.SMTP)
