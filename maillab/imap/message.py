"""What FETCH and SEARCH need to know about one message (RFC 3501 6.4.4, 6.4.5, 7.4.2).

The IMAP server asks these things of a stored message (CRLF bytes, as
``Mailbox.read_crlf`` returns them):

- ``summarize(data)``: ENVELOPE, BODY and BODYSTRUCTURE as wire strings, and the
  Date for SENTBEFORE/SENTON/SENTSINCE. Computed once per message and cached in the
  mailbox index (the dict is JSON-safe), so FETCH never re-parses.
- ``section(data, part, kind, fields)``: the bytes of ``BODY[<section>]``.
- ``header_matches``, ``body_matches``, ``text_matches``: the text comparisons of
  SEARCH HEADER/FROM/TO/CC/BCC/SUBJECT, BODY and TEXT, on decoded text.

Wire strings are Python ``str``; send them as UTF-8 (``s.encode()``): literal
lengths inside them count UTF-8 octets, and header bytes that are not UTF-8 have
been replaced with U+FFFD. The MIME splitting lives in ``mimeparse``, the
ENVELOPE in ``envelope``, the BODYSTRUCTURE in ``bodystructure``.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Iterator

from .bodystructure import body_structure
from .decoding import decode_bytes, decode_header, decode_transfer, fold_case
from .envelope import address_search_text, envelope
from .mimeparse import Part, find_part, param_value, parse, unfold

__all__ = ["summarize", "section", "header_matches", "header_search_texts", "body_matches",
           "text_matches", "parse", "ADDRESS_FIELDS"]

_TIME_THEN_ZONE = re.compile(r"\d:\d\d(?::\d\d)?[ \t]+[-+A-Za-z]")

#: Section kinds of RFC 3501 6.4.5 (besides a bare part number).
SECTION_KINDS = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")


def summarize(data: bytes) -> dict[str, object]:
    """ENVELOPE, BODY and BODYSTRUCTURE strings and the sent date of a message.

    Keys: ``envelope``, ``body``, ``bodystructure`` (each exactly what follows
    ``ENVELOPE `` / ``BODY `` / ``BODYSTRUCTURE `` on the wire), ``date`` (the Date
    header as a POSIX timestamp, None when missing or unreadable) and ``date_tz``
    (its zone offset in minutes, so SENTON can compare the sender's calendar day,
    as RFC 3501 6.4.4 asks: ``date + date_tz * 60`` read as UTC; 0 when unknown).
    """
    root = parse(data)
    date, tz = _sent_date(root)
    body, bodystructure = body_structure(root, data)
    return {
        "envelope": envelope(root),
        "body": body,
        "bodystructure": bodystructure,
        "date": date,
        "date_tz": tz,
    }


def _sent_date(root: Part) -> tuple[float | None, int]:
    raw = root.first("date")  # SENT* use the first Date (Dovecot), ENVELOPE the last
    if raw is None:
        return None, 0
    text = unfold(raw).decode("latin-1")
    if not _TIME_THEN_ZONE.search(text):
        return None, 0  # RFC 5322 3.3: time-of-day FWS zone; no zone, no date (as Dovecot)
    try:
        parsed = email.utils.parsedate_tz(text)
        if parsed is None or not 1 <= parsed[0] <= 9999:
            return None, 0
        offset = parsed[9] or 0
        when = float(email.utils.mktime_tz(parsed))
        # An hour of 99999999 still parses: keep only dates a datetime holds, in UTC and
        # in the sender's zone, which is what SEARCH SENT* turns them into.
        datetime.datetime.fromtimestamp(when + offset, datetime.timezone.utc)
        datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
        return when, offset // 60
    except (ValueError, OverflowError, OSError, TypeError, IndexError):
        return None, 0


# -- BODY[section] ---------------------------------------------------------------------

def section(data: bytes, part: tuple[int, ...], kind: str | None,
            fields: tuple[str, ...] = ()) -> bytes:
    """The bytes of ``BODY[part.kind (fields)]`` (RFC 3501 6.4.5); b"" if there is no such part.

    ``part`` () is the whole message; HEADER, HEADER.FIELDS(.NOT) and TEXT of a
    numbered part need a message/rfc822 part and refer to the message inside it;
    MIME is the header of a numbered part. A literal may not carry NUL (RFC 3501
    4.3), so NUL octets come out as 0x80, as Dovecot sends them.
    """
    out = _section(data, part, kind, fields)
    return out.replace(b"\0", b"\x80") if b"\0" in out else out


def _section(data: bytes, part: tuple[int, ...], kind: str | None,
             fields: tuple[str, ...] = ()) -> bytes:
    root = parse(data)
    kind = kind.upper() if kind else None
    if part:
        target = find_part(root, part)
        if target is None:
            return b""
        if kind is None:
            return data[target.body_start:target.end]
        if kind == "MIME":
            return data[target.start:target.body_start]
        if target.message is None:
            return b""
        msg = target.message
    else:
        if kind is None:
            return data
        if kind == "MIME":
            return b""
        msg = root
    if kind == "HEADER":
        return data[msg.start:msg.body_start]
    if kind == "TEXT":
        return data[msg.body_start:msg.end]
    if kind in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        wanted = {f.lower() for f in fields}
        keep = kind == "HEADER.FIELDS"
        lines = [data[f.start:f.end] for f in msg.fields if (f.key in wanted) == keep]
        out = b"".join(line if line.endswith(b"\n") else line + b"\r\n" for line in lines)
        # Then the empty line that ends a header. Dovecot adds it to HEADER.FIELDS even
        # when the message has none, and copies it for HEADER.FIELDS.NOT.
        return out + (b"\r\n" if keep else data[msg.header_end:msg.body_start])
    return b""


# -- SEARCH ------------------------------------------------------------------------

#: Fields SEARCH FROM/TO/CC/BCC compare in address form (Dovecot's list, RFC 5322 3.6).
ADDRESS_FIELDS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from",
                            "resent-sender", "resent-to", "resent-cc", "resent-bcc"})
_LWSP_RUN = re.compile(rb"[ \t]+")


def _joined(value: bytes) -> bytes:
    """A folded value on one line as SEARCH HEADER sees it: line breaks removed, a TAB
    that starts a continuation line read as a space (what Dovecot compares)."""
    if b"\n" not in value:
        return value
    return value.replace(b"\r\n\t", b" ").replace(b"\n\t", b" ").replace(b"\r\n", b"").replace(b"\n", b"")


def header_search_texts(data: bytes, field: str, *, exact: bool = False) -> tuple[str, ...]:
    """The texts SEARCH compares for ``field``, one per occurrence, decoded and case-folded.

    By default the field is read as the dedicated keys read it, as Dovecot does:
    address fields in one normal form (``Name <user@host>``, see
    envelope.address_search_text) and Subject with each run of spaces and tabs as
    one space. ``exact=True`` is the HEADER key: the field's text as written, only
    unfolded. They do not depend on the needle, so a server may keep them per message.
    """
    name = field.lower()
    out = []
    for f in parse(data).named(name):
        if not exact and name in ADDRESS_FIELDS:
            value = address_search_text(f.value)
        else:
            value = _joined(f.value)
            if not exact and name == "subject":
                value = _LWSP_RUN.sub(b" ", value).strip(b" ")
        out.append(fold_case(decode_header(value)))
    return tuple(out)


def header_matches(data: bytes, field: str, needle: str, *, exact: bool = False) -> bool:
    """SEARCH FROM/TO/CC/BCC/SUBJECT/HEADER: decoded (RFC 2047), case-insensitive, Unicode.

    An empty needle matches every message that has the field (RFC 3501 6.4.4); what
    is compared is :func:`header_search_texts` (``exact=True`` for the HEADER key).
    """
    want = fold_case(needle)
    return any(want in text for text in header_search_texts(data, field, exact=exact))


def _texts(data: bytes, part: Part) -> Iterator[str]:
    """The decoded text of every text/* and message/* leaf part (what SEARCH BODY looks at,
    as in Dovecot: images and applications are not text)."""
    for p in _walk(part):
        if p.type not in ("text", "message") or p.is_multipart or p.message is not None:
            continue
        ct = p.content_type
        enc = p.first("content-transfer-encoding")
        charset = param_value(ct[2], b"charset") if ct else None
        raw = decode_transfer(data[p.body_start:p.end], None if enc is None else unfold(enc))
        yield decode_bytes(raw, charset)


def _walk(part: Part) -> Iterator[Part]:
    """``part`` and every part inside it, in order."""
    stack = [part]
    while stack:
        p = stack.pop()
        yield p
        if p.message is not None:
            stack.append(p.message)
        stack.extend(reversed(p.children))


def _header_text(part: Part) -> str:
    return "\n".join(f.name.decode("latin-1") + ": " + decode_header(f.value) for f in part.fields)


def body_matches(data: bytes, needle: str) -> bool:
    """SEARCH BODY: the decoded text of the message's text parts contains ``needle``."""
    want = fold_case(needle)
    return any(want in fold_case(text) for text in _texts(data, parse(data)))


def text_matches(data: bytes, needle: str) -> bool:
    """SEARCH TEXT: a decoded header (of the message or of any part inside it) or the
    decoded body text contains ``needle``."""
    want = fold_case(needle)
    root = parse(data)
    if any(want in fold_case(_header_text(p)) for p in _walk(root)):
        return True
    return any(want in fold_case(text) for text in _texts(data, root))
