"""Reading the authentication headers of any message: ``Authentication-Results``
(RFC 8601) and the ARC sets (RFC 8617), newest first, for ``%mail hops``.

Pasted messages come from anywhere, so this reads leniently: comments are
dropped, each ``method=result`` pair is taken as written, and a field that does
not parse is shown as it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesHeaderParser

_RESULT = re.compile(r"(?:^|;)\s*(spf|dkim|dmarc|arc|iprev|auth|bimi|dkim-atps|x-[\w-]+)\s*=\s*([\w-]+)"
                     r"([^;]*)", re.I)
_TAG = re.compile(r"\b([a-z]{1,3})=([^;\s]+)", re.I)


@dataclass
class AuthHop:
    """One header: who checked (authserv-id or ARC instance) and what they found."""

    field: str  # Authentication-Results, ARC-Seal, ARC-Authentication-Results, ...
    by: str  # the authserv-id, or "i=N d=DOMAIN" for an ARC set
    results: list[tuple[str, str, str]] = field(default_factory=list)  # (method, result, properties)

    def text(self) -> str:
        found = "; ".join(f"{m}={r}" + (f" {p}" if p else "") for m, r, p in self.results)
        if not found:
            # A signature holds no verdict of its own: a receiver's Authentication-Results does.
            signature = self.field.lower() in ("dkim-signature", "arc-message-signature")
            found = "a signature (its check is in Authentication-Results)" if signature else "(no results)"
        return f"{self.field}: {self.by}: {found}"


def _clean(value: str) -> str:
    """``value`` on one line without its comments (nested ones too; an unmatched
    parenthesis stays). One pass: removing the innermost comments again and again
    took time quadratic in the nesting depth (a pasted header of 4,000 nested
    parentheses: 0.2 s; 64,000: a minute)."""
    text = " ".join(value.split())
    if "(" not in text:
        return text
    out: list[str] = []
    opened: list[int] = []  # where each still-open "(" is in out
    for piece in _PARENTHESES.split(text):  # "(", ")" and the runs between them
        if piece == "(":
            opened.append(len(out))
        elif piece == ")" and opened:
            del out[opened.pop():]
            continue
        out.append(piece)
    return "".join(out)


_PARENTHESES = re.compile(r"([()])")


_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def header_section(message: bytes) -> bytes:
    """The message up to and including the blank line that ends its header fields."""
    end = _BLANK_LINE.search(message)
    return message[:end.end()] if end else message


def parse_header(message: bytes) -> Message:
    """The message's header fields, parsed from its header section only: the standard
    library's header parser decodes the whole input and copies it into a StringIO
    (4 octets a character), so a 20 MB message parsed whole cost 140 MB for a moment,
    five times over in one MX's checks (tests/test_socket_attacks.py)."""
    return BytesHeaderParser().parsebytes(header_section(message))


def read(message: bytes) -> list[AuthHop]:
    """The authentication headers of ``message`` in header order (newest first)."""
    try:
        header = parse_header(message)
    except Exception:  # noqa: BLE001 - a view never fails on a strange message
        return []
    out: list[AuthHop] = []
    for name, raw in header.items():
        lower = name.lower()
        value = _clean(str(raw))
        if lower == "authentication-results":
            by, _, rest = value.partition(";")
            out.append(AuthHop(name, by.strip(), _results(";" + rest)))
        elif lower == "arc-authentication-results":
            inst, _, rest = value.partition(";")
            by, _, rest = rest.partition(";")
            out.append(AuthHop(name, f"{inst.strip()} {by.strip()}", _results(";" + rest)))
        elif lower in ("arc-seal", "arc-message-signature", "dkim-signature"):
            tags = dict((k.lower(), v) for k, v in _TAG.findall(value))
            who = " ".join(f"{k}={tags[k]}" for k in ("i", "d", "s") if k in tags)
            results = [("cv", tags["cv"], "")] if "cv" in tags else []
            out.append(AuthHop(name, who, results))
    return out


def _results(text: str) -> list[tuple[str, str, str]]:
    return [(m.group(1).lower(), m.group(2).lower(), " ".join(m.group(3).split()))
            for m in _RESULT.finditer(text)]
