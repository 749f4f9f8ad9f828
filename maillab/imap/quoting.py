"""IMAP strings on the wire (RFC 3501 4.3, 9 "string", "nstring").

A value becomes a quoted string when it can (no CR, LF or NUL, 7-bit only,
``"`` and ``\\`` escaped) and a literal ``{n}CRLF<n octets>`` otherwise.
Values are Python strings; the wire form is their UTF-8 encoding, so a literal's
octet count is the length of that encoding.
"""

from __future__ import annotations


def _quotable(s: str) -> bool:
    return s.isascii() and "\r" not in s and "\n" not in s and "\0" not in s


def imap_string(s: str) -> str:
    """``s`` as an IMAP string: quoted when possible, else a literal."""
    if _quotable(s):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
    s = s.replace("\0", "\ufffd")  # NUL is never allowed, not even in a literal (RFC 3501 4.3)
    return f"{{{len(s.encode('utf-8'))}}}\r\n{s}"


def imap_nstring(s: str | None) -> str:
    """``s`` as an IMAP nstring: NIL for None."""
    return "NIL" if s is None else imap_string(s)


def wire_text(raw: bytes) -> str:
    """Raw header bytes as a string for the wire: UTF-8 as is, other 8-bit bytes replaced.

    RFC 3501 wants header text sent as it is; bytes that are not UTF-8 (a Latin-1
    header sent without RFC 2047) become U+FFFD so every string stays valid UTF-8.
    """
    if raw.isascii():
        return raw.decode("ascii")
    return raw.decode("utf-8", "replace")
