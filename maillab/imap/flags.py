"""Message flags (RFC 3501 2.3.2): system flags, keywords, and how FETCH FLAGS writes them."""

from __future__ import annotations

from collections.abc import Iterable

from .responses import Bad

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
#: What a client may store (RFC 3501 7.1: ``\*`` means "keywords too").
PERMANENT_FLAGS = (*SYSTEM_FLAGS, "\\*")


def check_flags(flags: Iterable[str]) -> frozenset[str]:
    """The flags a client asked to store (APPEND, STORE), as stored."""
    out = set()
    for f in flags:
        if f == "\\Recent":
            continue  # RFC 3501 2.3.2: the server sets \Recent, never the client
        if f.startswith("\\") and f not in SYSTEM_FLAGS:
            raise Bad(f"{f} is not a system flag (keywords have no backslash)")
        out.add(f)
    return frozenset(out)


#: A flag set (and whether \Recent is added) as FETCH FLAGS writes it.
_FLAGS_TEXT: dict[tuple[frozenset[str], bool], str] = {}


def flags_text(flags: frozenset[str], recent: bool) -> str:
    """``\\Seen $Junk`` (sorted, \\Recent added when this session holds it)."""
    key = (flags, recent)
    text = _FLAGS_TEXT.get(key)
    if text is None:
        text = " ".join(sorted(flags | {"\\Recent"} if recent else flags))
        if len(_FLAGS_TEXT) < 10_000:  # a mailbox has few distinct flag sets
            _FLAGS_TEXT[key] = text
    return text
